"""``Lock`` and ``RLock``: multiprocessing's locks over shmq's robust cross-process mutex.

Each lock is a small shmq segment holding a robust, process-shared pthread mutex. Both classes
pickle by name, so they pass to children started with fork, spawn or forkserver, to ``Pool``
initializers and as task arguments (multiprocessing's refuse the last), and a lock inherited
through fork keeps working in the child. ``Value(..., lock=shmq.RLock())`` and
``Array(..., lock=shmq.Lock())`` use them.

What multiprocessing does not have:

- **A holder that dies never deadlocks the others.** When a process (or thread) dies holding
  the lock, the next ``acquire`` (in any process) repairs it, releases it and raises
  :class:`shmq.OwnerDiedError`, once: the data the lock protects may be half-updated, and that
  one caller is told. The acquire after that succeeds. (A thread that *exits* holding locks
  releases them on its way out.)
- **Waits are interruptible.** A blocking ``acquire`` releases the GIL and runs signal handlers
  every 100 ms or less: Ctrl-C raises ``KeyboardInterrupt`` in it.

Where shmq differs from multiprocessing (pthread mutexes have owners, semaphores do not):

- A lock is released by the thread that acquired it. ``release()`` from another thread or
  process raises ``RuntimeError`` (``Lock``) or ``AssertionError`` (``RLock``, as
  multiprocessing's), instead of releasing it. ``Lock.release()`` of a lock nobody holds raises
  ``ValueError``, as multiprocessing's.
- ``Lock`` is not re-entrant. Its holder's ``acquire(False)`` returns False and
  ``acquire(timeout=t)`` returns False after ``t`` seconds, as with multiprocessing; but a
  blocking ``acquire()`` with no timeout raises ``RuntimeError`` at once, where
  multiprocessing's hangs for ever.
- Each lock is a segment of its own: three pages (12 KiB) of ``/dev/shm`` and two file descriptors in
  every process that has it open. Thousands of locks need a raised ``ulimit -n``.
"""

from __future__ import annotations

import functools
import threading
from multiprocessing import current_process
from typing import Any, ClassVar

from . import _handles
from ._shmq import SharedBuf

__all__ = ["Lock", "RLock"]

LOCK_TAG = "py-lock"
"""Tag of a ``Lock``'s segment."""
RLOCK_TAG = "py-rlock"
"""Tag of an ``RLock``'s segment."""


def _owner_name() -> str:
    name = current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class _SegmentLock:
    """What ``Lock`` and ``RLock`` share: a robust mutex in a shmq segment."""

    _reentrant: ClassVar[bool]
    _tag: ClassVar[str]
    _prefix: ClassVar[str]
    _core: SharedBuf

    def __init__(self) -> None:
        self._bind(_handles.create_shared(self._prefix, 0, self._tag))

    @classmethod
    def _over(cls, core: SharedBuf) -> Any:
        """A lock object on the mutex of ``core`` (a ``Value``'s own storage, say)."""
        lock = cls.__new__(cls)
        lock._bind(core)
        return lock

    def _bind(self, core: SharedBuf) -> None:
        self._core = core
        # The hot path goes straight into Rust (a Python method in between would double the
        # cost of an uncontended acquire); the methods below are what it does.
        if self._reentrant:
            self.__dict__["acquire"] = core.acquire
            self.__dict__["release"] = core.release
        else:
            self.__dict__["acquire"] = functools.partial(core.acquire, reentrant=False)
            self.__dict__["release"] = functools.partial(core.release, False)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquires the lock, as multiprocessing's ``acquire(block=True, timeout=None)``.

        Returns True once acquired. With ``block`` false, returns False at once if the lock is
        busy; with a ``timeout`` (seconds, negative meaning 0), returns False if it is still
        busy then. Waits with the GIL released; Ctrl-C raises ``KeyboardInterrupt``.

        Raises :class:`shmq.OwnerDiedError` if the previous holder died holding the lock: the
        lock has been repaired and released, and the next acquire succeeds.
        """
        return self._core.acquire(block, timeout, self._reentrant)

    def release(self) -> None:
        """Releases the lock (see the class documentation for who may)."""
        self._core.release(self._reentrant)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *args: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        _handles.keep_for_child(self._core)
        return (_rebuild_lock, (type(self), self._core.name, self._core.tag))

    def _shmq_handles(self) -> list[SharedBuf]:
        return [self._core]

    @property
    def name(self) -> str:
        """The name of the lock's segment (``/dev/shm/shmq.<name>``)."""
        return self._core.name


class Lock(_SegmentLock):
    """A non-recursive lock usable across processes: ``multiprocessing.Lock``.

    ``acquire(block=True, timeout=None)``, ``release()`` and use as a context manager, with
    multiprocessing's semantics except where the module documentation says otherwise (a dead
    holder raises :class:`shmq.OwnerDiedError` once instead of a deadlock; release only by the
    acquiring thread; re-acquiring by the holder without timeout raises ``RuntimeError``
    instead of hanging).
    """

    _reentrant = False
    _tag = LOCK_TAG
    _prefix = "pylock"

    def __repr__(self) -> str:
        owner = _owner_name() if self._core.is_mine() else "unknown"
        return f"<{type(self).__name__}(owner={owner})>"


class RLock(_SegmentLock):
    """A recursive lock usable across processes: ``multiprocessing.RLock``.

    The thread that holds it may acquire it again, and must release it as many times. This is
    the lock of ``shmq.Value(...)`` and ``shmq.Array(...)`` (their ``get_lock()``), so that
    ``v.value`` can be read inside ``with v.get_lock():``. A dead holder raises
    :class:`shmq.OwnerDiedError` once instead of a deadlock (see the module documentation).
    """

    _reentrant = True
    _tag = RLOCK_TAG
    _prefix = "pyrlock"

    def __repr__(self) -> str:
        count = self._core.count()
        owner = _owner_name() if count else "unknown"
        return f"<{type(self).__name__}({owner}, {count})>"


def _rebuild_lock(cls: type[_SegmentLock], name: str, tag: str) -> Any:
    return cls._over(_handles.open_shared(name, tag))
