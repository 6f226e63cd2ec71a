"""shmq.SharedMemory: multiprocessing.shared_memory's semantics, minus its traps (a resource
tracker that unlinks what others use, leftovers in /dev/shm, close() breaking live views)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import time

import numpy as np
import pytest

import shmq
from conftest import shm_entries, sigkill
from shmq.shared_memory import SharedMemory


def _file(name: str) -> str:
    return f"shmq.{name}"


def _participant_pids(name: str) -> set[int]:
    for info in shmq.list_segments():
        if info.name == name:
            return {p.pid for p in info.participants if p.alive}
    return set()


@pytest.fixture
def block(unique_name: str):
    """A 4096-byte block, unlinked at the end whatever happens."""
    shm = SharedMemory(unique_name, create=True, size=4096)
    yield shm
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


# --- in one process ------------------------------------------------------------------------


def test_create_open_write_read(unique_name: str) -> None:
    shm = SharedMemory(unique_name, create=True, size=100)
    try:
        assert shm.name == unique_name
        assert shm.size == 100
        assert len(shm.buf) == 100
        assert shm.buf.format == "B" and not shm.buf.readonly
        assert bytes(shm.buf[:4]) == b"\0\0\0\0"  # zeroed
        shm.buf[:5] = b"hello"
        other = SharedMemory(unique_name, size=1)  # size is ignored when opening
        assert other.size == 100
        assert bytes(other.buf[:5]) == b"hello"
        other.buf[99] = 7
        assert shm.buf[99] == 7
        assert repr(other) == f"SharedMemory({unique_name!r}, size=100)"
        other.close()
        assert other.buf is None
        other.close()  # twice is fine
    finally:
        shm.close()
        shm.unlink()
    assert _file(unique_name) not in shm_entries()


def test_generated_name() -> None:
    shm = SharedMemory(create=True, size=10)
    try:
        assert shm.name.startswith("psm_")
        assert _file(shm.name) in shm_entries()
        again = SharedMemory(shm.name)
        assert again.size == 10
        again.close()
    finally:
        shm.close()
        shm.unlink()


def test_leading_slash_is_accepted(unique_name: str) -> None:
    shm = SharedMemory("/" + unique_name, create=True, size=10)
    try:
        assert shm.name == "/" + unique_name  # reported as given, as multiprocessing does
        assert _file(unique_name) in shm_entries()
        other = SharedMemory(unique_name)
        other.close()
        other = SharedMemory("/" + unique_name)
        other.close()
    finally:
        shm.close()
        shm.unlink()


def test_argument_errors(unique_name: str) -> None:
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        SharedMemory(unique_name, create=True, size=-1)
    with pytest.raises(ValueError, match="'size' must be a positive number different from zero"):
        SharedMemory(unique_name, create=True, size=0)
    with pytest.raises(ValueError, match="'name' can only be None if create=True"):
        SharedMemory()
    with pytest.raises(ValueError):
        SharedMemory("no/slash/inside", create=True, size=10)
    assert _file(unique_name) not in shm_entries()


def test_exists_and_not_found(unique_name: str, block: SharedMemory) -> None:
    with pytest.raises(FileExistsError):
        SharedMemory(unique_name, create=True, size=10)
    with pytest.raises(FileNotFoundError):
        SharedMemory(unique_name + "-missing")


def test_unlink_twice_and_open_after_unlink(unique_name: str) -> None:
    shm = SharedMemory(unique_name, create=True, size=10)
    other = SharedMemory(unique_name)
    third = SharedMemory(unique_name)
    shm.unlink()
    with pytest.raises(FileNotFoundError):
        SharedMemory(unique_name)
    with pytest.raises(FileNotFoundError):
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        other.unlink()  # another object, same block: unlinked already
    # The objects that have it open keep using it.
    shm.buf[0] = 9
    assert other.buf[0] == 9
    # And the name can be created anew meanwhile.
    fresh = SharedMemory(unique_name, create=True, size=20)
    assert fresh.buf[0] == 0
    with pytest.raises(FileNotFoundError):
        third.unlink()  # its block is unlinked: it must not remove the new one of that name
    probe = SharedMemory(unique_name)
    assert probe.size == 20
    probe.close()
    fresh.close()
    fresh.unlink()
    for obj in (shm, other, third):
        obj.close()
    del shm, other, third
    gc.collect()
    assert not any(e.startswith(_file(unique_name)) for e in shm_entries())


def test_context_manager_closes(unique_name: str) -> None:
    with SharedMemory(unique_name, create=True, size=10) as shm:
        shm.buf[0] = 1
    assert shm.buf is None
    # Closed, not unlinked: the creator keeps the block until unlink().
    again = SharedMemory(unique_name)
    assert again.buf[0] == 1
    again.close()
    again.unlink()


def test_close_keeps_live_views_valid(unique_name: str) -> None:
    shm = SharedMemory(unique_name, create=True, size=1 << 20)
    array = np.frombuffer(shm.buf, dtype=np.float64)
    view = shm.buf
    part = shm.buf[8:16]
    shm.close()  # multiprocessing raises BufferError here (an export exists)
    shm.unlink()
    del shm
    gc.collect()
    # The mapping lives as long as the views: no crash, and the memory is still shared.
    array[:] = 1.5
    assert array.sum() == 1.5 * (1 << 17)
    assert view[8:16] == part
    view[0] = 3
    assert array.view(np.uint8)[0] == 3
    # The segment itself stays (under a tombstone) until the last view goes.
    assert any(e.startswith(_file(unique_name)) for e in shm_entries())
    del array, view, part
    gc.collect()
    assert not any(e.startswith(_file(unique_name)) for e in shm_entries())


def test_creator_keeps_the_block_after_close_until_unlink(unique_name: str) -> None:
    shm = SharedMemory(unique_name, create=True, size=10)
    shm.buf[0] = 42
    shm.close()
    del shm
    gc.collect()
    # Nobody has it open, but the creator's hidden participant keeps it (as multiprocessing's
    # block outlives close() until unlink()).
    assert _file(unique_name) in shm_entries()
    assert os.getpid() in _participant_pids(unique_name)
    again = SharedMemory(unique_name)
    assert again.buf[0] == 42
    again.unlink()  # any object may unlink; that releases the creator's hold too
    again.close()
    del again
    gc.collect()
    assert _file(unique_name) not in shm_entries()


def test_close_after_someone_else_unlinked_lets_go(unique_name: str) -> None:
    shm = SharedMemory(unique_name, create=True, size=10)
    other = SharedMemory(unique_name)
    other.unlink()
    other.close()
    assert any(e.startswith(_file(unique_name)) for e in shm_entries())
    shm.close()  # the creator notices the block was unlinked and drops its hidden hold
    del shm, other
    gc.collect()
    assert not any(e.startswith(_file(unique_name)) for e in shm_entries())


def test_pickle_by_name(block: SharedMemory) -> None:
    copy = pickle.loads(pickle.dumps(block))
    assert copy.name == block.name and copy.size == block.size
    copy.buf[1] = 5
    assert block.buf[1] == 5
    copy.close()


# --- across processes ----------------------------------------------------------------------


def _write_through(shm: SharedMemory, offset: int, value: int) -> None:
    shm.buf[offset] = value
    shm.close()


def test_passes_to_children(ctx: multiprocessing.context.BaseContext, block: SharedMemory) -> None:
    p = ctx.Process(target=_write_through, args=(block, 10, 77))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert block.buf[10] == 77


def _write_in_pool(shm: SharedMemory, value: int) -> int:
    shm.buf[value] = value
    return shm.size


def test_pool_task_argument(ctx: multiprocessing.context.BaseContext, block: SharedMemory) -> None:
    with ctx.Pool(2) as pool:
        sizes = pool.starmap(_write_in_pool, [(block, i) for i in range(1, 5)])
    assert sizes == [4096] * 4
    assert list(block.buf[1:5]) == [1, 2, 3, 4]


_inherited: SharedMemory | None = None


def _use_inherited(ready, done) -> None:
    assert _inherited is not None
    _inherited.buf[0] = 123
    ready.set()
    done.wait(30)


def test_fork_inherited_object_works_and_registers(block: SharedMemory, reaper: list) -> None:
    global _inherited
    ctx = multiprocessing.get_context("fork")
    _inherited = block
    ready, done = ctx.Event(), ctx.Event()
    try:
        p = ctx.Process(target=_use_inherited, args=(ready, done))
        p.start()
        reaper.append(p)
        assert ready.wait(30)
        assert block.buf[0] == 123
        # The child counts as a user of its own: the parent's death would not take the
        # block from it.
        assert p.pid in _participant_pids(block.name)
        done.set()
        p.join(30)
        assert p.exitcode == 0
    finally:
        _inherited = None


def _open_and_hold(name: str, ready, done, result) -> None:
    shm = SharedMemory(name)
    ready.set()
    done.wait(30)
    shm.buf[1] = 99  # still writable after the parent unlinked it
    result.put(bytes(shm.buf[:2]))
    shm.close()


def test_unlink_while_another_process_uses_it(
    ctx: multiprocessing.context.BaseContext, unique_name: str, reaper: list
) -> None:
    shm = SharedMemory(unique_name, create=True, size=10)
    shm.buf[0] = 1
    ready, done, result = ctx.Event(), ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_open_and_hold, args=(unique_name, ready, done, result))
    p.start()
    reaper.append(p)
    try:
        assert ready.wait(60)
        shm.close()
        shm.unlink()
        with pytest.raises(FileNotFoundError):
            SharedMemory(unique_name)
        done.set()
        assert result.get(timeout=30) == b"\x01\x63"
        p.join(30)
        assert p.exitcode == 0
    finally:
        done.set()
    # The child was the last user: it removed the block on its way out (under fork too, where
    # it also registered for the parent's object it inherited).
    assert not any(e.startswith(_file(unique_name)) for e in shm_entries())


def _create_then_exit(name: str, opened) -> None:
    shm = SharedMemory(name, create=True, size=10)
    shm.buf[0] = 5
    opened.wait(30)  # the parent has it open: now the creator may go, without unlink()


def test_block_survives_its_creators_exit_while_used(
    ctx: multiprocessing.context.BaseContext, unique_name: str, reaper: list
) -> None:
    # multiprocessing's resource tracker unlinks a block when its creator's program ends, even
    # if another program uses it; shmq keeps it while anybody has it open.
    opened = ctx.Event()
    p = ctx.Process(target=_create_then_exit, args=(unique_name, opened))
    p.start()
    reaper.append(p)
    deadline = time.monotonic() + 60
    while True:
        try:
            shm = SharedMemory(unique_name)
            break
        except FileNotFoundError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    opened.set()
    p.join(30)
    assert p.exitcode == 0
    assert shm.buf[0] == 5
    again = SharedMemory(unique_name)  # still openable by name
    again.close()
    shm.unlink()
    shm.close()


def _create_and_wait(name: str, ready) -> None:
    SharedMemory(name, create=True, size=1 << 16).buf[0] = 1
    ready.set()
    signal.pause()


def _open_and_wait(name: str, ready) -> None:
    shm = SharedMemory(name)
    assert shm.buf[0] == 1
    ready.set()
    signal.pause()


def test_sigkill_of_every_user_leaves_nothing(
    ctx: multiprocessing.context.BaseContext, unique_name: str, reaper: list
) -> None:
    ready = [ctx.Event() for _ in range(3)]
    creator = ctx.Process(target=_create_and_wait, args=(unique_name, ready[0]))
    creator.start()
    reaper.append(creator)
    assert ready[0].wait(60)
    users = [ctx.Process(target=_open_and_wait, args=(unique_name, r)) for r in ready[1:]]
    for u in users:
        u.start()
        reaper.append(u)
    for r in ready[1:]:
        assert r.wait(60)
    assert len(_participant_pids(unique_name)) == 3
    kept = {e.name: e for e in shmq.gc()}
    assert kept[unique_name].removed is False  # in use: gc never touches it
    for proc in [creator, *users]:
        sigkill(proc)
    # Nobody was left to unlink it: the cleanup process sees that every user died and removes
    # it within about a second, with no gc() call.
    deadline = time.monotonic() + 15
    while _file(unique_name) in shm_entries() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _file(unique_name) not in shm_entries()
