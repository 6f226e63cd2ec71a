//! Task counting, Python's `JoinableQueue` way: every message sent is one unfinished task, every
//! `task_done` finishes one, and `join_tasks` waits for none to be left.
//!
//! The count is kept apart from the messages' own done count (received and dropped, what
//! `Sender::join` waits for): tasks done are `retired tasks + Σ tasks_done` over the
//! participants, against `tail` (messages ever sent) for the tasks sent. Every change of a task
//! count takes the allocator lock: a `task_done` (which must refuse to count more tasks than
//! were sent, exactly, however many processes race), a payload lost on receipt (one task no
//! receiver can ever finish) and a participant's retirement (`reclaim.rs`, which moves its count
//! into the retired word and credits the tasks a dead participant left unfinished). Readers
//! that do not take the lock read the counts as the messages' are read, behind the reclaim epoch
//! (`stats.rs`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::layout::P_LEAVING;
use super::stats::Count;
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::Result;

impl Chan {
    /// Counts one task done by participant `slot`, unless every task sent is done already:
    /// `Ok(false)`, and nothing counted. Waits for the allocator lock until `deadline` (plus
    /// the lock grace; `None`: for ever).
    pub(crate) fn task_done(&self, slot: u32, deadline: Option<Instant>) -> Result<bool> {
        let counted = {
            let _held = self.lock_alloc(deadline)?;
            // Exact under the lock: nobody retires and no other task is counted meanwhile.
            // `tail` may grow, never shrink, so "done <= sent" holds once checked here.
            let done = self.count_sum(Count::Tasks);
            let sent = self.sent_total();
            if done >= sent {
                false
            } else {
                // One atomic word: nothing to journal (a death before it counted nothing).
                self.tasks_done(slot).fetch_add(1, Ordering::AcqRel);
                true
            }
        };
        if counted {
            self.notify(WaitOn::Tasks);
        }
        Ok(counted)
    }

    /// Tasks done (by `task_done`, or credited to dead participants), best effort: a figure
    /// read while a stopped participant was retiring may count its share twice.
    pub(crate) fn tasks_done_total(&self) -> u64 {
        self.count_consistent(Count::Tasks)
            .unwrap_or_else(|best| best)
    }

    /// Tasks sent and not done yet, best effort.
    pub(crate) fn unfinished_tasks(&self) -> u64 {
        // Done first: both counts only grow, so the figure is never below the true count at
        // the instant `tail` was read.
        let done = self.tasks_done_total();
        self.sent_total().saturating_sub(done)
    }

    /// Whether every task sent is done. Reads the done count consistently, then `tail`: both
    /// only grow, so a `true` held at the instant the done count was complete.
    pub(crate) fn tasks_all_done(&self) -> bool {
        match self.count_consistent(Count::Tasks) {
            Ok(done) => done >= self.sent_total(),
            Err(_) => false,
        }
    }

    /// Marks participant `slot` as leaving on purpose (its family is being dropped), or not
    /// (a new participant in the slot, which a retirement that failed may have left marked):
    /// the retirement of one leaving credits no task it took and did not finish. A participant
    /// that dies without having begun to leave gets them credited.
    pub(crate) fn set_leaving(&self, slot: u32, leaving: bool) {
        self.word(self.participant_index(slot, P_LEAVING))
            .store(u64::from(leaving), Ordering::Release);
    }
}
