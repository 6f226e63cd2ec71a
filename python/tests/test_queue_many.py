"""The batch forms of the queues: ``put_many`` and ``get_many`` (shmq extensions), across
processes, with deadlines, pickling errors, task counts and closed queues."""

from __future__ import annotations

import copyreg
import io
import multiprocessing
import os
import pickle
import queue
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmq
from shmq import _pickle

from _queue_helpers import inside_mapping, make_queue  # noqa: F401  (a fixture)

BIG_ARRAY_LEN = 20_000
"""int64 elements of the large array in MIXED: 160 KB, above the 64 KiB zero-copy threshold."""


def mixed_items() -> list[Any]:
    """Small objects (inline in the ring), middling ones (an arena chunk each, still one
    assembled frame) and large ones (built in a loan), interleaved, each telling its place."""
    items: list[Any] = []
    for i in range(40):
        items.append(i)
        items.append(f"s{i}")
        if i % 5 == 0:
            items.append(bytes([i]) * 64)  # a bare bytes frame of over 96 bytes
        if i % 7 == 0:
            items.append(("middling", i, "x" * 1000))
        if i % 9 == 0:
            items.append(np.full(BIG_ARRAY_LEN, i, dtype=np.int64))
        if i % 13 == 0:
            items.append(bytes([i]) * 200_000)  # a large bare bytes frame
    return items


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def assert_same_items(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for position, (a, b) in enumerate(zip(got, expected)):
        assert type(a) is type(b), position
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), position
        else:
            assert a == b, position


def test_batch_pickling_makes_the_frames_put_makes() -> None:
    objs = mixed_items() + [
        list(range(50_000)),  # a pickle of over 64 KiB: it keeps its stream
        {"shared": [1, 2], "again": "shared"},  # memo entries: must not leak into the next
        "shared",
        memoryview(b"a bare memoryview"),
        pickle.PickleBuffer(bytearray(10_000)),  # out of band
        (np.arange(10), np.arange(10_000)),  # in band, then out of band
    ]
    batch = _pickle.dumps_frames(iter(objs))
    assert len(batch) == len(objs)
    for obj, (kind, data, buffers) in zip(objs, batch):
        one_kind, one_data, one_buffers = _pickle.dumps_frame(obj)
        assert kind == one_kind and bytes(data) == bytes(one_data), obj
        assert [bytes(b) for b in buffers] == [bytes(b) for b in one_buffers], obj


def _put_many_in_chunks(q: shmq.Queue, chunk: int) -> None:
    items = mixed_items()
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        assert q.put_many(part, timeout=60) == len(part)


def _get_many_and_report(q: shmq.Queue, results: shmq.Queue, count: int, max_items: int) -> None:
    got: list[Any] = []
    sizes: list[int] = []
    while len(got) < count:
        batch = q.get_many(max_items, timeout=60, copy=True)
        sizes.append(len(batch))
        got.extend(batch)
    results.put((got, sizes))


def test_put_many_reaches_another_process_in_order(
    ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any
) -> None:
    # maxsize 16: the producer fills the ring again and again, so put_many waits for room.
    q = make_queue(16, capacity_bytes=8 << 20)
    producer = ctx.Process(target=_put_many_in_chunks, args=(q, 50))
    reaper.append(producer)
    producer.start()
    expected = mixed_items()
    got: list[Any] = []
    while len(got) < len(expected):
        batch = q.get_many(64, timeout=60)
        assert 1 <= len(batch) <= 64
        got.extend(batch)
    assert_same_items(got, expected)
    # Decoded as get decodes them: the large arrays are their messages, in place.
    arrays = [item for item in got if isinstance(item, np.ndarray)]
    assert arrays and all(inside_mapping(address(a), q.name) for a in arrays)
    del got, batch, arrays
    producer.join(30)
    assert producer.exitcode == 0
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_get_many_in_another_process_takes_what_put_many_sent(
    ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any
) -> None:
    q = make_queue(capacity_bytes=16 << 20)
    results = make_queue(capacity_bytes=16 << 20)
    expected = mixed_items()
    assert q.put_many(expected) == len(expected)  # all of it fits: the ring and the arena
    consumer = ctx.Process(target=_get_many_and_report, args=(q, results, len(expected), 7))
    reaper.append(consumer)
    consumer.start()
    got, sizes = results.get(timeout=60)
    assert_same_items(got, expected)
    # Everything was queued before the consumer started: each call took a full batch, but the
    # last (the remainder), and never more than asked.
    assert all(size == 7 for size in sizes[:-1]) and 1 <= sizes[-1] <= 7
    consumer.join(30)
    assert consumer.exitcode == 0


def _put_one_later(q: shmq.Queue, ready: Any) -> None:
    ready.wait(60)
    q.put("late")


