"""``gc()`` and ``list_segments()``: what is in ``/dev/shm``, and removing what the dead left."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _shmq

__all__ = ["GcEntry", "ParticipantInfo", "SegmentInfo", "gc", "list_segments"]


@dataclass(frozen=True)
class GcEntry:
    """What :func:`gc` decided about one ``shmq.*`` file in ``/dev/shm``."""

    name: str
    """The segment's name, without the ``shmq.`` prefix of its file."""
    removed: bool
    """Whether gc removed it."""
    reason: str
    """Why it was removed or kept, as a sentence."""
    code: str
    """The reason as a short, stable identifier (``"all-dead"``, ``"in-use"``...)."""


@dataclass(frozen=True)
class ParticipantInfo:
    """One slot of a segment's participant table."""

    slot: int
    role: str | None
    """``"sender"``, ``"receiver"``, ``"user"``..., or ``None`` for a plain segment handle."""
    pid: int
    alive: bool
    """Whether the process still holds its liveness lock (it is alive, or not yet reclaimed)."""
    attached_unix_ns: int


@dataclass(frozen=True)
class SegmentInfo:
    """What :func:`list_segments` reports about one ``shmq.*`` file."""

    name: str
    state: str
    """``"ready"``, ``"removed"`` (removed while in use), ``"being-created"``, ``"unfinished"``,
    ``"refused"`` or ``"unreadable"``."""
    kind: str | None
    """``"raw"``, ``"channel"``, ``"value"``, ``"array"`` or ``"overflow"``."""
    file_bytes: int
    creator_pid: int
    created_unix_ns: int
    participant_capacity: int
    participants: tuple[ParticipantInfo, ...]
    membership_holder: int | None
    channel: dict[str, int] | None
    """A channel's figures (``queued``, ``sent_total``, ``arena_free_bytes``...), else ``None``."""
    problem: str | None
    """Why the file could not be read as a segment, if it could not."""

    @property
    def alive(self) -> int:
        """Participants whose process is alive."""
        return sum(1 for p in self.participants if p.alive)


def gc() -> list[GcEntry]:
    """Removes the segments whose users all died, and reports on every ``shmq.*`` file.

    Never removes a segment that a live process uses. Mirrors the Rust ``shmq::gc()`` and the
    ``shmq gc`` command.
    """
    return [GcEntry(**entry) for entry in _shmq.gc()]


def list_segments() -> list[SegmentInfo]:
    """Describes every ``shmq.*`` file in ``/dev/shm`` (like ``shmq ls`` and ``shmq info``)."""
    result = []
    for raw in _shmq.list_segments():
        fields: dict[str, Any] = dict(raw)
        fields["participants"] = tuple(ParticipantInfo(**p) for p in raw["participants"])
        result.append(SegmentInfo(**fields))
    return result
