"""shmq.Pipe and shmq.Connection: multiprocessing's semantics and errors, with real processes
(fork and spawn): send/recv and the bytes calls, every error multiprocessing raises, end of file
on close and on SIGKILL of the peer, select and multiprocessing.connection.wait on fileno(),
signals (PEP 475 and Ctrl-C), large messages, pickling to children, and the lifetime of a
pipe's shared memory when ends are closed early."""

from __future__ import annotations

import array
import gc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmq
from shmq import connection
from conftest import sigkill

HANG = 60  # seconds: a bound that only a hang exceeds

BIG = 6 << 20  # larger than a pipe's default 4 MiB arena: travels in an overflow segment


def _pipe_segments() -> set[str]:
    """This process's pipe segments in /dev/shm (children that make one again use its name)."""
    prefix = f"shmq.pipe-{os.getpid()}-"
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)}


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    """Every test leaves no pipe segment behind. Connections dropped by the test are closed by
    the garbage collector; senders that closed with messages never received keep their channel
    until this process exits (by design): they are released here as exit would."""
    yield
    gc.collect()
    connection._close_lingering()
    deadline = time.monotonic() + 10
    while (left := _pipe_segments()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left in /dev/shm: {sorted(left)}"


# --- children (top level, so that spawned children find them) -------------------------------


def echo_bytes(conn: shmq.Connection) -> None:
    for msg in iter(conn.recv_bytes, b"STOP"):
        conn.send_bytes(msg)
    conn.close()


def answer_then_leave(conn: shmq.Connection) -> None:
    x = conn.recv()
    conn.send(("got", x))
    conn.send_bytes(b"bye")
    # No close(): the process's exit closes its end.


def send_many_and_exit(conn: shmq.Connection, n: int) -> None:
    for i in range(n):
        conn.send(i)
    conn.send_bytes(b"\x5a" * BIG)
    conn.send(np.arange(BIG // 8, dtype=np.int64))


def say_ready_then_sleep(conn: shmq.Connection) -> None:
    conn.send("first")
    conn.send_bytes(b"second")
    conn.send("ready")
    time.sleep(HANG)  # until killed, never reading what the parent sent


def big_roundtrip(conn: shmq.Connection, size: int) -> None:
    target = bytearray(size + 16)
    n = conn.recv_bytes_into(target, 16)
    conn.send((n, zlib.crc32(memoryview(target)[16 : 16 + n])))
    data = conn.recv_bytes()
    conn.send((len(data), zlib.crc32(data)))
    conn.send_bytes(data, 1000, size - 2000)


def drain_and_report(r: shmq.Connection, report: shmq.Connection, unused: Any) -> None:
    unused.close()  # a forked child inherits the writing end: end of file needs it closed
    got: list[Any] = []
    try:
        while True:
            got.append(r.recv_bytes())
    except EOFError:
        pass
    report.send([len(x) for x in got])


def writer_child(a: shmq.Connection) -> None:
    a.send("hello")
    assert a.recv() == "ack"


def reader_child(b: shmq.Connection) -> None:
    assert b.recv() == "hello"
    b.send("ack")


def use_connection_from_queue(q: shmq.Queue) -> None:
    w = q.get()
    w.send("through a queue")
    w.close()


def hold_and_never_read(r: shmq.Connection, ready: shmq.Connection) -> None:
    ready.send("holding")
    time.sleep(HANG)


# --- in one process -------------------------------------------------------------------------


def test_public_names() -> None:
    assert "Pipe" in shmq.__all__ and "Connection" in shmq.__all__
    assert shmq.Pipe is connection.Pipe and shmq.Connection is connection.Connection
    for obj in (shmq.Pipe, shmq.Connection, *vars(shmq.Connection).values()):
        name = getattr(obj, "__name__", "")
        if callable(obj) and not name.startswith("_"):
            assert obj.__doc__, name
    for prop in ("closed", "readable", "writable"):
        assert getattr(shmq.Connection, prop).__doc__


def test_objects_travel_both_ways() -> None:
    a, b = shmq.Pipe()
    objects: list[Any] = [
        None,
        0,
        -(2**70),
        2.25,
        "héllo",
        b"bytes",
        bytearray(b"ba"),
        [1, (2, 3), {"k": {4}}],
        np.arange(10),
        np.arange(1 << 17, dtype=np.float64).reshape(256, 512),
        b"x" * 100_000,
    ]
    for src, dst in ((a, b), (b, a)):
        for obj in objects:
            src.send(obj)
        for obj in objects:
            got = dst.recv()
            assert type(got) is type(obj)
            if isinstance(obj, np.ndarray):
                assert np.array_equal(got, obj) and got.dtype == obj.dtype
            else:
                assert got == obj
    view = memoryview(bytes(range(256)) * 64).cast("B", (64, 256))
    a.send(view)
    got = b.recv()
    assert isinstance(got, memoryview) and got.shape == (64, 256) and got.tobytes() == view.tobytes()
    assert not a.poll() and not b.poll()
    a.close()
    b.close()


def test_send_bytes_offset_size_and_errors() -> None:
    msg = b"abcdefghijklmnopqrstuvwxyz"
    a, b = shmq.Pipe()
    a.send_bytes(msg)
    assert b.recv_bytes() == msg
    a.send_bytes(msg, 5)
    assert b.recv_bytes() == msg[5:]
    a.send_bytes(msg, 7, 8)
    assert b.recv_bytes() == msg[7:15]
    a.send_bytes(msg, 26)
    assert b.recv_bytes() == b""
    a.send_bytes(msg, 26, 0)
    assert b.recv_bytes() == b""
    for args, text in (
        ((27,), "buffer length < offset"),
        ((22, 5), "buffer length < offset \\+ size"),
        ((26, 1), "buffer length < offset \\+ size"),
        ((-1,), "offset is negative"),
        ((4, -1), "size is negative"),
    ):
        with pytest.raises(ValueError, match=f"^{text}$"):
            a.send_bytes(msg, *args)
    assert not b.poll()  # nothing was sent by the failed calls
    # Typed and multi-dimensional buffers travel as their bytes; offsets count bytes.
    ints = array.array("i", range(10))
    a.send_bytes(ints, 8, 12)
    assert b.recv_bytes() == ints.tobytes()[8:20]
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4)
    a.send_bytes(grid, 2)
    assert b.recv_bytes() == grid.tobytes()[2:]
    with pytest.raises(TypeError):
        a.send_bytes("text")  # not a bytes-like object, as with multiprocessing
    a.close()
    b.close()


def test_send_and_bytes_mix_as_in_multiprocessing() -> None:
    a, b = shmq.Pipe()
    # recv_bytes of what send() sent is its pickle; recv() of bytes unpickles them.
    a.send({"x": 1})
    assert pickle.loads(b.recv_bytes()) == {"x": 1}
    a.send_bytes(pickle.dumps([1, 2, 3]))
    assert b.recv() == [1, 2, 3]
    # Also with out-of-band buffers (a large array), and into a buffer.
    arr = np.arange(100_000, dtype=np.int32)
    a.send(arr)
    assert np.array_equal(pickle.loads(b.recv_bytes()), arr)
    a.send(arr)
    target = bytearray(2 << 20)
    n = b.recv_bytes_into(target)
    assert np.array_equal(pickle.loads(target[:n]), arr)
    a.send(arr)
    with pytest.raises(OSError, match="^bad message length$"):
        b.recv_bytes(1000)
    a.close()
    b.close()


def test_recv_bytes_maxlength() -> None:
    a, b = shmq.Pipe()
    with pytest.raises(ValueError, match="^negative maxlength$"):
        b.recv_bytes(-1)
    a.send_bytes(b"x" * 10)
    assert b.recv_bytes(10) == b"x" * 10
    a.send_bytes(b"y" * 11)
    a.send("next")
    with pytest.raises(OSError, match="^bad message length$"):
        b.recv_bytes(10)
    # As multiprocessing does: a duplex connection stops being readable, and still sends.
    assert not b.readable and b.writable and not b.closed
    with pytest.raises(OSError, match="^connection is write-only$"):
        b.recv()
    b.send("still sends")
    assert a.recv() == "still sends"
    a.close()
    b.close()
    # A read-only connection is closed.
    r, w = shmq.Pipe(duplex=False)
    w.send_bytes(b"z" * BIG)
    with pytest.raises(OSError, match="^bad message length$"):
        r.recv_bytes(BIG - 1)
    assert r.closed
    with pytest.raises(OSError, match="^handle is closed$"):
        r.recv_bytes()
    w.close()


def test_recv_bytes_into() -> None:
    a, b = shmq.Pipe()
    arr = array.array("i", range(4))
    buffer = array.array("i", [0] * 10)
    a.send_bytes(arr)
    assert b.recv_bytes_into(buffer) == 16
    assert list(buffer) == [0, 1, 2, 3] + [0] * 6
    buffer = array.array("i", [0] * 10)
    a.send_bytes(arr)
    assert b.recv_bytes_into(buffer, 3 * buffer.itemsize) == 16
    assert list(buffer) == [0] * 3 + [0, 1, 2, 3] + [0] * 3
    # Too small: BufferTooShort with the whole message, which is consumed.
    longmsg = b"hello world" * 10
    a.send_bytes(longmsg)
    a.send_bytes(b"after")
    small = bytearray(b" " * 40)
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        b.recv_bytes_into(small)
    assert info.value.args == (longmsg,)
    assert small == bytearray(b" " * 40)
    assert b.recv_bytes() == b"after"
    # Fits exactly at the end; one byte more does not.
    a.send_bytes(b"12345")
    exact = bytearray(10)
    assert b.recv_bytes_into(exact, 5) == 5 and exact == bytearray(5) + b"12345"
    a.send_bytes(b"123456")
    with pytest.raises(multiprocessing.BufferTooShort):
        b.recv_bytes_into(exact, 5)
    # Bad offsets and read-only buffers fail before a message is taken.
    a.send_bytes(b"kept")
    with pytest.raises(ValueError, match="^negative offset$"):
        b.recv_bytes_into(bytearray(10), -1)
    with pytest.raises(ValueError, match="^offset too large$"):
        b.recv_bytes_into(bytearray(10), 11)
    with pytest.raises(TypeError):
        b.recv_bytes_into(b"read-only bytes")
    into = np.zeros(8, dtype=np.uint8)
    assert b.recv_bytes_into(into, 4) == 4 and into[4:].tobytes() == b"kept"
    # Large, into a numpy array.
    data = np.random.default_rng(1).integers(0, 255, BIG, dtype=np.uint8)
    a.send_bytes(data)
    out = np.empty(BIG + 100, dtype=np.uint8)
    assert b.recv_bytes_into(out, 100) == BIG
    assert np.array_equal(out[100:], data)
    a.close()
    b.close()


def test_errors_after_close() -> None:
    a, b = shmq.Pipe()
    assert not a.closed
    a.close()
    a.close()  # twice is fine
    assert a.closed
    for call in (
        lambda: a.send(1),
        lambda: a.send_bytes(b"x"),
        a.recv,
        a.recv_bytes,
        lambda: a.recv_bytes_into(bytearray(8)),
        a.poll,
        a.fileno,
    ):
        with pytest.raises(OSError, match="^handle is closed$"):
            call()
    b.close()
    with shmq.Pipe()[0] as c:
        assert not c.closed
    assert c.closed


def test_context_manager() -> None:
    a, b = shmq.Pipe()
    with a, b:
        a.send(1729)
        assert b.recv() == 1729
    assert a.closed and b.closed
    with pytest.raises(OSError):
        a.recv()


def test_duplex_false_directions() -> None:
    reader, writer = shmq.Pipe(duplex=False)
    assert (reader.readable, reader.writable) == (True, False)
    assert (writer.readable, writer.writable) == (False, True)
    writer.send(1)
    assert reader.recv() == 1
    assert reader.fileno() != writer.fileno()
    for call in (lambda: reader.send(2), lambda: reader.send_bytes(b"2")):
        with pytest.raises(OSError, match="^connection is read-only$"):
            call()
    for call in (
        writer.recv,
        writer.recv_bytes,
        lambda: writer.recv_bytes_into(bytearray(8)),
        writer.poll,
    ):
        with pytest.raises(OSError, match="^connection is write-only$"):
            call()
    reader.close()
    writer.close()


def test_poll() -> None:
    a, b = shmq.Pipe()
    assert a.poll() is False
    assert a.poll(-1) is False
    t = time.monotonic()
    assert a.poll(0.2) is False
    assert time.monotonic() - t >= 0.15
    b.send_bytes(b"")
    assert a.poll() is True and a.poll() is True  # poll does not consume
    assert a.recv_bytes() == b""
    assert a.poll(0) is False
    threading.Timer(0.2, b.send, ("late",)).start()
    assert a.poll(None) is True
    assert a.recv() == "late"
    b.close()
    assert a.poll() is True  # end of file counts as readable
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def test_end_of_file_after_everything_sent() -> None:
    a, b = shmq.Pipe()
    a.send(1)
    a.send_bytes(b"two")
    a.send_bytes(b"3" * BIG)
    a.close()
    assert b.recv() == 1
    assert b.recv_bytes() == b"two"
    assert b.recv_bytes() == b"3" * BIG
    for call in (b.recv, b.recv_bytes, lambda: b.recv_bytes_into(bytearray(9))):
        with pytest.raises(EOFError):
            call()
    b.close()
    r, w = shmq.Pipe(duplex=False)
    w.close()
    with pytest.raises(EOFError):
        r.recv()
    r.close()


def test_send_to_closed_peer_raises_broken_pipe() -> None:
    a, b = shmq.Pipe()
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send(1)
    a.close()
    r, w = shmq.Pipe(duplex=False)
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send_bytes(b"x")
    w.close()


def test_a_failed_pickle_sends_nothing() -> None:
    a, b = shmq.Pipe()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        a.send(lambda: 0)
    with pytest.raises(TypeError):
        a.send(threading.Lock())
    a.send("fine")
    assert b.recv() == "fine" and not b.poll()
    a.close()
    b.close()


def test_a_token_without_its_message_raises_instead_of_hanging() -> None:
    # What a receiver sees when a message was lost with its channel (see the module docs of
    # shmq.connection): simulated by a token written by hand.
    a, b = shmq.Pipe()
    os.write(a.fileno(), b"\0")
    with pytest.raises(shmq.NotFoundError, match="lost"):
        b.recv()
    a.send("next")
    assert b.recv() == "next"
    os.write(a.fileno(), b"\0")
    with pytest.raises(shmq.NotFoundError):
        b.recv_bytes()
    a.close()
    b.close()


def test_large_arrays_are_received_in_place() -> None:
    a, b = shmq.Pipe()
    rx = b._rx
    assert rx is not None
    free = rx.free_arena_bytes()
    sent = np.arange(1 << 17, dtype=np.float64)  # 1 MiB: in the arena
    a.send(sent)
    got = b.recv()
    assert np.array_equal(got, sent)
    assert rx.free_arena_bytes() <= free - sent.nbytes  # the array is the message
    del got
    gc.collect()
    assert rx.free_arena_bytes() == free
    a.send(sent)
    copied = b.recv(copy=True)
    assert rx.free_arena_bytes() == free and copied.flags.writeable
    assert np.array_equal(copied, sent)
    a.close()
    b.close()


def test_many_messages_through_a_slow_reader() -> None:
    # More messages than the socket holds tokens for (about 280) and than the ring has slots:
    # the sender waits, nothing is lost or reordered.
    a, b = shmq.Pipe()
    n = 5000
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(n):
                a.send(i)
                if i % 7 == 0:
                    a.send_bytes(b"%d" % i)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    for i in range(n):
        assert b.recv() == i
        if i % 7 == 0:
            assert b.recv_bytes() == b"%d" % i
        if i == 100:
            time.sleep(0.3)  # let the sender fill everything up
    t.join(HANG)
    assert not errors and not b.poll()
    a.close()
    b.close()


def test_capacity_bytes() -> None:
    a, b = shmq.Pipe(capacity_bytes=1 << 20)
    assert a._tx is not None and a._tx.arena_bytes() == 1 << 20
    a.send_bytes(b"q" * (2 << 20))  # larger than the arena: still travels
    assert b.recv_bytes() == b"q" * (2 << 20)
    a.close()
    b.close()
    with pytest.raises(ValueError):
        shmq.Pipe(capacity_bytes=0)


def test_capacity_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMQ_PIPE_CAPACITY_BYTES", str(2 << 20))
    r, w = shmq.Pipe(False)
    assert w._tx is not None and w._tx.arena_bytes() == 2 << 20
    r.close()
    w.close()
    monkeypatch.setenv("SHMQ_PIPE_CAPACITY_BYTES", "lots")
    with pytest.raises(ValueError, match="SHMQ_PIPE_CAPACITY_BYTES"):
        shmq.Pipe()


# --- select and multiprocessing.connection.wait ---------------------------------------------


def test_fileno_works_with_select_and_wait() -> None:
    a, b = shmq.Pipe()
    ma, mb = multiprocessing.Pipe()
    r, w = shmq.Pipe(duplex=False)
    assert isinstance(a.fileno(), int) and isinstance(w.fileno(), int)
    wait = multiprocessing.connection.wait
    assert select.select([a, r], [], [], 0) == ([], [], [])
    assert wait([a, ma, r], 0) == []
    b.send("x")
    assert select.select([a, r], [], [], 0)[0] == [a]
    assert wait([a, ma, r], 0) == [a]
    mb.send("y")
    assert set(wait([a, ma, r], 0)) == {a, ma}
    assert a.recv() == "x" and ma.recv() == "y"
    assert wait([a, ma, r], 0.1) == []
    w.send_bytes(b"z")
    assert wait([a, ma, r], HANG) == [r]
    assert r.recv_bytes() == b"z"
    # A wait that blocks is woken by a message from another thread, and by end of file.
    threading.Timer(0.2, b.send, ("late",)).start()
    assert wait([a, ma], HANG) == [a]
    assert a.recv() == "late"
    threading.Timer(0.2, w.close).start()
    assert wait([a, ma, r], HANG) == [r]
    with pytest.raises(EOFError):
        r.recv()
    for c in (a, b, ma, mb, r):
        c.close()


def test_wait_on_a_child(ctx: multiprocessing.context.BaseContext, reaper: list[Any]) -> None:
    a, b = shmq.Pipe()
    ma, mb = multiprocessing.Pipe()
    p = ctx.Process(target=answer_then_leave, args=(b,))
    p.start()
    reaper.append(p)
    b.close()
    assert multiprocessing.connection.wait([a, ma], 0.2) == []
    a.send("question")
    assert multiprocessing.connection.wait([a, ma], HANG) == [a]
    assert a.recv() == ("got", "question")
    assert a.recv_bytes() == b"bye"
    p.join(HANG)
    assert multiprocessing.connection.wait([a, ma], HANG) == [a]  # end of file
    with pytest.raises(EOFError):
        a.recv()
    for c in (a, ma, mb):
        c.close()


# --- signals --------------------------------------------------------------------------------


def test_signal_handler_that_returns_lets_recv_and_poll_go_on() -> None:
    a, b = shmq.Pipe()
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    main = threading.main_thread().ident
    assert main is not None
    stop = threading.Event()

    def pester() -> None:
        while not stop.wait(0.01):
            signal.pthread_kill(main, signal.SIGUSR1)

    pesterer = threading.Thread(target=pester)
    pesterer.start()
    try:
        t = time.monotonic()
        assert a.poll(0.3) is False  # keeps its timeout through the signals
        assert time.monotonic() - t >= 0.25
        count = len(seen)
        threading.Timer(0.3, b.send, ("after the signals",)).start()
        assert a.recv() == "after the signals"
        threading.Timer(0.3, b.send_bytes, (b"bytes too",)).start()
        assert a.recv_bytes() == b"bytes too"
        assert len(seen) > count + 5
    finally:
        stop.set()
        pesterer.join()
        signal.signal(signal.SIGUSR1, old)
    a.close()
    b.close()


def test_ctrl_c_interrupts_a_blocked_recv() -> None:
    a, b = shmq.Pipe()
    for call in (a.recv, a.recv_bytes, lambda: a.poll(None)):
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        t = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            call()
        timer.join()
        assert time.monotonic() - t < 5  # well within; typically 0.2 s
    # The connection is intact.
    b.send("after")
    assert a.recv() == "after"
    a.close()
    b.close()


# --- with children --------------------------------------------------------------------------


def test_classic_pattern(ctx: multiprocessing.context.BaseContext, reaper: list[Any]) -> None:
    parent, child = shmq.Pipe()
    p = ctx.Process(target=answer_then_leave, args=(child,))
    p.start()
    reaper.append(p)
    child.close()  # right after start: the child keeps its own end
    parent.send(42)
    assert parent.recv() == ("got", 42)
    assert parent.recv_bytes() == b"bye"
    p.join(HANG)
    assert p.exitcode == 0
    with pytest.raises(EOFError):
        parent.recv()
    parent.close()


def test_echo_child(ctx: multiprocessing.context.BaseContext, reaper: list[Any]) -> None:
    conn, child = shmq.Pipe()
    p = ctx.Process(target=echo_bytes, args=(child,))
    p.start()
    reaper.append(p)
    child.close()
    for msg in (b"hello", b"", b"x" * 100_000, b"y" * BIG):
        conn.send_bytes(msg)
        assert conn.recv_bytes() == msg
    conn.send_bytes(b"STOP")
    assert conn.poll(HANG)
    with pytest.raises(EOFError):
        conn.recv_bytes()
    p.join(HANG)
    conn.close()


def test_everything_sent_before_exit_is_received_after(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    parent, child = shmq.Pipe()
    p = ctx.Process(target=send_many_and_exit, args=(child, 200))
    p.start()
    reaper.append(p)
    child.close()
    p.join(HANG)  # the sender is gone before anything is received
    assert p.exitcode == 0
    assert [parent.recv() for _ in range(200)] == list(range(200))
    assert parent.recv_bytes() == b"\x5a" * BIG
    assert np.array_equal(parent.recv(), np.arange(BIG // 8, dtype=np.int64))
    with pytest.raises(EOFError):
        parent.recv()
    with pytest.raises(EOFError):
        parent.recv_bytes()
    parent.close()


def test_end_of_file_when_the_peer_is_killed(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    parent, child = shmq.Pipe()
    p = ctx.Process(target=say_ready_then_sleep, args=(child,))
    p.start()
    reaper.append(p)
    child.close()
    assert parent.recv() == "first"
    # Left unread by the child: multiprocessing's next read after the kill would raise
    # ConnectionResetError; shmq's is the end of file.
    parent.send("never read")
    # Killed while this process waits in recv(): what it sent before still arrives.
    killer = threading.Timer(0.3, sigkill, (p,))
    killer.start()
    assert parent.recv_bytes() == b"second"
    assert parent.recv() == "ready"
    t = time.monotonic()
    with pytest.raises(EOFError):
        parent.recv()
    assert time.monotonic() - t < HANG
    killer.join()
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(BrokenPipeError):
        parent.send("nobody is there")
    parent.close()


def test_blocked_sender_learns_that_the_reader_was_killed(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    r, w = shmq.Pipe(duplex=False, capacity_bytes=1 << 20)
    ready_r, ready_w = shmq.Pipe(duplex=False)
    p = ctx.Process(target=hold_and_never_read, args=(r, ready_w))
    p.start()
    reaper.append(p)
    r.close()
    ready_w.close()
    assert ready_r.recv() == "holding"
    killer = threading.Timer(0.5, sigkill, (p,))
    killer.start()
    t = time.monotonic()
    with pytest.raises(BrokenPipeError):
        while True:  # fills the 1 MiB arena, then waits for room that never comes
            w.send_bytes(b"w" * (256 << 10))
    assert time.monotonic() - t < HANG
    killer.join()
    w.close()
    ready_r.close()


def test_large_messages_across_processes(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    size = 300 << 20
    conn, child = shmq.Pipe()
    p = ctx.Process(target=big_roundtrip, args=(child, size))
    p.start()
    reaper.append(p)
    child.close()
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    crc = zlib.crc32(data)
    conn.send_bytes(data)
    assert conn.recv() == (size, crc)
    conn.send_bytes(data)
    assert conn.recv() == (size, crc)
    back = bytearray(size)
    assert conn.recv_bytes_into(back) == size - 2000
    assert back[: size - 2000] == data[1000 : size - 1000]
    p.join(HANG)
    assert p.exitcode == 0
    conn.close()


def test_reader_that_opens_after_the_sender_closed(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    r, w = shmq.Pipe(duplex=False)
    report_r, report_w = shmq.Pipe(duplex=False)
    p = ctx.Process(target=drain_and_report, args=(r, report_w, w))
    p.start()
    reaper.append(p)
    r.close()
    report_w.close()
    for n in (1, 10, 100, BIG):
        w.send_bytes(b"m" * n)
    w.close()  # before a spawned child has even opened the channel
    assert report_r.recv() == [1, 10, 100, BIG]
    p.join(HANG)
    connection._sweep()
    assert not connection._lingering  # released once drained
    report_r.close()


def keep_nothing(a: shmq.Connection) -> None:
    pass


def test_what_a_forked_child_keeps_is_counted_until_it_is_seen_to_exit() -> None:
    from shmq import _handles

    a, b = shmq.Pipe()
    channels = a._shmq_handles()
    child = multiprocessing.get_context("fork").Process(target=keep_nothing, args=(a,))
    child.start()
    try:
        assert all(_handles.kept_for_child(chan) for chan in channels)
        a.close()  # only lets go: the channels stay alive with the child's Popen
    finally:
        child.join(HANG)
    assert child.exitcode == 0
    assert not any(_handles.kept_for_child(chan) for chan in channels)
    del channels
    b.close()


def test_two_children_connected_by_a_pipe_the_parent_closed(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    a, b = shmq.Pipe()
    writer = ctx.Process(target=writer_child, args=(a,))
    reader = ctx.Process(target=reader_child, args=(b,))
    writer.start()
    reader.start()
    reaper.extend([writer, reader])
    a.close()
    b.close()
    writer.join(HANG)
    reader.join(HANG)
    assert (writer.exitcode, reader.exitcode) == (0, 0)


def test_connection_through_a_queue_and_a_connection(
    ctx: multiprocessing.context.BaseContext, reaper: list[Any]
) -> None:
    q = shmq.Queue()
    r, w = shmq.Pipe(duplex=False)
    p = ctx.Process(target=use_connection_from_queue, args=(q,))
    p.start()
    reaper.append(p)
    q.put(w)
    w.close()
    assert r.recv() == "through a queue"
    p.join(HANG)
    with pytest.raises(EOFError):
        r.recv()
    r.close()
    # And through a shmq connection (multiprocessing's resource sharer passes the descriptor).
    a, b = shmq.Pipe()
    r, w = shmq.Pipe(duplex=False)
    a.send(w)
    w.close()
    w2 = b.recv()
    assert isinstance(w2, shmq.Connection) and w2.writable and not w2.readable
    w2.send_bytes(b"via a connection")
    assert r.recv_bytes() == b"via a connection"
    w2.close()
    with pytest.raises(EOFError):
        r.recv()
    for c in (a, b, r):
        c.close()
    q.close()


# --- the largest messages (needs about 8 GiB of memory and of /dev/shm) ----------------------


def send_four_gib(conn: shmq.Connection, size: int) -> None:
    import mmap

    buf = mmap.mmap(-1, size)  # untouched pages read as zeros and cost no memory
    for at in range(0, size - 1, 256 << 20):
        buf[at] = (at >> 28) + 1
    buf[size - 1] = 0xEE
    conn.send_bytes(buf)
    conn.close()


@pytest.mark.skipif(
    os.environ.get("SHMQ_SLOW_TESTS") != "1",
    reason="slow: needs ~8 GiB of RAM and /dev/shm (run with SHMQ_SLOW_TESTS=1)",
)
def test_four_gib_send_bytes(reaper: list[Any]) -> None:
    size = (4 << 30) + 1
    r, w = shmq.Pipe(duplex=False)
    p = multiprocessing.get_context("fork").Process(target=send_four_gib, args=(w, size))
    p.start()
    reaper.append(p)
    w.close()
    target = bytearray(size)
    assert r.recv_bytes_into(target) == size
    view = np.frombuffer(target, dtype=np.uint8)
    marks = list(range(0, size - 1, 256 << 20))
    assert [view[at] for at in marks] == [(at >> 28) + 1 for at in marks]
    assert view[size - 1] == 0xEE
    assert np.count_nonzero(view) == len(marks) + 1
    p.join(HANG)
    assert p.exitcode == 0
    with pytest.raises(EOFError):
        r.recv_bytes()
    r.close()
