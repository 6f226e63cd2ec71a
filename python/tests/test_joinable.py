"""JoinableQueue: multiprocessing's task counting, shared by every process, and a killed worker
that never wedges join()."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

import shmq


def _joinable(maxsize: int = 0) -> shmq.JoinableQueue:
    return shmq.JoinableQueue(maxsize, capacity_bytes=4 << 20)


def _worker(q: shmq.JoinableQueue, results: shmq.Queue) -> None:
    while True:
        item = q.get()
        if item is None:
            q.task_done()
            return
        results.put(item * 2)
        q.task_done()


def test_join_waits_for_workers_in_other_processes(ctx: Any) -> None:
    q, results = _joinable(), shmq.Queue(capacity_bytes=4 << 20)
    workers = [ctx.Process(target=_worker, args=(q, results)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for i in range(20):
            q.put(i)
        assert q.join(timeout=60) is True
        assert q.unfinished_tasks() == 0
        assert sorted(results.get(timeout=10) for _ in range(20)) == [2 * i for i in range(20)]
        for _ in workers:
            q.put(None)
        assert q.join(timeout=60)
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)


def test_task_done_too_many_times() -> None:
    q = _joinable()
    with pytest.raises(ValueError, match="task_done\\(\\) called too many times"):
        q.task_done()
    q.put(1)
    q.put(2)
    # Python counts puts, not gets: task_done may come before get, as in multiprocessing.
    q.task_done()
    assert q.get() == 1
    q.task_done()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    assert q.get() == 2
    assert q.join(timeout=0) is True


def test_join_timeout_and_re_evaluation() -> None:
    q = _joinable()
    assert q.join() is True  # nothing put: returns at once
    q.put("a")
    assert q.join(timeout=0.05) is False
    q.get()
    q.task_done()
    assert q.join(timeout=5) is True
    q.put("b")  # joins again after more puts
    assert q.join(timeout=0.05) is False
    assert q.unfinished_tasks() == 1


def _take_and_hold(q: shmq.JoinableQueue, ready: Any) -> None:
    q.get()
    ready.set()
    time.sleep(60)  # killed before task_done


def test_a_killed_worker_never_wedges_join(ctx: Any) -> None:
    q = _joinable()
    q.put("task")
    ready = ctx.Event()
    worker = ctx.Process(target=_take_and_hold, args=(q, ready))
    worker.start()
    try:
        assert ready.wait(30)
        assert q.join(timeout=0.2) is False  # the worker holds it, alive
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(10)
        # Its unfinished task counts as done once its slot is reclaimed (join rechecks).
        assert q.join(timeout=30) is True
        assert q.unfinished_tasks() == 0
        with pytest.raises(ValueError, match="too many times"):
            q.task_done()
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()


def _count_task_dones(q: shmq.JoinableQueue, n: int, counts: Any, index: int) -> None:
    ok = 0
    for _ in range(n):
        try:
            q.task_done()
            ok += 1
        except ValueError:
            pass
    counts[index] = ok


def test_racing_task_done_is_exact(ctx: Any) -> None:
    q = _joinable()
    for i in range(300):
        q.put(i)
    counts = ctx.Array("i", 2)
    racers = [ctx.Process(target=_count_task_dones, args=(q, 300, counts, i)) for i in range(2)]
    for r in racers:
        r.start()
    for r in racers:
        r.join(60)
    assert [r.exitcode for r in racers] == [0, 0]
    assert sum(counts[:]) == 300  # exactly one success per item put, across both processes
    assert q.join(timeout=0) is True


def test_join_is_interruptible_and_lets_threads_run() -> None:
    q = _joinable()
    q.put(1)
    ticks = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            q.join()
    finally:
        stop.set()
        ticker.join()
        timer.cancel()
    assert time.monotonic() - started < 5
    assert len(ticks) > 5  # the GIL was released while join waited


def test_closed_joinable_queue() -> None:
    q = _joinable()
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.task_done()
    with pytest.raises(ValueError, match="is closed"):
        q.join()


def test_pickles_with_its_count(ctx: Any) -> None:
    q = _joinable()
    q.put(5)
    p = ctx.Process(target=_finish_one, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert q.join(timeout=5) is True


def _finish_one(q: shmq.JoinableQueue) -> None:
    assert isinstance(q, shmq.JoinableQueue)
    assert q.get(timeout=10) == 5
    q.task_done()
