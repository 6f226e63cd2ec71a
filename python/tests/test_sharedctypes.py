"""shmq.Value, Array, RawValue and RawArray: multiprocessing.sharedctypes' semantics over shmq
segments, passed to real children under fork and spawn."""

from __future__ import annotations

import array
import ctypes
import gc
import multiprocessing
import pickle

import numpy as np
import pytest

import shmq
from conftest import shm_entries
from shmq import sharedctypes
from shmq._shmq import SharedBuf

# (typecode, initial value, value the child writes) for every multiprocessing typecode.
CODES = [
    ("c", b"x", b"y"),
    ("u", "x", "\u20ac"),
    ("b", -5, 7),
    ("B", 200, 3),
    ("h", -300, 301),
    ("H", 60000, 1),
    ("i", -(2**31), 2**31 - 1),
    ("I", 2**32 - 1, 5),
    ("l", -(2**63), 2**63 - 1),
    ("L", 2**64 - 1, 6),
    ("q", -(2**62), 2**40),
    ("Q", 2**64 - 2, 2**63),
    ("f", 1.5, -2.25),
    ("d", 3.625, -4.25e100),
]


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double), ("tag", ctypes.c_char * 4)]


def _segments_of_ours() -> set[str]:
    return {e for e in shm_entries() if e.startswith(("shmq.pyval_", "shmq.pyarr_", "shmq.pyrlock_", "shmq.pylock_"))}


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test's Values and Arrays are gone once it dropped them."""
    before = _segments_of_ours()
    yield
    gc.collect()
    assert _segments_of_ours() <= before


# --- in one process ------------------------------------------------------------------------


@pytest.mark.parametrize("code,first,second", CODES, ids=[c[0] for c in CODES])
def test_value_every_typecode(code: str, first, second) -> None:
    for value in (shmq.Value(code, first), shmq.RawValue(code, first)):
        assert value.value == first
        value.value = second
        assert value.value == second
    assert shmq.Value(code).value in (0, 0.0, b"\0", "\0")


@pytest.mark.parametrize("code,first,second", CODES, ids=[c[0] for c in CODES])
def test_array_every_typecode(code: str, first, second) -> None:
    init = [first, second, first]
    if code in "cu":
        init = first + second + first
    for arr in (shmq.Array(code, init), shmq.RawArray(code, init)):
        assert len(arr) == 3
        assert arr[0] == first and arr[1] == second
        # Slices of 'c' and 'u' arrays are bytes and str (ctypes), lists otherwise.
        assert arr[:] == (init if code in "cu" else list(init))
        arr[2] = second
        assert arr[2] == second
        assert arr[1:] == (second * 2 if code in "cu" else [second, second])
    zeroed = shmq.Array(code, 5).get_obj()
    assert len(zeroed) == 5
    assert ctypes.string_at(ctypes.addressof(zeroed), ctypes.sizeof(zeroed)) == bytes(ctypes.sizeof(zeroed))


def test_isinstance_and_repr_as_multiprocessing() -> None:
    raw = shmq.RawValue("i", 5)
    assert isinstance(raw, ctypes.c_int)
    assert repr(raw) == "c_int(5)"
    v = shmq.Value("d", 1.5)
    assert repr(v) == "<Synchronized wrapper for c_double(1.5)>"
    assert repr(multiprocessing.Value("d", 1.5)) == repr(v)
    arr = shmq.RawArray("i", 3)
    assert isinstance(arr, ctypes.Array) and arr._type_ is ctypes.c_int
    assert isinstance(shmq.Array("c", 3), sharedctypes.SynchronizedString)
    assert isinstance(shmq.Array("i", 3), sharedctypes.SynchronizedArray)
    assert isinstance(shmq.Value("i"), sharedctypes.Synchronized)


def test_char_array_value_and_raw() -> None:
    s = shmq.Array("c", b"hello\0world")
    assert s.value == b"hello"
    assert s.raw == b"hello\0world"
    s.value = b"hi"
    assert s.raw == b"hi\0lo\0world"
    raw = shmq.RawArray("c", 4)
    raw.value = b"abc"
    assert raw.raw == b"abc\0"


