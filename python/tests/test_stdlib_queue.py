"""CPython's own queue tests (``test._test_multiprocessing``: ``_TestQueue``, which covers
``JoinableQueue`` too, and ``TestSimpleQueue``) run against shmq's queues, under the fork and
the spawn start methods.

The mixin gives the test cases shmq's ``Queue`` where CPython's mixins give multiprocessing's
(see ``ProcessesMixin`` there); tests that call ``multiprocessing.Queue`` or
``multiprocessing.SimpleQueue`` directly see shmq's through a patch of those names. Each test
that cannot apply is skipped with its reason.
"""

from __future__ import annotations

import multiprocessing
import unittest
from typing import Any
from unittest import mock

import pytest

import shmq

stdlib = pytest.importorskip("test._test_multiprocessing")

def _queue(maxsize: int = 0) -> shmq.Queue:
    return shmq.Queue(maxsize, capacity_bytes=4 << 20)


def _joinable_queue(maxsize: int = 0) -> shmq.JoinableQueue:
    return shmq.JoinableQueue(maxsize, capacity_bytes=4 << 20)


def _simple_queue(**_ignored: Any) -> shmq.SimpleQueue:
    return shmq.SimpleQueue(capacity_bytes=4 << 20)


def _skip(reason: str) -> Any:
    @unittest.skip(reason)
    def skipped(self: Any) -> None:
        pass

    return skipped


class _ShmqQueues:
    """What the tests take from their mixin: shmq's queues, and multiprocessing's processes and
    events of one start method. Tests that use ``multiprocessing.Queue`` directly get shmq's."""

    TYPE = "processes"
    START_METHOD = "fork"
    Queue = staticmethod(_queue)
    JoinableQueue = staticmethod(_joinable_queue)

    @classmethod
    def setUpClass(cls) -> None:
        ctx = multiprocessing.get_context(cls.START_METHOD)
        cls.Process = ctx.Process
        cls.Event = staticmethod(ctx.Event)
        cls.current_process = staticmethod(multiprocessing.current_process)
        super().setUpClass()  # type: ignore[misc]

    def setUp(self) -> None:
        for name, factory in (("Queue", _queue), ("JoinableQueue", _joinable_queue)):
            patcher = mock.patch.object(multiprocessing, name, factory)
            patcher.start()
            self.addCleanup(patcher.stop)
        super().setUp()  # type: ignore[misc]

    def test_runs_on_shmq(self) -> None:
        assert isinstance(self.Queue(), shmq.Queue)
        assert isinstance(multiprocessing.Queue(), shmq.Queue)
        assert isinstance(self.JoinableQueue(), shmq.JoinableQueue)

    # The test cases of _TestQueue that cannot apply to shmq.
    test_queue_feeder_donot_stop_onexc = _skip(
        "shmq has no feeder thread: put() raises the pickling error itself (a deliberate "
        "difference; see test_queue.py::test_pickling_error_is_raised_by_put)"
    )
    test_queue_feeder_on_queue_feeder_error = _skip(
        "tests the private _on_queue_feeder_error hook of multiprocessing.queues.Queue's feeder "
        "thread, which shmq does not have"
    )


class TestStdlibQueueFork(_ShmqQueues, stdlib._TestQueue, stdlib.BaseMixin, unittest.TestCase):
    START_METHOD = "fork"


class TestStdlibQueueSpawn(_ShmqQueues, stdlib._TestQueue, stdlib.BaseMixin, unittest.TestCase):
    START_METHOD = "spawn"


class _ShmqSimpleQueue:
    START_METHOD = "fork"

    def setUp(self) -> None:
        ctx = multiprocessing.get_context(self.START_METHOD)
        for name, value in (("SimpleQueue", _simple_queue), ("Process", ctx.Process), ("Event", ctx.Event)):
            patcher = mock.patch.object(multiprocessing, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)
        super().setUp()  # type: ignore[misc]

    def test_runs_on_shmq(self) -> None:
        assert isinstance(multiprocessing.SimpleQueue(), shmq.SimpleQueue)

    test_closed = _skip("reads the private _reader and _writer connections of multiprocessing's SimpleQueue")


class TestStdlibSimpleQueueFork(_ShmqSimpleQueue, stdlib.TestSimpleQueue):
    START_METHOD = "fork"


class TestStdlibSimpleQueueSpawn(_ShmqSimpleQueue, stdlib.TestSimpleQueue):
    START_METHOD = "spawn"
