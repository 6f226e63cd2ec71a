"""``Value``, ``Array``, ``RawValue`` and ``RawArray``: :mod:`multiprocessing.sharedctypes`
over shmq segments.

Each object is a ctypes object (``c_int``, ``c_double * 10``, a ``Structure``...) whose memory
is a shmq segment of its own, so ``.value``, indexing, slicing and ``.raw``/``.value`` of
``'c'`` arrays are ctypes' own. ``Value`` and ``Array`` wrap it as multiprocessing does
(``Synchronized``, ``SynchronizedArray``, ``SynchronizedString``, or a wrapper with one
property per field of a Structure): every access takes the lock, ``get_lock()`` and
``get_obj()`` give the lock and the raw object, and the wrapper itself is a context manager
and has ``acquire()``/``release()``.

The lock (``lock=True``, the default, or None) is the segment's own robust mutex, recursive
like multiprocessing's default ``RLock``: ``v.value`` works inside ``with v.get_lock():``.
``lock=False`` returns the raw ctypes object; any other object with an ``acquire`` method (a
:class:`shmq.Lock`, a :class:`shmq.RLock`, a multiprocessing lock) is used as the lock, and an
object without one raises ``AttributeError``, as in multiprocessing.

A holder killed inside the lock never deadlocks the others: the next locker gets
:class:`shmq.OwnerDiedError` once (the data may be half-updated), and can go on; see
:mod:`shmq.synchronize`.

Arrays have ``to_numpy()`` (the raw array and the synchronized wrapper alike): a numpy array
over the same shared memory, with no copy and no lock (take ``get_lock()`` around it if other
processes write meanwhile). numpy is imported only then.

Where shmq differs from multiprocessing:

- Every object pickles by name (multiprocessing's can only be inherited), so it can be passed
  to children started with fork, spawn or forkserver, as ``Pool`` task arguments and through
  queues, and plain ``pickle`` gives a handle on the same memory, not a copy. A process that
  passes one to a child it spawns must keep it alive until the child has it (a ``Process``
  being started keeps its arguments alive for that: shmq sees to it).
- The ctypes object is an instance of a subclass of the requested type (``isinstance(v,
  ctypes.c_int)`` holds and the repr is the same), which is what lets it pickle by name.
- Each object is a segment of its own: three pages (12 KiB) of ``/dev/shm`` (plus the data), and two
  file descriptors in every process that has it open. For many small values, use one
  ``Array``.
- Opening a segment as another type (a handle forged by name) fails with
  :class:`shmq.IncompatibleError`: the type is recorded in the segment.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from typing import Any, Callable

from . import _handles
from ._shmq import SharedBuf
from .synchronize import RLock

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized"]

typecode_to_type: dict[str, Any] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}
"""multiprocessing's typecodes and the ctypes types they stand for."""

_TAG_PREFIX = "py-ctypes:"

#
# The ctypes type of an object, as something that pickles (spec) and as a tag (description)
#

Spec = tuple[Any, ...]
"""``("type", T)`` for a type that pickles by reference, ``("array", spec, length)`` for an
array type (``c_int * 10`` cannot be pickled by reference)."""


def _importable(type_: type) -> bool:
    module = sys.modules.get(type_.__module__)
    return module is not None and getattr(module, type_.__qualname__, None) is type_


def _spec_of(type_: Any) -> Spec:
    if isinstance(type_, type) and issubclass(type_, ctypes.Array) and not _importable(type_):
        return ("array", _spec_of(type_._type_), type_._length_)
    return ("type", type_)


def _type_of(spec: Spec) -> Any:
    if spec[0] == "array":
        return _type_of(spec[1]) * spec[2]
    return spec[1]


def _describe(type_: Any) -> str:
    """A text that tells the layout of ``type_`` apart from others (recorded as the tag)."""
    size, align = ctypes.sizeof(type_), ctypes.alignment(type_)
    if issubclass(type_, ctypes.Array):
        return f"[{type_._length_}]{_describe(type_._type_)}"
    if issubclass(type_, ctypes._SimpleCData):
        return f"{type_._type_}{size}"
    if issubclass(type_, (ctypes.Structure, ctypes.Union)):
        fields = []
        for klass in reversed(type_.__mro__):
            for field in klass.__dict__.get("_fields_", ()):
                bits = f":{field[2]}" if len(field) > 2 else ""
                fields.append(f"{field[0]}={_describe(field[1])}{bits}")
        kind = "struct" if issubclass(type_, ctypes.Structure) else "union"
        return f"{kind} {type_.__qualname__}{{{','.join(fields)}}}/{size}/{align}"
    return f"{type_.__module__}.{type_.__qualname__}/{size}/{align}"


