"""``Queue``, ``JoinableQueue`` and ``SimpleQueue``: multiprocessing's queues, through shared
memory.

The objects put travel as protocol-5 pickles whose out-of-band buffers (numpy arrays above
all) are written straight into the queue's shared memory: one copy on ``put``, none on ``get``
(see :mod:`shmq._pickle`). There is no feeder thread: ``put`` returns once the object is in
shared memory, so a pickling error is raised by ``put`` itself, and a process may exit right
after ``put`` without waiting for anything to drain.

Sizes. A queue's memory is fixed when it is created: a ring of message slots (``maxsize``
of them, or 65536 for ``maxsize <= 0``; at most 2**24; 128 bytes of shared memory each, so
the default ring is 8 MiB) and an arena for payloads
(``capacity_bytes``, else the environment variable ``SHMQ_CAPACITY_BYTES``, else 64 MiB).
A payload larger than the whole arena still travels, in a shared-memory segment of its own
(slower: fresh pages). So ``maxsize=0`` is not unbounded as in multiprocessing: once the arena
(or the ring) is full, ``put`` blocks until consumers free room, and ``put_nowait`` raises
``queue.Full``. Received arrays hold their arena pages until the last reference goes; keep
``get(copy=True)`` for results that are kept for long.

Handles pickle by name, so a queue passes to children under every start method, to
``Pool(initializer=..., initargs=(q,))`` and as an argument of pool tasks. Keep the queue alive
in the process that made it until the others have used it (as multiprocessing requires too):
a channel whose every user has gone is removed.
"""

from __future__ import annotations

import collections
import errno
import math
import operator
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterable, Sequence
from queue import Empty, Full
from typing import Any, SupportsIndex

from . import _channels, _handles, _pickle
from ._shmq import Channel, Loan

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

DEFAULT_CAPACITY_BYTES = 64 << 20
"""Arena size of a queue made without ``capacity_bytes`` (unless ``SHMQ_CAPACITY_BYTES`` is
set)."""

DEFAULT_RING = 65536
"""Ring slots of a queue with ``maxsize <= 0``."""

MAX_RING = 1 << 24
"""Most ring slots a queue has; a larger ``maxsize`` is clamped to it."""

CAPACITY_ENV = "SHMQ_CAPACITY_BYTES"
"""The environment variable that sets the default arena size in bytes."""


def _ring_slots(maxsize: int) -> int:
    if maxsize <= 0:
        return DEFAULT_RING
    return min(maxsize, MAX_RING)


def capacity_from(
    capacity_bytes: int | None, env_name: str, default: int, *, minimum: int = 0
) -> int:
    """An arena size: ``capacity_bytes``, else the environment variable ``env_name`` (a number
    of bytes, ``0x`` prefixes allowed), else ``default``; ``ValueError`` below ``minimum``.
    Shared with :mod:`shmq.connection`."""
    if capacity_bytes is None:
        env = os.environ.get(env_name)
        if not env:
            return default
        try:
            capacity_bytes = int(env, 0)
        except ValueError:
            raise ValueError(f"{env_name}={env!r} is not a number of bytes") from None
    value = int(capacity_bytes)
    if value < minimum:
        raise ValueError(f"capacity_bytes must be >= {minimum}, not {value}")
    return value


def _arena_bytes(capacity_bytes: int | None) -> int:
    return capacity_from(capacity_bytes, CAPACITY_ENV, DEFAULT_CAPACITY_BYTES)


def _timeout(block: bool, timeout: Any) -> float | None:
    """A timeout as multiprocessing takes it: checked to be a number even without ``block``
    (``TypeError`` otherwise), then ignored without ``block``; negative means zero. NaN is
    returned as is: ``put`` and ``get`` treat it as multiprocessing does."""
    if timeout is None:
        return None
    if isinstance(timeout, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(timeout).__name__}")
    seconds = float(timeout)
    if not block:
        return None
    return seconds if math.isnan(seconds) else max(seconds, 0.0)


def _max_items(max_items: int) -> int:
    """``get_many``'s ``max_items``, checked: an integer of at least 1."""
    count = operator.index(max_items)
    if count < 1:
        raise ValueError(f"max_items must be at least 1, not {count}")
    return min(count, sys.maxsize)  # more than the ring holds in any case