def test_get_many_waits_for_the_first_item(
    ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any
) -> None:
    q = make_queue()
    ready = ctx.Event()
    child = ctx.Process(target=_put_one_later, args=(q, ready))
    reaper.append(child)
    child.start()
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)
    ready.set()
    assert q.get_many(10, timeout=60) == ["late"]  # at least one: it waited for the child
    child.join(30)
    assert child.exitcode == 0


def test_put_many_returns_a_partial_count_when_the_deadline_passes(make_queue: Any) -> None:
    q = make_queue(3)  # nobody reads it
    assert q.put_many(range(10), timeout=0.2) == 3
    assert q.qsize() == 3
    assert q.get_many(10) == [0, 1, 2]
    # A large item (built in a loan) in the middle: the count stops where the room ran out.
    big = np.arange(BIG_ARRAY_LEN)
    assert q.put_many(["a", big, "b", "c", "d"], timeout=0.1) == 3
    got = q.get_many(10)
    assert got[0] == "a" and np.array_equal(got[1], big) and got[2] == "b"
    assert len(got) == 3
    # Without block: as many as fit now.
    q.put(1)
    assert q.put_many([2, 3, 4, 5], block=False) == 2
    assert q.get_many(10) == [1, 2, 3]


def test_put_many_raises_full_when_nothing_fits(make_queue: Any) -> None:
    q = make_queue(2)
    q.put_many(["x", "y"])
    with pytest.raises(queue.Full):
        q.put_many([1, 2], block=False)
    with pytest.raises(queue.Full):
        q.put_many([np.arange(BIG_ARRAY_LEN)], block=False)
    with pytest.raises(queue.Full):
        q.put_many([1, 2], timeout=0.05)
    assert q.get_many(5) == ["x", "y"]
    assert q.put_many([]) == 0  # nothing to put is not Full
    assert q.put_many(iter([7, 8]), block=False) == 2  # any iterable
    assert q.get_many(5) == [7, 8]


class Refuses:
    def __reduce__(self) -> Any:
        raise AttributeError("not today")


@pytest.mark.parametrize("cls", [shmq.Queue, shmq.JoinableQueue, shmq.SimpleQueue])
def test_a_pickling_error_in_the_middle_puts_nothing(cls: type, make_queue: Any) -> None:
    q = make_queue(cls=cls)
    items = [1, np.arange(BIG_ARRAY_LEN), "two", Refuses(), 3]
    with pytest.raises(AttributeError, match="not today"):
        q.put_many(items)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put_many([1, lambda: None])
    assert q.empty()
    if cls is not shmq.SimpleQueue:
        assert q.qsize() == 0
        with pytest.raises(queue.Empty):
            q.get_many(5, timeout=0.05)
    if cls is shmq.JoinableQueue:
        assert q.unfinished_tasks() == 0
    q.put("after")
    assert q.get_many(5) == ["after"]


def test_get_many_takes_at_most_max_items_and_raises_empty(make_queue: Any) -> None:
    q = make_queue()
    assert q.put_many(range(10)) == 10
    assert q.get_many(4) == [0, 1, 2, 3]
    assert q.get_many(1) == [4]
    assert q.get_many(100) == [5, 6, 7, 8, 9]
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.1)
    with pytest.raises(queue.Empty):
        q.get_many(5, block=False)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_items"):
            q.get_many(bad)
    with pytest.raises(TypeError):
        q.get_many(2.5)
    with pytest.raises(ValueError):
        q.get_many(2, True, float("nan"))
    with pytest.raises(ValueError):
        q.put_many([1], True, float("nan"))
    assert q.empty()  # the NaN put put nothing


def test_get_many_decodes_as_get_does(make_queue: Any) -> None:
    q = make_queue()
    array = np.arange(BIG_ARRAY_LEN, dtype=np.int64)
    small = np.arange(5000, dtype=np.int64)  # out of band, under the 64 KiB copy threshold
    q.put_many([array, small, b"raw", bytearray(b"raw")])
    in_place, small_copy, raw, raw_array = q.get_many(4)
    assert inside_mapping(address(in_place), q.name)
    assert not inside_mapping(address(small_copy), q.name)
    assert np.array_equal(in_place, array) and np.array_equal(small_copy, small)
    assert type(raw) is bytes and type(raw_array) is bytearray
    q.put_many([array])
    (copied,) = q.get_many(4, copy=True)
    assert not inside_mapping(address(copied), q.name) and np.array_equal(copied, array)
    del in_place, small_copy, copied


def _finish_tasks(q: shmq.JoinableQueue, count: int, first_done: Any, go_on: Any) -> None:
    taken: list[Any] = []
    while len(taken) < count:
        taken.extend(q.get_many(count, timeout=60))
    for _ in range(count - 1):
        q.task_done()
    first_done.set()
    go_on.wait(60)
    q.task_done()