#
# ctypes objects over shmq segments
#


def _reduce_shared(obj: Any) -> tuple[Any, ...]:
    core: SharedBuf = obj._shmq_core
    _handles.keep_for_child(core)
    return (_rebuild_ctype, (core.name, core.tag, type(obj)._shmq_spec))


def _ctype_handles(obj: Any) -> list[SharedBuf]:
    return [obj._shmq_core]


def _simple_repr(obj: Any) -> str:
    # ctypes prints "<X object at ...>" for subclasses of its simple types: print what it
    # prints for the type itself.
    return f"{type(obj).__name__}({obj.value!r})"


def to_numpy(obj: Any) -> Any:
    """A numpy array over the memory of a shared array (raw, or a ``SynchronizedArray``):
    zero copy, and no lock taken (hold ``get_lock()`` around its use if others write)."""
    import numpy

    if isinstance(obj, SynchronizedArray):
        obj = obj.get_obj()
    if obj._type_ is ctypes.c_wchar:
        # numpy has no dtype for c_wchar; a wchar_t is UCS-4 on Linux, which is numpy's "U1".
        dtype = numpy.dtype("=U1")
    else:
        dtype = numpy.dtype(obj._type_)  # exact, Structure padding included
    return numpy.frombuffer(obj, dtype=dtype, count=len(obj))


_shared_classes: dict[Any, Any] = {}


def _shared_class(base: Any) -> Any:
    """The subclass of ctypes type ``base`` whose instances live in a shmq segment."""
    cls = _shared_classes.get(base)
    if cls is None:
        namespace: dict[str, Any] = {
            "__reduce__": _reduce_shared,
            "_shmq_handles": _ctype_handles,
            "__module__": base.__module__,
            "_shmq_spec": _spec_of(base),
        }
        if issubclass(base, ctypes._SimpleCData):
            namespace["__repr__"] = _simple_repr
        if issubclass(base, ctypes.Array):
            namespace["to_numpy"] = to_numpy
        cls = type(base)(base.__name__, (base,), namespace)
        cls.__qualname__ = base.__qualname__
        cls = _shared_classes.setdefault(base, cls)
    return cls


def _attach(core: SharedBuf, type_: Any) -> Any:
    obj = _shared_class(type_).from_buffer(memoryview(core))
    obj._shmq_core = core
    return obj


def _rebuild_ctype(name: str, tag: str, spec: Spec) -> Any:
    return _attach(_handles.open_shared(name, tag), _type_of(spec))


def _new_value(type_: Any, prefix: str) -> Any:
    size = ctypes.sizeof(type_)
    core = _handles.create_shared(prefix, size, _TAG_PREFIX + _describe(type_))
    return _attach(core, type_)


def _storage(obj: Any) -> SharedBuf | None:
    return getattr(obj, "_shmq_core", None)


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, with no lock: ``multiprocessing.RawValue``.

    ``typecode_or_type`` is a typecode of :mod:`array` (``'i'``, ``'d'``, ``'c'``... see
    ``typecode_to_type``) or a ctypes type (a ``Structure`` too); ``args`` go to its
    constructor. The memory starts zeroed.
    """
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_, "pyval")
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, with no lock: ``multiprocessing.RawArray``.

    ``size_or_initializer`` is the length (zeroed elements) or a sequence of initial values.
    The array has ``to_numpy()``.
    """
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new_value(type_ * size_or_initializer, "pyarr")
    result = _new_value(type_ * len(size_or_initializer), "pyarr")
    result.__init__(*size_or_initializer)
    return result


