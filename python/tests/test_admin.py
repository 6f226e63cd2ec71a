"""gc() and list_segments() against segments of live and of SIGKILLed processes."""

from __future__ import annotations

import multiprocessing
import os
import signal

import shmq
from conftest import shm_entries


def _hold_segment(name: str, ready) -> None:
    from shmq.shared_memory import SharedMemory

    # Not registered with the cleanup process: gc is what must remove it here.
    os.environ["SHMQ_NO_TRACKER"] = "1"
    block = SharedMemory(name, create=True, size=4096)
    block.buf[0] = 1
    ready.set()
    signal.pause()


def test_gc_removes_what_a_killed_process_left(unique_name: str) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_segment, args=(unique_name, ready))
    child.start()
    try:
        assert ready.wait(30)
        infos = {info.name: info for info in shmq.list_segments()}
        info = infos[unique_name]
        assert info.state == "ready"
        assert info.kind == "raw"
        assert info.alive >= 1
        assert any(p.pid == child.pid for p in info.participants)
        # Alive: gc keeps it.
        kept = {e.name: e for e in shmq.gc()}
        assert kept[unique_name].removed is False
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    removed = {e.name: e for e in shmq.gc()}
    assert removed[unique_name].removed is True
    assert removed[unique_name].reason
    assert f"shmq.{unique_name}" not in shm_entries()


def test_errors_derive_from_builtins() -> None:
    assert issubclass(shmq.NotFoundError, FileNotFoundError)
    assert issubclass(shmq.AlreadyExistsError, FileExistsError)
    assert issubclass(shmq.LockTimeoutError, TimeoutError)
    assert issubclass(shmq.OwnerDiedError, shmq.ShmqError)


def test_list_segments_shows_shared_objects(unique_name: str) -> None:
    block = shmq.SharedMemory(unique_name, create=True, size=10000)
    value = shmq.Value("d", 1.0)
    lock = shmq.Lock()
    try:
        infos = {info.name: info for info in shmq.list_segments()}
        raw = infos[unique_name]
        assert raw.kind == "raw" and raw.state == "ready"
        assert raw.file_bytes >= 10000
        assert [p.pid for p in raw.participants] == [os.getpid()]
        storage = infos[value.get_lock().name]
        assert storage.kind == "array"
        assert storage.creator_pid == os.getpid()
        assert infos[lock.name].kind == "array"
    finally:
        block.close()
        block.unlink()
    assert f"shmq.{unique_name}" not in shm_entries()
