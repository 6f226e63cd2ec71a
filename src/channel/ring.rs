//! The ring of descriptors: publishing a message (producer lock) and taking the oldest one
//! (consumer lock), each one journaled transaction whose last write (`tail`, `head`) makes it
//! visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::alloc::AllocLayout;
use super::journal::{Txn, Words};
use super::layout::{
    Desc, InlineBuf, Place, C_CONSUMER_JOURNAL, C_CORRUPT_SKIPPED, C_HEAD, C_PRODUCER_JOURNAL,
    C_TAIL, DESC_ARENA, DESC_INLINE, DESC_OVERFLOW, INLINE_MAX, OVERFLOW_SLOTS, P_TAKEN,
    SLOT_BYTES,
};
use super::overflow::payload_lost;
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::{Error, Result};
use crate::segment::Region;

/// A message taken off the ring.
pub(crate) struct Taken {
    /// Its checked descriptor.
    pub(crate) desc: Desc,
    /// For an overflow payload: its segment, mapped, or why it could not be (for good).
    pub(crate) payload: Option<Result<Arc<Region>>>,
}

impl Chan {
    /// Offset in the data area of the slot for ring position `position`.
    fn slot_offset(&self, position: u64) -> u64 {
        self.geo.ring_offset + (position & (self.geo.ring_slots - 1)) * SLOT_BYTES
    }

    fn slot_ptr(&self, position: u64) -> *mut u8 {
        // SAFETY: the masked index is below ring_slots, so the slot lies inside the ring, which
        // lies inside the data area by construction of the geometry.
        unsafe { self.data.as_ptr().add(self.slot_offset(position) as usize) }
    }

    fn slot_word(&self, position: u64, field: u64) -> &AtomicU64 {
        // field < 4 keeps the word inside the slot's 32-byte descriptor.
        let offset = self.slot_offset(position) + 8 * field;
        self.data
            .atomic_in(offset as usize)
            .expect("ring slot word in bounds")
    }

