//! Payload chunks in the arena: allocating one for a sender (a chunk given back, taken back
//! without a lock; otherwise under the allocator lock), giving one back (no lock), and freeing
//! the ones given back.
//!
//! A receiver that drops an arena message does not take the allocator lock, which its senders
//! need to allocate: it marks the chunk [`RETURNED`] in its owner word with one CAS, counts the
//! return (`C_ARENA_RETURNS`) and writes the chunk into the return hints
//! ([`Chan::return_chunk`]). A chunk marked returned is nobody's to use: the mark is the one
//! write of a return that matters, so a returner killed before or after it leaves the chunk
//! either its own (the sweep of its slot frees it) or returned; the count and the hint only
//! say where to look.
//!
//! A returned chunk goes back into use in one of two ways, each starting with a CAS of its
//! owner word from exactly `RETURNED | returner`, so that only one of them can win:
//!
//! - *taken back* by a sender that needs a chunk of exactly its size ([`Chan::take_back`]), to
//!   `sender`: no lock, no journal, three cache lines read (the returns count, the hint, the
//!   owner word). A sender killed after its CAS owns the chunk, and its sweep frees it. This is
//!   the steady state of a stream of messages of one size, which then never takes the lock.
//! - *freed* by the allocator lock's holder, to `RETURNED | FREEING | returner` and then the
//!   journaled free ([`Chan::free_if_returned`]): every allocation under the lock first frees
//!   what came back since the last one by the hints, an allocation that finds no room after
//!   returns the hints missed walks every chunk for returned ones ([`Chan::free_all_returned`]),
//!   and so does the sweep of a departing or dead participant. A holder killed between its CAS
//!   and its commit leaves the `FREEING` mark, which the next holder's walk frees again (a
//!   holder's death sets the hints-missed flag, see `lock.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::alloc::{AllocError, AllocLayout, FREEING, RETURNED};
use super::journal::{Txn, Words};
use super::layout::{
    ARENA_PAGE, C_ARENA_HINTS_MISSED, C_ARENA_RETURNS, C_ARENA_SCAVENGED_AT, RETURN_HINTS,
};
use super::lock::Held;
use super::view::Chan;
use super::wait::WaitOn;
use crate::crash_point;
use crate::error::{Error, Result};
use crate::segment::MAX_PARTICIPANTS;

