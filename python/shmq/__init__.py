"""shmq: multiprocessing's Queue, Pipe, SharedMemory, Value and Array through shared memory.

Change one import, and large objects (numpy arrays above all) stop being pickled through a
pipe: they are written once into shared memory and received in place, with no copy. A process
killed at any moment never wedges the others, and nothing is left in ``/dev/shm`` once every
user is gone.

>>> import shmq, numpy as np
>>> q = shmq.Queue()
>>> q.put(np.arange(10))
>>> print(q.get().sum())
45

The names and signatures are those of :mod:`multiprocessing`; docs/guide.md in the repository
maps each of them, and says where shmq differs.
"""

from __future__ import annotations

from . import _shmq
from ._admin import GcEntry, ParticipantInfo, SegmentInfo, gc, list_segments
from ._errors import (
    AlreadyExistsError,
    CorruptedError,
    IncompatibleError,
    InUseError,
    InvalidArgumentError,
    InvalidNameError,
    LockTimeoutError,
    NotFoundError,
    NotReadyError,
    OutOfSpaceError,
    OwnerDiedError,
    PermissionDeniedError,
    ShmqError,
    ShmqOSError,
    TooManyParticipantsError,
)
from ._pickle import get_copy_threshold, set_copy_threshold
from .connection import Connection, Pipe
from .queues import JoinableQueue, Queue, SimpleQueue
from .shared_memory import SharedMemory
from .sharedctypes import Array, RawArray, RawValue, Value
from .synchronize import Lock, RLock

__version__ = "0.1.0"
"""The package's version (the Rust library's is ``shmq._shmq.LIBRARY_VERSION``)."""

__all__ = [
    "AlreadyExistsError",
    "Array",
    "Connection",
    "CorruptedError",
    "GcEntry",
    "InUseError",
    "IncompatibleError",
    "InvalidArgumentError",
    "InvalidNameError",
    "JoinableQueue",
    "Lock",
    "LockTimeoutError",
    "NotFoundError",
    "NotReadyError",
    "OutOfSpaceError",
    "OwnerDiedError",
    "ParticipantInfo",
    "PermissionDeniedError",
    "Pipe",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "SegmentInfo",
    "SharedMemory",
    "ShmqError",
    "ShmqOSError",
    "SimpleQueue",
    "TooManyParticipantsError",
    "Value",
    "gc",
    "get_copy_threshold",
    "list_segments",
    "set_copy_threshold",
]

del _shmq
