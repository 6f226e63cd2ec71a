"""Blocking queue calls and signals: Ctrl-C interrupts a blocked get or put; a handler that
returns lets the call go on (PEP 475); other threads run while a call is blocked."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from _queue_helpers import make_queue  # noqa: F401  (a fixture)


def _signal_later(signum: int, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), os.kill(os.getpid(), signum)))
    thread.start()
    return thread


@pytest.fixture
def sigusr1_counter() -> Iterator[list[int]]:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR1, previous)


def test_ctrl_c_interrupts_a_blocked_get(make_queue: Any) -> None:
    q = make_queue()
    sender = _signal_later(signal.SIGINT, 0.3)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        q.get()
    elapsed = time.monotonic() - started
    sender.join()
    assert elapsed < 2.3, f"KeyboardInterrupt came {elapsed:.2f} s after the get began"
    q.put("still works")
    assert q.get() == "still works"


def test_ctrl_c_interrupts_a_blocked_put_and_gives_the_room_back(make_queue: Any) -> None:
    q = make_queue(1)
    q.put("fills the only slot")
    chan = q._chan
    free = chan.free_arena_bytes()
    sender = _signal_later(signal.SIGINT, 0.3)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        q.put(bytes(100_000))  # reserved in the arena, then waits for a slot
    assert time.monotonic() - started < 2.3
    sender.join()
    assert chan.free_arena_bytes() == free  # the interrupted put's room went back
    assert q.qsize() == 1 and q.get() == "fills the only slot"


def test_a_handler_that_returns_lets_the_wait_go_on(make_queue: Any, sigusr1_counter: list[int]) -> None:
    q = make_queue()
    sender = _signal_later(signal.SIGUSR1, 0.1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.6)
    sender.join()
    assert sigusr1_counter == [signal.SIGUSR1]  # the handler ran during the wait...
    assert time.monotonic() - started >= 0.59  # ...which went on to its own deadline
    # And a blocked get that a handler interrupts still gets what comes later.
    sender = _signal_later(signal.SIGUSR1, 0.1)
    putter = threading.Thread(target=lambda: (time.sleep(0.4), q.put("late")))
    putter.start()
    assert q.get(timeout=30) == "late"
    sender.join()
    putter.join()
    assert len(sigusr1_counter) == 2


def test_other_threads_run_while_get_is_blocked(make_queue: Any) -> None:
    q = make_queue()
    # If the blocked get held the GIL, this thread could never put, and the get would hang.
    putter = threading.Thread(target=lambda: (time.sleep(0.2), q.put("from a thread")))
    putter.start()
    assert q.get(timeout=60) == "from a thread"
    putter.join()


def test_close_from_another_thread_stops_a_blocked_get(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    failure: list[BaseException] = []

    def blocked() -> None:
        try:
            chan.recv_frame(True, None)
        except BaseException as e:  # noqa: BLE001
            failure.append(e)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    time.sleep(0.2)
    chan.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert isinstance(failure[0], OSError) and "closed" in str(failure[0])