impl Chan {
    /// Allocates a chunk for `len` bytes owned by participant `slot`. `Ok(None)`: no room now.
    pub(crate) fn try_alloc(
        &self,
        len: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>> {
        let pages = AllocLayout::pages_for(len);
        if let Some(chunk) = self.take_back(pages, slot) {
            return Ok(Some(chunk));
        }
        let held = self.lock_alloc(deadline)?;
        // What receivers gave back since the last allocation first: the chunks freed last
        // are the ones first fit hands out again, still warm in the caches.
        self.free_hinted(&held)?;
        for walked in [false, true] {
            let mut txn = Txn::<Chan>::new(self);
            match self.geo.alloc.alloc(&mut txn, pages, slot as u64 + 1) {
                Ok(chunk) => {
                    self.commit(txn, self.geo.alloc.journal * 8)?;
                    return Ok(Some(chunk));
                }
                // Out of room with returns the hints did not show: walk for them, then try
                // once more.
                Err(AllocError::NoSpace)
                    if !walked && self.load(C_ARENA_HINTS_MISSED / 8).unwrap_or(0) != 0 =>
                {
                    self.free_all_returned(&held)?;
                }
                Err(AllocError::NoSpace) => return Ok(None),
                Err(e) => return Err(self.alloc_error(e)),
            }
        }
        Ok(None)
    }

    /// Takes back, without the allocator lock, a chunk of exactly `pages` pages that a receiver
    /// gave back, for participant `slot`: looks at the return hints from where this process's
    /// senders left off, at most [`TAKE_BACK_LOOKS`] of them, and claims the first returned
    /// chunk of that size ([`Chan::claim_returned`]). `None`: none of them now; the caller
    /// allocates under the lock, which frees what was passed over.
    pub(super) fn take_back(&self, pages: u64, slot: u32) -> Option<u64> {
        let owner = u64::from(slot) + 1;
        // Acquire: the hints of the returns counted so far are written, or about to be.
        let returns = self.word(C_ARENA_RETURNS / 8).load(Ordering::Acquire);
        let mut number = self.take_back_from.load(Ordering::Relaxed);
        // Positions wrap (and a garbage count may jump anywhere): count, never compare. Returns
        // further behind than the hints reach are left to the lock's holder.
        if returns.wrapping_sub(number) > RETURN_HINTS {
            number = returns.wrapping_sub(RETURN_HINTS);
        }
        let mut taken = None;
        for _ in 0..TAKE_BACK_LOOKS {
            if number == returns {
                break;
            }
            let hint = self.return_hint(number).load(Ordering::Acquire);
            let stamped = hint >> 32 == stamp_of(number);
            number = number.wrapping_add(1);
            // A hint not written yet (its returner is between the count and the hint) is
            // passed over: the lock's holder frees that chunk once it is there.
            if stamped {
                taken = self.claim_returned(hint & 0xffff_ffff, pages, owner);
                if taken.is_some() {
                    break;
                }
            }
        }
        // Threads of this process may race on the cursor: it is a hint, and a hint looked at
        // twice finds its chunk claimed already.
        self.take_back_from.store(number, Ordering::Relaxed);
        taken
    }

    /// Claims `chunk` for `owner` (a participant's slot + 1) if its owner word says returned
    /// and it is `pages` pages long. The filter reads come before the CAS and may be stale; once
    /// the CAS has made the chunk `owner`'s, nobody else changes its run, and the length is read
    /// again: between the two, the chunk may have been freed, merged and handed out in another
    /// length to the same returner, which gave it back again. A chunk that turns out not to fit
    /// is given back as `owner`'s, for the lock's holder to free.
    fn claim_returned(&self, chunk: u64, pages: u64, owner: u64) -> Option<u64> {
        if chunk >= self.geo.alloc.pages {
            return None;
        }
        let word = self.word(self.geo.alloc.owner_index(chunk));
        let seen = word.load(Ordering::Relaxed);
        let returner = seen & !RETURNED;
        if seen & RETURNED == 0 || returner == 0 || returner > u64::from(MAX_PARTICIPANTS) {
            return None; // not returned (taken back, being freed, freed), or garbage
        }
        if self.chunk_length(chunk) != Some(pages) {
            return None;
        }
        // Acquire: pairs with the returner's Release, so its reads of the payload come before
        // the writes of whoever fills the chunk next.
        word.compare_exchange(seen, owner, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        crash_point!("take-back-claimed");
        if self.chunk_length(chunk) == Some(pages) {
            return Some(chunk);
        }
        word.store(RETURNED | owner, Ordering::Release);
        self.hints_missed();
        None
    }

    /// The length in pages of the allocated chunk starting at page `chunk`, read without the
    /// lock; `None` if no allocated chunk starts there.
    fn chunk_length(&self, chunk: u64) -> Option<u64> {
        self.geo
            .alloc
            .chunk_pages(&Txn::<Chan>::new(self), chunk)
            .ok()
    }

    /// Gives back a chunk that participant `slot` owns, without the allocator lock: marks it
    /// [`RETURNED`], counts the return and writes the chunk into the return hints, so that the
    /// next allocation frees it (see the top of this file). Wakes a sender waiting for room.
    pub(crate) fn return_chunk(&self, chunk: u64, slot: u32) -> Result<()> {
        let owner = u64::from(slot) + 1;
        if chunk >= self.geo.alloc.pages {
            return Err(Error::corrupted(
                self.name(),
                format!("chunk {chunk} is outside the arena"),
            ));
        }
        // Release: the reads of the payload come before whoever reuses the chunk writes it.
        let marked = self
            .word(self.geo.alloc.owner_index(chunk))
            .compare_exchange(
                owner,
                RETURNED | owner,
                Ordering::Release,
                Ordering::Relaxed,
            );
        if let Err(found) = marked {
            return Err(Error::corrupted(
                self.name(),
                format!("chunk {chunk} is owned by {found:#x}, not by participant {slot}"),
            ));
        }
        crash_point!("return-marked");
        // SeqCst: orders the armed-flag read of the wake-up after it (notify_fenced).
        let number = self
            .word(C_ARENA_RETURNS / 8)
            .fetch_add(1, Ordering::SeqCst);
        self.return_hint(number)
            .store(hint_of(number, chunk), Ordering::Release);
        self.notify_fenced(WaitOn::Space);
        Ok(())
    }

    /// The hint entry of return `number`.
    fn return_hint(&self, number: u64) -> &AtomicU64 {
        self.data
            .atomic_in((self.geo.return_hints + 8 * (number % RETURN_HINTS)) as usize)
            .expect("return hint in bounds")
    }

    /// Frees what came back since the last call, by the return hints; returns the pages freed.
    /// A return whose hint is not there (not written yet, or overwritten by later returns) sets
    /// `C_ARENA_HINTS_MISSED`, and the allocator that next runs out of room walks every chunk.
    /// The caller holds the allocator lock (`held`).
    fn free_hinted(&self, held: &Held<'_>) -> Result<u64> {
        // Acquire: every return counted up to `returns` is seen marked below.
        let returns = self.word(C_ARENA_RETURNS / 8).load(Ordering::Acquire);
        let scavenged_at = self.word(C_ARENA_SCAVENGED_AT / 8);
        let from = scavenged_at.load(Ordering::Relaxed);
        let pending = returns.wrapping_sub(from);
        if pending == 0 {
            return Ok(0);
        }
        // Positions wrap (and the words may hold garbage): count, never compare.
        let count = if pending > RETURN_HINTS {
            self.hints_missed();
            RETURN_HINTS
        } else {
            pending
        };
        let mut pages_freed = 0;
        for behind in (1..=count).rev() {
            let number = returns.wrapping_sub(behind);
            let hint = self.return_hint(number).load(Ordering::Acquire);
            if hint >> 32 != stamp_of(number) {
                self.hints_missed();
                continue;
            }
            pages_freed += self.free_if_returned(held, hint & 0xffff_ffff)?;
        }
        scavenged_at.store(returns, Ordering::Relaxed);
        Ok(pages_freed)
    }

    fn hints_missed(&self) {
        self.word(C_ARENA_HINTS_MISSED / 8)
            .store(1, Ordering::Relaxed);
    }

    /// Frees `chunk` if its owner word marks it returned by a participant; returns its pages
    /// (0: not returned, as for a second hint of a chunk freed or taken back already, or not a
    /// chunk). The caller holds the allocator lock (`_held`). The chunk is first marked
    /// [`FREEING`] by CAS, which fails if a sender takes it back first; a mark found already
    /// there is that of a holder that died before its free committed. A chunk whose owner word
    /// names no participant is left alone: a misbehaving process wrote it, and freeing it would
    /// hand out room someone may use.
    fn free_if_returned(&self, _held: &Held<'_>, chunk: u64) -> Result<u64> {
        if chunk >= self.geo.alloc.pages {
            return Ok(0);
        }
        let word = self.word(self.geo.alloc.owner_index(chunk));
        let owner = word.load(Ordering::Acquire);
        let participant = owner & !(RETURNED | FREEING);
        if owner & RETURNED == 0 || participant == 0 || participant > u64::from(MAX_PARTICIPANTS) {
            return Ok(0);
        }
        let Some(pages) = self.chunk_length(chunk) else {
            return Ok(0); // a returned mark on no chunk: garbage, left alone
        };
        // Acquire: as a take-back's, for the returner's reads of the payload.
        if owner & FREEING == 0
            && word
                .compare_exchange(owner, owner | FREEING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return Ok(0); // taken back by a sender meanwhile
        }
        crash_point!("return-freeing");
        self.free_run(chunk)?;
        Ok(pages)
    }

    /// Frees the chunk starting at `chunk` in one journaled transaction. The caller holds the
    /// allocator lock and has checked the chunk's owner word.
    fn free_run(&self, chunk: u64) -> Result<()> {
        let mut txn = Txn::<Chan>::new(self);
        self.geo
            .alloc
            .free(&mut txn, chunk)
            .map_err(|e| self.alloc_error(e))?;
        self.commit(txn, self.geo.alloc.journal * 8)
    }

    /// Frees every chunk marked [`RETURNED`], walking them all (a sweep, or an allocator out of
    /// room after hints were missed); returns the pages freed. The caller holds the allocator
    /// lock (`held`).
    pub(super) fn free_all_returned(&self, held: &Held<'_>) -> Result<u64> {
        self.free_hinted(held)?;
        self.word(C_ARENA_HINTS_MISSED / 8)
            .store(0, Ordering::Relaxed);
        let chunks = self
            .geo
            .alloc
            .chunks(self)
            .map_err(|e| self.alloc_error(e))?;
        let mut pages_freed = 0;
        for (chunk, _, owner) in chunks {
            if owner & RETURNED != 0 {
                pages_freed += self.free_if_returned(held, chunk)?;
            }
        }
        if pages_freed > 0 {
            // Other senders may wait for room.
            self.notify(WaitOn::Space);
        }
        Ok(pages_freed)
    }

    /// Arena pages marked [`RETURNED`] and not freed yet: room that counts as free, since the
    /// next allocator out of room frees it. Read without the lock, walking the chunks (a
    /// figure for statistics): 0 if the walk meets the runs mid-change.
    pub(crate) fn returned_pages(&self) -> u64 {
        self.geo.alloc.chunks(self).map_or(0, |chunks| {
            chunks
                .iter()
                .filter(|&&(_, _, owner)| owner & RETURNED != 0)
                .map(|&(_, pages, _)| pages)
                .sum()
        })
    }

    /// Frees a chunk that participant `slot` owns.
    pub(crate) fn free_chunk(
        &self,
        chunk: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
        {
            let _held = self.lock_alloc(deadline)?;
            let owner = self.load(self.geo.alloc.owner_index(chunk)).unwrap_or(0);
            if owner != slot as u64 + 1 {
                return Err(Error::corrupted(
                    self.name(),
                    format!("chunk {chunk} is owned by {owner}, not by participant {slot}"),
                ));
            }
            self.free_run(chunk)?;
        }
        self.notify(WaitOn::Space);
        Ok(())
    }

    /// Pointer to the first byte of arena chunk `chunk`, if `len` bytes fit from there.
    pub(crate) fn chunk_ptr(&self, chunk: u64, len: u64) -> Option<*mut u8> {
        let start = chunk.checked_mul(ARENA_PAGE)?;
        if start.checked_add(len)? > self.geo.arena_bytes {
            return None;
        }
        // SAFETY: start + len lies inside the arena (checked above), which lies inside the data
        // area by construction of the geometry.
        Some(unsafe {
            self.data
                .as_ptr()
                .add((self.geo.arena_offset + start) as usize)
        })
    }

    pub(super) fn alloc_error(&self, e: AllocError) -> Error {
        match e {
            AllocError::NoSpace => Error::corrupted(self.name(), "arena full"),
            AllocError::Corrupted(what) => Error::corrupted(self.name(), format!("arena: {what}")),
        }
    }
}

/// Return hints a sender looks at, at most, for a chunk to take back before it takes the
/// allocator lock: a few, so that a stream of one size passes over the odd chunk of another
/// without paying for the whole window.
const TAKE_BACK_LOOKS: u32 = 8;

/// The hint of return `number`: its stamp above the chunk's first page (below 2^32, see
/// `MAX_ARENA_PAGES`).
fn hint_of(number: u64, chunk: u64) -> u64 {
    stamp_of(number) << 32 | (chunk & 0xffff_ffff)
}

/// What tells the hint of return `number` from an entry of an earlier lap, or from the zeroed
/// entry of a return not written yet: the low 32 bits of `number + 1`.
fn stamp_of(number: u64) -> u64 {
    number.wrapping_add(1) & 0xffff_ffff
}
