"""shmq.SimpleQueue: multiprocessing.SimpleQueue's four methods, and its errors after close."""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest

import shmq
from _queue_helpers import make_queue  # noqa: F401  (a fixture)


def test_put_get_empty(make_queue: Any) -> None:
    q = make_queue(cls=shmq.SimpleQueue)
    assert q.empty()
    q.put(1)
    q.put(("two", np.arange(100_000)))
    assert not q.empty()
    assert q.get() == 1
    two, array = q.get()
    assert two == "two" and array.sum() == sum(range(100_000))
    assert q.empty()
    q.put(np.arange(100_000))
    copied = q.get(copy=True)
    assert copied.flags.writeable and copied.sum() == sum(range(100_000))


def test_after_close_everything_is_oserror_as_in_multiprocessing(make_queue: Any) -> None:
    mp_queue = multiprocessing.get_context("fork").SimpleQueue()
    mp_queue.close()
    q = make_queue(cls=shmq.SimpleQueue)
    q.close()
    for queue_ in (mp_queue, q):
        for call in (lambda: queue_.put(1), queue_.get, queue_.empty):
            with pytest.raises(OSError, match="^handle is closed$"):
                call()
        queue_.close()  # twice is fine


def test_signatures_match_multiprocessing() -> None:
    import inspect

    for method in ("get", "put", "empty", "close"):
        ours = inspect.signature(getattr(shmq.SimpleQueue, method))
        theirs = inspect.signature(getattr(multiprocessing.queues.SimpleQueue, method))
        required = [p.name for p in ours.parameters.values() if p.default is p.empty]
        assert required == list(theirs.parameters), method
    assert shmq.SimpleQueue.__doc__


def _report_empty(q: shmq.SimpleQueue, child_can_start: Any, parent_can_continue: Any) -> None:
    # CPython's TestSimpleQueue.test_empty, whose first version failed under spawn (bpo-30301).
    child_can_start.wait()
    try:
        q.put(q.empty())
        q.put(q.empty())
    finally:
        parent_can_continue.set()


def test_empty_seen_from_a_child(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue(cls=shmq.SimpleQueue)
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_report_empty, args=(q, child_can_start, parent_can_continue))
    reaper.append(proc)
    proc.start()
    assert q.empty()
    child_can_start.set()
    assert parent_can_continue.wait(60)
    assert not q.empty()
    assert q.get() is True
    assert q.get() is False
    assert q.empty()
    proc.join(30)
    assert proc.exitcode == 0


def _echo(tasks: shmq.SimpleQueue, results: shmq.SimpleQueue) -> None:
    while (item := tasks.get()) is not None:
        results.put(item * 2)


def test_between_processes(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    tasks = make_queue(cls=shmq.SimpleQueue)
    results = make_queue(cls=shmq.SimpleQueue)
    proc = ctx.Process(target=_echo, args=(tasks, results))
    reaper.append(proc)
    proc.start()
    for i in range(100):
        tasks.put(i)
    tasks.put(np.arange(200_000))
    tasks.put(None)
    assert [results.get() for _ in range(100)] == [2 * i for i in range(100)]
    assert np.array_equal(results.get(), 2 * np.arange(200_000))
    proc.join(30)
    assert proc.exitcode == 0