def test_structure() -> None:
    p = shmq.Value(Point, 1, 2.5, b"ab")
    assert (p.x, p.y, p.tag) == (1, 2.5, b"ab")
    p.x += 10
    assert p.get_obj().x == 11
    assert type(p).__name__ == "SynchronizedPoint"
    raw = shmq.RawValue(Point, 3)
    assert isinstance(raw, Point) and raw.x == 3 and raw.y == 0.0
    points = shmq.Array(Point, [(1, 1.0, b"a"), (2, 2.0, b"b")])
    assert points[1].x == 2
    points[0] = Point(5, 5.0, b"e")
    assert (points[0].x, points[0].tag) == (5, b"e")
    assert points.to_numpy()["x"].tolist() == [5, 2]


def test_lock_argument() -> None:
    own = shmq.Value("i", 5)
    assert isinstance(own.get_lock(), shmq.RLock)
    assert shmq.Value("i", 5, lock=None).get_lock() is not None
    lock = shmq.Lock()
    v = shmq.Value("i", 5, lock=lock)
    assert v.get_lock() is lock
    rlock = shmq.RLock()
    a = shmq.Array("i", 3, lock=rlock)
    assert a.get_lock() is rlock
    mp_lock = multiprocessing.Lock()
    assert shmq.Value("i", lock=mp_lock).get_lock() is mp_lock  # any object with acquire()
    raw = shmq.Value("i", 5, lock=False)
    assert isinstance(raw, ctypes.c_int)
    assert not hasattr(raw, "get_lock") and not hasattr(raw, "get_obj")
    raw_arr = shmq.Array("i", range(3), lock=False)
    assert not hasattr(raw_arr, "get_lock")
    with pytest.raises(AttributeError, match="'navalue' has no method 'acquire'"):
        shmq.Value("i", 5, lock="navalue")
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        shmq.Array("i", 3, lock=object())


def test_default_lock_is_reentrant() -> None:
    v = shmq.Value("i", 1)
    with v.get_lock():
        v.value += 1  # .value takes the same lock again
        with v:
            with v.get_lock():
                v.value += 1
        assert v.get_lock()._core.count() == 1
    assert v.get_lock()._core.count() == 0
    assert v.value == 3
    assert v.acquire() and v.acquire()
    v.release()
    v.release()
    with pytest.raises(AssertionError):
        v.release()


def test_value_under_a_plain_lock_needs_care() -> None:
    # multiprocessing's Lock is not re-entrant: .value inside "with v.get_lock()" would hang
    # there; shmq raises instead.
    v = shmq.Value("i", 1, lock=shmq.Lock())
    with v.get_lock():
        with pytest.raises(RuntimeError, match="would deadlock"):
            v.value
    assert v.value == 1


def test_to_numpy_is_a_zero_copy_view() -> None:
    a = shmq.Array("d", 1000)
    view = a.to_numpy()
    assert view.dtype == np.float64 and view.shape == (1000,)
    view[:] = np.arange(1000)
    assert a[999] == 999.0
    a[0] = -1
    assert view[0] == -1
    assert np.shares_memory(view, a.to_numpy())
    raw = shmq.RawArray("i", [1, 2, 3])
    assert raw.to_numpy().tolist() == [1, 2, 3]
    raw.to_numpy()[1] = 20
    assert raw[1] == 20
    assert shmq.RawArray("u", "ab").to_numpy().tolist() == ["a", "b"]
    assert shmq.RawArray("c", b"ab").to_numpy().tolist() == [b"a", b"b"]
    grid = shmq.RawArray(ctypes.c_int * 3, 2).to_numpy()
    assert grid.shape == (2, 3)
    # The view keeps the memory alive after the Array is gone.
    del a
    gc.collect()
    assert view.sum() == sum(range(1, 1000)) - 1


def test_plain_pickle_shares_memory() -> None:
    v = shmq.Value("i", 3)
    w = pickle.loads(pickle.dumps(v))
    w.value = 4
    assert v.value == 4
    assert w.get_lock()._core is v.get_lock()._core  # one handle per segment and process
    raw = shmq.RawArray("d", 4)
    copy = pickle.loads(pickle.dumps(raw))
    copy[2] = 1.25
    assert raw[2] == 1.25
    original = shmq.Array("c", b"abc")
    s = pickle.loads(pickle.dumps(original))
    assert s.value == b"abc"


