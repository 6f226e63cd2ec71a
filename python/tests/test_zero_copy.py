"""Zero copy: received arrays are the message in shared memory, freed with their last view;
small ones and get(copy=True) are private copies; loans are built in place. Also the wire
format of a frame, and a large put that lets other threads run."""

from __future__ import annotations

import gc
import os
import pickle
import struct
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmq
from _queue_helpers import MiB, inside_mapping, make_queue  # noqa: F401  (a fixture)
from shmq import _shmq


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def settle(chan: Any, expected: int, timeout: float = 5.0) -> int:
    """The channel's free arena bytes once they reach ``expected`` (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while (free := chan.free_arena_bytes()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return free


def test_received_array_is_the_message_in_shared_memory(make_queue: Any) -> None:
    q = make_queue()
    sent = np.arange(MiB // 8, dtype=np.float64)  # 1 MiB
    q.put(sent)
    got = q.get()
    assert np.array_equal(got, sent)
    assert not got.flags.owndata
    assert inside_mapping(address(got), q.name), "the array's data is not in the queue's mapping"
    assert address(got) % 4096 == 0  # a large buffer starts on a page of its own
    assert not inside_mapping(address(sent), q.name)


def test_message_is_freed_when_the_last_view_goes(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    empty = chan.free_arena_bytes()
    q.put(np.ones(MiB // 8))
    held = empty - chan.free_arena_bytes()
    assert held >= MiB
    got = q.get()
    part = got[10:20]  # a view of the array: keeps the message alive on its own
    memory = memoryview(got)
    del got
    gc.collect()
    assert chan.free_arena_bytes() == empty - held
    del memory
    assert chan.free_arena_bytes() == empty - held
    assert part.sum() == 10
    del part
    assert settle(chan, empty) == empty
    # Closing the queue never invalidates an array still held.
    q.put(np.full(MiB // 8, 3.0))
    got = q.get()
    q.close()
    assert got.sum() == 3.0 * (MiB // 8)
    del got


def test_small_buffers_are_copied_at_receipt(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    empty = chan.free_arena_bytes()
    small = np.arange(5000, dtype=np.float64)  # 40 KB: out of band, under the 64 KiB threshold
    q.put(small)
    got = q.get()
    assert np.array_equal(got, small) and got.flags.writeable
    assert not inside_mapping(address(got), q.name)
    assert chan.free_arena_bytes() == empty  # its pages went back at once
    assert shmq.get_copy_threshold() == 64 << 10
    shmq.set_copy_threshold(0)
    try:
        q.put(small)
        got = q.get()
        assert inside_mapping(address(got), q.name)
        assert chan.free_arena_bytes() < empty
        del got
        assert settle(chan, empty) == empty
    finally:
        shmq.set_copy_threshold(64 << 10)
    with pytest.raises(ValueError):
        shmq.set_copy_threshold(-1)


def test_get_copy_owns_its_data(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    empty = chan.free_arena_bytes()
    q.put({"array": np.arange(MiB // 8, dtype=np.int64), "view": memoryview(bytes(200_000))})
    got = q.get(copy=True)
    array = got["array"]
    assert not inside_mapping(address(array), q.name)
    assert array.flags.writeable
    array[0] = 99
    assert chan.free_arena_bytes() == empty  # nothing of the message is held
    assert array[1:].sum() == sum(range(1, MiB // 8))
    assert bytes(got["view"]) == bytes(200_000)


def test_received_array_is_writable(make_queue: Any) -> None:
    q = make_queue()
    q.put(np.zeros(MiB // 8))
    got = q.get()
    assert inside_mapping(address(got), q.name)
    assert got.flags.writeable  # as multiprocessing's received arrays are
    got[:] = 1.0
    assert got.sum() == MiB // 8


def test_received_memoryview_and_bytes(make_queue: Any) -> None:
    q = make_queue()
    data = bytes(range(256)) * 4096  # 1 MiB
    q.put(memoryview(data))
    view = q.get()
    assert isinstance(view, memoryview) and view == data
    assert inside_mapping(address(np.frombuffer(view, np.uint8)), q.name)
    q.put(data)
    got = q.get()
    assert type(got) is bytes and got == data  # bytes own their memory: a copy
    q.put(bytearray(data))
    got = q.get()
    assert type(got) is bytearray and got == data


def test_loan_round_trip(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    empty = chan.free_arena_bytes()
    with q.loan((256, 512), "float32") as a:
        assert a.shape == (256, 512) and a.dtype == np.float32 and a.flags.writeable
        assert inside_mapping(address(a), q.name)
        assert chan.free_arena_bytes() < empty  # reserved
        assert q.qsize() == 0  # not sent yet
        a[:] = np.arange(512, dtype=np.float32)
        lent_at = address(a)
    assert not a.flags.writeable  # after the send the memory is the receiver's
    with pytest.raises(ValueError):
        a[0, 0] = 1
    assert q.qsize() == 1
    got = q.get()
    assert address(got) == lent_at  # the very memory the sender filled: no copy anywhere
    assert got.shape == (256, 512) and got.dtype == np.float32
    assert np.array_equal(got, np.broadcast_to(np.arange(512, dtype=np.float32), (256, 512)))
    del got, a
    assert settle(chan, empty) == empty


def test_loan_discarded_on_exception(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    empty = chan.free_arena_bytes()
    with pytest.raises(RuntimeError, match="halfway"):
        with q.loan(100_000, np.int64) as a:
            a[:50_000] = 1
            raise RuntimeError("halfway")
    assert not a.flags.writeable
    assert q.qsize() == 0
    # While the array (a view of the loan) lives, its room stays parked: nothing else is given
    # memory that a stale view could still write.
    assert chan.free_arena_bytes() < empty
    lent: Any = a
    while isinstance(lent, (np.ndarray, memoryview)):
        lent = lent.base if isinstance(lent, np.ndarray) else lent.obj
    assert isinstance(lent, _shmq.Loan) and not lent.pending
    with pytest.raises(BufferError):
        memoryview(lent)  # a spent loan exports no more
    del a
    gc.collect()
    assert chan.free_arena_bytes() == empty  # the last view gone, the room is back


def test_loan_sizes_outside_the_arena_fall_back_to_a_copy(make_queue: Any) -> None:
    q = make_queue(capacity_bytes=1 * MiB)
    with q.loan((2 * MiB // 8,)) as big:  # larger than the arena
        big[:] = 2.0
    with q.loan(3, "i2") as tiny:
        tiny[:] = [1, 2, 3]
    with q.loan(()) as scalar:
        scalar[()] = 5
    assert q.get().sum() == 2.0 * (2 * MiB // 8)
    assert q.get().tolist() == [1, 2, 3]
    assert q.get() == 5.0
    with pytest.raises(TypeError):
        q.loan(3, object)


def test_loan_waits_for_room_or_raises_full(make_queue: Any) -> None:
    import queue

    q = make_queue(capacity_bytes=1 * MiB)
    held = q.loan(700_000, np.uint8)
    array = held.__enter__()
    with pytest.raises(queue.Full):
        with q.loan(700_000, np.uint8, block=False):
            pass
    with pytest.raises(queue.Full):
        with q.loan(700_000, np.uint8, timeout=0.1):
            pass
    held.__exit__(None, None, None)
    assert q.get().shape == array.shape
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.loan(10)


def _frame(kind: int, pickled: bytes, buffers: list[bytes], *, magic: bytes = b"SHQP",
           version: int = 1, table: list[tuple[int, int]] | None = None) -> bytes:
    """A frame built by hand from the layout documented in python/src/frame.rs."""
    header_len, entry_len = _shmq.FRAME_HEADER_LEN, _shmq.FRAME_ENTRY_LEN
    end = header_len + entry_len * len(buffers) + len(pickled)
    places = []
    for buffer in buffers:
        align = 4096 if len(buffer) >= 64 << 10 else 64
        offset = -(-end // align) * align
        places.append((offset, len(buffer)))
        end = offset + len(buffer)
    entries = table if table is not None else places
    out = bytearray(end)
    struct.pack_into("<4sBBHIIQ", out, 0, magic, version, kind, 0, len(entries), 0, len(pickled))
    for i, (offset, length) in enumerate(entries):
        struct.pack_into("<QQ", out, header_len + entry_len * i, offset, length)
    start = header_len + entry_len * len(entries)
    out[start:start + len(pickled)] = pickled
    for (offset, length), buffer in zip(places, buffers):
        out[offset:offset + length] = buffer
    return bytes(out)


def test_wire_format_as_documented(make_queue: Any) -> None:
    q = make_queue()
    chan = q._chan
    assert _shmq.FRAME_VERSION == 1 and _shmq.FRAME_HEADER_LEN == 24
    array = np.arange(20_000, dtype=np.int64)
    buffers: list[bytes] = []
    pickled = pickle.dumps(array, protocol=5, buffer_callback=lambda b: buffers.append(b.raw().tobytes()))
    assert chan.send_raw(_frame(_shmq.FRAME_KIND_PICKLE, pickled, buffers))
    assert np.array_equal(q.get(), array)
    assert chan.send_raw(_frame(_shmq.FRAME_KIND_BYTES, b"", [b"raw bytes"]))
    assert q.get() == b"raw bytes"
    # And what shmq writes reads back as the layout says.
    q.put((1, "two"))
    raw = chan.recv_raw()
    magic, version, kind, _, nbuf, _, pickle_len = struct.unpack_from("<4sBBHIIQ", raw)
    assert (magic, version, kind, nbuf) == (b"SHQP", 1, _shmq.FRAME_KIND_PICKLE, 0)
    assert pickle.loads(raw[24:24 + pickle_len]) == (1, "two")


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"short",
        _frame(0, pickle.dumps(1), [], magic=b"NOPE"),
        _frame(0, pickle.dumps(1), [], version=2),
        _frame(0, pickle.dumps(1), [b"x" * 100], table=[(10, 100)]),  # overlaps the header
        _frame(0, pickle.dumps(1), [b"x" * 100], table=[(128, 2**40)]),  # past the end
        _frame(0, pickle.dumps(1), [b"x" * 100], table=[(2**64 - 8, 16)]),  # wraps around
        _frame(0, pickle.dumps(1), [], table=[(0, 0)] * 0)[:20] + b"\xff" * 40,
        struct.pack("<4sBBHIIQ", b"SHQP", 1, 0, 0, 2**31, 0, 0),  # a huge table
        struct.pack("<4sBBHIIQ", b"SHQP", 1, 0, 0, 0, 0, 2**63),  # a huge pickle
    ],
    ids=range(10),
)
def test_corrupt_frames_are_refused_and_the_queue_goes_on(bad: bytes, make_queue: Any) -> None:
    q = make_queue()
    assert q._chan.send_raw(bad)
    with pytest.raises(shmq.CorruptedError, match="not a valid shmq frame"):
        q.get(timeout=10)
    q.put("next")
    assert q.get(timeout=10) == "next"


def test_other_threads_run_during_a_large_put(make_queue: Any) -> None:
    q = make_queue(capacity_bytes=160 * MiB)
    big = np.ones(128 * MiB // 8)
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0)  # lets the GIL go each time

    ticker = threading.Thread(target=tick)
    ticker.start()
    during = []
    try:
        time.sleep(0.05)
        # A 128 MiB copy takes about 10 ms here. With the GIL released the ticker runs about
        # a hundred times meanwhile; with it held, once or twice (at the put's edges). The
        # best of a few puts, so that a moment of CPU starvation does not decide.
        for _ in range(5):
            before = ticks
            q.put(big)
            during.append(ticks - before)
            if during[-1] >= 20:
                break
            q.get()
    finally:
        stop.set()
        ticker.join()
    assert max(during) >= 20, f"the other thread ticked only {during} times during the puts"


def test_a_stale_view_of_a_discarded_loan_never_writes_into_another_message(
    unique_name: str,
) -> None:
    # A view of a loan given up unsent keeps the room: the next message gets other room, and
    # writing the stale view changes nothing another message holds.
    from shmq._shmq import Channel

    chan = Channel.create(unique_name, 16, 1 << 20)
    try:
        loan = chan.loan(0, b"p" * 5000, 8192)
        assert loan is not None
        stale = memoryview(loan)
        assert not stale.readonly
        loan.discard()
        with pytest.raises(BufferError):
            memoryview(loan)
        chan.send_frame(0, b"q" * 5000, [b"\0" * 8192])
        stale[:4] = b"EVIL"
        _, _, buffers = chan.recv_frame(copy=True)
        assert bytes(buffers[0][:4]) == b"\0\0\0\0"
        free_with_view = chan.free_arena_bytes()
        stale.release()  # the last view: the parked room goes back now
        assert chan.free_arena_bytes() > free_with_view
    finally:
        chan.close()


def test_an_inherited_message_is_exported_read_only_in_a_fork_child(unique_name: str) -> None:
    from shmq._shmq import Channel

    chan = Channel.create(unique_name, 16, 1 << 20)
    try:
        chan.send_frame(3, b"", [b"a" * 100_000])
        _, _, buffers = chan.recv_frame()
        inherited = buffers[0]
        assert not memoryview(inherited).readonly
        pid = os.fork()
        if pid == 0:
            ok = memoryview(inherited).readonly and inherited.readonly
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        chan.close()
