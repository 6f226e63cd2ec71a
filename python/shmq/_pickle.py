"""Python objects to channel frames and back.

An object travels as one message: a protocol-5 pickle plus its out-of-band buffers (numpy
arrays, :class:`pickle.PickleBuffer`, memoryviews), each written straight into shared memory
beside the pickle (one copy, made by ``Channel.send_frame`` with the GIL released). On receipt
the buffers are handed to :func:`pickle.loads` as views of the message itself, so a received
numpy array *is* the message in shared memory: no copy. Buffers smaller than the copy threshold
(:func:`set_copy_threshold`) are copied at receipt instead, so that their arena pages return at
once (many small zero-copy results kept alive would pin the arena: plan decision D4).

Top-level ``bytes``, ``bytearray`` and one-dimensional byte ``memoryview`` objects take a raw
path with no pickling at all. ``bytes`` and ``bytearray`` nested inside other objects are
pickled in-band (one more copy), as the C pickler always writes them.

The pickler is a :class:`multiprocessing.reduction.ForkingPickler` subclass, so that objects
with reducers registered for multiprocessing (``ForkingPickler.register``) travel as they do
through ``multiprocessing.Queue``. It adds a reducer for ``memoryview`` (which multiprocessing
cannot pickle at all).

This module is shared by every shmq object that carries Python objects (queues, pipes).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import threading
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.reduction import ForkingPickler
from pickle import PickleBuffer
from typing import Any

from . import _shmq

__all__ = [
    "KIND_BYTEARRAY",
    "KIND_BYTES",
    "KIND_MEMORYVIEW",
    "KIND_PICKLE",
    "INBAND_BELOW",
    "array_template",
    "dumps_frame",
    "dumps_frames",
    "get_copy_threshold",
    "loads_frame",
    "set_copy_threshold",
]

KIND_PICKLE: int = _shmq.FRAME_KIND_PICKLE
"""Frame kind of a pickle with out-of-band buffers."""
KIND_BYTES: int = _shmq.FRAME_KIND_BYTES
"""Frame kind of a bare ``bytes`` object (its one buffer)."""
KIND_BYTEARRAY: int = _shmq.FRAME_KIND_BYTEARRAY
"""Frame kind of a bare ``bytearray`` object (its one buffer)."""
KIND_MEMORYVIEW: int = _shmq.FRAME_KIND_MEMORYVIEW
"""Frame kind of a bare one-dimensional byte ``memoryview`` (its one buffer)."""

INBAND_BELOW = 4096
"""Out-of-band buffers smaller than this are pickled in-band instead: a separate buffer costs an
aligned slot of its own, which small ones do not repay."""

DEFAULT_COPY_THRESHOLD = 64 << 10
"""Default of :func:`set_copy_threshold`: 64 KiB."""

copy_below: int = DEFAULT_COPY_THRESHOLD
"""Received out-of-band buffers smaller than this many bytes are copied (see
:func:`set_copy_threshold`). Read directly by the queues on every ``get``."""


def set_copy_threshold(nbytes: int) -> None:
    """Sets the size under which received buffers are copied rather than viewed in place.

    A received numpy array (or other out-of-band buffer) of at least ``nbytes`` bytes is the
    message itself, in shared memory: no copy, but its arena pages stay in use until the last
    reference to the array goes. Smaller ones are copied at receipt, so their pages return at
    once: code that keeps many small results (``results.append(q.get())``) then never fills the
    queue's memory. The default is 64 KiB; ``0`` views every buffer in place; a huge value
    copies every buffer (like ``get(copy=True)`` always).
    """
    global copy_below
    value = int(nbytes)
    if value < 0:
        raise ValueError(f"the copy threshold must be >= 0, not {value}")
    copy_below = value


def get_copy_threshold() -> int:
    """The size under which received buffers are copied (see :func:`set_copy_threshold`)."""
    return copy_below


def _rebuild_memoryview(buffer: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    """Rebuilds a pickled memoryview on the received buffer (in place when it is a view of the
    message), with its item format and shape when ``memoryview.cast`` allows them."""
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if fmt == "B" and len(shape) == 1:
        return view
    try:
        cast: memoryview = view.cast(fmt, shape)  # type: ignore[call-overload]
        return cast
    except (TypeError, ValueError):
        return view  # a format cast() refuses: the bytes, flat


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    if view.c_contiguous:
        data: Any = PickleBuffer(view)
    else:
        data = PickleBuffer(bytearray(view.tobytes()))  # C order, as cast() will read it
    return (_rebuild_memoryview, (data, view.format, tuple(view.shape or ())))


class Pickler(ForkingPickler):
    """multiprocessing's pickler (its registered reducers included), which also pickles
    ``memoryview`` objects, out of band."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            return _reduce_memoryview(obj)
        return NotImplemented


