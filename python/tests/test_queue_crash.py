"""SIGKILL of queue users at bad moments: blocked in get, holding a received array, in the
middle of puts. The others carry on, and what the dead held comes back."""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import numpy as np

from _queue_helpers import MiB, make_queue  # noqa: F401  (a fixture)
from conftest import sigkill


def _block_in_get(q: Any, ready: Any) -> None:
    ready.set()
    q.get()  # nothing ever comes


def test_killed_while_blocked_in_get(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue()
    ready = ctx.Event()
    victim = ctx.Process(target=_block_in_get, args=(q, ready))
    reaper.append(victim)
    victim.start()
    assert ready.wait(60)
    time.sleep(0.2)  # well inside get by now
    sigkill(victim)
    q.put("after the kill")
    assert q.get(timeout=10) == "after the kill"
    # A second consumer process works too.
    results = make_queue()
    q.put(41)
    consumer = ctx.Process(target=_add_one, args=(q, results))
    reaper.append(consumer)
    consumer.start()
    assert results.get(timeout=60) == 42
    consumer.join(30)
    assert consumer.exitcode == 0


def _add_one(q: Any, results: Any) -> None:
    results.put(q.get(timeout=30) + 1)


def _hold_received(q: Any, holding: Any) -> None:
    array = q.get(timeout=30)  # received in place: holds its arena pages
    assert array.sum() == array.size
    holding.set()
    time.sleep(600)


def test_killed_while_holding_a_received_array(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue(capacity_bytes=4 * MiB)
    chan = q._chan
    empty = chan.free_arena_bytes()
    holding = ctx.Event()
    victim = ctx.Process(target=_hold_received, args=(q, holding))
    reaper.append(victim)
    victim.start()
    q.put(np.ones(3 * MiB // 8))  # 3 MiB of the 4 MiB arena
    assert holding.wait(60)
    assert chan.free_arena_bytes() < empty - 3 * MiB + 4096
    sigkill(victim)
    # The dead consumer's pages come back (reclaimed by the next operation that looks), so a
    # payload that needs them goes through; with them still held it would wait for ever.
    q.put(np.full(3 * MiB // 8, 2.0), timeout=30)
    got = q.get(timeout=10)
    assert got.sum() == 2.0 * (3 * MiB // 8)
    del got
    deadline = time.monotonic() + 10
    while chan.free_arena_bytes() != empty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chan.free_arena_bytes() == empty


def _put_forever(q: Any, ready: Any) -> None:
    ready.set()
    i = 0
    while True:
        q.put((i, np.full(50_000, i, dtype=np.int32)))
        i += 1


def test_producers_killed_at_random_moments(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue(64, capacity_bytes=4 * MiB)
    rng = random.Random(12)
    for _ in range(4):
        ready = ctx.Event()
        producer = ctx.Process(target=_put_forever, args=(q, ready))
        reaper.append(producer)
        producer.start()
        assert ready.wait(60)
        deadline = time.monotonic() + rng.uniform(0.0, 0.05)
        while time.monotonic() < deadline:  # consume meanwhile, so that it puts all along
            try:
                i, array = q.get(timeout=0.01)
                assert (array == i).all()
            except Exception as e:  # queue.Empty
                assert type(e).__name__ == "Empty"
        sigkill(producer)
        # Everything it published is whole; nothing is wedged.
        while True:
            try:
                i, array = q.get(timeout=0.2)
            except Exception as e:
                assert type(e).__name__ == "Empty"
                break
            assert (array == i).all()
    q.put("alive")
    assert q.get(timeout=10) == "alive"