def test_joinable_put_many_counts_one_task_per_item(
    ctx: multiprocessing.context.BaseContext, reaper: list, make_queue: Any
) -> None:
    q = make_queue(cls=shmq.JoinableQueue)
    assert q.put_many(["a", np.arange(BIG_ARRAY_LEN), "b", "c", "d"]) == 5
    assert q.unfinished_tasks() == 5
    assert q.join(timeout=0.05) is False
    first_done, go_on = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_finish_tasks, args=(q, 5, first_done, go_on))
    reaper.append(worker)
    worker.start()
    assert first_done.wait(60)
    assert q.unfinished_tasks() == 1
    assert q.join(timeout=0.1) is False  # one task_done still missing
    go_on.set()
    assert q.join(timeout=60) is True
    assert q.unfinished_tasks() == 0
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    worker.join(30)
    assert worker.exitcode == 0
    # A partial put_many counts only the items put.
    bounded = make_queue(2, cls=shmq.JoinableQueue)
    assert bounded.put_many(range(5), timeout=0.05) == 2
    assert bounded.unfinished_tasks() == 2


def test_closed_queue_batch_calls_raise(make_queue: Any) -> None:
    for cls in (shmq.Queue, shmq.JoinableQueue):
        q = make_queue(cls=cls)
        q.close()
        with pytest.raises(ValueError, match="is closed$"):
            q.put_many([1, 2])
        with pytest.raises(ValueError, match="is closed$"):
            q.get_many(2)
    simple = make_queue(cls=shmq.SimpleQueue)
    simple.close()
    for call in (lambda: simple.put_many([1]), lambda: simple.get_many(1)):
        with pytest.raises(OSError, match="handle is closed"):
            call()


def test_simple_queue_batch_forms(make_queue: Any) -> None:
    q = make_queue(cls=shmq.SimpleQueue)
    items = mixed_items()
    assert q.put_many(items) == len(items)
    got: list[Any] = []
    while len(got) < len(items):
        batch = q.get_many(10, copy=True)
        assert 1 <= len(batch) <= 10
        got.extend(batch)
    assert_same_items(got, items)
    assert q.empty()
    with pytest.raises(ValueError):
        q.get_many(0)


class Unloadable:
    def __reduce__(self) -> Any:
        return (_fail_to_load, ())


def _fail_to_load() -> Any:
    raise RuntimeError("cannot load")


def test_an_unpickling_error_costs_that_item_alone(make_queue: Any) -> None:
    q = make_queue()
    q.put_many([1, Unloadable(), 2, 3])
    assert q.get_many(10) == [1]
    # The failed item and the two after it were taken: held for the next calls, and counted.
    assert q.qsize() == 3 and not q.empty()
    with pytest.raises(RuntimeError, match="cannot load"):
        q.get_many(10)
    assert q.get_many(10) == [2, 3]
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)


def test_an_unpickling_error_at_the_first_item_raises_at_once(make_queue: Any) -> None:
    q = make_queue()
    q.put_many([Unloadable(), 1, 2, 3])
    with pytest.raises(RuntimeError, match="cannot load"):
        q.get_many(10)
    # What came after it is handed over by get as by get_many, in order, up to max_items.
    assert q.get() == 1
    assert q.get_many(1) == [2]
    assert q.get_many(10) == [3]
    assert q.empty()


def test_simple_queue_holds_after_an_unpickling_error(make_queue: Any) -> None:
    q = make_queue(cls=shmq.SimpleQueue)
    q.put_many(["a", Unloadable(), "b"])
    assert q.get_many(10) == ["a"]
    assert not q.empty()
    with pytest.raises(RuntimeError, match="cannot load"):
        q.get()
    assert q.get() == "b"
    assert q.empty()


INTERRUPTS_LEFT = [1]
"""How many more times :func:`_interrupt_once` interrupts (a Ctrl-C comes once)."""


def _interrupt_once() -> str:
    if INTERRUPTS_LEFT[0] > 0:
        INTERRUPTS_LEFT[0] -= 1
        raise KeyboardInterrupt
    return "loaded after the interrupt"


class InterruptsOnce:
    def __reduce__(self) -> Any:
        return (_interrupt_once, ())


def test_an_interrupt_while_decoding_loses_nothing(make_queue: Any) -> None:
    INTERRUPTS_LEFT[0] = 1
    q = make_queue()
    q.put_many([1, InterruptsOnce(), 2])
    with pytest.raises(KeyboardInterrupt):
        q.get_many(10)
    # The item decoded before the interrupt is held, decoded, in its place.
    assert q.qsize() == 3
    assert q.get_many(1) == [1]
    assert q.get_many(10) == ["loaded after the interrupt", 2]
    assert q.empty()


