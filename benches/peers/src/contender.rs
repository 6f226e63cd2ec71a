//! The two contenders, what a measurement of either gives, and the dispatch from a cell to
//! the contender's code on each side.

use crate::cell::Cell;
use crate::cleanup::Names;
use crate::drive::StreamResult;
use crate::error::BoxResult;
use crate::plan::Plan;
use crate::process::Peer;
use crate::usage::Usage;
use crate::{iceoryx2_side, shmq_side};

/// A library under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// This crate's library.
    Shmq,
    /// iceoryx2's ipc publish-subscribe.
    Iceoryx2,
}

/// What one contender measured in one cell.
#[derive(Clone, Debug)]
pub enum Measurement {
    /// Payload bytes per second (median repetition).
    Throughput {
        /// Bytes per second.
        bytes_per_second: f64,
        /// The slowest and the fastest measured repetition, bytes per second.
        range: (f64, f64),
    },
    /// One-way latency, half of each round trip.
    Latency {
        /// Median, nanoseconds.
        median_ns: f64,
        /// 99th percentile, nanoseconds.
        p99_ns: f64,
    },
    /// Messages per second (median repetition), with what receiving them cost the kernel.
    Rate {
        /// Messages per second.
        messages_per_second: f64,
        /// The slowest and the fastest measured repetition, messages per second.
        range: (f64, f64),
        /// The receiver's counters over the measured repetitions.
        receiver_usage: Usage,
        /// Messages of the measured repetitions.
        messages: u64,
    },
}

impl Measurement {
    /// The measurement of stream cell `cell` from its repetitions.
    pub fn of_stream(cell: Cell, result: &StreamResult, plan: &Plan) -> Measurement {
        let units = match cell {
            Cell::Rate { .. } => 1.0,
            Cell::Throughput { payload, .. } => payload as f64,
            Cell::Latency { .. } => unreachable!("a latency cell is a ping-pong, not a stream"),
        };
        let per_second = |seconds: f64| plan.messages_per_repetition as f64 * units / seconds;
        let median = per_second(result.median_seconds());
        let (fastest, slowest) = result.extreme_seconds();
        let range = (per_second(slowest), per_second(fastest));
        match cell {
            Cell::Rate { .. } => Measurement::Rate {
                messages_per_second: median,
                range,
                receiver_usage: result.receiver_usage,
                messages: result.messages,
            },
            _ => Measurement::Throughput {
                bytes_per_second: median,
                range,
            },
        }
    }
}

/// How a contender's parent side starts its child once its channels or services exist: the
/// child is running, attached and ready for the first message when it returns.
pub type StartChild<'a> = &'a dyn Fn() -> BoxResult<Peer>;

impl Contender {
    /// Both, in table column order.
    pub const ALL: [Contender; 2] = [Contender::Shmq, Contender::Iceoryx2];

    /// The name on the command line and in the table.
    pub fn id(self) -> &'static str {
        match self {
            Contender::Shmq => "shmq",
            Contender::Iceoryx2 => "iceoryx2",
        }
    }

    /// The contender named `id`.
    pub fn parse(id: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Parent side: creates the channels or services of `cell` under `names`, starts the
    /// child and sends (or pings) as `plan` says.
    pub fn measure(
        self,
        cell: Cell,
        plan: &Plan,
        names: &Names,
        start_child: StartChild<'_>,
    ) -> BoxResult<Measurement> {
        match self {
            Contender::Shmq => shmq_side::measure(cell, plan, names, start_child),
            Contender::Iceoryx2 => iceoryx2_side::measure(cell, plan, names, start_child),
        }
    }

    /// Child side: attaches to what the parent made and receives (or echoes) as `plan` says.
    pub fn serve(self, cell: Cell, plan: &Plan, names: &Names) -> BoxResult<()> {
        match self {
            Contender::Shmq => shmq_side::serve(cell, plan, names),
            Contender::Iceoryx2 => iceoryx2_side::serve(cell, plan, names),
        }
    }
}
