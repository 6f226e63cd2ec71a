//! Adaptive spinning: how long the next blocked call spins before it sleeps, learnt from how
//! the recent waits of its handle family ended.
//!
//! Spinning pays only when the partner makes progress before the spin runs out: then the
//! waiter sees it within a poll, with no system call on either side. When the partner keeps
//! taking longer than the spin (a slow producer, a consumer busy elsewhere), every spin is a
//! core burnt for nothing before the sleep that comes anyway. So after [`MISSES_BEFORE_CUT`]
//! waits in a row that slept, the spin is cut to about what the waits that did end in their
//! spin took ([`PAID_FACTOR`] times their average, at least [`FLOOR`]), and one wait in
//! [`PROBE_EVERY`] spins the full maximum again: a sleep says nothing about when the progress
//! came (the futex wake-up adds its own tens of microseconds), so only a full spin can find
//! out that waits became short again. One wait that ends in its spin restores the full spin.
//!
//! A spin that never ends (`Duration::MAX`, busy waiting) never misses, so it never adapts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Waits in a row that slept before the spin is cut.
pub(crate) const MISSES_BEFORE_CUT: u64 = 2;
/// While the spin is cut, one wait in this many spins the full maximum.
pub(crate) const PROBE_EVERY: u64 = 16;
/// A cut spin is this many times the average spin of the waits that ended in it.
pub(crate) const PAID_FACTOR: u64 = 4;
/// The shortest cut spin: a few dozen polls, enough for a partner that is about to publish.
pub(crate) const FLOOR: Duration = Duration::from_micros(1);

const PAID_BITS: u32 = 40;
const PAID_MASK: u64 = (1 << PAID_BITS) - 1;
const COUNT_MASK: u64 = 0xff;

/// How a wait that spun ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpinOutcome {
    /// The condition came true while spinning, after this long.
    Paid(Duration),
    /// The spin ran out and the waiter slept.
    Slept,
}

/// What a handle family remembers of its recent waits on one condition (a plain value, so
/// that its rules can be tested alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpinHistory {
    /// Average spin, in nanoseconds, of the waits that ended in their spin (weight 1/4 for the
    /// newest).
    paid_ns: u64,
    /// Waits in a row that slept (saturating at 255).
    missed: u64,
    /// Waits since the spin was cut, modulo 256 (for the probes).
    waits: u64,
}

impl SpinHistory {
    /// How long the next wait spins, at most `max`.
    pub(crate) fn budget(self, max: Duration) -> Duration {
        if self.missed < MISSES_BEFORE_CUT || self.waits.is_multiple_of(PROBE_EVERY) {
            return max;
        }
        let paid = Duration::from_nanos(self.paid_ns.saturating_mul(PAID_FACTOR));
        paid.max(FLOOR).min(max)
    }

    /// The history after a wait that ended with `outcome`.
    pub(crate) fn after(self, outcome: SpinOutcome) -> SpinHistory {
        match outcome {
            SpinOutcome::Paid(spun) => {
                let spun = u64::try_from(spun.as_nanos())
                    .unwrap_or(u64::MAX)
                    .min(PAID_MASK);
                let paid_ns = if self.paid_ns == 0 {
                    spun
                } else {
                    (3 * self.paid_ns + spun) / 4
                };
                SpinHistory {
                    paid_ns,
                    missed: 0,
                    waits: 0,
                }
            }
            SpinOutcome::Slept => SpinHistory {
                paid_ns: self.paid_ns,
                missed: (self.missed + 1).min(COUNT_MASK),
                // Counted from the cut on, so that the first cut wait does not probe.
                waits: if self.missed + 1 < MISSES_BEFORE_CUT {
                    0
                } else {
                    (self.waits + 1) & COUNT_MASK
                },
            },
        }
    }

    fn pack(self) -> u64 {
        self.paid_ns | self.missed << PAID_BITS | self.waits << (PAID_BITS + 8)
    }

    fn unpack(word: u64) -> SpinHistory {
        SpinHistory {
            paid_ns: word & PAID_MASK,
            missed: word >> PAID_BITS & COUNT_MASK,
            waits: word >> (PAID_BITS + 8) & COUNT_MASK,
        }
    }
}

/// A [`SpinHistory`] shared by the threads of a handle family, in one word. Threads that
/// record at once may lose one another's update: the history is a hint, and a lost update
/// only delays the adaptation by a wait.
#[derive(Debug, Default)]
pub(crate) struct SpinBudget(AtomicU64);

