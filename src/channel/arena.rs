//! Payload chunks in the arena: allocating one for a sender (allocator lock), giving one back
//! (no lock), and freeing the ones given back.
//!
//! A receiver that drops an arena message does not take the allocator lock, which its senders
//! need for every allocation: it marks the chunk [`RETURNED`] in its owner word with one CAS,
//! counts the return (`C_ARENA_RETURNS`) and writes the chunk into the return hints
//! ([`Chan::return_chunk`]). Every allocation, under the lock, first frees what came back since
//! the last one by the hints; an allocation that finds no room after returns the hints missed
//! walks every chunk for returned ones ([`Chan::free_all_returned`]), and so does the sweep of
//! a departing or dead participant. A chunk marked returned is nobody's to use: the mark is the
//! one write of a return that matters, so a returner killed before or after it leaves the chunk
//! either its own (the sweep of its slot frees it) or returned (a walk frees it); the count and
//! the hint only say where to look.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::alloc::{AllocError, AllocLayout, RETURNED};
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
    /// (0: not returned, as for a second hint of a chunk freed already, or not a chunk). The
    /// caller holds the allocator lock (`_held`). A chunk whose owner word names no participant
    /// is left alone: a misbehaving process wrote it, and freeing it would hand out room
    /// someone may use.
    fn free_if_returned(&self, _held: &Held<'_>, chunk: u64) -> Result<u64> {
        if chunk >= self.geo.alloc.pages {
            return Ok(0);
        }
        let Some(owner) = self.load(self.geo.alloc.owner_index(chunk)) else {
            return Ok(0);
        };
        let participant = owner & !RETURNED;
        if owner & RETURNED == 0 || participant == 0 || participant > u64::from(MAX_PARTICIPANTS) {
            return Ok(0);
        }
        let txn = Txn::<Chan>::new(self);
        let Ok(pages) = self.geo.alloc.chunk_pages(&txn, chunk) else {
            return Ok(0); // a returned mark on no chunk: garbage, left alone
        };
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
