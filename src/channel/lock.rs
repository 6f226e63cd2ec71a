//! The channel's one robust mutex, the allocator lock: taking it, and finishing what a holder
//! that died had committed to its journal. (The ring takes no lock: see `ring.rs`.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::journal::{replay_journal, Txn};
use super::layout::{
    C_ALLOC_LOCK, C_ARENA_HINTS_MISSED, C_RECLAIM_EPOCH, C_RETIRED, LOCK_SPIN_TRIES,
};
use super::view::Chan;
use super::wait::ALL_WAITS;
use crate::error::{Error, Result};
use crate::sys::{self, LockOutcome};

/// A held robust mutex of the channel; unlocks on drop.
pub(super) struct Held<'a> {
    ptr: *mut u8,
    _chan: &'a Chan,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard was made by Chan::lock on this thread, which holds the mutex; the
        // borrow of the Chan keeps the mapping alive.
        let unlocked = unsafe { sys::robust_mutex_unlock(self.ptr) };
        // Failing (EPERM) means the mutex word no longer says we hold it: a process overwrote
        // it. A drop cannot report that, and panicking would turn a peer's garbage into a crash
        // of ours (tests/hostile.rs holds shmq to "garbage is never a panic"), so it is ignored:
        // the next locker sees whatever state the word is in.
        let _ = unlocked;
    }
}

/// How long a lock wait may outlast its caller's deadline. Holders keep these locks for well
/// under a microsecond, but a holder preempted on a busy machine can keep one for a few
/// scheduler slices: without this grace a `try_` call would fail whenever it met such a
/// holder. A stopped holder costs a `try_` call, or a drop, this long.
pub(crate) const LOCK_GRACE: Duration = Duration::from_millis(20);

/// When a lock wait for a call with `deadline` gives up (`None`: never).
pub(crate) fn lock_deadline(deadline: Option<Instant>) -> Option<Instant> {
    deadline.map(|d| d.max(Instant::now() + LOCK_GRACE))
}

impl Chan {
    /// The process holding the lock at `offset` right now, if any (informative: read from the
    /// mutex word without taking it).
    pub(crate) fn lock_holder(&self, offset: u64) -> Option<u32> {
        let word = self.data.atomic_in::<AtomicU32>(offset as usize)?;
        let tid = sys::robust_mutex_holder_tid(word.load(Ordering::Relaxed))?;
        Some(sys::process_of_thread(tid).unwrap_or(tid))
    }

    /// Takes the lock at `offset`, waiting until `deadline` (see [`lock_deadline`]; `None`
    /// waits for ever), and replays `journal` if its previous holder died.
    pub(super) fn lock(
        &self,
        offset: u64,
        journal: u64,
        deadline: Option<Instant>,
    ) -> Result<Held<'_>> {
        // SAFETY: the offset is the allocator mutex of the fixed layout, inside the data area
        // (the geometry puts it there).
        let ptr = unsafe { self.data.as_ptr().add(offset as usize) };
        let failed = |e| Error::from_io(self.name(), "pthread_mutex_lock", e);
        // Holders keep these locks for well under a microsecond, and glibc's robust mutexes
        // never spin: try for a moment before sleeping in the kernel.
        let mut outcome = LockOutcome::Busy;
        for _ in 0..LOCK_SPIN_TRIES {
            // SAFETY: the mutex was initialised before the segment was marked ready, and the
            // mapping outlives the call (self holds the region).
            outcome = unsafe { sys::robust_mutex_try_lock(ptr) }.map_err(failed)?;
            if outcome != LockOutcome::Busy {
                break;
            }
            std::hint::spin_loop();
        }
        if outcome == LockOutcome::Busy {
            let started = Instant::now();
            let until = lock_deadline(deadline);
            // SAFETY: as for the try-lock above.
            outcome = unsafe { sys::robust_mutex_lock(ptr, until) }.map_err(failed)?;
            if outcome == LockOutcome::Busy {
                return Err(Error::LockTimeout {
                    name: self.name().to_owned(),
                    lock: "allocator",
                    holder_pid: self.lock_holder(offset),
                    waited: started.elapsed(),
                });
            }
        }
        match outcome {
            LockOutcome::Acquired => {}
            LockOutcome::OwnerDied => {
                // The previous holder died inside its critical section: finish what it committed.
                replay_journal(self, journal / 8, self.journal_span());
                // It may have died freeing a returned chunk before its free committed, leaving
                // the chunk marked FREEING where no hint shows it any more (arena.rs): the
                // next allocator out of room walks the chunks and frees it.
                self.word(C_ARENA_HINTS_MISSED / 8)
                    .store(1, Ordering::Relaxed);
                // It may have died inside retire_participant with the epoch odd.
                let epoch = self.word(C_RECLAIM_EPOCH / 8);
                let value = epoch.load(Ordering::Acquire);
                epoch.store(value.wrapping_add(value % 2), Ordering::Release);
                // The guard first: if marking fails, returning the error drops it, which unlocks
                // (the mutex then reports itself unrecoverable instead of staying held for ever).
                let held = Held { ptr, _chan: self };
                // SAFETY: we hold the mutex (OwnerDied means acquired); it stays mapped.
                unsafe { sys::robust_mutex_mark_consistent(ptr) }
                    .map_err(|e| Error::from_io(self.name(), "pthread_mutex_consistent", e))?;
                // A replay may have freed space or moved counts: wake whoever waits
                // rather than leave them to their next timed re-check.
                for on in ALL_WAITS {
                    self.notify(on);
                }
                return Ok(held);
            }
            LockOutcome::Busy | LockOutcome::Unrecoverable => {
                // (Busy was returned above; only Unrecoverable arrives here.)
                return Err(Error::corrupted(
                    self.name(),
                    "a channel lock is unrecoverable",
                ));
            }
        }
        Ok(Held { ptr, _chan: self })
    }

    /// Words a journal may write: the counters, the overflow table, the participant records
    /// and the allocator (never the ring's words or `head` and `tail`, which no lock guards).
    pub(super) fn journal_span(&self) -> std::ops::Range<u64> {
        C_RETIRED / 8..self.geo.alloc.span().end
    }

    pub(super) fn lock_alloc(&self, deadline: Option<Instant>) -> Result<Held<'_>> {
        self.lock(C_ALLOC_LOCK, self.geo.alloc.journal * 8, deadline)
    }

    pub(super) fn commit<const N: usize>(
        &self,
        txn: Txn<'_, Chan, N>,
        journal_offset: u64,
    ) -> Result<()> {
        if txn.commit(journal_offset / 8) {
            Ok(())
        } else {
            Err(Error::corrupted(self.name(), "journal overflow"))
        }
    }
}