def test_a_corrupted_message_in_a_batch_costs_that_message_alone(make_queue: Any) -> None:
    q = make_queue()
    q.put(1)
    q._channel().send_raw(b"not a frame")  # no frame header: cannot be decoded
    q.put(2)
    assert q.get_many(10) == [1]
    with pytest.raises(shmq.CorruptedError):
        q.get_many(10)
    assert q.get_many(10) == [2]
    assert q.empty()


def test_receives_of_one_handle_take_turns(make_queue: Any) -> None:
    q = make_queue()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    waiter.start()
    time.sleep(0.2)  # the waiter is inside its receive, and holds the turn
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.3)
    assert time.monotonic() - started >= 0.25  # it waited for its turn, then gave up
    with pytest.raises(queue.Empty):
        q.get_nowait()  # no wait for the turn at all
    q.put("for the waiter")
    waiter.join(30)
    assert got == ["for the waiter"]


def _expect_nothing_held(q: shmq.Queue) -> None:
    # The parent's held items are not this process's: the queue is empty here.
    try:
        q.get_many(10, timeout=0.2)
    except queue.Empty:
        os._exit(0 if q.qsize() == 0 else 2)
    os._exit(1)


def test_held_items_stay_with_the_process_that_took_them(
    reaper: list, make_queue: Any
) -> None:
    q = make_queue()
    q.put_many([1, Unloadable(), 2])
    assert q.get_many(10) == [1]
    child = multiprocessing.get_context("fork").Process(target=_expect_nothing_held, args=(q,))
    reaper.append(child)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    with pytest.raises(RuntimeError, match="cannot load"):
        q.get_many(10)
    assert q.get_many(10) == [2]


# ----- the pickler put reuses (one per thread) --------------------------------------------


def _fresh_frame(obj: Any) -> tuple[int, bytes, list[bytes]]:
    """The frame of ``obj`` by a pickler made for it alone, as put made them before."""
    buffers: list[Any] = []
    stream = io.BytesIO()
    _pickle.Pickler(stream, 5, True, _pickle._out_of_band_into(buffers)).dump(obj)
    return _pickle.KIND_PICKLE, stream.getvalue(), [bytes(b) for b in buffers]


def _as_bytes(frame: Any) -> tuple[int, bytes, list[bytes]]:
    kind, data, buffers = frame
    return kind, bytes(data), [bytes(b) for b in buffers]


def test_the_reused_pickler_makes_the_frames_a_fresh_one_makes() -> None:
    shared = ["shared"]
    objs = [
        {"a": shared, "b": shared},  # memo entries: must not leak into the next pickle
        shared,
        list(range(50_000)),  # a pickle of over 64 KiB, which keeps its stream
        (np.arange(10), np.arange(10_000)),  # in band, then out of band
        {"a": shared, "b": shared},
    ]
    # Every frame kept to the end: a later call must not change an earlier frame.
    frames = [_pickle.dumps_frame(obj) for obj in objs + objs]
    for obj, frame in zip(objs + objs, frames):
        assert _as_bytes(frame) == _fresh_frame(obj)


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def _point_from(text: str) -> str:
    return f"reduced {text}"


def test_a_reducer_registered_after_a_put_is_used(make_queue: Any) -> None:
    q = make_queue()
    q.put(Point(1))
    assert q.get().x == 1
    copyreg.pickle(Point, lambda p: (_point_from, (str(p.x),)))
    try:
        q.put(Point(2))
        assert q.get() == "reduced 2"
    finally:
        del copyreg.dispatch_table[Point]
    q.put(Point(3))
    assert q.get().x == 3


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("not this one")


def test_a_pickling_error_leaves_the_next_put_whole(make_queue: Any) -> None:
    q = make_queue()
    with pytest.raises(TypeError, match="not this one"):
        q.put({"before": list(range(100)), "bad": Unpicklable()})
    q.put({"after": [1, 2, 3]})
    assert q.get() == {"after": [1, 2, 3]}
    assert q.empty()


class PutsWhilePickled:
    """An object whose reduction puts into a queue: a pickle made inside another."""

    def __init__(self, q: shmq.Queue) -> None:
        self.q = q

    def __reduce__(self) -> Any:
        self.q.put(("inner", list(range(10))))
        return (str, ("outer",))


def test_a_put_inside_a_pickling_gets_a_pickler_of_its_own(make_queue: Any) -> None:
    inner, outer = make_queue(), make_queue()
    outer.put(["first", PutsWhilePickled(inner), "last"])
    assert inner.get() == ("inner", list(range(10)))
    assert outer.get() == ["first", "outer", "last"]
