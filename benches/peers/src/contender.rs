//! The two contenders, what a measurement of either gives, and the dispatch from a cell to
//! the contender's code on each side.

use crate::cell::Cell;
use crate::cleanup::Names;
use crate::drive::StreamResult;
use crate::error::BoxResult;
use crate::plan::Plan;
use crate::process::Peer;
use crate::stats;
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

/// What one contender measured in one cell: every sample, so that the measurements of
/// several rounds pool into one (see [`Measurement::pooled`]).
#[derive(Clone, Debug)]
pub enum Measurement {
    /// Payload bytes per second of each measured repetition.
    Throughput {
        /// Bytes per second, one per repetition.
        per_repetition: Vec<f64>,
    },
    /// One-way latency, half of each round trip.
    Latency {
        /// Nanoseconds, one per measured round trip.
        one_way_ns: Vec<f64>,
    },
    /// Messages per second of each measured repetition, with what receiving them cost the
    /// kernel.
    Rate {
        /// Messages per second, one per repetition.
        per_repetition: Vec<f64>,
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
        let per_repetition = result
            .seconds
            .iter()
            .map(|seconds| plan.messages_per_repetition as f64 * units / seconds)
            .collect();
        match cell {
            Cell::Rate { .. } => Measurement::Rate {
                per_repetition,
                receiver_usage: result.receiver_usage,
                messages: result.messages,
            },
            _ => Measurement::Throughput { per_repetition },
        }
    }

    /// The samples the headline figures are taken from.
    fn samples(&self) -> &[f64] {
        match self {
            Measurement::Throughput { per_repetition }
            | Measurement::Rate { per_repetition, .. } => per_repetition,
            Measurement::Latency { one_way_ns } => one_way_ns,
        }
    }

    /// The median sample: of the repetitions (throughput, rate) or of the round trips
    /// (latency).
    pub fn median(&self) -> f64 {
        stats::median(&mut self.samples().to_vec()).unwrap_or(f64::NAN)
    }

    /// The sample at quantile `q`.
    pub fn quantile(&self, q: f64) -> f64 {
        stats::quantile(&mut self.samples().to_vec(), q).unwrap_or(f64::NAN)
    }

    /// The lowest and the highest sample.
    pub fn range(&self) -> (f64, f64) {
        let samples = self.samples();
        let low = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let high = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    /// The samples of `self` and `other`, two rounds of the same cell, as one measurement.
    pub fn pooled(self, other: Measurement) -> Measurement {
        match (self, other) {
            (
                Measurement::Throughput { mut per_repetition },
                Measurement::Throughput {
                    per_repetition: more,
                },
            ) => {
                per_repetition.extend(more);
                Measurement::Throughput { per_repetition }
            }
            (
                Measurement::Latency { mut one_way_ns },
                Measurement::Latency { one_way_ns: more },
            ) => {
                one_way_ns.extend(more);
                Measurement::Latency { one_way_ns }
            }
            (
                Measurement::Rate {
                    mut per_repetition,
                    receiver_usage,
                    messages,
                },
                Measurement::Rate {
                    per_repetition: more,
                    receiver_usage: more_usage,
                    messages: more_messages,
                },
            ) => {
                per_repetition.extend(more);
                Measurement::Rate {
                    per_repetition,
                    receiver_usage: receiver_usage.plus(more_usage),
                    messages: messages + more_messages,
                }
            }
            (a, b) => unreachable!("rounds of one cell measure alike: {a:?} and {b:?}"),
        }
    }
}

/// How a contender's parent side starts its child once its channels or services exist: the
/// child is running, attached and ready for the first message when it returns.
pub type StartChild<'a> = &'a dyn Fn() -> BoxResult<Peer>;

impl Contender {
    /// Both, in table column order.
    pub const ALL: [Contender; 2] = [Contender::Shmq, Contender::Iceoryx2];

    /// Both, in the order they run in round `round` of a cell: each goes first in every
    /// other round, so that neither always meets the machine as the other left it.
    pub fn in_round(round: u32) -> [Contender; 2] {
        let [a, b] = Contender::ALL;
        if round.is_multiple_of(2) {
            [a, b]
        } else {
            [b, a]
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_the_first_contender() {
        assert_eq!(
            Contender::in_round(0),
            [Contender::Shmq, Contender::Iceoryx2]
        );
        assert_eq!(
            Contender::in_round(1),
            [Contender::Iceoryx2, Contender::Shmq]
        );
        assert_eq!(Contender::in_round(2), Contender::in_round(0));
    }

    #[test]
    fn pooled_rounds_keep_every_sample() {
        let round = |samples: &[f64]| Measurement::Latency {
            one_way_ns: samples.to_vec(),
        };
        let pooled = round(&[300.0, 100.0]).pooled(round(&[200.0, 900.0, 400.0]));
        assert_eq!(pooled.median(), 300.0);
        assert_eq!(pooled.range(), (100.0, 900.0));
        assert_eq!(pooled.quantile(1.0), 900.0);
        let rate = |per_second: f64, messages: u64| Measurement::Rate {
            per_repetition: vec![per_second],
            receiver_usage: Usage::default(),
            messages,
        };
        match rate(1.0, 10).pooled(rate(3.0, 20)) {
            Measurement::Rate {
                per_repetition,
                messages,
                ..
            } => {
                assert_eq!(per_repetition, [1.0, 3.0]);
                assert_eq!(messages, 30);
            }
            other => panic!("pooled rate rounds became {other:?}"),
        }
    }
}
