"""Queue handles travel by name: Process arguments under fork, spawn and forkserver, Pool
initargs, Pool task arguments (which multiprocessing.Queue refuses), handles inherited through
fork; the per-process cache; the identity of a name."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from typing import Any

import numpy as np
import pytest

import shmq
from _queue_helpers import MiB, mappings_of, make_queue  # noqa: F401  (a fixture)


def _square_into(tasks: shmq.Queue, results: shmq.Queue) -> None:
    while (item := tasks.get(timeout=60)) is not None:
        results.put((item, item * item))


def test_process_arguments(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    tasks, results = make_queue(), make_queue()
    workers = [ctx.Process(target=_square_into, args=(tasks, results)) for _ in range(2)]
    for w in workers:
        reaper.append(w)
        w.start()
    for i in range(20):
        tasks.put(i)
    for _ in workers:
        tasks.put(None)
    assert sorted(results.get(timeout=60) for _ in range(20)) == [(i, i * i) for i in range(20)]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0


def test_forkserver(reaper: list, make_queue: Any) -> None:
    ctx = multiprocessing.get_context("forkserver")
    tasks, results = make_queue(), make_queue()
    worker = ctx.Process(target=_square_into, args=(tasks, results))
    reaper.append(worker)
    worker.start()
    tasks.put(7)
    tasks.put(None)
    assert results.get(timeout=60) == (7, 49)
    worker.join(30)
    assert worker.exitcode == 0


_worker_queue: shmq.Queue | None = None


def _init_worker(q: shmq.Queue) -> None:
    global _worker_queue
    _worker_queue = q


def _report(i: int) -> int:
    assert _worker_queue is not None
    _worker_queue.put((os.getpid(), i))
    return i


def test_pool_initargs(ctx: multiprocessing.context.BaseContext, make_queue: Any) -> None:
    q = make_queue()
    with ctx.Pool(2, initializer=_init_worker, initargs=(q,)) as pool:
        assert pool.map(_report, range(10)) == list(range(10))
        got = [q.get(timeout=60) for _ in range(10)]
    assert sorted(i for _, i in got) == list(range(10))


def _put_from_task(q: shmq.Queue, i: int) -> int:
    q.put(i * 10)
    return os.getpid()


def _sides_after_two_unpickles(q: shmq.Queue, data: bytes) -> tuple[bool, int, int, bool]:
    """In a worker: unpickle the same queue again; what it opened."""
    q.put("used")  # the first handle's channel is open and used now
    before = len(mappings_of(q.name))
    again = pickle.loads(data)
    again.put("again")
    after = len(mappings_of(q.name))
    return again._chan is q._chan, before, after, again._chan._open_sides() == q._chan._open_sides()


def test_pool_task_arguments(ctx: multiprocessing.context.BaseContext, make_queue: Any) -> None:
    q = make_queue()
    with ctx.Pool(2) as pool:
        pids = pool.starmap(_put_from_task, [(q, i) for i in range(8)])
        assert pool.apply_async(_put_from_task, (q, 8)).get(60) in pids or len(set(pids)) < 2
        assert sorted(q.get(timeout=60) for _ in range(9)) == [i * 10 for i in range(9)]
        same, before, after, same_sides = pool.apply(_sides_after_two_unpickles, (q, pickle.dumps(q)))
        assert same and same_sides
        assert before >= 1 and after == before  # the N-th unpickle opened nothing new
        assert sorted([q.get(timeout=60), q.get(timeout=60)]) == ["again", "used"]
    # multiprocessing's own queue refuses this very thing.
    mp_queue = ctx.Queue()
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(mp_queue)
    mp_queue.close()


_inherited: shmq.Queue | None = None


def _use_inherited(results: shmq.Queue) -> None:
    assert _inherited is not None
    _inherited.put(("from the child", os.getpid()))
    results.put(_inherited.get(timeout=60))


def test_handle_inherited_through_fork(reaper: list, make_queue: Any) -> None:
    global _inherited
    ctx = multiprocessing.get_context("fork")
    _inherited = make_queue()
    results = make_queue()
    try:
        _inherited.put("for the child")
        child = ctx.Process(target=_use_inherited, args=(results,))  # not an argument: inherited
        reaper.append(child)
        child.start()
        assert results.get(timeout=60) == "for the child"
        message, pid = _inherited.get(timeout=60)
        assert message == "from the child" and pid == child.pid
        child.join(30)
        assert child.exitcode == 0
    finally:
        _inherited = None


def test_handle_inherited_through_os_fork(make_queue: Any) -> None:
    q = make_queue()
    q.put(np.arange(200_000))
    pid = os.fork()
    if pid == 0:  # the child: uses the queue it inherited, then exits at once
        code = 1
        try:
            array = q.get(timeout=30)
            q.put(int(array.sum()))
            del array
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert q.get(timeout=10) == sum(range(200_000))


def _child_of_a_dropped_parent(q: shmq.Queue, results: shmq.Queue, go: Any) -> None:
    assert go.wait(60)  # the queue is not touched before the parent has dropped it
    q.put("still here")
    results.put(q.get(timeout=30))


def _live_pids(name: str) -> set[int]:
    for info in shmq.list_segments():
        if info.name == name:
            return {p.pid for p in info.participants if p.alive}
    return set()


def test_fork_child_registers_at_once_and_keeps_the_queue(reaper: list, make_queue: Any) -> None:
    # Right after the fork, the child registers its inherited sender as its own participant,
    # before its first use of the queue: the queue then lives on for the child even if the
    # parent drops its only handle before the child has touched it.
    ctx = multiprocessing.get_context("fork")
    results = make_queue()
    q = make_queue()
    go = ctx.Event()
    child = ctx.Process(target=_child_of_a_dropped_parent, args=(q, results, go))
    reaper.append(child)
    child.start()
    deadline = time.monotonic() + 30
    while child.pid not in _live_pids(q.name):
        assert time.monotonic() < deadline, "the child never registered"
        time.sleep(0.01)
    chan = q._chan
    q.close()
    chan.close()  # the parent's last handle on the queue
    del chan
    assert os.getpid() not in _live_pids(q.name)
    go.set()
    assert results.get(timeout=60) == "still here"
    child.join(30)
    assert child.exitcode == 0


def test_cache_gives_one_channel_per_name(make_queue: Any) -> None:
    q = make_queue()
    data = pickle.dumps(q)
    first, second = pickle.loads(data), pickle.loads(data)
    assert first._chan is q._chan and second._chan is q._chan
    first.close()
    second.put(1)  # another handle's close does not close this one
    assert q.get() == 1
    assert pickle.loads(data).maxsize == 0
    bounded = make_queue(5)
    assert pickle.loads(pickle.dumps(bounded)).maxsize == 5


def test_a_name_taken_by_a_new_queue_is_not_the_old_one(unique_name: str, make_queue: Any) -> None:
    old = make_queue(name=unique_name)
    data = pickle.dumps(old)
    old.close()  # the only user: the segment goes
    assert not os.path.exists(f"/dev/shm/shmq.{unique_name}")
    with pytest.raises(shmq.NotFoundError):
        pickle.loads(data).put(1)
    new = make_queue(name=unique_name)
    new.put("new")
    stale = pickle.loads(data)
    with pytest.raises(shmq.NotFoundError):
        stale.get(timeout=1)
    assert new.get() == "new"


def _last_user(q: shmq.Queue, opened: Any, go: Any) -> None:
    q.put("opened")
    opened.set()
    assert go.wait(60)
    assert q.get(timeout=10) == "opened"
    # Returns with the queue still referenced: multiprocessing ends the child with os._exit,
    # and shmq's exit hook detaches it first.


def test_last_user_exiting_removes_the_queue(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue()
    name = q.name
    opened, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_last_user, args=(q, opened, go))
    reaper.append(child)
    child.start()
    assert opened.wait(60)
    chan = q._chan
    q.close()
    chan.close()
    del chan
    assert os.path.exists(f"/dev/shm/shmq.{name}")  # the child holds it
    go.set()
    child.join(30)
    assert child.exitcode == 0
    assert not os.path.exists(f"/dev/shm/shmq.{name}"), "the last user left the queue behind"
