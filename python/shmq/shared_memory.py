"""``SharedMemory``: :class:`multiprocessing.shared_memory.SharedMemory` over a shmq segment.

The names, arguments, attributes and errors are multiprocessing's, without its three traps:

- **No resource tracker.** Nothing unlinks a block behind the back of a process that still uses
  it. Every process that opens a block is registered in it, with a liveness the kernel ends when
  the process dies, SIGKILL included.
- **Nothing left behind.** A block whose users all went is removed: by its last user on the way
  out, or, if they all died without letting go (SIGKILL, ``os._exit``), within about a second
  by the creating process tree's cleanup process (``shmq._tracker``), which removes a block only
  when no live process uses it; :func:`shmq.gc` does the same for every block in
  ``/dev/shm``.
- **close() never pulls memory from under a view.** :attr:`SharedMemory.buf` (and every
  ``memoryview`` or numpy array made from it) keeps the mapping alive: ``close()`` drops this
  object's references, and the mapping goes with the last view. multiprocessing's ``close()``
  raises ``BufferError`` while views exist, and a released ``buf`` fails with ``ValueError``.

Lifetime, as multiprocessing's effectively is: a block outlives ``close()`` until ``unlink()``.
The process that created it keeps a hidden reference (a participant of its own) until it calls
``unlink()``, until ``close()`` finds that another process unlinked it, or until the process
exits (``atexit``, or multiprocessing's exit handlers in a child process). Other processes hold
the block while they have it open (or a view of it). ``unlink()`` removes the name at once:
``SharedMemory(name)`` then raises ``FileNotFoundError`` and the name can be created anew, while
the processes that have it open keep using it until they let go. A second ``unlink()`` raises
``FileNotFoundError``, as multiprocessing's does (and an object whose block was unlinked never
removes a new block that took its name meanwhile). One difference follows: a block that its
creator never unlinked is gone once the creator has exited and no other process has it open,
where multiprocessing's stays until the resource tracker's program ends.

A ``SharedMemory`` inherited through fork works in the child; the child registers as a user of
its own when it first reads :attr:`~SharedMemory.buf` (or pickles the object), so that the block
stays while the child uses it, and lets go when it exits.

Names: ``SharedMemory("foo")`` is ``/dev/shm/shmq.foo``, where multiprocessing's is
``/dev/shm/foo``, so a shmq block and a multiprocessing block never open each other by name
(use one module for a given block in every process). A leading ``/`` is accepted and ignored
(``"/foo"`` is ``"foo"``; :attr:`~SharedMemory.name` reports the name as given). Names are 1 to
200 characters of ``A-Z a-z 0-9 . _ -``; another character is a ``ValueError``
(:class:`shmq.InvalidNameError`). Generated names are ``psm_`` and 16 hex digits.
"""

from __future__ import annotations

import atexit
import errno
import os
import secrets
from types import TracebackType
from typing import Any

from . import _errors, _handles, _tracker
from ._shmq import SegmentBuf

__all__ = ["SharedMemory"]

_keepers: dict[str, SegmentBuf] = {}
"""The blocks this process created and has not unlinked, by segment name: the hidden reference
that keeps a block alive after ``close()`` (see the module docs)."""

_exit_hook_pid: int | None = None
"""The process in which the multiprocessing exit hook was registered."""


def _release_keepers() -> None:
    """Lets go of every hidden reference of this process (at exit)."""
    _keepers.clear()


def _register_exit_hook() -> None:
    # atexit does not run in multiprocessing's children (they leave through os._exit), but
    # multiprocessing runs its finalizers there first: registering one releases the keepers of
    # a child that created blocks, so that its exit detaches them cleanly. The registry is
    # per process (a forked child starts with it cleared), hence the pid.
    global _exit_hook_pid
    if _exit_hook_pid == os.getpid():
        return
    from multiprocessing import util

    util.Finalize(None, _release_keepers, exitpriority=-100)
    _exit_hook_pid = os.getpid()


def _after_fork_in_child() -> None:
    # The inherited references are the parent's (inert here): the child created nothing.
    _keepers.clear()


atexit.register(_release_keepers)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _make_filename() -> str:
    return "psm_" + secrets.token_hex(8)


def _segment_name(name: str) -> str:
    # POSIX shm_open ignores leading slashes, and multiprocessing adds one: accept them.
    return name.lstrip("/")


def _not_found(name: str) -> _errors.NotFoundError:
    exc = _errors.NotFoundError(
        errno.ENOENT, f"no shmq shared memory block named {name!r} (it was unlinked)"
    )
    exc.segment = _segment_name(name)
    return exc


