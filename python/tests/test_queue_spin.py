"""How a queue's blocking calls wait: ``set_spin`` and ``set_adaptive_spin``. What they change is
seen in the CPU time a blocked ``get`` burns (``time.thread_time`` of the waiting thread, which
the wait keeps while it spins and not while it sleeps on its futex): a figure of the kernel's
accounting, with wide margins, not a speed target."""

from __future__ import annotations

import math
import pickle
import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

import shmq
from shmq._shmq import Channel

from _queue_helpers import make_queue  # noqa: F401  (a fixture)


def cpu_of_empty_waits(get: Callable[[float], Any], count: int, timeout: float) -> float:
    """CPU seconds this thread spends in ``count`` calls of ``get(timeout)`` that each find
    nothing and end in ``queue.Empty`` (or ``None``)."""
    started = time.thread_time()
    for _ in range(count):
        try:
            assert get(timeout) is None
        except queue.Empty:
            pass
    return time.thread_time() - started


@pytest.mark.parametrize("cls", [shmq.Queue, shmq.SimpleQueue])
def test_infinite_spin_never_sleeps_and_zero_spin_barely_runs(make_queue: Any, cls: type) -> None:
    q = make_queue(cls=cls)
    get = (lambda t: q.get(timeout=t)) if cls is shmq.Queue else (lambda t: q._get(True, t, False))
    q.set_spin(math.inf)
    busy = cpu_of_empty_waits(get, 1, 0.5)
    q.set_spin(0)
    asleep = cpu_of_empty_waits(get, 1, 0.5)
    # A spinning thread keeps its core but for what the machine's other load takes from it.
    assert busy > 0.1, f"a wait that never sleeps used {busy:.3f} s of CPU in 0.5 s"
    assert asleep < 0.04, f"a wait that does not spin used {asleep:.3f} s of CPU in 0.5 s"


def test_adaptive_spin_cuts_a_spin_that_does_not_pay(make_queue: Any) -> None:
    q = make_queue()
    q.set_spin(0.05)
    q.set_adaptive_spin(False)
    # Every wait spins its full 50 ms: up to 1.2 s of CPU.
    fixed = cpu_of_empty_waits(lambda t: q.get(timeout=t), 24, 0.06)
    q.set_adaptive_spin(True)
    # Two waits that slept, then about 1 µs each, one in 16 spinning the full time: 0.1-0.2 s.
    adaptive = cpu_of_empty_waits(lambda t: q.get(timeout=t), 24, 0.06)
    assert fixed > 0.3, f"24 waits spinning 50 ms each used {fixed:.3f} s of CPU"
    assert adaptive < fixed / 3, f"24 adaptive waits used {adaptive:.3f} s of CPU, fixed {fixed:.3f}"


def test_spin_holds_for_every_handle_of_the_queue_in_this_process(make_queue: Any) -> None:
    q = make_queue()
    q.set_spin(math.inf)
    # A second handle of the same queue here shares its channel, and so its setting.
    again = pickle.loads(pickle.dumps(q))
    try:
        busy = cpu_of_empty_waits(lambda t: again.get(timeout=t), 1, 0.3)
    finally:
        again.close()
    assert busy > 0.1, f"the second handle's wait used {busy:.3f} s of CPU in 0.3 s"


def test_spin_is_given_to_a_side_opened_after_it(make_queue: Any) -> None:
    q = make_queue()
    chan = Channel.open(q.name)
    try:
        chan.set_spin(math.inf)
        # The receiver opens now, with the setting.
        busy = cpu_of_empty_waits(lambda t: chan.recv_frame(timeout=t), 1, 0.3)
    finally:
        chan.close()
    assert busy > 0.1, f"a receiver opened after set_spin used {busy:.3f} s of CPU in 0.3 s"


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan])
def test_spin_must_be_a_non_negative_number(make_queue: Any, bad: float) -> None:
    q = make_queue()
    with pytest.raises(ValueError, match="non-negative"):
        q.set_spin(bad)


def test_a_spin_past_what_a_duration_holds_never_sleeps(make_queue: Any) -> None:
    q = make_queue()
    q.set_spin(1e300)
    busy = cpu_of_empty_waits(lambda t: q.get(timeout=t), 1, 0.3)
    assert busy > 0.1, f"a wait told to spin 1e300 s used {busy:.3f} s of CPU in 0.3 s"


def test_a_closed_queue_refuses_a_spin(make_queue: Any) -> None:
    q = make_queue()
    q.close()
    with pytest.raises(OSError, match="closed"):
        q.set_spin(0.001)