Frame = tuple[int, Any, list[Any]]
"""``(kind, pickle, buffers)``, what ``Channel.send_frame`` takes."""

REUSED_STREAM_BELOW = 64 << 10
""":func:`dumps_frames` copies a pickle smaller than this out of the stream it shares between
objects; a larger one keeps the stream (no copy), and the next object gets a new one."""


def _raw_frame(obj: Any) -> Frame | None:
    """The frame of a top-level ``bytes``, ``bytearray`` or one-dimensional byte
    ``memoryview`` (no pickling at all); ``None`` for any other object."""
    kind = type(obj)
    if kind is bytes:
        return KIND_BYTES, b"", [obj]
    if kind is bytearray:
        return KIND_BYTEARRAY, b"", [obj]
    if kind is memoryview and obj.ndim == 1 and obj.format == "B" and obj.c_contiguous:
        return KIND_MEMORYVIEW, b"", [obj]
    return None


def _out_of_band_into(buffers: list[Any]) -> Callable[[PickleBuffer], bool]:
    """A pickler's ``buffer_callback`` that keeps buffers of ``INBAND_BELOW`` bytes or more
    out of band, appended to ``buffers``, and pickles smaller ones in-band."""

    def out_of_band(buffer: PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < INBAND_BELOW:
            return True  # in-band
        buffers.append(raw)
        return False

    return out_of_band


class _ThreadPickler(threading.local):
    """The pickler :func:`dumps_frame` reuses, one per thread: making a new one costs more than
    pickling a small object does (``ForkingPickler`` copies its dispatch tables each time). It
    is made again when the registered reducers changed since (``ForkingPickler.register``,
    ``copyreg.pickle``: a pickler copies them when made), after a pickling error (its state is
    then unknown), and after a large pickle kept its stream; a nested call (an object whose
    reduction puts into a queue) gets a pickler of its own."""

    pickler: Pickler | None = None
    stream: io.BytesIO
    buffers: list[Any]
    reducers: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
    busy: bool = False

    def ready(self) -> Pickler:
        """The reusable pickler, made anew if the registered reducers changed."""
        # ForkingPickler.register's table: private, and not in the type stubs.
        extra: dict[Any, Any] = getattr(ForkingPickler, "_extra_reducers", {})
        seen_extra, seen_copyreg = self.reducers
        if self.pickler is None or extra != seen_extra or copyreg.dispatch_table != seen_copyreg:
            self.stream = io.BytesIO()
            self.buffers = []
            self.pickler = Pickler(self.stream, 5, True, _out_of_band_into(self.buffers))
            self.reducers = (dict(extra), dict(copyreg.dispatch_table))
        return self.pickler


_reused = _ThreadPickler()


def dumps_frame(obj: Any, *, raw: bool = True) -> Frame:
    """``(kind, pickle, buffers)`` for ``Channel.send_frame``: the pickle (a bytes-like object)
    and the out-of-band buffers (one-dimensional byte memoryviews) of ``obj``. Raises what
    pickling raises (``TypeError``, ``PicklingError``, ``AttributeError``...).

    ``raw=False`` pickles top-level ``bytes``, ``bytearray`` and ``memoryview`` objects too
    (kind ``KIND_PICKLE`` always), for a receiver that needs every object as a pickle (a
    ``Connection``, whose ``recv_bytes`` returns the pickle of what ``send`` sent)."""
    if raw and (frame := _raw_frame(obj)) is not None:
        return frame
    reused = _reused
    if reused.busy:
        buffers: list[Any] = []
        stream = io.BytesIO()
        Pickler(stream, 5, True, _out_of_band_into(buffers)).dump(obj)
        return KIND_PICKLE, stream.getbuffer(), buffers
    # Busy from before ready() until the stream is reset: a put from a signal handler or a
    # finaliser that runs meanwhile gets a pickler of its own.
    reused.busy = True
    try:
        pickler = reused.ready()
        stream, collected = reused.stream, reused.buffers
        try:
            pickler.dump(obj)
        except BaseException:
            collected.clear()  # no export of the caller's buffers is kept
            reused.pickler = None
            raise
        pickler.clear_memo()  # each pickle stands alone
        buffers = collected.copy()
        collected.clear()
        if stream.tell() < REUSED_STREAM_BELOW:
            data: Any = stream.getvalue()
            stream.seek(0)
            stream.truncate()
        else:
            # No copy: the stream goes with the frame, and the next call makes a new one.
            data = stream.getbuffer()
            reused.pickler = None
            reused.stream = io.BytesIO()
    finally:
        reused.busy = False
    return KIND_PICKLE, data, buffers


def dumps_frames(objs: Iterable[Any]) -> list[Frame]:
    """:func:`dumps_frame` of each of ``objs``, in order: the same frames, byte for byte, made
    with one pickler for them all. A new pickler per object costs more than pickling a small
    one does (``ForkingPickler`` copies its dispatch table each time); the shared one has its
    memo cleared between objects, so that each pickle stands alone. Raises what pickling
    raises, at the first object that fails."""
    frames: list[Frame] = []
    collected: list[Any] = []
    stream = io.BytesIO()
    pickler = Pickler(stream, 5, True, _out_of_band_into(collected))
    for obj in objs:
        frame = _raw_frame(obj)
        if frame is not None:
            frames.append(frame)
            continue
        pickler.dump(obj)
        pickler.clear_memo()
        buffers = collected.copy()
        collected.clear()
        if stream.tell() < REUSED_STREAM_BELOW:
            frames.append((KIND_PICKLE, stream.getvalue(), buffers))
            stream.seek(0)
            stream.truncate()
        else:
            frames.append((KIND_PICKLE, stream.getbuffer(), buffers))
            stream = io.BytesIO()
            pickler = Pickler(stream, 5, True, _out_of_band_into(collected))
    return frames


def loads_frame(kind: int, data: Any, buffers: Sequence[Any]) -> Any:
    """The object of a frame received by ``Channel.recv_frame``."""
    if kind == KIND_PICKLE:
        return pickle.loads(data, buffers=buffers)
    if kind == KIND_BYTES or kind == KIND_BYTEARRAY:
        return buffers[0]
    if kind == KIND_MEMORYVIEW:
        return memoryview(buffers[0])
    raise ValueError(f"a message of unknown kind {kind} (sent by another version of shmq?)")


def _array_from_buffer(buffer: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    """Rebuilds an array sent from a loan (see :func:`array_template`)."""
    import numpy

    return numpy.frombuffer(buffer, dtype=dtype).reshape(shape)


class _ArrayTemplate:
    """Pickles as "an array of this dtype and shape on the next out-of-band buffer", without
    holding the data: the pickle part of a frame whose buffer is filled later, in place."""

    def __init__(self, dtype: Any, shape: tuple[int, ...]) -> None:
        self.dtype = dtype
        self.shape = shape

    def __reduce__(self) -> tuple[Any, ...]:
        # A writable placeholder, so that no READONLY_BUFFER opcode makes the received array
        # read-only; only its place in the buffer sequence is pickled.
        placeholder = PickleBuffer(bytearray(1))
        return (_array_from_buffer, (placeholder, self.dtype, self.shape))


def array_template(dtype: Any, shape: tuple[int, ...]) -> bytes:
    """The pickle of an array of ``dtype`` and ``shape`` (C order) whose data is the frame's one
    out-of-band buffer, for ``Channel.loan``."""
    stream = io.BytesIO()
    Pickler(stream, 5, True, lambda _buffer: False).dump(_ArrayTemplate(dtype, shape))
    return stream.getvalue()
