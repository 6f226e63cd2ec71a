"""The cleanup process: nothing is left in ``/dev/shm`` once every user of a segment is gone.

A segment is removed by the last of its users to close it. A process killed with SIGKILL
closes nothing, so when every user of a segment dies that way, the segment would stay until
someone runs :func:`shmq.gc`. multiprocessing solves this with a resource tracker that unlinks
each segment when its *creator* exits, which also destroys segments other processes are still
using. shmq's tracker asks the segment instead: it removes a segment only when no live process
is a participant of it (``shmq::remove(name, force=false)``, which decides under the
segment's own lock), so it can never take a segment from a process that uses it.

One tracker serves a process and the children it forks (they inherit the pipe to it); a child
started with spawn or forkserver starts its own when it creates something. Every segment the
package creates is registered with :func:`register`. The tracker checks its segments about
once a second and removes those whose users all died; once every process holding its pipe has
exited (the pipe reads end-of-file) it keeps checking until each of its segments is gone, then
exits. It runs in a session of its own, so Ctrl-C in the terminal does not stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

__all__ = ["register"]

POLL_SECONDS = 1.0
"""How often the tracker looks at its segments."""

_lock = threading.Lock()
_pipe: int | None = None


def _start() -> int:
    """Starts the tracker and returns the write end of its pipe."""
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-m", "shmq._tracker"],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    return write_end


def register(name: str) -> None:
    """Has the tracker remove segment `name` once no live process uses it.

    Best effort: a tracker that cannot be started leaves the segment to the last user's close
    and to :func:`shmq.gc`, as without it. Set ``SHMQ_NO_TRACKER=1`` to never start one.
    """
    global _pipe
    if os.environ.get("SHMQ_NO_TRACKER"):
        return
    line = (name + "\n").encode()
    with _lock:
        try:
            # A forked child shares its parent's tracker through the inherited pipe.
            if _pipe is None:
                _pipe = _start()
            os.write(_pipe, line)  # well under PIPE_BUF: one atomic write
        except OSError:
            # The tracker died (or could not start): start a new one, once.
            try:
                if _pipe is not None:
                    os.close(_pipe)
                _pipe = _start()
                os.write(_pipe, line)
            except OSError:
                _pipe = None


def _after_fork_in_child() -> None:
    # The child's copy of the pipe keeps the parent's tracker, which is what we want; only the
    # lock must be fresh (another thread of the parent may have held it at the fork).
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _serve() -> None:
    """The tracker process: reads names from stdin, removes each segment once unused."""
    import select

    from . import _shmq

    names: set[str] = set()
    pending = b""
    stdin_open = True
    os.set_blocking(0, False)
    next_check = time.monotonic() + POLL_SECONDS
    while stdin_open or names:
        timeout = max(0.0, next_check - time.monotonic())
        if stdin_open:
            select.select([0], [], [], timeout)
        else:
            time.sleep(timeout)
        # Take whatever registrations arrived, noting end-of-file.
        while stdin_open:
            try:
                chunk = os.read(0, 65536)
            except BlockingIOError:
                break
            if not chunk:
                stdin_open = False
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            names.update(line.decode() for line in lines if line)
        if time.monotonic() < next_check:
            continue
        for name in list(names):
            try:
                outcome = _shmq.remove_unused(name)
            except Exception:  # noqa: BLE001  (another user's file, a bad name: not ours to keep)
                outcome = "gone"
            if outcome != "in-use":
                names.discard(name)
        next_check = time.monotonic() + (POLL_SECONDS if stdin_open else POLL_SECONDS / 4)


if __name__ == "__main__":
    _serve()