class SharedMemory:
    """Creates a new shared memory block or attaches to an existing one, by name.

    ``SharedMemory(name=None, create=False, size=0)`` as in :mod:`multiprocessing.shared_memory`:

    - ``create=True`` makes a new block of ``size`` zeroed bytes, named ``name`` (or a fresh
      ``psm_...`` name when ``name`` is None); ``FileExistsError`` if the name is taken.
      ``size`` must be positive (``ValueError``).
    - ``create=False`` attaches to the existing block ``name``; ``FileNotFoundError`` if there
      is none. ``size`` is ignored: :attr:`size` is the block's.

    :attr:`buf` is a writable ``memoryview`` of the block. The object pickles by name (as
    multiprocessing's), so it can be passed to children started with fork, spawn or forkserver,
    to ``Pool`` initializers and as task arguments; a copy inherited through fork keeps working
    in the child. Used as a context manager, it is closed on exit (not unlinked).

    See the module documentation for the lifetime rules and how shmq differs: no resource
    tracker, nothing left in ``/dev/shm`` when every user died, ``close()`` never invalidates a
    live view, and shmq and multiprocessing blocks cannot open each other by name.

    ``track`` exists for compatibility with Python 3.13's signature and has no effect: shmq
    has no resource tracker.
    """

    _core: SegmentBuf | None
    _buf: memoryview | None

    def __init__(
        self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True
    ) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        if create:
            if name is None:
                while True:
                    name = _make_filename()
                    try:
                        core = SegmentBuf.create(name, size)
                    except FileExistsError:
                        continue
                    break
            else:
                core = SegmentBuf.create(_segment_name(name), size)
            _keepers[core.name] = core
            _register_exit_hook()
            _tracker.register(core.name)
        else:
            assert name is not None
            core = SegmentBuf.open(_segment_name(name))
        _handles.track_segment(core)
        self._name = name
        self._core = core
        self._size = core.size
        self._buf = memoryview(core)
        self._unlinked = False
        self._pid = os.getpid()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._pid != os.getpid():
            self._adopt()
        if self._core is not None:
            _handles.keep_for_child(self._core)
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    def _shmq_handles(self) -> list[SegmentBuf]:
        return [] if self._core is None else [self._core]

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def buf(self) -> memoryview | None:
        """A writable memoryview of the block's contents (``None`` after :meth:`close`)."""
        if self._pid != os.getpid():
            self._adopt()
        return self._buf

    def _adopt(self) -> None:
        # First use in a child forked without exec: the handle is the parent's; make this
        # process a user of its own, so that the block stays while the child uses it (and can
        # be opened by name from here). If the block is gone already, the inherited mapping
        # still works.
        self._pid = os.getpid()
        if self._core is not None and not self._unlinked:
            self._core.reregister()

    @property
    def name(self) -> str:
        """The block's name, as given (or generated) at creation: what another process passes
        to ``SharedMemory(name)``."""
        return self._name

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    def close(self) -> None:
        """Closes this object's access to the block, without destroying the block.

        Views of :attr:`buf` made before (memoryviews, numpy arrays) stay valid: the mapping
        lives until the last of them goes. :attr:`buf` is ``None`` afterwards. Closing twice
        does nothing.
        """
        core = self._core
        self._buf = None
        self._core = None
        if core is None:
            return
        segment = core.name
        keeper = _keepers.get(segment)
        # The creator's hidden reference stays until unlink(); but if another process unlinked
        # the block meanwhile, nobody can open it any more, and holding it would only keep the
        # memory until this process exits.
        if keeper is not None and not keeper.name_is_ours():
            if _keepers.get(segment) is keeper:
                del _keepers[segment]

    def unlink(self) -> None:
        """Destroys the block's name: no process can attach to it any more, and the memory is
        freed once every process that has it open has closed it (or died).

        Call it once, in any one process, as with multiprocessing. A second call (in any
        process) raises ``FileNotFoundError``.
        """
        segment = _segment_name(self._name)
        if self._unlinked:
            raise _not_found(self._name)
        core = self._core
        if core is not None and not core.name_is_ours():
            # Unlinked elsewhere, perhaps created anew under the same name by someone else:
            # that one is not ours to remove.
            self._unlinked = True
            self._drop_keeper(segment)
            raise _not_found(self._name)
        try:
            SegmentBuf.remove(segment)
        except FileNotFoundError:
            self._unlinked = True
            self._drop_keeper(segment)
            raise
        self._unlinked = True
        self._drop_keeper(segment)

    def _drop_keeper(self, segment: str) -> None:
        # After a removal, the keeper of that name is the removed block (or an older one that
        # was unlinked already): either way, nothing to keep.
        keeper = _keepers.get(segment)
        if keeper is not None and (keeper is self._core or not keeper.name_is_ours()):
            del _keepers[segment]