class _Held:
    """What a batch receive took from the ring and has not handed over yet: the entries
    (frames, or the exceptions ``Channel.recv_frames`` put in the place of those it could not
    decode) after an item that failed, or after ``max_items``, and the objects decoded before a
    ``KeyboardInterrupt``. The next ``get`` or ``get_many`` of the handle hands them over first,
    in order, so that one bad item costs that item alone. ``receiving`` serialises the receives
    of the handle's threads (as multiprocessing's queues do), so that no thread takes a newer
    item from the ring while older ones are held. They belong to the process that took them: a
    child forked meanwhile starts with none (``_forget_held_in_child``)."""

    __slots__ = ("entries", "receiving", "__weakref__")

    def __init__(self) -> None:
        self.entries: collections.deque[Any] = collections.deque()
        self.receiving = threading.Lock()
        _every_held.add(self)

    def forget(self) -> None:
        """Starts over empty, with a fresh lock (a thread of the parent may have held the old
        one when the process forked)."""
        self.entries = collections.deque()
        self.receiving = threading.Lock()

    def start(self, block: bool, timeout: float | None) -> float | None:
        """Takes ``receiving``, waiting as the receive may (``queue.Empty`` if it cannot by
        the deadline); returns what is left of ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if block:
            # Lock.acquire takes no timeout past TIMEOUT_MAX (an infinite one included).
            if timeout is None or timeout > threading.TIMEOUT_MAX:
                taken = self.receiving.acquire(True)
            else:
                taken = self.receiving.acquire(True, timeout)
        else:
            taken = self.receiving.acquire(False)
        if not taken:
            raise Empty
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)


_every_held: weakref.WeakSet[_Held] = weakref.WeakSet()
"""Every handle's ``_Held`` in this process, for the child of a fork to empty."""


def _forget_held_in_child() -> None:
    # Right after the fork, before any other thread can exist in the child: no receive races
    # the reset, and no receive pays for a check of which process it runs in.
    for held in list(_every_held):
        held.forget()


os.register_at_fork(after_in_child=_forget_held_in_child)


