//! What a participant leaves behind: counting its messages done, moving its counts to the
//! retired total when it goes, and freeing what a dead one held.

use std::sync::atomic::Ordering;

use std::time::Instant;

use super::journal::{Txn, Words};
use super::layout::{C_RECLAIM_EPOCH, C_RETIRED, OVERFLOW_SLOTS};
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::{Error, Result};

impl Chan {
    /// Counts one message taken by `slot` as done.
    pub(crate) fn mark_done(&self, slot: u32) {
        self.dropped(slot).fetch_add(1, Ordering::AcqRel);
        self.notify(WaitOn::Done);
    }

    /// Moves `slot`'s counts into the retired total and zeroes them (on detach or reclaim).
    pub(crate) fn retire_participant(&self, slot: u32, deadline: Option<Instant>) -> Result<()> {
        let epoch = self.word(C_RECLAIM_EPOCH / 8);
        let _held = self.lock_alloc(deadline)?;
        // Odd while counts move, so done_total() readers retry instead of counting twice.
        epoch.fetch_add(1, Ordering::AcqRel);
        let taken_index = self.participant_index(slot, 0);
        let mut txn = Txn::<Chan, 4>::new(self);
        let retired = txn.get(C_RETIRED / 8).unwrap_or(0);
        let taken = txn.get(taken_index).unwrap_or(0);
        txn.set(C_RETIRED / 8, retired.wrapping_add(taken));
        txn.set(taken_index, 0);
        txn.set(taken_index + 1, 0);
        let result = self.commit(txn, self.geo.alloc.journal * 8);
        epoch.fetch_add(1, Ordering::AcqRel);
        drop(_held);
        self.notify(WaitOn::Done);
        result
    }

    /// Frees everything the dead participant `slot` held. Idempotent: an error (a lock not
    /// free by `deadline`) leaves the rest for a later call.
    pub(crate) fn reclaim(&self, slot: u32, deadline: Option<Instant>) -> Result<()> {
        // Taking each lock replays any journal the dead participant left committed.
        drop(self.lock_producer(deadline)?);
        drop(self.lock_consumer(deadline)?);
        let owner = slot as u64 + 1;
        let chunks = {
            let _held = self.lock_alloc(deadline)?;
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