    /// Publishes a descriptor (and inline bytes). `Ok(false)`: the ring is full.
    pub(crate) fn try_publish(
        &self,
        place: Place,
        len: u64,
        inline: &[u8],
        deadline: Option<Instant>,
    ) -> Result<bool> {
        {
            let _held = self.lock_producer(deadline)?;
            let tail = self.tail().load(Ordering::Relaxed);
            let mut head = self.head_seen.load(Ordering::Acquire);
            if tail.wrapping_sub(head) >= self.geo.capacity {
                head = self.head().load(Ordering::Acquire);
                self.head_seen.store(head, Ordering::Release);
            }
            let queued = tail.wrapping_sub(head);
            if queued > self.geo.capacity {
                return Err(self.ring_corrupted(head, tail));
            }
            if queued == self.geo.capacity {
                return Ok(false);
            }
            // The slot is invisible to consumers until `tail` moves past it.
            let (kind, loc, id) = match place {
                Place::Inline => {
                    let n = inline.len().min(INLINE_MAX);
                    // SAFETY: the slot's inline area is INLINE_MAX bytes at offset 32; n fits.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            inline.as_ptr(),
                            self.slot_ptr(tail).add(32),
                            n,
                        )
                    };
                    (DESC_INLINE, 0, 0)
                }
                Place::Arena(chunk) => (DESC_ARENA, chunk, 0),
                Place::Overflow { entry, id } => (DESC_OVERFLOW, entry, id),
            };
            self.slot_word(tail, 0).store(kind, Ordering::Relaxed);
            self.slot_word(tail, 1).store(len, Ordering::Relaxed);
            self.slot_word(tail, 2).store(loc, Ordering::Relaxed);
            self.slot_word(tail, 3).store(id, Ordering::Relaxed);
            let mut txn = Txn::<Chan, 4>::new(self);
            match place {
                Place::Inline => {}
                Place::Arena(chunk) => txn.set(self.geo.alloc.owner_index(chunk), 0),
                Place::Overflow { entry, .. } => txn.set(self.overflow_word(entry, 1), 0),
            }
            // Last: consumers read `tail` without this lock, so the chunk must belong to the
            // ring before the slot becomes visible (they skip a chunk that is not queued).
            txn.set(C_TAIL / 8, tail.wrapping_add(1));
            self.commit(txn, C_PRODUCER_JOURNAL)?;
        }
        self.notify(WaitOn::NotEmpty);
        Ok(true)
    }

    fn ring_corrupted(&self, head: u64, tail: u64) -> Error {
        Error::corrupted(
            self.name(),
            format!(
                "ring head {head} and tail {tail} are more than {} apart",
                self.geo.capacity
            ),
        )
    }

    /// Copies out and checks the descriptor at `position`.
    fn read_desc(&self, position: u64, inline: &mut InlineBuf) -> Option<Desc> {
        let kind = self.slot_word(position, 0).load(Ordering::Relaxed);
        let len = self.slot_word(position, 1).load(Ordering::Relaxed);
        let loc = self.slot_word(position, 2).load(Ordering::Relaxed);
        let id = self.slot_word(position, 3).load(Ordering::Relaxed);
        let place = match kind {
            DESC_INLINE if len <= INLINE_MAX as u64 => {
                // SAFETY: the inline area is INLINE_MAX bytes at offset 32 of the slot; the
                // producer finished writing it before publishing `tail` (Acquire by caller).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.slot_ptr(position).add(32),
                        inline.0.as_mut_ptr(),
                        len as usize,
                    )
                };
                Place::Inline
            }
            DESC_ARENA => {
                // Reads only: an empty transaction of one entry costs nothing to set up.
                let txn = Txn::<Chan, 1>::new(self);
                let pages = self.geo.alloc.chunk_pages(&txn, loc).ok()?;
                let fits =
                    AllocLayout::pages_for(len) <= pages && self.chunk_ptr(loc, len).is_some();
                let queued = self.load(self.geo.alloc.owner_index(loc)) == Some(0);
                if !(fits && queued) {
                    return None;
                }
                Place::Arena(loc)
            }
            DESC_OVERFLOW if loc < OVERFLOW_SLOTS => {
                let entry_id = self.load(self.overflow_word(loc, 0))?;
                let owner = self.load(self.overflow_word(loc, 1))?;
                let entry_len = self.load(self.overflow_word(loc, 2))?;
                if entry_id != id || id == 0 || owner != 0 || entry_len != len {
                    return None;
                }
                Place::Overflow { entry: loc, id }
            }
            _ => return None,
        };
        Some(Desc { place, len })
    }

    /// Takes the oldest message for participant `slot`. `Ok(None)`: the ring is empty.
    ///
    /// An overflow payload is opened before the message is taken: if that fails for a reason
    /// that may pass (out of descriptors or memory, a lock), the message stays queued and the
    /// error is returned. A payload that is gone for good (removed, corrupted) is taken, so
    /// that it does not block the ring, and its error comes back in [`Taken::payload`].
    pub(crate) fn try_take(
        &self,
        slot: u32,
        inline: &mut InlineBuf,
        deadline: Option<Instant>,
    ) -> Result<Option<Taken>> {
        let mut skipped = false;
        let taken = {
            let _held = self.lock_consumer(deadline)?;
            loop {
                let head = self.head().load(Ordering::Relaxed);
                let mut tail = self.tail_seen.load(Ordering::Acquire);
                if tail.wrapping_sub(head).wrapping_sub(1) >= self.geo.capacity {
                    // Looks empty (or the copy is stale beyond belief): read the real tail.
                    tail = self.tail().load(Ordering::Acquire);
                    self.tail_seen.store(tail, Ordering::Release);
                }
                if head == tail {
                    break None;
                }
                if tail.wrapping_sub(head) > self.geo.capacity {
                    // Without this check a garbage head would be walked towards tail forever.
                    return Err(self.ring_corrupted(head, tail));
                }
                let desc = self.read_desc(head, inline);
                let mut txn = Txn::<Chan, 4>::new(self);
                let Some(desc) = desc else {
                    // Garbage in the slot: skip it rather than wedge every consumer behind it.
                    txn.set(C_HEAD / 8, head.wrapping_add(1));
                    self.commit(txn, C_CONSUMER_JOURNAL)?;
                    self.word(C_CORRUPT_SKIPPED / 8)
                        .fetch_add(1, Ordering::Relaxed);
                    skipped = true;
                    continue;
                };
                let payload = match desc.place {
                    Place::Overflow { id, .. } => match self.open_overflow(id, desc.len) {
                        Ok(region) => Some(Ok(region)),
                        Err(e) if payload_lost(&e) => Some(Err(e)),
                        Err(e) => {
                            // Left queued; slots skipped before it still freed room.
                            if skipped {
                                self.notify(WaitOn::NotFull);
                            }
                            return Err(e);
                        }
                    },
                    _ => None,
                };
                let taken_index = self.participant_index(slot, P_TAKEN);
                txn.set(
                    taken_index,
                    txn.get(taken_index).unwrap_or(0).wrapping_add(1),
                );
                match desc.place {
                    Place::Inline => {}
                    Place::Arena(chunk) => {
                        txn.set(self.geo.alloc.owner_index(chunk), slot as u64 + 1)
                    }
                    Place::Overflow { entry, .. } => {
                        txn.set(self.overflow_word(entry, 1), slot as u64 + 1)
                    }
                }
                // Last, as in try_publish: `head` is the commit marker replay looks at.
                txn.set(C_HEAD / 8, head.wrapping_add(1));
                self.commit(txn, C_CONSUMER_JOURNAL)?;
                break Some(Taken { desc, payload });
            }
        };
        if taken.is_some() || skipped {
            self.notify(WaitOn::NotFull);
        }
        Ok(taken)
    }
}