def test_wrong_type_open_fails() -> None:
    v = shmq.RawValue("i", 3)
    name = v._shmq_core.name
    with pytest.raises(shmq.IncompatibleError):
        SharedBuf.open(name, "py-ctypes:d8")


def test_copy_and_synchronized() -> None:
    v = shmq.RawValue("i", 3)
    c = sharedctypes.copy(v)
    c.value = 4
    assert (v.value, c.value) == (3, 4)
    s = sharedctypes.synchronized(v)
    s.value = 5
    assert v.value == 5
    with pytest.raises(AssertionError):
        sharedctypes.synchronized(s)


def test_errors_as_multiprocessing() -> None:
    with pytest.raises(TypeError):
        shmq.RawValue("x")
    with pytest.raises(ValueError):
        shmq.RawArray("i", -1)
    with pytest.raises(TypeError):
        shmq.Value("i", "not an int")


# --- across processes ----------------------------------------------------------------------


def _write_values(values, arrays, point, codes) -> None:
    for v, (code, _, second) in zip(values, codes):
        v.value = second
    for a, (code, first, second) in zip(arrays, codes):
        a[0] = second if code not in "cu" else second
    point.x = 99
    point.tag = b"kid"


def test_values_and_arrays_in_children(ctx: multiprocessing.context.BaseContext) -> None:
    values = [shmq.Value(code, first) for code, first, _ in CODES]
    arrays = [shmq.Array(code, 2) for code, _, _ in CODES]
    point = shmq.Value(Point, 1, 2.0)
    p = ctx.Process(target=_write_values, args=(values, arrays, point, CODES))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert [v.value for v in values] == [second for _, _, second in CODES]
    assert [a[0] for a in arrays] == [second for _, _, second in CODES]
    assert (point.x, point.tag) == (99, b"kid")


def _add_all(counter, n: int) -> None:
    for _ in range(n):
        with counter:
            counter.value += 1


def test_increments_under_the_lock_across_4_processes(
    ctx: multiprocessing.context.BaseContext, reaper: list
) -> None:
    n = 2000 if ctx.get_start_method() == "fork" else 500
    counter = shmq.Value("q", 0)
    procs = [ctx.Process(target=_add_all, args=(counter, n)) for _ in range(4)]
    for p in procs:
        p.start()
        reaper.append(p)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert counter.value == 4 * n


def _bump(v, a) -> int:
    with v.get_lock():
        v.value += 1
    with a.get_lock():
        a[0] += 1
    return v.value


def test_pool_task_arguments(ctx: multiprocessing.context.BaseContext) -> None:
    # multiprocessing refuses these ("Synchronized objects should only be shared between
    # processes through inheritance"); shmq's pickle by name.
    v = shmq.Value("i", 0)
    a = shmq.Array("i", 1)
    with ctx.Pool(2) as pool:
        results = pool.starmap(_bump, [(v, a)] * 8)
    assert v.value == 8 and a[0] == 8
    assert sorted(results)[-1] == 8


def _fill_numpy(a) -> None:
    a.to_numpy()[:] = 7


def test_numpy_view_sees_a_childs_writes(ctx: multiprocessing.context.BaseContext) -> None:
    a = shmq.RawArray("f", 1 << 16)
    view = a.to_numpy()
    p = ctx.Process(target=_fill_numpy, args=(a,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert float(view.sum()) == 7 * (1 << 16)


def _check_sum(seqs, total: int) -> None:
    (seq,) = seqs
    assert sum(seq[:]) == total
    assert list(array.array("i", seq[:])) == list(seq)


def test_a_child_keeps_its_temporary_arguments_alive(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    # Process.start() drops its arguments at once: without help, the segment could go before
    # the child opens it (spawn) or registers in it (fork).
    p = ctx.Process(target=_check_sum, args=([shmq.Array("i", range(10))], 45))
    p.start()
    kept = p._popen._shmq_kept  # what keeps it, for as long as the Process object lives
    assert len({k.name for k in kept}) == 1 and kept[0].name.startswith("pyarr_")
    p.join(60)
    assert p.exitcode == 0
    assert not p._popen._shmq_kept  # let go once the child is known to have ended
