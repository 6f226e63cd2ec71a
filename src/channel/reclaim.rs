//! What a participant leaves behind: counting its messages done, moving its counts to the
//! retired totals when it goes (crediting the tasks a dead one left unfinished), and freeing
//! what a dead one held.

use std::sync::atomic::Ordering;

use std::time::Instant;

use super::journal::{Txn, Words};
use super::layout::{
    C_RECLAIM_EPOCH, C_RETIRED, C_RETIRED_TASKS, OVERFLOW_SLOTS, P_DROPPED, P_LEAVING, P_TAKEN,
    P_TAKE_BASE, P_TAKE_POSITION, P_TASKS_DONE,
};
use super::stats::Count;
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::{Error, Result};

impl Chan {
    /// Counts one message taken by `slot` as done.
    pub(crate) fn mark_done(&self, slot: u32) {
        // SeqCst: orders the wake-up's armed-flag read after it.
        self.dropped(slot).fetch_add(1, Ordering::SeqCst);
        self.notify_fenced(WaitOn::Done);
    }

    /// Moves `slot`'s counts into the retired totals and zeroes them (on detach or reclaim).
    ///
    /// Tasks: a participant that was leaving on purpose ([`Chan::set_leaving`]) retires the
    /// tasks it counted done, and nothing more; one that died also gets the tasks it took and
    /// did not finish (`taken - tasks_done`) counted done, so that `join_tasks` never waits for
    /// the dead. That credit is capped by the tasks still unfinished: counting is anonymous (a
    /// task may be finished through another handle than the one that received it), and the
    /// count of tasks done must never exceed the count of tasks sent.
    pub(crate) fn retire_participant(&self, slot: u32, deadline: Option<Instant>) -> Result<()> {
        let epoch = self.word(C_RECLAIM_EPOCH / 8);
        let _held = self.lock_alloc(deadline)?;
        // Exact under the lock (see Chan::task_done).
        let unfinished = self
            .sent_total()
            .saturating_sub(self.count_sum(Count::Tasks));
        // Odd while counts move, so done_total() readers retry instead of counting twice.
        epoch.fetch_add(1, Ordering::AcqRel);
        let field = |f| self.participant_index(slot, f);
        let mut txn = Txn::<Chan, 8>::new(self);
        let retired = txn.get(C_RETIRED / 8).unwrap_or(0);
        let taken = txn.get(field(P_TAKEN)).unwrap_or(0);
        txn.set(C_RETIRED / 8, retired.wrapping_add(taken));
        let retired_tasks = txn.get(C_RETIRED_TASKS / 8).unwrap_or(0);
        let tasks_done = txn.get(field(P_TASKS_DONE)).unwrap_or(0);
        let leaving = txn.get(field(P_LEAVING)).unwrap_or(0) != 0;
        let credit = if leaving {
            0
        } else {
            taken.saturating_sub(tasks_done).min(unfinished)
        };
        txn.set(
            C_RETIRED_TASKS / 8,
            retired_tasks.wrapping_add(tasks_done).wrapping_add(credit),
        );
        for f in [
            P_TAKEN,
            P_DROPPED,
            P_TASKS_DONE,
            P_LEAVING,
            P_TAKE_BASE,
            P_TAKE_POSITION,
        ] {
            txn.set(field(f), 0);
        }
        let result = self.commit(txn, self.geo.alloc.journal * 8);
        epoch.fetch_add(1, Ordering::AcqRel);
        drop(_held);
        self.notify(WaitOn::Done);
        self.notify(WaitOn::Tasks);
        result
    }

    /// Frees everything participant `slot` held, and retires its counts: for a dead one
    /// (`dead`), first finishing what it left half-way on the ring ([`Chan::recover_ring`]);
    /// for one detaching, whose family has nothing in progress, without that scan of the
    /// ring. Idempotent: an error (a lock not free by `deadline`) leaves the rest for a later
    /// call.
    pub(crate) fn reclaim(&self, slot: u32, dead: bool, deadline: Option<Instant>) -> Result<()> {
        if dead {
            self.recover_ring(slot);
        }
        let owner = slot as u64 + 1;
        let chunks = {
            let held = self.lock_alloc(deadline)?;
            // What was given back (by this participant or any other) first: a returner may
            // have died between marking a chunk and counting the return.
            self.free_all_returned(&held)?;
            self.geo
                .alloc
                .chunks(self)
                .map_err(|e| self.alloc_error(e))?
        };
        for (chunk, _, chunk_owner) in chunks {
            if chunk_owner == owner {
                only_lock_timeouts(self.free_chunk(chunk, slot, deadline))?;
            }
        }
        for entry in 0..OVERFLOW_SLOTS {
            let id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            if id != 0 && self.load(self.overflow_word(entry, 1)) == Some(owner) {
                only_lock_timeouts(self.release_overflow(entry, id, slot, deadline))?;
            }
        }
        self.retire_participant(slot, deadline)
    }
}

/// Keeps a sweep going past a chunk or entry that changed hands meanwhile (a corrupted owner
/// word: nothing to free), but stops it at a lock that is not free, so that the whole reclaim
/// is tried again later instead of reporting a slot clean that is not.
fn only_lock_timeouts(result: Result<()>) -> Result<()> {
    match result {
        Err(e @ Error::LockTimeout { .. }) => Err(e),
        _ => Ok(()),
    }
}
