"""Per-process bookkeeping of the shared objects of :mod:`shmq.shared_memory`,
:mod:`shmq.sharedctypes` and :mod:`shmq.synchronize`.

- **One handle per name.** Unpickling a ``Value``, ``Array`` or lock whose segment this process
  has open already returns the open handle (:func:`open_shared`), so the N-th task argument
  costs nothing and a lock's recursion count (kept per handle) is the same whichever copy of
  the object re-enters it.
- **Fork.** In a child forked without exec, the locks the forking thread held are forgotten:
  they are the parent's. An inherited ``Value``, ``Array`` or lock makes the child a participant
  of its segment at its first lock (the core does that); an inherited ``SharedMemory`` at the
  child's first use of its ``buf`` attribute (``SharedMemory`` does that). Handles the child
  never uses stay the parent's: a child does not keep alive what it does not use, and its
  death (multiprocessing's children leave through ``os._exit``, which drops nothing) leaves
  nothing behind for them. A child that is a segment's last user is another matter: on its way
  out (multiprocessing's exit handlers, or ``atexit``) it lets go of the participants it made for
  inherited ``SharedMemory`` objects, so that it removes the block; an inherited ``Value``,
  ``Array`` or lock cannot be let go separately from its mapping, so if a forked child used one
  last and exited, :func:`shmq.gc` removes it.
- **A child being started keeps its arguments alive.** ``Process.start()`` drops the process's
  arguments at once: if they held the last reference to a segment, it could vanish before the
  child opens it (spawn, forkserver) or registers in it (fork). So the handles among the
  arguments are kept alive as long as the child's ``Process`` object: for spawn and forkserver
  when they are pickled (:func:`keep_for_child`, called by their ``__reduce__``), for fork by
  a hook that finds the ``Process`` that multiprocessing is forking for (:func:`_before_fork`).
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import weakref
from multiprocessing import util
from multiprocessing.context import get_spawning_popen
from typing import Any

from . import _errors, _tracker
from ._shmq import SegmentBuf, SharedBuf, forget_held_locks

__all__ = ["new_name", "create_shared", "open_shared", "track_segment", "keep_for_child"]

_shared: weakref.WeakValueDictionary[str, SharedBuf] = weakref.WeakValueDictionary()
"""The live storage and lock handles of this process, by segment name."""

_segments: weakref.WeakSet[SegmentBuf] = weakref.WeakSet()
"""The live ``SharedMemory`` handles of this process."""


def new_name(prefix: str) -> str:
    """A fresh segment name: ``prefix`` and 16 random hex digits."""
    return f"{prefix}_{secrets.token_hex(8)}"


def create_shared(prefix: str, nbytes: int, tag: str) -> SharedBuf:
    """Creates a storage or lock segment of ``nbytes`` zeroed bytes under a fresh name."""
    while True:
        name = new_name(prefix)
        try:
            core = SharedBuf.create(name, nbytes, tag)
        except FileExistsError:
            continue
        _shared[name] = core
        _tracker.register(name)
        return core


def open_shared(name: str, tag: str) -> SharedBuf:
    """The handle on segment ``name`` (created under ``tag``): this process's open one, else a
    newly opened one. ``FileNotFoundError`` if it is gone, ``IncompatibleError`` if it holds
    something else."""
    core = _shared.get(name)
    if core is None:
        core = SharedBuf.open(name, tag)
        core = _shared.setdefault(name, core)
    if core.tag != tag:
        exc = _errors.IncompatibleError(
            f"shmq segment {name!r} holds {core.tag!r}, not {tag!r}"
        )
        exc.segment = name
        raise exc
    return core


def track_segment(core: SegmentBuf) -> None:
    """Registers a ``SharedMemory`` handle for re-registration after a fork."""
    _segments.add(core)


def keep_for_child(handle: Any) -> None:
    """Keeps ``handle`` alive as long as the child process being started, if this is called
    while pickling for a spawn or forkserver start (from a ``__reduce__``)."""
    popen = get_spawning_popen()
    if popen is not None:
        _keep_with_popen(popen, [handle])


_kept_for_children: dict[int, int] = {}
"""How many children's Popens keep each handle, by ``id``: a kept handle is alive, so its id is
not reused while counted. Every count a Popen adds it takes back once its child is seen to
exit, or when the Popen itself goes (a ``Process`` dropped without a join)."""


def kept_for_child(handle: Any) -> bool:
    """Whether a child being started, or running, keeps ``handle`` alive: closing it in this
    process must then only let go of it, not detach it, or the segment may vanish before the
    child registers its inherited copy."""
    return id(handle) in _kept_for_children


def _uncount_kept(ids: list[int]) -> None:
    """Takes back the counts of ``ids`` (once: the list is emptied)."""
    for key in ids:
        count = _kept_for_children.get(key, 0) - 1
        if count > 0:
            _kept_for_children[key] = count
        else:
            _kept_for_children.pop(key, None)
    ids.clear()


def _keep_with_popen(popen: Any, handles: list[Any]) -> None:
    """Keeps ``handles`` alive until the child of ``popen`` (a multiprocessing Popen) is known
    to have ended, or the Popen (that is, its ``Process``) is gone."""
    try:
        state = popen.__dict__
    except AttributeError:  # not a Popen as multiprocessing makes them: nothing to hang it on
        return
    kept = state.get("_shmq_kept")
    if kept is None:
        kept = state["_shmq_kept"] = []
        ids: list[int] = []
        state["_shmq_kept_ids"] = ids
        # The ids only (the handles would outlive the Popen in the finalizer's arguments).
        weakref.finalize(popen, _uncount_kept, ids)
        original_poll = getattr(popen, "poll", None)
        if original_poll is not None:
            # Process.join(), .exitcode and .is_alive() all ask the Popen's poll(): once it
            # reports an exit code, the child needs nothing any more.
            def poll(*args: Any, **kwargs: Any) -> Any:
                code = original_poll(*args, **kwargs)
                if code is not None and kept:
                    _uncount_kept(ids)
                    kept.clear()
                return code

            popen.poll = poll
    kept.extend(handles)
    ids = state["_shmq_kept_ids"]
    for handle in handles:
        ids.append(id(handle))
        _kept_for_children[id(handle)] = _kept_for_children.get(id(handle), 0) + 1


def _handles_in(obj: Any, depth: int = 2) -> list[Any]:
    """The shmq handles of ``obj`` (a shmq object with a ``_shmq_handles()`` method) or of the
    items of a list, tuple, set or dict, ``depth`` levels down."""
    getter = getattr(type(obj), "_shmq_handles", None)
    if getter is not None:
        try:
            return list(getter(obj))
        except Exception:
            return []
    if depth == 0 or isinstance(obj, (str, bytes, bytearray, memoryview)):
        return []
    if isinstance(obj, dict):
        items: Any = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    else:
        return []
    found = []
    for item in items:
        found.extend(_handles_in(item, depth - 1))
    return found


def _before_fork() -> None:
    # Called by os.fork (a C function, so the caller's frame is the one that called it). When
    # that is multiprocessing's Popen._launch(self, process_obj), keep the shmq handles among
    # the process's arguments alive with the Popen, as keep_for_child does for spawn.
    try:
        frame = sys._getframe(1)
    except ValueError:
        return
    if frame.f_code.co_name != "_launch":
        return
    popen, process_obj = frame.f_locals.get("self"), frame.f_locals.get("process_obj")
    if popen is None or process_obj is None:
        return
    found = _handles_in(getattr(process_obj, "_args", ())) + _handles_in(
        getattr(process_obj, "_kwargs", {})
    )
    if found:
        _keep_with_popen(popen, found)


def _release_at_exit() -> None:
    for segment in list(_segments):
        try:
            segment.unregister()
        except Exception:  # exiting: nothing better to do
            pass


class _Anchor:
    """What ``util.register_after_fork`` needs: an object it can hold weakly."""


_anchor = _Anchor()


def _at_multiprocessing_child_start(_: _Anchor) -> None:
    # Runs in a child multiprocessing started with fork, after it cleared the finalizers it
    # inherited: register the exit hook there (multiprocessing's children skip atexit).
    util.Finalize(None, _release_at_exit, exitpriority=-100)


util.register_after_fork(_anchor, _at_multiprocessing_child_start)
atexit.register(_release_at_exit)


def _after_fork_in_child() -> None:
    forget_held_locks()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
