"""The channels this process holds: one :class:`~shmq._shmq.Channel` per name, and what happens
to them at fork and at exit.

- **Cache.** Unpickling a queue (a task argument of ``Pool.map``, say) looks its channel up by
  name here first, so the N-th unpickle in a worker opens nothing new: opening maps and
  prefaults the whole arena, which costs about 20 ms per 64 MiB. Entries are weak: a channel
  goes (and this process's handles with it) when no queue object uses it any more.
- **Fork.** A child forked without exec inherits the channels. Right after the fork each
  inherited sender registers as the child's own participant (``os.register_at_fork``), so that
  the channel lives on for the child even if the parent drops it before the child first uses
  it; the core registers anything else on first use.
- **Exit.** Processes started by multiprocessing end with ``os._exit``, which runs no
  destructor. A multiprocessing finalizer closes every channel of the process before that (and,
  in the main process, after multiprocessing has joined its children): the process detaches
  cleanly, and the last user of a channel unlinks it, so nothing is left in ``/dev/shm``. A
  process killed outright is detached by the core instead (its participants read as dead and
  are reclaimed by the others).
"""

from __future__ import annotations

import itertools
import os
import secrets
import weakref
from multiprocessing import util as _mp_util

from ._shmq import Channel

__all__ = ["auto_name", "create", "lookup"]

_by_name: weakref.WeakValueDictionary[str, Channel] = weakref.WeakValueDictionary()
_live: weakref.WeakSet[Channel] = weakref.WeakSet()
_counter = itertools.count()


def auto_name(prefix: str) -> str:
    """A fresh channel name: ``<prefix>-<pid>-<n>-<random>``."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _remember(chan: Channel) -> Channel:
    _by_name[chan.name] = chan
    _live.add(chan)
    return chan


def create(name: str, capacity: int, arena_bytes: int) -> Channel:
    """Creates channel ``name`` (holding both its sides) and caches it."""
    return _remember(Channel.create(name, capacity, arena_bytes))


def lookup(name: str, incarnation: int | None) -> Channel:
    """This process's channel ``name``: the cached one if it is open and is that incarnation,
    else a new handle (which opens its sides on first use)."""
    chan = _by_name.get(name)
    if chan is not None and not chan.closed:
        known = chan.incarnation
        if incarnation is None or known is None or known == incarnation:
            return chan
    return _remember(Channel.open(name, incarnation))


def _close_all() -> None:
    for chan in list(_live):
        chan.close()


class _Anchor:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


_anchor = _Anchor()


def _install_exit_hook(_anchor: object = None) -> None:
    # Priority -100: after multiprocessing's own finalizers (a Queue's feeder join is -5) and,
    # in the main process, after it has joined the children (which may still use the
    # channels: closing them earlier could unlink a channel a child has not opened yet).
    _mp_util.Finalize(None, _close_all, exitpriority=-100)


def _after_fork_in_child() -> None:
    for chan in list(_live):
        if not chan.closed:
            chan._after_fork_in_child()


_install_exit_hook()
# A child started by multiprocessing clears the finalizers it inherited (or unpickled) and then
# runs these: put the exit hook back.
_mp_util.register_after_fork(_anchor, _install_exit_hook)
os.register_at_fork(after_in_child=_after_fork_in_child)
