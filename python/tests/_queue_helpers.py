"""Helpers of the queue tests: a fixture that makes queues and closes them after the test,
pass or fail, and readers of this process's shared-memory mappings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmq

MiB = 1 << 20
SMALL = 4 * MiB
"""Arena of most test queues: quick to create."""


@pytest.fixture
def make_queue() -> Iterator[Callable[..., Any]]:
    """``make_queue(maxsize=0, cls=shmq.Queue, **kwargs)``: a queue with a small arena (unless
    ``capacity_bytes`` says otherwise), closed with its channel when the test ends."""
    made: list[Any] = []

    def make(*args: Any, cls: type = shmq.Queue, **kwargs: Any) -> Any:
        kwargs.setdefault("capacity_bytes", SMALL)
        q = cls(*args, **kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        chan = q._chan
        q.close()
        if chan is not None:
            chan.close()


def mappings_of(name: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each mapping of ``/dev/shm/shmq.<name>`` in this process."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() in (
                f"/dev/shm/shmq.{name}",
                f"/dev/shm/shmq.{name} (deleted)",
            ):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def inside_mapping(address: int, name: str) -> bool:
    """Whether ``address`` lies in a mapping of channel ``name``'s segment."""
    return any(start <= address < end for start, end in mappings_of(name))
