"""Shared fixtures of the Python tests: unique names, start methods, children to kill, and the
/dev/shm leak check (the whole run fails if it leaves a ``shmq.*`` file behind)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM = Path("/dev/shm")


def shm_entries() -> set[str]:
    """shmq's files in /dev/shm."""
    return {p.name for p in SHM.iterdir() if p.name.startswith("shmq.")}


_BEFORE: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _BEFORE.update(shm_entries())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Give segments of children that are still exiting a moment to go.
    deadline = time.monotonic() + 5
    while (left := shm_entries() - _BEFORE) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        print("\nerror: the Python tests left these shmq segments in /dev/shm:")
        for name in sorted(left):
            print(f"    /dev/shm/{name}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A segment name no other test (or concurrent run) uses."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    return f"pyt-{base}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """A multiprocessing context of each start method the package must work with."""
    return multiprocessing.get_context(request.param)


@pytest.fixture
def reaper() -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """A list to put started processes in: any still alive at the end of the test is killed
    and joined, so a failing test never leaves children behind."""
    procs: list[multiprocessing.process.BaseProcess] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


def sigkill(proc: multiprocessing.process.BaseProcess) -> None:
    """Kills a child with SIGKILL and waits for it."""
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