class _Decoded:
    """A held object already decoded (by a call that a ``KeyboardInterrupt`` ended)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _rebuild(cls: type[_ChannelQueue], name: str, incarnation: int | None, state: dict[str, Any]) -> Any:
    """Unpickles a queue handle: the cached channel of that name, or a new handle on it."""
    self = cls.__new__(cls)
    self._attach(_channels.lookup(name, incarnation), state)
    return self


class _ChannelQueue:
    """What the queues share: a channel, its name, pickling by name and closing."""

    _chan: Channel | None
    _name: str
    _incarnation: int | None
    _closed: bool
    _held: _Held

    def _create(self, name: str | None, ring: int, capacity_bytes: int | None) -> None:
        name = name if name is not None else _channels.auto_name("pyq")
        self._attach(_channels.create(name, ring, _arena_bytes(capacity_bytes)), {})

    def _attach(self, chan: Channel, state: dict[str, Any]) -> None:
        self._chan = chan
        self._name = chan.name
        self._incarnation = chan.incarnation
        self._closed = False
        self._held = _Held()
        self._setstate(state)

    def _setstate(self, state: dict[str, Any]) -> None:
        """Restores what ``_getstate`` pickled (subclasses add their own)."""

    def _getstate(self) -> dict[str, Any]:
        """What a handle pickles besides the channel's name and incarnation."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        incarnation = self._chan.incarnation if self._chan is not None else self._incarnation
        if self._chan is not None:
            # Pickled for a child being spawned: keep the channel until the child has ended,
            # so that it is there when the child opens it by name.
            _handles.keep_for_child(self._chan)
        return (_rebuild, (type(self), self._name, incarnation, self._getstate()))

    def _shmq_handles(self) -> list[Any]:
        """The handles a child being forked with this queue among its arguments must find
        alive (see :mod:`shmq._handles`)."""
        return [self._chan] if self._chan is not None else []

    @property
    def name(self) -> str:
        """The name of the queue's shared memory (``/dev/shm/shmq.<name>``)."""
        return self._name

    def set_spin(self, seconds: float) -> None:
        """How long, at most, a blocking ``put`` or ``get`` spins before it sleeps, in
        seconds (default 20 µs): for every handle of this queue in this process (not in
        other processes, nor in a handle pickled to one). ``math.inf`` never sleeps: the
        lowest latency, for one busy core per waiting thread. Raises ``ValueError`` for a
        negative number or NaN. A shmq extension: multiprocessing's queues have no such
        setting."""
        self._channel().set_spin(float(seconds))

    def set_adaptive_spin(self, adaptive: bool) -> None:
        """Whether blocking calls cut their spin while it does not pay (default ``True``):
        after two waits in a row that outlasted it, to about four times what the waits that
        ended in their spin took, with one wait in 16 spinning the full time again. ``False``
        spins the full time before every sleep. For every handle of this queue in this
        process, as ``set_spin``."""
        self._channel().set_adaptive_spin(bool(adaptive))

    def _channel(self) -> Channel:
        chan = self._chan
        if chan is None:
            raise OSError("handle is closed")
        return chan

    def _put(self, obj: Any, block: bool, timeout: float | None) -> None:
        kind, data, buffers = _pickle.dumps_frame(obj)
        if not self._channel().send_frame(kind, data, buffers, bool(block), timeout):
            raise Full

    def _get(self, block: bool, timeout: float | None, copy: bool) -> Any:
        held = self._held
        timeout = held.start(block, timeout)
        try:
            if held.entries:
                return self._hand_over(held, 1)[0]
            frame = self._channel().recv_frame(
                bool(block), timeout, bool(copy), _pickle.copy_below
            )
        finally:
            held.receiving.release()
        if frame is None:
            raise Empty
        return _pickle.loads_frame(*frame)

    def _put_many(self, items: Iterable[Any], block: bool, timeout: float | None) -> int:
        # Every item is pickled before the first is sent: a pickling error sends nothing.
        frames = _pickle.dumps_frames(items)
        if not frames:
            return 0
        sent = self._channel().send_frames(frames, bool(block), timeout)
        if sent == 0:
            raise Full
        return sent

    def _get_many(
        self, max_items: int, block: bool, timeout: float | None, copy: bool
    ) -> list[Any]:
        held = self._held
        timeout = held.start(block, timeout)
        try:
            if not held.entries:
                held.entries.extend(
                    self._channel().recv_frames(
                        max_items, bool(block), timeout, bool(copy), _pickle.copy_below
                    )
                )
            if not held.entries:
                raise Empty
            return self._hand_over(held, max_items)
        finally:
            held.receiving.release()

    @staticmethod
    def _hand_over(held: _Held, max_items: int) -> list[Any]:
        """The objects of the first held entries, up to ``max_items`` and at least one, in
        order; the rest stay held for the next call (the caller holds ``held.receiving``). An
        entry that fails (an exception in its place, or an unpickling error) is lost alone: it
        raises now if no object comes before it, else it is held, to raise first in the next
        call. A ``KeyboardInterrupt`` while an entry is decoded keeps it, and the objects
        decoded before it, held."""
        entries = held.entries
        objects: list[Any] = []
        while entries and len(objects) < max_items:
            entry = entries[0]
            try:
                if isinstance(entry, _Decoded):
                    obj = entry.obj
                elif isinstance(entry, BaseException):
                    raise entry
                else:
                    obj = _pickle.loads_frame(*entry)
            except KeyboardInterrupt:
                entries.extendleft(_Decoded(o) for o in reversed(objects))
                raise
            except BaseException as e:
                entries.popleft()
                # Without this frame, whose locals would keep the objects handed over alive.
                error = e.with_traceback(e.__traceback__.tb_next if e.__traceback__ else None)
                if not objects:
                    raise error
                entries.appendleft(error)
                return objects
            entries.popleft()
            objects.append(obj)
        return objects

    def _held_count(self) -> int:
        """Items this process took in a batch and holds for the next call (an exception held
        in the place of an item counts as one: the call that raises it hands nothing over)."""
        return len(self._held.entries)

    def _release(self) -> None:
        # The channel may be shared with other handles of this process (the cache): only this
        # handle's reference goes. The last one closes this process's sides of the channel.
        self._closed = True
        self._chan = None

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<shmq.{type(self).__qualname__} {self._name!r}{closed} at {id(self):#x}>"

    __class_getitem__: Any = classmethod(types.GenericAlias)


class Queue(_ChannelQueue):
    """A process-shared FIFO queue with multiprocessing's ``Queue`` interface, through shared
    memory.

    ``maxsize`` bounds the number of items queued (``<= 0``: 65536 slots, and the memory);
    ``name`` names the shared memory (default: a fresh name); ``capacity_bytes`` is the size of
    its arena for payloads (default: ``$SHMQ_CAPACITY_BYTES`` or 64 MiB). The queue pickles by
    name: pass it to other processes in any way.

    Differences from ``multiprocessing.Queue``: no feeder thread (``put`` raises pickling
    errors and returns once the item is in shared memory); ``maxsize=0`` is bounded by the
    queue's memory (``put`` blocks, ``put_nowait`` raises ``Full`` when it is full); received
    numpy arrays live in the queue's memory (see ``get``); ``qsize``, ``empty`` and ``full``
    raise ``OSError`` after ``close()``.
    """

    def __init__(
        self, maxsize: int = 0, *, name: str | None = None, capacity_bytes: int | None = None
    ) -> None:
        maxsize = operator.index(maxsize)  # a float is a TypeError, as in multiprocessing
        self._create(name, _ring_slots(maxsize), capacity_bytes)
        self._maxsize = maxsize

    def _setstate(self, state: dict[str, Any]) -> None:
        self._maxsize = state.get("maxsize", 0)
        self._joincancelled = False

    def _getstate(self) -> dict[str, Any]:
        return {"maxsize": self._maxsize}

    @property
    def maxsize(self) -> int:
        """The ``maxsize`` the queue was made with."""
        return self._maxsize

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts ``obj`` into the queue.

        With ``block`` (the default), waits while the queue is full, for at most ``timeout``
        seconds if it is not ``None``, then raises ``queue.Full``; without, raises
        ``queue.Full`` at once if there is no room. Returns once the object is in shared
        memory. Raises what pickling ``obj`` raises, and ``ValueError`` after ``close()``.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        seconds = _timeout(block, timeout)
        if seconds is not None and math.isnan(seconds):
            # multiprocessing's semaphore takes a NaN timeout when it need not wait, and fails
            # with EINVAL when it must.
            try:
                return self._put(obj, False, None)
            except Full:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        self._put(obj, block, seconds)

    def get(self, block: bool = True, timeout: float | None = None, *, copy: bool = False) -> Any:
        """Removes and returns an item from the queue.

        With ``block`` (the default), waits until an item is there, for at most ``timeout``
        seconds if it is not ``None``, then raises ``queue.Empty``; without, raises
        ``queue.Empty`` at once if none is there. Raises ``ValueError`` after ``close()``.

        Numpy arrays (and other out-of-band buffers) of 64 KiB or more are received without a
        copy: the array's memory is the message in the queue's shared memory, given back when
        the last reference to the array goes (smaller ones are copied: see
        :func:`shmq.set_copy_threshold`). They are writable, as multiprocessing's are; writing one
        changes that message only. ``copy=True`` returns private copies instead, and frees the
        queue's memory at once: use it for results that are kept for long.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        seconds = _timeout(block, timeout)
        if seconds is not None and math.isnan(seconds):
            raise ValueError("cannot convert float NaN to integer")  # as multiprocessing's poll
        return self._get(block, seconds, copy)

    def put_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> int:
        """Puts every object of ``items`` into the queue, in order; returns how many were put
        (a shmq extension).

        Every item is pickled first: if pickling any of them raises, nothing is put and the
        exception propagates. Then they go in order, waiting as ``put`` waits while the queue
        is full, for at most ``timeout`` seconds in all if it is not ``None`` (without
        ``block``: no wait). It returns the number of items, unless the deadline passed first:
        then the count of those put by then, the first ones (the rest were not put). If not
        even the first went in by then, raises ``queue.Full``, as ``put`` does. An empty
        ``items`` returns 0. Raises ``ValueError`` after ``close()`` and for a NaN timeout.
        If the call raises for another reason while it waits (a signal handler's
        ``KeyboardInterrupt``, the peer gone, a corrupted queue), the items before the one it
        waited for are in the queue already, and their count is not reported.

        The whole batch is one call into the compiled library, and small objects (messages of
        up to 96 bytes: ints, short strings and tuples) go into the queue in runs, one pass
        over the ring and one wake-up of a waiting consumer per run rather than per item.
        Large ones (arrays) are copied one at a time, as by ``put``. A ``JoinableQueue``
        counts one task per item put, as ``put`` does.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        seconds = _timeout(block, timeout)
        if seconds is not None and math.isnan(seconds):
            raise ValueError("put_many takes no NaN timeout")
        return self._put_many(items, block, seconds)

    def get_many(
        self,
        max_items: int,
        block: bool = True,
        timeout: float | None = None,
        *,
        copy: bool = False,
    ) -> list[Any]:
        """Removes and returns the items ready in the queue, at least one and at most
        ``max_items`` (a shmq extension).

        Waits for the first item as ``get`` does (``queue.Empty`` when none came within
        ``timeout`` seconds, or at once without ``block``), then takes every item that is
        there right now, up to ``max_items``, in the queue's order, in one call. Each is
        decoded as ``get`` decodes it (large numpy arrays in place; ``copy=True`` for private
        copies). ``max_items`` below 1 is a ``ValueError``; so are a NaN timeout and any
        call after ``close()``.

        An item that cannot be unpickled here costs that item alone: the items before it are
        returned, and its exception is raised by the next ``get`` or ``get_many`` of this
        handle, which then hands over the items taken after it (they are held by this process
        meanwhile, counted by ``qsize()``, and dropped by ``close()``); an exception at the
        first item raises at once, the rest held the same way. A payload lost for good (its
        segment removed) is reported the same way, after the other items of its batch. Held
        items come as the call that took them decoded them (``copy`` included). A
        ``KeyboardInterrupt`` while an item is unpickled keeps it, and the items decoded before
        it, held for the next call (one that comes while the library is receiving loses the
        batch, as it loses the item of a ``get``). The receives of a handle's threads take
        turns, as multiprocessing's do.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        count = _max_items(max_items)
        seconds = _timeout(block, timeout)
        if seconds is not None and math.isnan(seconds):
            raise ValueError("cannot convert float NaN to integer")  # as get
        return self._get_many(count, block, seconds, copy)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        return self.put(obj, False)

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    def qsize(self) -> int:
        """The number of items in the queue (approximate while others put and get), with
        those this process took in a ``get_many`` and holds for its next call."""
        return self._channel().len() + self._held_count()

    def empty(self) -> bool:
        """Whether the queue is empty (approximate while others put and get): no item in it,
        and none held by this process for its next ``get`` (see ``get_many``)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (for ``maxsize <= 0``: all 65536 slots).
        A queue whose memory is full while it has free slots is not ``full()``, but a ``put``
        waits nonetheless."""
        chan = self._channel()
        return chan.len() >= chan.capacity()

    def close(self) -> None:
        """Indicates that this process will use the queue no more: later ``put`` and ``get``
        raise ``ValueError``. Items already put stay in the queue for the other processes
        (items a ``get_many`` of this handle took and holds are dropped). This process's
        handles on the shared memory are released (arrays received from the queue stay
        valid). Closing twice is allowed."""
        self._release()

    def join_thread(self) -> None:
        """Does nothing but check that the queue is closed (``AssertionError`` otherwise), as
        multiprocessing's does: there is no feeder thread to join."""
        assert self._closed, "Queue {0!r} not closed".format(self)

    def cancel_join_thread(self) -> None:
        """Does nothing (there is no feeder thread whose join could block the exit)."""
        self._joincancelled = True

    def loan(
        self,
        shape: int | Sequence[SupportsIndex],
        dtype: Any = float,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> QueueLoan:
        """A numpy array of ``shape`` and ``dtype`` in the queue's shared memory, to fill in
        place and send with no copy at all::

            with q.loan((1024, 1024), "float32") as a:
                a[:] = compute()        # written straight into shared memory
            # sent here, on a clean exit of the block; discarded if it raised

        The room is reserved on entry (waiting as ``put`` does: ``queue.Full`` when none came
        by the deadline). After the send the array is made read-only: its memory belongs to the
        receiver now, and must not be written through views made inside the block either. An
        array larger than the queue's arena (or tiny) is built in private memory and sent with
        one copy instead.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        return QueueLoan(self, shape, dtype, bool(block), _timeout(block, timeout))


class JoinableQueue(Queue):
    """A :class:`Queue` that counts unfinished tasks, with multiprocessing's ``JoinableQueue``
    interface: every ``put`` adds a task, every ``task_done()`` finishes one, and ``join()``
    waits until none is left.

    The count lives in the queue's shared memory, so every process sees the same one, and it
    is exact: ``task_done()`` raises ``ValueError`` once it has been called as many times as
    items were put, whichever processes called it. One difference from multiprocessing: the
    tasks of a worker killed while holding them (items it got and never marked done) count as
    done, so ``join()`` never waits for a dead worker. multiprocessing's ``join()`` would wait
    for ever. A worker that merely exits without calling ``task_done()`` (its queue closed
    normally) leaves its tasks unfinished, as in multiprocessing.
    """

    def task_done(self) -> None:
        """Indicates that a formerly enqueued task is complete (in any process). Raises
        ``ValueError`` if called more times than there were items put, and ``ValueError``
        after ``close()``."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._channel().task_done():
            raise ValueError("task_done() called too many times")

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until every item ever put into the queue has been marked done with
        ``task_done()``, re-evaluated as more items are put meanwhile. ``timeout`` (seconds,
        a shmq extension) bounds the wait; returns ``True`` when the tasks are done, ``False``
        when the timeout passed first (without it, ``join()`` returns ``True`` or waits).
        Interruptible with Ctrl-C."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if timeout is not None:
            timeout = max(0.0, float(timeout))
        return self._channel().join_tasks(timeout)

    def unfinished_tasks(self) -> int:
        """Items put and not yet marked done, across all processes (a shmq extension)."""
        return self._channel().unfinished_tasks()


class QueueLoan:
    """The context manager of :meth:`Queue.loan`: ``__enter__`` returns the array."""

    def __init__(
        self,
        queue: Queue,
        shape: int | Sequence[SupportsIndex],
        dtype: Any,
        block: bool,
        timeout: float | None,
    ) -> None:
        import numpy

        self._queue = queue
        self._dtype = numpy.dtype(dtype)
        if self._dtype.hasobject:
            raise TypeError(f"an array of {self._dtype} holds Python objects: it cannot be lent")
        if isinstance(shape, SupportsIndex):
            shape = (shape,)
        self._shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in self._shape):
            raise ValueError(f"negative dimensions are not allowed: {self._shape}")
        self._count = math.prod(self._shape)
        self._block = block
        self._timeout = timeout
        self._loan: Loan | None = None
        self._array: Any = None

    def __enter__(self) -> Any:
        import numpy

        if self._array is not None:
            raise RuntimeError("this loan was entered already")
        nbytes = self._count * self._dtype.itemsize
        template = _pickle.array_template(self._dtype, self._shape)
        chan = self._queue._channel()
        try:
            loan = chan.loan(_pickle.KIND_PICKLE, template, nbytes, self._block, self._timeout)
        except ValueError:
            loan = None  # too large for the arena, or too small to lend: private memory
            self._array = numpy.empty(self._shape, self._dtype)
        else:
            if loan is None:
                raise Full
            self._loan = loan
            self._array = numpy.frombuffer(memoryview(loan), self._dtype, self._count).reshape(
                self._shape
            )
        return self._array

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        array = self._array
        loan = self._loan
        try:
            if exc_type is not None:
                if loan is not None:
                    loan.discard()
                return
            if loan is None:
                self._queue.put(array, self._block, self._timeout)
            elif not loan.send(self._block, self._timeout):
                loan.discard()
                raise Full
        finally:
            if array is not None:
                array.flags.writeable = False
            self._loan = None


class SimpleQueue(_ChannelQueue):
    """multiprocessing's ``SimpleQueue`` (``get``, ``put``, ``empty``, ``close``), through shared
    memory: a :class:`Queue` without sizes, timeouts or non-blocking calls.

    ``name`` and ``capacity_bytes`` are as for :class:`Queue`. After ``close()`` every method
    raises ``OSError("handle is closed")``, as multiprocessing's does.
    """

    def __init__(self, *, name: str | None = None, capacity_bytes: int | None = None) -> None:
        self._create(name, DEFAULT_RING, capacity_bytes)

    def put(self, obj: Any) -> None:
        """Puts ``obj`` into the queue, waiting while the queue's memory is full."""
        self._put(obj, True, None)

    def get(self, *, copy: bool = False) -> Any:
        """Removes and returns an item, waiting until one is there (see :meth:`Queue.get` for
        zero-copy arrays and ``copy``)."""
        return self._get(True, None, copy)

    def put_many(self, items: Iterable[Any]) -> int:
        """Puts every object of ``items``, in order, waiting while the queue's memory is full;
        returns how many (all). Every item is pickled first: a pickling error puts nothing.
        Small objects go in runs, as :meth:`Queue.put_many` sends them."""
        return self._put_many(items, True, None)

    def get_many(self, max_items: int, *, copy: bool = False) -> list[Any]:
        """Waits for an item, then removes and returns every item there now, at most
        ``max_items`` (at least 1), in order (see :meth:`Queue.get_many`)."""
        return self._get_many(_max_items(max_items), True, None, copy)

    def empty(self) -> bool:
        """Whether the queue is empty: no item in it, and none held by this process for its
        next ``get`` (see :meth:`Queue.get_many`)."""
        return self._channel().len() + self._held_count() == 0

    def close(self) -> None:
        """Releases this process's handles on the queue; later calls raise ``OSError``
        (items a ``get_many`` of this handle took and holds are dropped). Closing twice is
        allowed."""
        self._release()