impl SpinBudget {
    /// How long the next wait spins, at most `max`.
    pub(crate) fn budget(&self, max: Duration) -> Duration {
        SpinHistory::unpack(self.0.load(Ordering::Relaxed)).budget(max)
    }

    /// Records how a wait ended.
    pub(crate) fn record(&self, outcome: SpinOutcome) {
        let history = SpinHistory::unpack(self.0.load(Ordering::Relaxed)).after(outcome);
        self.0.store(history.pack(), Ordering::Relaxed);
    }

    /// The history now (for the tests).
    #[cfg(test)]
    pub(crate) fn history(&self) -> SpinHistory {
        SpinHistory::unpack(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(20);

    fn slept(mut history: SpinHistory, times: u64) -> SpinHistory {
        for _ in 0..times {
            history = history.after(SpinOutcome::Slept);
        }
        history
    }

    #[test]
    fn spins_the_full_maximum_while_spinning_pays() {
        let mut history = SpinHistory::default();
        assert_eq!(history.budget(MAX), MAX);
        for _ in 0..100 {
            history = history.after(SpinOutcome::Paid(Duration::from_nanos(300)));
            assert_eq!(history.budget(MAX), MAX);
        }
        // One miss alone does not cut it.
        history = history.after(SpinOutcome::Slept);
        assert_eq!(history.budget(MAX), MAX);
    }

    #[test]
    fn waits_that_keep_outlasting_the_spin_cut_it_to_what_paid() {
        let mut history = SpinHistory::default();
        for _ in 0..8 {
            history = history.after(SpinOutcome::Paid(Duration::from_micros(2)));
        }
        history = slept(history, MISSES_BEFORE_CUT);
        assert_eq!(history.budget(MAX), Duration::from_micros(2 * PAID_FACTOR));
        // Never below the floor, never above the maximum.
        let quick = slept(
            SpinHistory::default().after(SpinOutcome::Paid(Duration::from_nanos(10))),
            MISSES_BEFORE_CUT,
        );
        assert_eq!(quick.budget(MAX), FLOOR);
        let slow = slept(
            SpinHistory::default().after(SpinOutcome::Paid(Duration::from_micros(19))),
            MISSES_BEFORE_CUT,
        );
        assert_eq!(slow.budget(MAX), MAX);
        // With nothing that paid yet, the floor.
        assert_eq!(slept(SpinHistory::default(), 5).budget(MAX), FLOOR);
        // A smaller maximum still bounds it.
        assert_eq!(
            history.budget(Duration::from_micros(3)),
            Duration::from_micros(3)
        );
    }

    #[test]
    fn a_cut_spin_probes_the_full_maximum_one_wait_in_so_many() {
        let mut history = slept(SpinHistory::default(), MISSES_BEFORE_CUT);
        let mut full = 0;
        for _ in 0..PROBE_EVERY * 4 {
            if history.budget(MAX) == MAX {
                full += 1;
            }
            history = history.after(SpinOutcome::Slept);
        }
        assert_eq!(full, 4);
    }

    #[test]
    fn one_wait_that_ends_in_its_spin_restores_the_full_spin() {
        let history = slept(SpinHistory::default(), 50);
        assert_eq!(history.budget(MAX), FLOOR);
        let history = history.after(SpinOutcome::Paid(Duration::from_nanos(500)));
        assert_eq!(history.budget(MAX), MAX);
    }

    #[test]
    fn busy_waiting_is_never_cut() {
        let mut history = SpinHistory::default();
        for _ in 0..10 {
            history = history.after(SpinOutcome::Paid(Duration::from_micros(50)));
            assert_eq!(history.budget(Duration::MAX), Duration::MAX);
        }
    }

    #[test]
    fn the_shared_word_keeps_the_history() {
        let budget = SpinBudget::default();
        budget.record(SpinOutcome::Paid(Duration::from_micros(3)));
        for _ in 0..300 {
            budget.record(SpinOutcome::Slept);
        }
        let history = budget.history();
        assert_eq!(history.paid_ns, 3_000);
        assert_eq!(history.missed, 255);
        assert_eq!(budget.budget(MAX), history.budget(MAX));
        // Spins longer than the word holds saturate instead of spilling into the counts.
        budget.record(SpinOutcome::Paid(Duration::from_secs(100_000)));
        assert_eq!(budget.history().missed, 0);
        assert_eq!(budget.history().paid_ns, (3 * 3_000 + PAID_MASK) / 4);
    }
}
