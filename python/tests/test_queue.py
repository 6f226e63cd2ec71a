"""shmq.Queue: multiprocessing.Queue's semantics (checked side by side with it where they
coincide), object types, sizes, timeouts, closing, and real processes."""

from __future__ import annotations

import collections
import decimal
import fractions
import functools
import math
import multiprocessing
import os
import pickle
import queue
import time
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest

import shmq
from shmq import _shmq

from _queue_helpers import MiB, make_queue  # noqa: F401  (a fixture)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


Pair = collections.namedtuple("Pair", "a b")


class OnlyForkingPickler:
    """Pickles only through multiprocessing's registered reducer."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        raise TypeError("plain pickling refused: use ForkingPickler")


def _rebuild_only(value: int) -> OnlyForkingPickler:
    return OnlyForkingPickler(value)


ForkingPickler.register(OnlyForkingPickler, lambda obj: (_rebuild_only, (obj.value,)))

OBJECTS: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    math.inf,
    complex(1, -2),
    "",
    "héllo wörld ✓" * 100,
    b"",
    b"x",
    b"\x00" * 95,
    b"ab" * 50_000,
    bytearray(b"mutable"),
    bytearray(300_000),
    (1, "a", 2.0),
    [1, [2, [3, [4]]]],
    {"k": [1, 2], 3: {"nested": (None,)}},
    {1, 2, 3},
    frozenset({"a"}),
    range(3, 30, 3),
    slice(1, 9, 2),
    Point(3, 4),
    Pair(1, b"two"),
    decimal.Decimal("3.14159"),
    fractions.Fraction(22, 7),
    ValueError("boom", 42),
    functools.partial(int, base=2),
    list(range(50_000)),  # a large in-band pickle
    (b"nested bytes" * 1000, bytearray(5000)),
]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
def test_objects_round_trip(obj: Any, make_queue: Any) -> None:
    q = make_queue()
    q.put(obj)
    got = q.get(timeout=10)
    if isinstance(obj, functools.partial):
        assert got("101") == 5
    elif isinstance(obj, float) and math.isnan(obj):
        assert math.isnan(got)
    else:
        assert type(got) is type(obj)
        if isinstance(obj, BaseException):
            assert got.args == obj.args
        else:
            assert got == obj
    q.close()


ARRAYS = [
    np.arange(10),
    np.arange(1 << 18, dtype=np.float64),  # 2 MiB: in place
    np.arange(24, dtype=np.int32).reshape(2, 3, 4),
    np.asfortranarray(np.arange(40_000, dtype=np.float32).reshape(200, 200)),
    np.arange(100_000, dtype=np.int16)[::3],  # not contiguous: pickled in-band
    np.array(7.5),
    np.zeros((0, 5)),
    np.array([(1, 2.0), (3, 4.0)] * 10_000, dtype=[("i", "i4"), ("f", "f8")]),
    np.array(["a", "bc", "def"] * 10_000),
    np.ones(100_000, dtype=bool),
    np.arange(30_000, dtype=np.complex128),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_numpy_arrays_round_trip(array: np.ndarray, make_queue: Any) -> None:
    q = make_queue()
    q.put(array)
    got = q.get(timeout=10)
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    assert np.array_equal(got, array)
    del got  # a received array holds its room in the queue's (small) arena
    # Nested in a container too.
    q.put({"a": array, "b": [array, array]})
    got = q.get(timeout=10)
    assert np.array_equal(got["a"], array) and np.array_equal(got["b"][1], array)
    del got
    q.close()


def test_pickle_buffer_and_memoryview_travel(make_queue: Any) -> None:
    q = make_queue()
    data = bytes(range(256)) * 1000
    q.put(pickle.PickleBuffer(bytearray(data)))
    got = q.get(timeout=10)
    assert bytes(got) == data
    # memoryview: multiprocessing cannot pickle one at all; shmq sends it out of band.
    q.put(memoryview(data))
    assert bytes(q.get(timeout=10)) == data
    q.put((memoryview(data), 1))
    view, one = q.get(timeout=10)
    assert bytes(view) == data and one == 1
    doubles = memoryview(np.arange(10_000, dtype=np.float64).data)
    q.put([doubles])
    (got,) = q.get(timeout=10)
    assert got.format == "d" and got.tolist() == list(np.arange(10_000, dtype=np.float64))
    q.close()


def test_objects_registered_with_forking_pickler_travel(make_queue: Any) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(OnlyForkingPickler(1))
    q = make_queue()
    q.put([OnlyForkingPickler(41)])
    (got,) = q.get(timeout=10)
    assert isinstance(got, OnlyForkingPickler) and got.value == 41
    q.close()


def test_read_only_array_stays_read_only_and_equal(make_queue: Any) -> None:
    q = make_queue()
    array = np.arange(100_000)
    array.flags.writeable = False
    q.put(array)
    got = q.get(timeout=10)
    assert np.array_equal(got, array) and not got.flags.writeable
    q.close()


# ----- Full and Empty, side by side with multiprocessing ----------------------------------------


def _script(q: Any) -> list[str]:
    """A sequence of calls on a queue of maxsize 2; what each one gave."""
    outcomes: list[str] = []

    def run(label: str, call: Any) -> None:
        try:
            result = call()
        except (queue.Full, queue.Empty) as e:
            outcomes.append(f"{label}: {type(e).__name__}")
        else:
            outcomes.append(f"{label}: {result!r}")

    run("get_nowait empty", q.get_nowait)
    run("get(False) empty", lambda: q.get(False))
    run("get(timeout=0.05) empty", lambda: q.get(timeout=0.05))
    run("get(True, -1) empty", lambda: q.get(True, -1))
    run("get(False, 5) empty", lambda: q.get(False, 5))
    run("empty()", q.empty)
    run("put 1", lambda: q.put(1))
    run("put_nowait 2", lambda: q.put_nowait(2))
    time.sleep(0.1)  # multiprocessing's feeder thread
    run("full()", q.full)
    run("qsize()", q.qsize)
    run("put_nowait 3 full", lambda: q.put_nowait(3))
    run("put(3, False) full", lambda: q.put(3, False))
    run("put(3, timeout=0.05) full", lambda: q.put(3, timeout=0.05))
    run("put(3, True, -1) full", lambda: q.put(3, True, -1))
    run("put(3, False, 5) full", lambda: q.put(3, False, 5))
    run("get", q.get)
    run("full() after get", q.full)
    run("get(timeout=1)", lambda: q.get(timeout=1))
    run("empty() drained", q.empty)
    run("qsize() drained", q.qsize)
    return outcomes


def test_full_and_empty_where_multiprocessing_raises_them(make_queue: Any) -> None:
    mp_queue = multiprocessing.get_context("fork").Queue(2)
    expected = _script(mp_queue)
    mp_queue.close()
    mp_queue.join_thread()
    q = make_queue(2)
    assert _script(q) == expected
    q.close()


def test_timeouts_wait_then_raise(make_queue: Any) -> None:
    q = make_queue(1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.29 <= time.monotonic() - started < 10
    q.put("x")
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("y", timeout=0.3)
    assert 0.29 <= time.monotonic() - started < 10
    assert q.get(timeout=0) == "x"  # a zero timeout still takes what is there
    q.close()


def test_timeout_validation_is_multiprocessing_s(make_queue: Any) -> None:
    for q in (multiprocessing.get_context("fork").Queue(1), make_queue(1)):
        with pytest.raises(ValueError):
            q.get(True, float("nan"))
        for block in (True, False):
            with pytest.raises(TypeError):
                q.get(block, "1")
            with pytest.raises(TypeError):
                q.put(1, block, "1")
        with pytest.raises(OverflowError):
            q.get(True, 10**400)
        q.put(1, True, float("nan"))  # room: the NaN is never used
        time.sleep(0.1)
        with pytest.raises(OSError):
            q.put(2, True, float("nan"))  # full: a wait with a NaN timeout
        assert q.get(True, 10.0) == 1
        q.put(3, True, 10.0)
        time.sleep(0.1)
        assert q.get(False, float("nan")) == 3  # ignored without block
        q.close()
        q.join_thread()
    # An infinite timeout waits for ever (multiprocessing's get fails on it with OverflowError).
    q = make_queue()
    q.put(4, True, float("inf"))
    assert q.get(True, float("inf")) == 4


def test_truthy_arguments_and_integer_maxsize(make_queue: Any) -> None:
    q = make_queue(2)
    q.put(1, 1)  # any truthy block, as multiprocessing takes it
    q.put(2, 0)
    assert q.get(1, None) == 1 and q.get(0) == 2
    with pytest.raises(queue.Empty):
        q.get(0)
    q.put(np.arange(100_000), True, 5)
    assert q.get(copy=1).flags.writeable
    with pytest.raises(TypeError):
        shmq.Queue(2.5, capacity_bytes=1 << 20)
    with pytest.raises(TypeError):
        multiprocessing.get_context("fork").Queue(2.5)


def test_maxsize_bounds_the_items_queued(make_queue: Any) -> None:
    q = make_queue(3)
    assert q.maxsize == 3
    for i in range(3):
        assert not q.full()
        q.put(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert [q.get(), q.get(), q.get()] == [0, 1, 2]
    assert q.empty() and not q.full() and q.qsize() == 0
    q.close()


def test_maxsize_zero_is_bounded_by_memory(make_queue: Any) -> None:
    q = make_queue(capacity_bytes=1 * MiB)
    chunk = np.zeros(200_000, dtype=np.uint8)  # about a fifth of the arena each
    sent = 0
    with pytest.raises(queue.Full):
        for _ in range(100):
            q.put_nowait(chunk)
            sent += 1
    assert 1 <= sent < 10
    assert not q.full()  # the ring has room: memory is what ran out
    with pytest.raises(queue.Full):
        q.put(chunk, timeout=0.1)
    q.get()  # frees room (a copy or a view: either way, dropped at once)
    q.put_nowait(chunk)
    q.close()


def test_payload_larger_than_the_arena_travels(make_queue: Any) -> None:
    q = make_queue(capacity_bytes=1 * MiB)
    big = np.arange(3 * MiB // 8, dtype=np.float64)  # 3 MiB: an overflow segment of its own
    q.put(big)
    got = q.get(timeout=30)
    assert np.array_equal(got, big)
    del got
    q.close()


def test_capacity_from_the_environment(monkeypatch: pytest.MonkeyPatch, make_queue: Any) -> None:
    monkeypatch.setenv("SHMQ_CAPACITY_BYTES", str(2 * MiB))
    q = make_queue(capacity_bytes=None)
    assert q._chan is not None and q._chan.arena_bytes() == 2 * MiB
    q.close()
    with pytest.raises(ValueError):
        make_queue(capacity_bytes=-1)
    monkeypatch.setenv("SHMQ_CAPACITY_BYTES", "lots")
    with pytest.raises(ValueError, match="SHMQ_CAPACITY_BYTES"):
        make_queue(capacity_bytes=None)


def test_default_sizes(make_queue: Any) -> None:
    q = make_queue(capacity_bytes=None)
    assert q._chan is not None
    assert q._chan.capacity() == 65536 and q._chan.arena_bytes() == 64 * MiB
    q.close()
    # A larger maxsize is clamped (not created here: 2**24 slots are 2 GiB of ring).
    assert shmq.queues._ring_slots(2**30) == 2**24
    assert shmq.queues._ring_slots(-5) == shmq.queues._ring_slots(0) == 65536
    q = make_queue(70_000)
    assert q._chan is not None and q._chan.capacity() == 70_000
    q.close()


# ----- closing, join_thread, repr, names ---------------------------------------------------------


def test_closed_queue_raises_multiprocessing_s_errors(make_queue: Any) -> None:
    q = make_queue()
    q.put("left for others")
    q.close()
    for call in (lambda: q.put(1), q.get, lambda: q.get(False), q.get_nowait, lambda: q.put_nowait(1)):
        with pytest.raises(ValueError, match=r"^Queue <shmq.Queue .* closed at 0x[0-9a-f]+> is closed$"):
            call()
    for call in (q.qsize, q.empty, q.full):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    q.close()  # twice is fine
    q.join_thread()
    q.cancel_join_thread()


def test_join_thread_asserts_closed(make_queue: Any) -> None:
    q = make_queue()
    with pytest.raises(AssertionError, match=r"^Queue <shmq.Queue .*> not closed$"):
        q.join_thread()
    q.cancel_join_thread()
    q.close()
    q.join_thread()


def test_named_queue_and_name_conflicts(unique_name: str, make_queue: Any) -> None:
    q = make_queue(name=unique_name)
    assert q.name == unique_name
    assert os.path.exists(f"/dev/shm/shmq.{unique_name}")
    with pytest.raises(FileExistsError):
        make_queue(name=unique_name)
    q.close()
    assert not os.path.exists(f"/dev/shm/shmq.{unique_name}")
    with pytest.raises(ValueError):
        make_queue(name="no/slashes")


def test_pickling_error_is_raised_by_put(make_queue: Any) -> None:
    q = make_queue(1)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put(lambda: None)

    class Refuses:
        def __reduce__(self) -> Any:
            raise AttributeError("not today")

    with pytest.raises(AttributeError, match="not today"):
        q.put(Refuses())
    assert q.qsize() == 0 and not q.full()  # nothing half-sent: the one slot is free
    q.put_nowait("fine")
    assert q.get() == "fine"
    q.close()


def test_unpickling_error_is_raised_by_get(make_queue: Any) -> None:
    q = make_queue()
    q.put(Point(1, 2))
    saved = globals().pop("Point")
    try:
        with pytest.raises(AttributeError):
            q.get()
    finally:
        globals()["Point"] = saved
    q.put("next")
    assert q.get() == "next"
    q.close()


def test_exports_and_docstring_example() -> None:
    import doctest

    assert {"Queue", "SimpleQueue", "set_copy_threshold", "get_copy_threshold"} <= set(shmq.__all__)
    for name in shmq.__all__:
        assert getattr(shmq, name).__doc__, name
    for method in ("put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full", "close",
                   "join_thread", "cancel_join_thread", "loan", "put_many", "get_many"):
        assert getattr(shmq.Queue, method).__doc__, method
    failures, tried = doctest.testmod(shmq, verbose=False)[:2]
    assert tried >= 3 and failures == 0


# ----- across processes --------------------------------------------------------------------------


def _produce(q: shmq.Queue, start: int, count: int) -> None:
    for i in range(start, start + count):
        q.put((i, np.full(20_000, i, dtype=np.int64)))


def _consume(q: shmq.Queue, results: shmq.Queue, count: int) -> None:
    total = 0
    for _ in range(count):
        i, array = q.get(timeout=60)
        assert (array == i).all()
        total += i
    results.put(total)


def test_many_producers_and_consumers(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue(8)
    results = make_queue()
    producers = [ctx.Process(target=_produce, args=(q, 100 * k, 50)) for k in range(2)]
    consumers = [ctx.Process(target=_consume, args=(q, results, 50)) for _ in range(2)]
    for p in producers + consumers:
        reaper.append(p)
        p.start()
    totals = [results.get(timeout=120) for _ in consumers]
    assert sum(totals) == sum(range(0, 50)) + sum(range(100, 150))
    for p in producers + consumers:
        p.join(30)
        assert p.exitcode == 0
    q.close()
    results.close()


def _put_then_exit(q: shmq.Queue) -> None:
    q.put(np.ones(4 * MiB // 8))  # 4 MiB: multiprocessing's feeder would still be writing it
    for i in range(1000):
        q.put(i)


def test_put_then_exit_without_draining(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue(capacity_bytes=16 * MiB)
    child = ctx.Process(target=_put_then_exit, args=(q,))
    reaper.append(child)
    child.start()
    # Joined before anything is got: with multiprocessing.Queue this join would hang (the
    # child's feeder thread cannot finish writing into a full pipe).
    child.join(60)
    assert child.exitcode == 0
    assert q.get(timeout=10).sum() == 4 * MiB // 8
    assert [q.get(timeout=10) for _ in range(1000)] == list(range(1000))
    q.close()


def _open_then_own(q: shmq.Queue, opened: Any, parent_gone: Any, results: shmq.Queue) -> None:
    q.put("first")  # opens the child's sender while the parent still holds the queue
    opened.set()
    assert parent_gone.wait(60)
    # The child is the only user now: put and get must still work (no "disconnected").
    q.put("alone")
    got = [q.get(timeout=10), q.get(timeout=10)]
    results.put(got)


def test_queue_survives_its_creator_closing(ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any) -> None:
    q = make_queue()
    results = make_queue()
    opened, parent_gone = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_open_then_own, args=(q, opened, parent_gone, results))
    reaper.append(child)
    child.start()
    assert opened.wait(60)
    q.close()
    parent_gone.set()
    assert results.get(timeout=60) == ["first", "alone"]
    child.join(30)
    assert child.exitcode == 0
    results.close()


def test_channel_with_no_receiver_anywhere_still_takes_sends(unique_name: str) -> None:
    """A queue never disconnects (today: the side that finds the other missing opens it in
    this process; after core G2: a persistent channel)."""
    creator = _shmq.Channel.create(unique_name, 16, 1 * MiB)
    other = _shmq.Channel.open(unique_name)
    try:
        assert other.send_raw(b"while the creator lives")
        assert other._open_sides() == (True, False)
        creator.close()  # now no receiver exists anywhere
        assert other.send_raw(b"with no receiver anywhere")
        assert other.recv_raw() == b"while the creator lives"
        assert other.recv_raw() == b"with no receiver anywhere"
        assert other.recv_raw(timeout=0.05) is None
    finally:
        creator.close()
        other.close()
    with pytest.raises(OSError, match="handle is closed"):
        other.send_raw(b"x")
    assert not os.path.exists(f"/dev/shm/shmq.{unique_name}")
