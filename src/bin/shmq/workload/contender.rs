//! The contenders: the ways of moving data between two processes that the workloads compare.

use super::BoxResult;

/// A way to move payloads to another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// `Sender::send`: one copy from a private buffer into shared memory.
    ShmqSend,
    /// `Sender::loan`: the payload is written in shared memory directly.
    ShmqLoan,
    /// `Sender::send_many` and `Receiver::recv_many`: copies, in runs of up to
    /// [`RUN`](super::payload::RUN) messages per call (one pass over the ring per run for
    /// payloads of up to 96 bytes). Not in [`Contender::ALL`]: a small-message contender.
    ShmqRuns,
    /// A pipe with length-prefixed framing.
    Pipe,
    /// A Unix stream socket with length-prefixed framing.
    UnixSocket,
}

impl Contender {
    /// All transfer contenders, in table order.
    pub const ALL: [Contender; 4] = [
        Contender::ShmqSend,
        Contender::ShmqLoan,
        Contender::Pipe,
        Contender::UnixSocket,
    ];

    /// Identifier used in benchmark ids and consumer arguments.
    pub fn id(self) -> &'static str {
        match self {
            Contender::ShmqSend => "shmq_send",
            Contender::ShmqLoan => "shmq_loan",
            Contender::ShmqRuns => "shmq_runs",
            Contender::Pipe => "pipe",
            Contender::UnixSocket => "unix_socket",
        }
    }

    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            Contender::ShmqSend => "shmq send (copy in)",
            Contender::ShmqLoan => "shmq loan (zero copy)",
            Contender::ShmqRuns => "shmq send_many/recv_many (runs)",
            Contender::Pipe => "pipe, length-prefixed",
            Contender::UnixSocket => "unix socket, length-prefixed",
        }
    }

    /// The contender whose [`id`](Contender::id) is `id` (the consumer parses its arguments).
    pub(super) fn from_id(id: &str) -> BoxResult<Contender> {
        Contender::ALL
            .into_iter()
            .chain([Contender::ShmqRuns])
            .find(|c| c.id() == id)
            .ok_or_else(|| format!("unknown contender {id:?}").into())
    }

    /// Whether the payloads travel through a shmq channel (rather than a byte stream).
    pub(super) fn is_shmq(self) -> bool {
        matches!(
            self,
            Contender::ShmqSend | Contender::ShmqLoan | Contender::ShmqRuns
        )
    }
}

/// A way to exchange small messages for the latency workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingContender {
    /// shmq with the default waiting (spin briefly, then sleep on a futex).
    ShmqDefault,
    /// shmq with `set_spin(Duration::MAX)` on every handle of both processes.
    ShmqSpin,
    /// A pipe each way, length-prefixed.
    Pipe,
    /// A Unix stream socket, length-prefixed.
    UnixSocket,
}

impl PingContender {
    /// All latency contenders, in table order.
    pub const ALL: [PingContender; 4] = [
        PingContender::ShmqDefault,
        PingContender::ShmqSpin,
        PingContender::Pipe,
        PingContender::UnixSocket,
    ];

    /// Identifier used in benchmark ids and consumer arguments.
    pub fn id(self) -> &'static str {
        match self {
            PingContender::ShmqDefault => "shmq_default",
            PingContender::ShmqSpin => "shmq_spin",
            PingContender::Pipe => "pipe",
            PingContender::UnixSocket => "unix_socket",
        }
    }

    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            PingContender::ShmqDefault => "shmq (default waiting)",
            PingContender::ShmqSpin => "shmq (spin only)",
            PingContender::Pipe => "pipe, length-prefixed",
            PingContender::UnixSocket => "unix socket, length-prefixed",
        }
    }

    /// The contender whose [`id`](PingContender::id) is `id` (the consumer parses its
    /// arguments).
    pub(super) fn from_id(id: &str) -> BoxResult<PingContender> {
        PingContender::ALL
            .into_iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| format!("unknown latency contender {id:?}").into())
    }
}
