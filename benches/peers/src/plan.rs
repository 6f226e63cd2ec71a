//! How much each cell runs and how both contenders are sized for it: the same numbers reach
//! the parent and the child, which derive them from the cell and `--quick` alone.

use crate::cell::Cell;

/// What a cell runs, and the queue both contenders get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Messages the queue holds: shmq's ring capacity and iceoryx2's
    /// `subscriber_max_buffer_size`, the same number so that both let the sender run as far
    /// ahead of the receiver.
    pub queue_depth: usize,
    /// Messages of one repetition (round trips for latency).
    pub messages_per_repetition: u64,
    /// Repetitions run first and not counted: they fault in every buffer of both contenders
    /// and let the processes reach their steady state.
    pub warm_up_repetitions: u32,
    /// Repetitions measured; the table shows their median (latency: all their round trips).
    pub measured_repetitions: u32,
    /// Print each repetition of a stream to stderr (`--each`): its time and the context
    /// switches of both processes, to tell a slow phase of the machine (both sides preempted,
    /// neither sleeping more) from a contender that sleeps.
    pub print_each: bool,
}

/// Payload bytes in flight that the queue depth of a large-payload cell aims at: deep
/// queues for small payloads, shallow ones for large, so that neither contender needs more
/// than a few hundred MiB of shared memory.
const IN_FLIGHT_BYTES: usize = 256 << 20;

/// Queue depth for small and middle payloads (shmq's default ring capacity).
const MAX_DEPTH: usize = 64;

/// The shallowest queue: four 64 MiB payloads in flight still let both sides overlap.
const MIN_DEPTH: usize = 4;

impl Plan {
    /// The plan of `cell`; `quick` shrinks the counts to a smoke test.
    pub fn new(cell: Cell, quick: bool) -> Plan {
        let queue_depth = (IN_FLIGHT_BYTES / cell.payload()).clamp(MIN_DEPTH, MAX_DEPTH);
        let (messages_per_repetition, measured_repetitions) = match cell {
            Cell::Throughput { payload, .. } => {
                // About 1 GiB per repetition (16 MiB quick), and at least two queues' worth so
                // that every buffer of the queue is used in the warm-up.
                let target: usize = if quick { 16 << 20 } else { 1 << 30 };
                let messages = (target / payload).max(2 * (queue_depth + 2));
                (messages as u64, if quick { 3 } else { 5 })
            }
            Cell::Latency { .. } => (if quick { 2_000 } else { 100_000 }, 1),
            Cell::Rate { .. } => (
                if quick { 20_000 } else { 500_000 },
                if quick { 3 } else { 5 },
            ),
        };
        Plan {
            queue_depth,
            messages_per_repetition,
            warm_up_repetitions: 1,
            measured_repetitions,
            print_each: false,
        }
    }

    /// Every repetition, warm-up included.
    pub fn total_repetitions(&self) -> u32 {
        self.warm_up_repetitions + self.measured_repetitions
    }

    /// Round trips of the latency warm-up (a tenth of the measured ones).
    pub fn latency_warm_up(&self) -> u64 {
        self.messages_per_repetition / 10
    }
}
