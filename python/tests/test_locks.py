"""shmq.Lock, shmq.RLock and the locks of Value/Array: re-entry, exclusion across processes, a
holder SIGKILLed inside the lock (OwnerDiedError once, then on), Ctrl-C in a blocked acquire,
fork and threads."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

import shmq
from conftest import sigkill

# --- in one process ------------------------------------------------------------------------


def test_lock_basics() -> None:
    lock = shmq.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False  # held, by this very thread: not re-entrant
    assert lock.acquire(True, 0.1) is False
    assert lock.acquire(timeout=-1) is False  # a negative timeout counts as 0
    assert lock.release() is None
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    with lock as entered:
        assert entered is True
        assert lock._core.is_mine()
    assert not lock._core.is_mine()
    assert lock.acquire(timeout=0) is True
    lock.release()


def test_lock_reacquired_by_its_holder_raises_instead_of_hanging() -> None:
    lock = shmq.Lock()
    with lock:
        with pytest.raises(RuntimeError, match="would deadlock"):
            lock.acquire()
    assert lock.acquire(False)
    lock.release()


def test_rlock_reentry() -> None:
    lock = shmq.RLock()
    for _ in range(3):
        assert lock.acquire() is True
    assert lock._core.count() == 3
    assert "MainProcess, 3" in repr(lock)
    for _ in range(3):
        lock.release()
    with pytest.raises(AssertionError, match="not owned by thread"):
        lock.release()
    with lock:
        with lock:
            assert lock.acquire(False)
            lock.release()
    assert lock._core.count() == 0


def test_locks_are_released_only_by_their_thread() -> None:
    lock, rlock = shmq.Lock(), shmq.RLock()
    lock.acquire()
    rlock.acquire()
    errors: list[BaseException] = []

    def other() -> None:
        for f in (lock.release, rlock.release):
            try:
                f()
            except BaseException as e:
                errors.append(e)
        errors.append(lock.acquire(False))  # type: ignore[arg-type]

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert isinstance(errors[0], RuntimeError) and "another thread or process" in str(errors[0])
    assert isinstance(errors[1], AssertionError)
    assert errors[2] is False  # still held by this thread
    lock.release()
    rlock.release()


def test_a_thread_that_exits_holding_a_lock_releases_it() -> None:
    lock = shmq.Lock()
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join(30)
    assert lock.acquire(timeout=10) is True
    lock.release()


def test_threads_contend_correctly() -> None:
    v = shmq.Value("i", 0)

    def work() -> None:
        for _ in range(2000):
            with v.get_lock():
                v.value += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert v.value == 8000


def test_blocked_acquire_releases_the_gil() -> None:
    lock = shmq.Lock()
    holder_ready, holder_done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holder_ready.set()
            holder_done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_ready.wait(30)
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        while not holder_done.is_set():
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    assert lock.acquire(timeout=0.5) is False  # blocks for 0.5 s, in Rust
    holder_done.set()
    ticker.join(30)
    holder.join(30)
    assert ticks > 10  # the ticker ran meanwhile (it cannot run while a thread holds the GIL)


# --- across processes ----------------------------------------------------------------------


def _hold(lock, ready, release) -> None:
    with lock:
        ready.set()
        release.wait(60)


def test_exclusion_across_processes(ctx: multiprocessing.context.BaseContext, reaper: list) -> None:
    for lock in (shmq.Lock(), shmq.RLock(), shmq.Value("i").get_lock()):
        ready, release = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_hold, args=(lock, ready, release))
        p.start()
        reaper.append(p)
        assert ready.wait(60)
        assert lock.acquire(False) is False
        assert lock.acquire(timeout=0.2) is False
        release.set()
        assert lock.acquire(timeout=30) is True
        lock.release()
        p.join(30)
        assert p.exitcode == 0


def _add(v, n: int) -> None:
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def test_value_and_array_with_lock_objects(ctx: multiprocessing.context.BaseContext) -> None:
    lock = shmq.RLock()
    v = shmq.Value("i", 0, lock=lock)
    a = shmq.Array("d", 3, lock=shmq.Lock())
    procs = [ctx.Process(target=_add, args=(v, 300)) for _ in range(2)]
    for p in procs:
        p.start()
    with a.get_lock():
        a.get_obj()[0] = 1.0  # with a plain Lock, touch the raw object inside the lock
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert v.value == 600
    assert a[0] == 1.0


def _lock_in_pool(lock) -> bool:
    with lock:
        return True


def test_locks_as_pool_task_arguments(ctx: multiprocessing.context.BaseContext) -> None:
    lock = shmq.Lock()
    with ctx.Pool(2) as pool:
        assert pool.map(_lock_in_pool, [lock] * 4) == [True] * 4


def _die_inside(v, ready) -> None:
    v.get_lock().acquire()
    v.value = 13  # a half-done update
    ready.set()
    signal.pause()


def _increment_once(v, result) -> None:
    try:
        with v.get_lock():
            v.value += 1
        result.put("ok")
    except shmq.OwnerDiedError:
        result.put("owner died")


def test_holder_killed_inside_a_value_lock(
    ctx: multiprocessing.context.BaseContext, reaper: list
) -> None:
    v = shmq.Value("i", 0)
    ready = ctx.Event()
    p = ctx.Process(target=_die_inside, args=(v, ready))
    p.start()
    reaper.append(p)
    assert ready.wait(60)
    assert v.get_lock().acquire(timeout=0.2) is False  # held by the child
    sigkill(p)
    # The next locker (here, the parent) is told, once; the lock is free afterwards.
    with pytest.raises(shmq.OwnerDiedError) as died:
        with v.get_lock():
            pytest.fail("the body must not run: the lock is not held")
    assert died.value.segment == v.get_lock().name
    assert isinstance(died.value, RuntimeError)
    assert not v.get_lock()._core.is_mine()
    assert v.value == 13  # readable (and repairable) now
    v.value = 0
    # Another process goes on normally: the death was reported exactly once.
    result = ctx.Queue()
    q = ctx.Process(target=_increment_once, args=(v, result))
    q.start()
    assert result.get(timeout=60) == "ok"
    q.join(30)
    assert v.value == 1


def _die_holding(lock, ready) -> None:
    lock.acquire()
    ready.set()
    signal.pause()


def test_holder_killed_inside_a_lock_and_the_next_locker_elsewhere(
    ctx: multiprocessing.context.BaseContext, reaper: list
) -> None:
    lock = shmq.Lock()
    ready = ctx.Event()
    p = ctx.Process(target=_die_holding, args=(lock, ready))
    p.start()
    reaper.append(p)
    assert ready.wait(60)
    sigkill(p)
    # The first locker is another process: it gets the error, and the parent then locks.
    v = shmq.Value("i", 0, lock=lock)
    result = ctx.Queue()
    q = ctx.Process(target=_increment_once, args=(v, result))
    q.start()
    assert result.get(timeout=60) == "owner died"
    q.join(30)
    assert lock.acquire(timeout=10) is True
    lock.release()
    assert v.value == 0


def test_ctrl_c_interrupts_a_blocked_acquire(
    ctx: multiprocessing.context.BaseContext, reaper: list
) -> None:
    v = shmq.Value("i", 0)
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(v.get_lock(), ready, release))
    p.start()
    reaper.append(p)
    assert ready.wait(60)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            v.value  # blocks in acquire, forever but for the signal
        assert time.monotonic() - start < 20  # generous: the slice is 100 ms
        assert not v.get_lock()._core.is_mine()
    finally:
        timer.cancel()
        release.set()
    p.join(30)
    assert v.value == 0


def test_signal_handler_that_returns_lets_the_wait_go_on() -> None:
    lock = shmq.Lock()
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    holder_ready, holder_done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holder_ready.set()
            holder_done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holder_ready.wait(30)
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        releaser = threading.Timer(0.6, holder_done.set)
        releaser.start()
        assert lock.acquire(timeout=30) is True  # PEP 475: the handler ran, the wait went on
        lock.release()
        assert seen == [signal.SIGUSR1]
    finally:
        holder_done.set()
        holder.join(30)
        signal.signal(signal.SIGUSR1, old)


_global_value: shmq.sharedctypes.Synchronized | None = None


def _child_after_fork_while_held(result) -> None:
    assert _global_value is not None
    lock = _global_value.get_lock()
    # The forking thread held the lock: that is the parent's, not this child's.
    result.put((lock._core.count(), lock.acquire(False)))
    result.put(lock.acquire(timeout=30))  # the parent releases it meanwhile
    _global_value.value += 1
    lock.release()


def test_fork_while_holding_the_lock(reaper: list) -> None:
    global _global_value
    ctx = multiprocessing.get_context("fork")
    _global_value = v = shmq.Value("i", 0)
    result = ctx.Queue()
    try:
        with v.get_lock():
            p = ctx.Process(target=_child_after_fork_while_held, args=(result,))
            p.start()
            reaper.append(p)
            assert result.get(timeout=30) == (0, False)
        assert result.get(timeout=30) is True
        p.join(30)
        assert p.exitcode == 0
        assert v.value == 1
    finally:
        _global_value = None
