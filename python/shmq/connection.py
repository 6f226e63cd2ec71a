"""``Pipe`` and ``Connection``: multiprocessing's pipes, with the data in shared memory.

A :class:`Connection` has multiprocessing's interface and semantics (``send``/``recv``,
``send_bytes``/``recv_bytes``/``recv_bytes_into``, ``poll``, ``fileno``, ``close``, the same
exceptions), but what it sends travels through a shmq channel: one copy into shared memory on
``send``, and for numpy arrays and other large out-of-band buffers none on ``recv`` (the
received array is the message itself, as with :class:`shmq.Queue`). Nothing is too large: a
payload bigger than the channel's arena travels in a shared-memory segment of its own.

How a pipe is made. Each direction has its own persistent channel (a ring of 1024 messages and
an arena of 4 MiB, or ``capacity_bytes``, or ``$SHMQ_PIPE_CAPACITY_BYTES``). Beside the data
runs an ordinary OS pipe: a ``socketpair`` for a duplex pipe, an ``os.pipe`` for
``duplex=False``, exactly what multiprocessing uses, and held exactly as multiprocessing holds
it (one descriptor per connection). The sender writes a one-byte token into it after each
message it publishes; the receiver reads one token, then takes the message. So:

- ``fileno()`` is that descriptor, readable when a message waits or at end of file, and
  :func:`select.select`, :mod:`selectors` and :func:`multiprocessing.connection.wait` work on
  connections as on multiprocessing's;
- a blocking ``recv`` is a blocking ``read`` of the token: it releases the GIL, is interrupted
  by Ctrl-C at once, and goes on after a signal handler that returns (PEP 475), as
  multiprocessing's does;
- end of file is the kernel's: once every copy of the other end is closed, in whatever way its
  holders ended (SIGKILL included), ``recv`` delivers what was sent before and then raises
  ``EOFError``. Closing the child's end in the parent right after ``Process.start()`` is safe;
- per small message, the sender makes one system call (the token's ``write``) and the receiver
  one (its ``read``), as multiprocessing does.

The memory of a channel lives while some process is a participant of it. A connection made by
unpickling becomes a receiver at once (making the channel again if it is gone) and a sender at
its first send (likewise). A sender that closes with messages still unread, on a pipe that may
have reached another process, keeps its channel until they are taken or this process exits.
So a message is lost only if its sender's process exits before any receiver took part *and*
after every other holder of the channel closed it (for instance two spawned children given the
two ends, both closed in the parent at once, where the writer sends and exits before the reader
has started): the reader then gets ``shmq.NotFoundError`` for it.

What differs from multiprocessing (all of it shows only in unusual use):

- ``recv()`` of a numpy array of 64 KiB or more returns it in place, in the pipe's shared
  memory (writable or not as :class:`shmq.Queue` gives it), which holds that memory until the
  last reference to the array goes; ``recv(copy=True)`` returns a private copy.
- A sender whose receiver keeps more than the arena's worth of such arrays alive waits for
  room (multiprocessing would have copied them).
- ``recv`` raises ``EOFError`` also where multiprocessing lets ``ConnectionResetError`` through
  (the other end's last holder closed it with messages of ours unread, as a killed process
  does).
- ``recv_bytes_into`` copies at exact byte offsets into any writable C-contiguous buffer, of
  any shape (multiprocessing rounds ``offset`` down to whole items and measures a buffer by its
  first dimension), and refuses a read-only buffer before it takes a message.
- ``memoryview`` objects can be sent (multiprocessing cannot pickle them).
- ``Connection`` objects are made by :func:`Pipe` and by unpickling, not from a descriptor.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import select
import socket
from collections.abc import Callable
from multiprocessing import BufferTooShort, reduction
from typing import Any, TypeVar

from . import _channels, _handles, _pickle, _tracker
from .queues import capacity_from
from ._errors import AlreadyExistsError, NotFoundError
from ._shmq import Channel, ReceivedMessage, attach_receiver, receive_message

__all__ = ["Connection", "Pipe"]

DEFAULT_RING = 1024
"""Ring slots of each direction of a pipe: messages sent and not yet received."""

DEFAULT_CAPACITY_BYTES = 4 << 20
"""Arena size of each direction of a pipe (unless ``capacity_bytes`` or
``$SHMQ_PIPE_CAPACITY_BYTES`` says otherwise). Payloads larger than the arena travel in
shared-memory segments of their own."""

CAPACITY_ENV = "SHMQ_PIPE_CAPACITY_BYTES"
"""The environment variable that sets the default arena size of a pipe, in bytes."""

_PARTICIPANTS = 1024
"""Participants a pipe's channel has room for (each process using an end takes one)."""