def _lock_for(obj: Any, lock: Any) -> Any:
    if lock in (True, None):
        core = _storage(obj)
        lock = RLock._over(core) if core is not None else RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes object in shared memory behind a lock: ``multiprocessing.Value``.

    Returns a ``Synchronized`` wrapper (``.value``, ``get_lock()``, ``get_obj()``, a context
    manager) whose lock is the segment's own recursive, robust mutex (``lock=True`` or None),
    ``lock`` itself if it has an ``acquire`` method, or, with ``lock=False``, the raw ctypes
    object. ``ctx`` is accepted, as by ``multiprocessing.sharedctypes.Value``, and unused.
    """
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(obj, lock))


def Array(
    typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None
) -> Any:
    """A ctypes array in shared memory behind a lock: ``multiprocessing.Array``.

    Returns a ``SynchronizedArray`` (``SynchronizedString`` for ``'c'``, with ``.value`` and
    ``.raw``) whose indexing and slicing take the lock, with ``to_numpy()``; ``lock`` as for
    :func:`Value`.
    """
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(obj, lock))


def copy(obj: Any) -> Any:
    """A new shared ctypes object holding a copy of ``obj``: ``multiprocessing.sharedctypes.copy``."""
    type_ = type(obj)
    if _storage(obj) is not None:
        type_ = type_.__mro__[1]  # the requested type, not shmq's subclass of it
    new_obj = _new_value(type_, "pyval")
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """Wraps a ctypes object in the synchronized wrapper of its kind, with ``lock`` (by default,
    the object's own segment lock, or a new :class:`shmq.RLock` for another ctypes object)."""
    assert not isinstance(obj, SynchronizedBase), "object already synchronized"
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    if _storage(obj) is not None:
        cls = cls.__mro__[1]
    try:
        scls = class_cache[cls]
    except KeyError:
        names = [field[0] for field in cls._fields_]
        d = {name: make_property(name) for name in names}
        classname = "Synchronized" + cls.__name__
        scls = class_cache[cls] = type(classname, (SynchronizedBase,), d)
    return scls(obj, lock, ctx)


#
# Synchronized wrappers (multiprocessing's, without the "only through inheritance" rule)
#


def make_property(name: str) -> property:
    """A property that reads and writes attribute ``name`` of the wrapped object under the lock."""
    try:
        return prop_cache[name]
    except KeyError:
        pass

    def get(self: SynchronizedBase) -> Any:
        self.acquire()
        try:
            return getattr(self._obj, name)
        finally:
            self.release()

    def set(self: SynchronizedBase, value: Any) -> None:
        self.acquire()
        try:
            setattr(self._obj, name, value)
        finally:
            self.release()

    prop_cache[name] = result = property(get, set, doc=f"``{name}`` of the object, under the lock.")
    return result


prop_cache: dict[str, property] = {}
class_cache: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


class SynchronizedBase:
    """A ctypes object in shared memory and the lock that guards it.

    ``acquire()`` and ``release()`` are the lock's; the wrapper is a context manager (``with
    v:`` holds the lock); ``get_obj()`` and ``get_lock()`` give the two parts. It pickles as
    both parts, by name.
    """

    acquire: Callable[..., bool]
    release: Callable[[], None]

    def __init__(self, obj: Any, lock: Any = None, ctx: Any = None) -> None:
        self._obj = obj
        if lock:
            self._lock = lock
        else:
            self._lock = _lock_for(obj, None)
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> Any:
        return self._lock.__exit__(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return synchronized, (self._obj, self._lock)

    def _shmq_handles(self) -> list[Any]:
        return _handles._handles_in(self._obj) + _handles._handles_in(self._lock)

    def get_obj(self) -> Any:
        """The wrapped ctypes object (accessing it takes no lock)."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock (recursive, for the default lock): ``with v.get_lock(): ...``."""
        return self._lock

    def __repr__(self) -> str:
        return "<%s wrapper for %s>" % (type(self).__name__, self._obj)


class Synchronized(SynchronizedBase):
    """The wrapper of a simple value: ``.value`` reads and writes under the lock."""

    value = make_property("value")


class SynchronizedArray(SynchronizedBase):
    """The wrapper of an array: ``len()``, indexing and slicing take the lock."""

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        with self:
            return self._obj[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        with self:
            self._obj[i] = value

    def __getslice__(self, start: int, stop: int) -> Any:
        with self:
            return self._obj[start:stop]

    def __setslice__(self, start: int, stop: int, values: Any) -> None:
        with self:
            self._obj[start:stop] = values

    def to_numpy(self) -> Any:
        """A numpy array over the same shared memory: zero copy, no lock (see :func:`to_numpy`)."""
        return to_numpy(self._obj)


class SynchronizedString(SynchronizedArray):
    """The wrapper of a ``'c'`` array: ``.value`` and ``.raw`` under the lock, too."""

    value = make_property("value")
    raw = make_property("raw")
