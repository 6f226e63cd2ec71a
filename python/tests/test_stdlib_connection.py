"""CPython's own tests of ``multiprocessing.Pipe`` connections (``test._test_multiprocessing``'s
``_TestConnection``, ``_TestPoll`` and ``_TestPicklingConnections``), run against
``shmq.Pipe``, with children started by fork and by spawn.

The test classes are CPython's, untouched: a mixin gives them ``shmq.Pipe`` where
``ProcessesMixin`` gives multiprocessing's, and the start method's ``Process``. Its
``connection`` attribute stays ``multiprocessing.connection``: shmq has no ``Listener`` or
``Client`` (sockets between unrelated processes are not its business), and
``_TestPicklingConnections`` uses them only to make multiprocessing connections and sockets that
it then sends through shmq pipes, which is what it tests here. ``_TestListener`` and
``_TestListenerClient`` test ``Listener``/``Client`` alone, so they are not run.
"""

from __future__ import annotations

import gc
import multiprocessing
import unittest
from collections.abc import Iterator

import pytest

import shmq
from shmq import connection

try:
    import test._test_multiprocessing as stdlib_tests
except ImportError:  # an interpreter built without its test package
    pytest.skip("CPython's test package is not installed", allow_module_level=True)

@pytest.fixture(autouse=True)
def _release_lingering() -> Iterator[None]:
    """Some of these tests close a sending end whose last messages nobody ever receives (say
    ``_TestPoll.test_boundaries``): its channel waits for a receiver until the process exits,
    by design. Released after each test, as the exit of a real program would."""
    yield
    gc.collect()
    connection._close_lingering()


CASES = (stdlib_tests._TestConnection, stdlib_tests._TestPoll, stdlib_tests._TestPicklingConnections)


def _mixin(method: str) -> type:
    ctx = multiprocessing.get_context(method)
    attrs: dict[str, object] = {
        "TYPE": "processes",
        "Process": ctx.Process,
        "Pipe": staticmethod(shmq.Pipe),
        "connection": multiprocessing.connection,
        "current_process": staticmethod(multiprocessing.current_process),
        "active_children": staticmethod(multiprocessing.active_children),
    }
    return type(f"Shmq{method.capitalize()}PipeMixin", (stdlib_tests.BaseMixin,), attrs)


for _method in ("fork", "spawn"):
    _mix = _mixin(_method)
    for _case in CASES:
        # "_TestConnection" -> "TestShmqForkConnection". Spawned children find the class by
        # this name in this module (the tests' targets are classmethods).
        _name = f"TestShmq{_method.capitalize()}{_case.__name__[len('_Test'):]}"
        _cls = type(_name, (_case, _mix, unittest.TestCase), {"__module__": __name__})
        _cls.__qualname__ = _name
        globals()[_name] = _cls
del _method, _mix, _case, _name, _cls


def test_the_stdlib_cases_run_against_shmq() -> None:
    cls = globals()["TestShmqSpawnConnection"]
    assert cls.Pipe is shmq.Pipe
    assert cls.Process is multiprocessing.get_context("spawn").Process
    assert issubclass(cls, stdlib_tests._TestConnection)
    a, b = cls.Pipe()
    assert isinstance(a, shmq.Connection) and isinstance(b, shmq.Connection)
    a.close()
    b.close()
