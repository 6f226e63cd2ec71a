"""Type stubs of the compiled module ``shmq._shmq`` (private to the package)."""

from collections.abc import Iterable
from typing import Any

from typing_extensions import Buffer

LIBRARY_VERSION: str

# ----- admin.rs -------------------------------------------------------------------------------

def gc() -> list[dict[str, Any]]: ...
def list_segments() -> list[dict[str, Any]]: ...

# ----- channel.rs, message.rs, loan.rs: channels carrying Python objects as frames -----------

FRAME_KIND_PICKLE: int
FRAME_KIND_BYTES: int
FRAME_KIND_BYTEARRAY: int
FRAME_KIND_MEMORYVIEW: int
FRAME_HEADER_LEN: int
FRAME_ENTRY_LEN: int
FRAME_VERSION: int

class Channel:
    """One shmq channel in this process, its sender and receiver opened when first needed."""

    @staticmethod
    def create(
        name: str, capacity: int, arena_bytes: int, max_participants: int = 1024
    ) -> Channel: ...
    @staticmethod
    def open(name: str, incarnation: int | None = None) -> Channel: ...
    @property
    def name(self) -> str: ...
    @property
    def incarnation(self) -> int | None: ...
    @property
    def closed(self) -> bool: ...
    def send_frame(
        self,
        kind: int,
        pickle: Buffer,
        buffers: Iterable[Buffer],
        block: bool = True,
        timeout: float | None = None,
    ) -> bool: ...
    def recv_frame(
        self,
        block: bool = True,
        timeout: float | None = None,
        copy: bool = False,
        copy_below: int = 65536,
    ) -> tuple[int, bytes | MessageBuffer, list[MessageBuffer | bytes | bytearray]] | None: ...
    def send_raw(self, data: Buffer, block: bool = True, timeout: float | None = None) -> bool: ...
    def recv_raw(self, block: bool = True, timeout: float | None = None) -> bytes | None: ...
    def loan(
        self,
        kind: int,
        pickle: Buffer,
        nbytes: int,
        block: bool = True,
        timeout: float | None = None,
    ) -> Loan | None: ...
    def len(self) -> int: ...
    def __len__(self) -> int: ...
    def capacity(self) -> int: ...
    def arena_bytes(self) -> int: ...
    def free_arena_bytes(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    def _open_sides(self) -> tuple[bool, bool]: ...
    def _after_fork_in_child(self) -> None: ...

class MessageBuffer:
    """A range of a received message, exported in place (no copy)."""

    @property
    def readonly(self) -> bool: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...  # the buffer protocol (3.12+ name)

class Loan:
    """Room in a channel's arena, lent to be filled in place and sent."""

    @property
    def pending(self) -> bool: ...
    def send(self, block: bool = True, timeout: float | None = None) -> bool: ...
    def discard(self) -> None: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...  # the buffer protocol (3.12+ name)