_PEER_CHECK = 0.5
"""Seconds a send waits for room in the channel before it looks whether anyone can still
receive (``BrokenPipeError`` if not), then waits again."""

_TOKEN = b"\0"

_T = TypeVar("_T")


def _arena_bytes(capacity_bytes: int | None) -> int:
    return capacity_from(capacity_bytes, CAPACITY_ENV, DEFAULT_CAPACITY_BYTES, minimum=1)


# ----- channel lifetime ------------------------------------------------------------------------

_lingering: list[Channel] = []
"""Senders of closed connections whose messages are not all received yet: each keeps its
channel alive until it is empty (or this process exits, when every channel is closed)."""

_forks = 0
"""Forks of this process so far (counted before each, so parent and child both see it)."""


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(before=_count_fork)


class _Reach:
    """Whether the ends of one pipe may be held outside this process: once either end has been
    pickled (for a child, a queue, another connection) or the process has forked since the
    pipe was made. Until then a closing sender knows that no other process can ever receive
    what it leaves unread, and need not keep its channel for one."""

    __slots__ = ("forks", "pickled")

    def __init__(self, pickled: bool) -> None:
        self.forks = _forks
        self.pickled = pickled

    def shared(self) -> bool:
        return self.pickled or self.forks != _forks


def _sweep() -> None:
    """Closes the lingering senders whose channel is empty now."""
    if not _lingering:
        return
    keep = []
    for chan in _lingering:
        try:
            busy = not chan.closed and len(chan) > 0
        except Exception:
            busy = False
        if busy:
            keep.append(chan)
        else:
            chan.close()
    _lingering[:] = keep


def _close_lingering() -> None:
    """Closes every lingering sender now, as this process's exit does (for tests, which must
    leave nothing in /dev/shm while their process lives on)."""
    while _lingering:
        _lingering.pop().close()


def _retire_sender(chan: Channel, linger: bool) -> None:
    """Lets go of a closed connection's sender: now if nothing it sent waits (or, without
    ``linger``, nobody outside this process can receive it), else once the receivers have taken
    it (so that a receiver that has not opened the channel yet finds it)."""
    try:
        sending, _ = chan._open_sides()
        if linger and sending and len(chan) > 0:
            _lingering.append(chan)
            return
    except Exception:
        pass
    chan.close()


def _create(name: str, capacity: int, arena_bytes: int) -> Channel:
    chan = Channel.create(name, capacity, arena_bytes, _PARTICIPANTS)
    _tracker.register(name)
    return _channels._remember(chan)


def _open(name: str) -> Channel:
    return _channels._remember(Channel.open(name))


# ----- Connection -----------------------------------------------------------------------------


