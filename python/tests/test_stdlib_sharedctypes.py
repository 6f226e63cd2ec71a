"""CPython's own tests of Value, Array, RawValue, RawArray, Lock and RLock
(``test._test_multiprocessing``'s ``_TestValue``, ``_TestArray`` and ``_TestLock``), run against
shmq's names, with children started by fork and by spawn.

The test classes are CPython's, untouched: a mixin gives them shmq's ``Value``, ``Array``,
``RawValue``, ``RawArray``, ``Lock`` and ``RLock`` where ``ProcessesMixin`` gives
multiprocessing's, and the start method's ``Process``. None of these tests reads private
internals, so none is skipped. (``_TestSharedMemory`` calls ``shared_memory.SharedMemory``
directly rather than through the mixin, and most of it is about the resource tracker, so it is
not run here: test_shared_memory.py covers shmq's SharedMemory.)
"""

from __future__ import annotations

import multiprocessing
import unittest

import pytest

import shmq

try:
    import test._test_multiprocessing as stdlib_tests
except ImportError:  # an interpreter built without its test package
    pytest.skip("CPython's test package is not installed", allow_module_level=True)

NAMES = ("Value", "Array", "RawValue", "RawArray", "Lock", "RLock")
CASES = (stdlib_tests._TestValue, stdlib_tests._TestArray, stdlib_tests._TestLock)


def _mixin(method: str) -> type:
    ctx = multiprocessing.get_context(method)
    attrs: dict[str, object] = {
        "TYPE": "processes",
        "Process": ctx.Process,
        "current_process": staticmethod(multiprocessing.current_process),
        "active_children": staticmethod(multiprocessing.active_children),
    }
    attrs.update({name: staticmethod(getattr(shmq, name)) for name in NAMES})
    return type(f"Shmq{method.capitalize()}Mixin", (stdlib_tests.BaseMixin,), attrs)


for _method in ("fork", "spawn"):
    _mix = _mixin(_method)
    for _case in CASES:
        # "_TestValue" -> "TestShmqForkValue". Spawned children find the class by this name in
        # this module (the tests' targets are classmethods).
        _name = f"TestShmq{_method.capitalize()}{_case.__name__[len('_Test'):]}"
        _cls = type(_name, (_case, _mix, unittest.TestCase), {"__module__": __name__})
        _cls.__qualname__ = _name
        globals()[_name] = _cls
del _method, _mix, _case, _name, _cls


def test_the_stdlib_cases_run_against_shmq() -> None:
    cls = globals()["TestShmqSpawnValue"]
    assert cls.Value is shmq.Value and cls.RLock is shmq.RLock
    assert cls.Process is multiprocessing.get_context("spawn").Process
    assert issubclass(cls, stdlib_tests._TestValue)
