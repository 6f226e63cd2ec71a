"""The cleanup process: segments whose users were all SIGKILLed disappear by themselves, and a
segment a live process uses is never removed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import shmq
from conftest import shm_entries

CHILD = r"""
import signal, sys
import shmq
block = shmq.SharedMemory(sys.argv[1], create=True, size=1 << 16)
value = shmq.Value("i", 7)
print("ready", flush=True)
signal.pause()
"""


def _wait_gone(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.05)
    return not path.exists()


def test_segments_of_a_killed_process_tree_go_away(unique_name: str) -> None:
    # A separate Python process (its own tracker), killed with SIGKILL: nobody calls gc.
    before = shm_entries()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, unique_name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        path = Path(f"/dev/shm/shmq.{unique_name}")
        assert path.exists()
        created = shm_entries() - before
        assert len(created) >= 2  # the block and the value
    finally:
        child.kill()
        child.wait()
    for entry in created:
        assert _wait_gone(Path("/dev/shm") / entry, 10), f"{entry} was left behind"


def _hold(name: str, ready, stop) -> None:  # type: ignore[no-untyped-def]
    block = shmq.SharedMemory(name)
    ready.set()
    stop.wait(30)
    block.close()


def test_a_segment_in_use_is_never_removed(unique_name: str) -> None:
    # The creator is SIGKILLed while another process still uses the block: the tracker must
    # keep it until that process lets go.
    ctx = multiprocessing.get_context("spawn")
    creator = subprocess.Popen(
        [sys.executable, "-c", CHILD, unique_name], stdout=subprocess.PIPE, text=True
    )
    ready, stop = ctx.Event(), ctx.Event()
    user = None
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "ready"
        user = ctx.Process(target=_hold, args=(unique_name, ready, stop))
        user.start()
        assert ready.wait(30)
        creator.kill()
        creator.wait()
        time.sleep(2.5)  # a few of the tracker's rounds
        block = shmq.SharedMemory(unique_name)  # still there, and readable
        assert block.size >= 1 << 16
        block.close()
    finally:
        stop.set()
        if user is not None:
            user.join(30)
        if creator.poll() is None:
            creator.kill()
            creator.wait()
    assert _wait_gone(Path(f"/dev/shm/shmq.{unique_name}"), 10)


def _children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def test_one_tracker_per_process_tree_and_none_when_disabled(unique_name: str) -> None:
    for disabled in (False, True):
        env = dict(os.environ)
        env.pop("SHMQ_NO_TRACKER", None)
        if disabled:
            env["SHMQ_NO_TRACKER"] = "1"
        name = f"{unique_name}-{int(disabled)}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            # Two segments created, one cleanup process (or none when disabled).
            assert len(_children_of(child.pid)) == (0 if disabled else 1)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    # The disabled one's segments are only removed by gc (which never touches one in use).
    shmq.gc()
    for disabled in (False, True):
        assert _wait_gone(Path(f"/dev/shm/shmq.{unique_name}-{int(disabled)}"), 10)
