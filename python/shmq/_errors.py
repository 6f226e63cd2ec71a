"""The exceptions shmq raises of its own.

Every class derives from :class:`ShmqError` and from the built-in exception that code written
for :mod:`multiprocessing` already catches: a missing segment is a :class:`FileNotFoundError`,
a lock wait that gave up is a :class:`TimeoutError`, and so on. Errors that multiprocessing
itself raises (``queue.Empty``, ``queue.Full``, ``EOFError``, ``ValueError`` for a closed
queue, :class:`multiprocessing.BufferTooShort`) are raised as they are, not wrapped.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "ShmqError",
    "ShmqOSError",
    "NotFoundError",
    "AlreadyExistsError",
    "InvalidNameError",
    "OutOfSpaceError",
    "IncompatibleError",
    "NotReadyError",
    "PermissionDeniedError",
    "InUseError",
    "TooManyParticipantsError",
    "CorruptedError",
    "OwnerDiedError",
    "InvalidArgumentError",
    "LockTimeoutError",
]


class ShmqError(Exception):
    """Base class of shmq's own exceptions.

    ``segment`` is the name of the segment concerned (without the ``shmq.`` prefix of its file
    in ``/dev/shm``), or ``None``.
    """

    segment: str | None = None


class ShmqOSError(ShmqError, OSError):
    """A system call failed (``errno`` says which error)."""


class NotFoundError(ShmqError, FileNotFoundError):
    """No segment of that name exists (it was never created, or it is gone)."""

    default_errno = _errno.ENOENT


class AlreadyExistsError(ShmqError, FileExistsError):
    """A segment of that name exists already."""

    default_errno = _errno.EEXIST


class InvalidNameError(ShmqError, ValueError):
    """The name cannot be a segment name (empty, too long, or with a ``/``)."""


class OutOfSpaceError(ShmqError, OSError):
    """``/dev/shm`` (or memory) cannot hold a segment of the size asked for."""

    default_errno = _errno.ENOSPC


class IncompatibleError(ShmqError, ValueError):
    """The segment exists but holds something else (another kind, type or layout version)."""


class NotReadyError(ShmqError, OSError):
    """The segment was not initialised in time: its creator may have died while creating it."""


class PermissionDeniedError(ShmqError, PermissionError):
    """The segment belongs to another user, or is not a regular file."""

    default_errno = _errno.EACCES


class InUseError(ShmqError, OSError):
    """The segment was not removed, because live processes use it."""

    default_errno = _errno.EBUSY


class TooManyParticipantsError(ShmqError, OSError):
    """Every participant slot of the segment is held by a live handle."""

    default_errno = _errno.EUSERS


class CorruptedError(ShmqError, OSError):
    """The segment's contents do not validate."""


class OwnerDiedError(ShmqError, RuntimeError):
    """The process holding a lock died while holding it.

    The data that lock protects may be half-updated. The lock has been repaired and released:
    the next acquire succeeds. Exactly one locker sees this exception per death.
    """


class InvalidArgumentError(ShmqError, ValueError):
    """A size or count is out of the range the segment can have."""


class LockTimeoutError(ShmqError, TimeoutError):
    """A lock of the segment was not free in time: its holder is probably stopped.

    ``str(err)`` names the holder's process id when it is known.
    """

    default_errno = _errno.ETIMEDOUT


def _from_core(
    class_name: str, message: str, segment: str | None, errno: int | None
) -> ShmqError:
    """Builds the exception for an error of the Rust core (called from ``_shmq``)."""
    cls = globals().get(class_name, ShmqError)
    if not (isinstance(cls, type) and issubclass(cls, ShmqError)):
        cls = ShmqError
    if issubclass(cls, OSError):
        code = errno if errno is not None else getattr(cls, "default_errno", None)
        exc = cls(code, message) if code is not None else cls(message)
    else:
        exc = cls(message)
    exc.segment = segment
    return exc