class Connection:
    """One end of a :func:`Pipe`: multiprocessing's ``Connection``, with the data in shared
    memory.

    Made by :func:`Pipe` (and by unpickling: connections pass to child processes under every
    start method, and through queues and other connections, as multiprocessing's do). A
    connection is not thread-safe, as multiprocessing's is not: use one from one thread at a
    time.
    """

    _fd: int | None = None

    def __init__(
        self,
        handle: int,
        readable: bool = True,
        writable: bool = True,
        *,
        rx_name: str | None = None,
        tx_name: str | None = None,
        capacity: int = DEFAULT_RING,
        arena_bytes: int = DEFAULT_CAPACITY_BYTES,
        _rx: Channel | None = None,
        _tx: Channel | None = None,
        _reach: _Reach | None = None,
    ) -> None:
        """Wraps descriptor ``handle`` (owned from now on) and the channels named ``rx_name``
        (received from) and ``tx_name`` (sent into). Use :func:`Pipe` rather than this."""
        handle = handle.__index__()
        if handle < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        if (readable and rx_name is None) or (writable and tx_name is None):
            raise ValueError("a shmq Connection needs the name of the channel of each direction")
        self._readable = bool(readable)
        self._writable = bool(writable)
        self._rx_name = rx_name if readable else None
        self._tx_name = tx_name if writable else None
        self._capacity = capacity
        self._arena_bytes = arena_bytes
        self._rx: Channel | None = None
        self._tx: Channel | None = None
        if readable and rx_name is not None:
            self._rx = _rx if _rx is not None else _open(rx_name)
        if writable and tx_name is not None:
            self._tx = _tx if _tx is not None else _open(tx_name)
        # Tokens read whose message is not taken yet (0 or 1): a recv interrupted between the
        # two finds its message waiting.
        self._tokens = 0
        self._poller: Any = None
        # A connection made any other way than by Pipe() came from elsewhere.
        self._reach = _reach if _reach is not None else _Reach(pickled=True)
        self._fd = handle

    # --- multiprocessing's checks, with its messages --------------------------------------

    def _check_closed(self) -> None:
        if self._fd is None:
            raise OSError("handle is closed")

    def _check_readable(self) -> None:
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self) -> None:
        if not self._writable:
            raise OSError("connection is read-only")

    def _bad_message_length(self) -> None:
        if self._writable:
            self._readable = False
        else:
            self.close()
        raise OSError("bad message length")

    def _shmq_handles(self) -> list[Any]:
        """The channels a child being forked with this connection among its arguments must
        find alive (see :mod:`shmq._handles`)."""
        return [chan for chan in (self._rx, self._tx) if chan is not None]

    # --- properties -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._fd is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def fileno(self) -> int:
        """The connection's file descriptor: readable when a message waits (or at end of file),
        for ``select`` and :func:`multiprocessing.connection.wait`. Do not read or write it
        yourself (except to pass descriptors with ``multiprocessing.reduction.send_handle``
        over a duplex pipe, which works as with multiprocessing)."""
        self._check_closed()
        assert self._fd is not None
        return self._fd

    # --- closing ----------------------------------------------------------------------------

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        """Closes the connection. What it sent and was not received yet stays receivable by
        the other end; the other end sees end of file once every copy of this end is closed.
        Closing twice is allowed."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        if _lingering:
            _sweep()
        try:
            # A channel a child being started keeps (it was among the Process's arguments) is
            # only let go of here: the child's Popen holds it until the child is seen to exit,
            # so that the channel outlives this close until the child has registered its
            # inherited copy (else a message sent to it meanwhile could vanish with it).
            rx, self._rx = self._rx, None
            if rx is not None and not _handles.kept_for_child(rx):
                rx.close()
            tx, self._tx = self._tx, None
            if tx is not None and not _handles.kept_for_child(tx):
                _retire_sender(tx, self._reach.shared())
        finally:
            _close(fd)

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        self.close()

    # --- sending ----------------------------------------------------------------------------

    def send(self, obj: Any) -> None:
        """Sends a picklable object. Numpy arrays and other out-of-band buffers (pickle
        protocol 5) are written straight into shared memory. Raises what pickling raises,
        ``BrokenPipeError`` when no process holds the other end any more."""
        self._check_closed()
        self._check_writable()
        kind, data, buffers = _pickle.dumps_frame(obj, raw=False)
        self._send_frame(kind, data, buffers)

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends ``size`` bytes of the bytes-like object ``buf`` from byte ``offset`` (default:
        all of it) as one message, of any length (one copy, without the GIL when large)."""
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1 or m.ndim != 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._send_frame(_pickle.KIND_BYTES, b"", [m[offset : offset + size]])

    def _send_frame(self, kind: int, data: Any, buffers: list[Any]) -> None:
        if _lingering:
            _sweep()
        tx = self._tx
        assert tx is not None and self._fd is not None
        try:
            sent = tx.send_frame(kind, data, buffers, True, _PEER_CHECK)
        except NotFoundError:
            # The channel is gone (every process that had it open closed it before this one
            # used it): make it again; the receivers find it by name.
            tx = self._fresh_sender()
            sent = tx.send_frame(kind, data, buffers, True, _PEER_CHECK)
        while not sent:
            # The ring or the arena is full: fine while a receiver may still come for it.
            if self._peer_gone():
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            sent = tx.send_frame(kind, data, buffers, True, _PEER_CHECK)
        os.write(self._fd, _TOKEN)

    def _fresh_sender(self) -> Channel:
        """A sender on this connection's channel by name, creating the channel if it is gone."""
        name = self._tx_name
        assert name is not None
        if self._tx is not None:
            self._tx.close()
            self._tx = None
        for _ in range(8):
            chan = Channel.open(name)
            try:
                chan.len()  # opens this process's sender
            except NotFoundError:
                chan.close()
            else:
                self._tx = _channels._remember(chan)
                return chan
            try:
                chan = _create(name, self._capacity, self._arena_bytes)
            except AlreadyExistsError:
                continue  # another sender made it first: open that one
            chan.split_receiver().close()
            self._tx = chan
            return chan
        raise NotFoundError(f"channel {name!r} keeps disappearing")

    def _peer_gone(self) -> bool:
        """Whether no process holds the other end any more (nobody can ever receive)."""
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))

    # --- receiving --------------------------------------------------------------------------

    def _attach_receiver(self) -> None:
        """Becomes a receiver of the channel now, rather than at the first ``recv``, making the
        channel again if it is gone (every process that had it closed it before this one came):
        from now on, what a sender leaves in it waits for this process even if the sender
        exits at once. Best effort: the first ``recv`` deals with what fails here."""
        rx, name = self._rx, self._rx_name
        if rx is None or name is None:
            return
        try:
            attach_receiver(rx)
            return
        except NotFoundError:
            rx.close()
        except Exception:
            return
        try:
            made = _create(name, self._capacity, self._arena_bytes)
        except AlreadyExistsError:
            self._rx = rx = _open(name)
            try:
                attach_receiver(rx)
            except Exception:
                pass
            return
        except Exception:
            self._rx = _open(name)
            return
        self._rx = _channels._remember(made.split_receiver())
        made.close()

    def _await_token(self) -> bool:
        """Waits until a message waits: ``True`` with its token read, ``False`` at end of file
        (every copy of the other end closed)."""
        if self._tokens:
            return True
        assert self._fd is not None
        try:
            token = os.read(self._fd, 1)
        except ConnectionResetError:
            # The other end's last holder closed a duplex socket with tokens of ours unread
            # (its process died, say): after what it sent, the kernel reports ECONNRESET once
            # instead of end of file (multiprocessing lets that through; it is an end here).
            return False
        if not token:
            return False
        self._tokens = 1
        return True

    def _from_channel(self, receive: Callable[[Channel], _T], eof: bool) -> _T:
        """Runs ``receive`` on the receiving channel, again on a handle opened afresh by name if
        this one's channel is gone (an inherited handle of a channel that was made again)."""
        rx = self._rx
        assert rx is not None
        try:
            return receive(rx)
        except NotFoundError:
            assert self._rx_name is not None
            rx.close()
            self._rx = rx = _open(self._rx_name)
            try:
                return receive(rx)
            except NotFoundError:
                if eof:
                    raise EOFError from None
                self._tokens = 0  # that message is lost: its channel went with its sender
                raise

    def _next(self, receive: Callable[[Channel, float | None], _T | None]) -> _T:
        """The next message, waiting for it, as ``receive(channel, timeout)`` takes it;
        ``EOFError`` at end of file."""
        if not self._await_token():
            # End of file. A sender killed between its publish and its token's write left a
            # message without a token: deliver it before the end.
            got = self._from_channel(lambda rx: receive(rx, 0.0), True)
            if got is None:
                raise EOFError
            return got

        def announced(rx: Channel) -> _T | None:
            # Published before its token: there now, unless a lock held by a stopped process
            # delays the take (then wait), or it was lost (nothing queued at all).
            got = receive(rx, 0.0)
            if got is None and len(rx) > 0:
                got = receive(rx, None)
            return got

        got = self._from_channel(announced, False)
        self._tokens = 0
        if got is None:
            raise NotFoundError(
                f"a message announced on pipe channel {self._rx_name!r} is not in it: it was "
                "lost when its sender's process exited before any receiver took part"
            )
        return got

    def _take(self) -> ReceivedMessage:
        """The next message, not yet copied; ``EOFError`` at end of file."""
        return self._next(receive_message)

    def recv(self, *, copy: bool = False) -> Any:
        """Receives an object sent with ``send`` (or the unpickled bytes of a ``send_bytes``).
        Blocks until there is something to receive; ``EOFError`` once the other end is closed
        and everything it sent is received.

        Numpy arrays (and other out-of-band buffers) of 64 KiB or more are received in place:
        their memory is the message in shared memory, given back when the last reference goes
        (see :func:`shmq.set_copy_threshold`). ``copy=True`` returns private copies.
        """
        self._check_closed()
        self._check_readable()

        def frame(rx: Channel, timeout: float | None) -> Any:
            return rx.recv_frame(True, timeout, copy, _pickle.copy_below)

        kind, data, buffers = self._next(frame)
        if kind == _pickle.KIND_PICKLE:
            return pickle.loads(data, buffers=buffers)
        return pickle.loads(buffers[0])  # bytes sent by send_bytes, as multiprocessing does

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives a message as ``bytes``: what ``send_bytes`` sent, or the pickle of what
        ``send`` sent. A message longer than ``maxlength`` is discarded and raises
        ``OSError("bad message length")``, after which the connection cannot receive (a
        read-only connection is closed), as with multiprocessing."""
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        msg = self._take()
        n = msg.nbytes
        if n is None:
            data = _repickle(msg)
            if maxlength is not None and len(data) > maxlength:
                self._bad_message_length()
            return data
        if maxlength is not None and n > maxlength:
            msg.discard()
            self._bad_message_length()
        data = msg.to_bytes()
        assert isinstance(data, bytes)
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receives a message into the writable bytes-like object ``buf`` at byte ``offset``,
        and returns its length in bytes. If it does not fit, raises
        ``multiprocessing.BufferTooShort`` whose ``args[0]`` is the whole message (as
        ``bytes``)."""
        self._check_closed()
        self._check_readable()
        with memoryview(buf) as m:
            bytesize = m.nbytes
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            if m.readonly:
                raise TypeError(
                    "recv_bytes_into() argument must be a read-write bytes-like object, "
                    f"not {type(buf).__name__}"
                )
            if not m.c_contiguous:
                raise BufferError("recv_bytes_into() needs a C-contiguous buffer")
            msg = self._take()
            if msg.nbytes is None:
                data = _repickle(msg)
                if bytesize < offset + len(data):
                    raise BufferTooShort(data)
                m.cast("B")[offset : offset + len(data)] = data
                return len(data)
            if bytesize < offset + msg.nbytes:
                raise BufferTooShort(msg.to_bytes())
            return msg.copy_into(m, offset)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to receive (a message, or end of file), waiting up to
        ``timeout`` seconds for it (``None``: for ever; zero or negative: not at all)."""
        self._check_closed()
        self._check_readable()
        if self._tokens:
            return True
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.fileno(), select.POLLIN)
        if timeout is None:
            return bool(poller.poll())
        if timeout <= 0:
            return bool(poller.poll(0))
        # poll() goes on after a signal whose handler returns, with the time left (PEP 475).
        return bool(poller.poll(math.ceil(timeout * 1e3)))

    # --- pickling ---------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce_connection(self)

    def __repr__(self) -> str:
        if self._fd is None:
            state = "closed"
        else:
            state = f"fd={self._fd}" + (" readable" if self._readable else "") + (
                " writable" if self._writable else ""
            )
        return f"<shmq.Connection {state} at {id(self):#x}>"


def _repickle(msg: ReceivedMessage) -> bytes:
    """The bytes of a message that is a pickle with out-of-band buffers: the object, pickled
    again with every buffer in band (what multiprocessing's ``send`` would have sent)."""
    obj = _pickle.loads_frame(*msg.decode(True, 0))
    stream = io.BytesIO()
    _pickle.Pickler(stream, 5).dump(obj)
    return stream.getvalue()


def _reduce_connection(conn: Connection) -> tuple[Any, ...]:
    """Pickles a connection as multiprocessing does its own (``reduction.DupFd`` of the
    descriptor: passed to a spawned child with the process, else through multiprocessing's
    resource sharer), plus the names and sizes of its channels."""
    df = reduction.DupFd(conn.fileno())
    conn._reach.pickled = True
    return (
        _rebuild_connection,
        (
            df,
            conn.readable,
            conn.writable,
            conn._rx_name,
            conn._tx_name,
            conn._capacity,
            conn._arena_bytes,
        ),
    )


def _rebuild_connection(
    df: Any,
    readable: bool,
    writable: bool,
    rx_name: str | None,
    tx_name: str | None,
    capacity: int,
    arena_bytes: int,
) -> Connection:
    """Unpickles a connection: its descriptor, a receiver of the channel it receives from
    (attached now), and a handle on the one it sends into (opened at the first send)."""
    fd = df.detach()
    conn = Connection(
        fd,
        readable,
        writable,
        rx_name=rx_name,
        tx_name=tx_name,
        capacity=capacity,
        arena_bytes=arena_bytes,
    )
    conn._attach_receiver()
    return conn


reduction.register(Connection, _reduce_connection)


def Pipe(duplex: bool = True, *, capacity_bytes: int | None = None) -> tuple[Connection, Connection]:
    """Returns a pair ``(conn1, conn2)`` of :class:`Connection` objects at the two ends of a
    pipe, as :func:`multiprocessing.Pipe` does: with ``duplex`` (the default) both ends send
    and receive; with ``duplex=False``, ``conn1`` only receives and ``conn2`` only sends.

    ``capacity_bytes`` is the size of each direction's arena in shared memory (default
    ``$SHMQ_PIPE_CAPACITY_BYTES``, else 4 MiB): payloads up to that size travel through it,
    larger ones in segments of their own (slower for the first touch of their pages).
    """
    _sweep()
    arena = _arena_bytes(capacity_bytes)
    base = _channels.auto_name("pipe")
    if duplex:
        s1, s2 = socket.socketpair()
        s1.setblocking(True)
        s2.setblocking(True)
        fd1, fd2 = s1.detach(), s2.detach()
        try:
            a = _create(base + "-a", DEFAULT_RING, arena)  # conn1 -> conn2
            try:
                b = _create(base + "-b", DEFAULT_RING, arena)  # conn2 -> conn1
            except BaseException:
                a.close()
                raise
        except BaseException:
            os.close(fd1)
            os.close(fd2)
            raise
        sizes: dict[str, Any] = {
            "capacity": DEFAULT_RING,
            "arena_bytes": arena,
            "_reach": _Reach(pickled=False),
        }
        c1 = Connection(
            fd1,
            rx_name=b.name,
            tx_name=a.name,
            _rx=_channels._remember(b.split_receiver()),
            _tx=a,
            **sizes,
        )
        c2 = Connection(
            fd2,
            rx_name=a.name,
            tx_name=b.name,
            _rx=_channels._remember(a.split_receiver()),
            _tx=b,
            **sizes,
        )
        return c1, c2
    r, w = os.pipe()
    try:
        a = _create(base, DEFAULT_RING, arena)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    reach = _Reach(pickled=False)
    reader = Connection(
        r,
        writable=False,
        rx_name=a.name,
        _rx=_channels._remember(a.split_receiver()),
        capacity=DEFAULT_RING,
        arena_bytes=arena,
        _reach=reach,
    )
    writer = Connection(
        w,
        readable=False,
        tx_name=a.name,
        _tx=a,
        capacity=DEFAULT_RING,
        arena_bytes=arena,
        _reach=reach,
    )
    return reader, writer
