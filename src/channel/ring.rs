//! The ring of descriptors, without a lock: senders claim the slot of the next position, write
//! the descriptor and hand it over; receivers claim the oldest full slot, make its payload
//! their own and free the slot for the next lap. And what a reclaim does for a participant that
//! died half-way through either ([`Chan::recover_ring`]).
//!
//! Every step is one atomic write of the slot's state word ([`SlotState`]), which carries the
//! position, the phase and the participant holding the slot. `tail` and `head` are hints; the
//! slots are the truth. Senders move `tail` on with one CAS per claim, and whoever finds it
//! behind helps it on. Receivers publish `head` every few takes and keep a process-local hint
//! (see [`Chan::publish_head`]); a sender that finds `head` a capacity behind walks on over the
//! taken slots. Per message and side: one CAS to claim, a CAS on a hint (senders; receivers one
//! in a few), one swap to hand the slot on (which orders the wake-up check that follows, so no
//! extra fence), and a FUTEX_WAKE only when a waiter armed its word.
//!
//! Crash safety, step by step (the crash points of tests/crash_points.rs):
//!
//! | a sender dies after  | the slot is           | a reclaim                                  |
//! |----------------------|-----------------------|--------------------------------------------|
//! | claiming             | `Writing`, its own    | voids it: receivers skip it, counting it done |
//! | describing           | `Writing`             | voids it; the sweep frees the chunk        |
//! | marking it written   | `Written`             | hands the room to the ring and publishes it |
//! | handing the room on  | `Written`             | publishes it                               |
//!
//! | a receiver dies after | the slot is           | a reclaim                                 |
//! |-----------------------|-----------------------|-------------------------------------------|
//! | claiming              | `Taking`, its own     | counts the message taken (once, by its record) and makes the room the dead one's, for the sweep to free; frees the slot |
//! | owning the room       | `Taking`              | the same                                  |
//! | counting it taken     | `Taking`              | frees the slot (the record says it counted) |
//!
//! Messages are taken in the order their senders claimed positions: a sender stopped between
//! claim and hand-over holds up the receivers at its position (never other senders), until it
//! resumes or dies and is reclaimed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::alloc::AllocLayout;
use super::journal::{Txn, Words};
use super::layout::{
    Desc, InlineBuf, Phase, Place, SlotState, C_CORRUPT_SKIPPED, C_HEAD_REWINDS, DESC_ARENA,
    DESC_INLINE, DESC_LEN_BITS, DESC_OVERFLOW, DESC_VOID, INLINE_MAX, OVERFLOW_SLOTS, P_TAKEN,
    P_TAKE_BASE, P_TAKE_POSITION, SLOT_BYTES,
};
use super::overflow::payload_lost;
use super::view::Chan;
use super::wait::WaitOn;
use crate::crash_point;
use crate::error::{Error, Result};
use crate::segment::Region;
use crate::sys;

/// `Chan::take_hint` before this process's first take: start from the shared head.
pub(super) const NO_HINT: u64 = u64::MAX;

/// The later of two positions (compared by difference, as positions wrap).
fn later(a: u64, b: u64) -> u64 {
    if (b.wrapping_sub(a) as i64) > 0 {
        b
    } else {
        a
    }
}

/// A message taken off the ring.
pub(crate) struct Taken {
    /// Its checked descriptor.
    pub(crate) desc: Desc,
    /// For an overflow payload: its segment, mapped, or why it could not be (for good).
    pub(crate) payload: Option<Result<Arc<Region>>>,
}

/// Serialises one process's takes on one channel view: a participant's record of its take in
/// progress (`P_TAKE_BASE`, `P_TAKE_POSITION`) holds one take. A process-local word, not a
/// shared lock: a holder cannot die alone (its process dies with it), and a stopped holder
/// stops only its own process. It holds the holder's fork generation + 1 (0: free), so that a
/// child forked while a parent's thread held it takes it over instead of waiting for a thread
/// that does not exist in the child.
#[derive(Default)]
pub(crate) struct TakeLock(AtomicU64);

/// Holds the [`TakeLock`]; lets go on drop.
pub(crate) struct TakeGuard<'a>(&'a AtomicU64);

impl TakeLock {
    fn lock(&self) -> TakeGuard<'_> {
        let me = sys::fork_generation().wrapping_add(1);
        let mut tries = 0u32;
        loop {
            match self
                .0
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                // Held in the process we were forked from: nobody here will let go.
                Err(held)
                    if held != me
                        && self
                            .0
                            .compare_exchange(held, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok() =>
                {
                    break
                }
                Err(_) => {}
            }
            // Held by another thread of this process for a take, well under a microsecond
            // unless it is preempted: spin a little, then give the core away.
            tries = tries.wrapping_add(1);
            if tries < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        TakeGuard(&self.0)
    }
}

impl Drop for TakeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Raw descriptor words, before any check.
#[derive(Clone, Copy, Debug)]
struct RawDesc {
    kind: u64,
    len: u64,
    loc: u64,
    id: u64,
}

/// What a receiver found at the head of the ring.
enum AtHead {
    /// A message to claim, in this state.
    Full(SlotState),
    /// Nothing yet: the message of this position is not handed over (or not sent).
    NotReady,
    /// Already taken: move the head on.
    Taken,
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
        debug_assert!(field < 4, "a descriptor has four words");
        let offset = self.slot_offset(position) + 8 * field;
        self.data
            .atomic_in(offset as usize)
            .expect("ring slot word in bounds")
    }

    /// The state word of the slot of `position`.
    pub(super) fn slot_state(&self, position: u64) -> &AtomicU64 {
        self.slot_word(position, 0)
    }

    /// Puts every slot in the state of its first lap, `Empty(index)` (before the segment is
    /// marked ready).
    pub(super) fn init_ring(&self) {
        for index in 0..self.geo.ring_slots {
            self.slot_state(index).store(
                SlotState::new(index, Phase::Empty, None).0,
                Ordering::Relaxed,
            );
        }
    }

    /// Most slots a claim looks at before it calls the ring corrupted: hints lag by at most
    /// the number of claims racing, and garbage must not turn into an endless walk.
    fn claim_bound(&self) -> u64 {
        4 * self.geo.ring_slots + 1024
    }

    fn ring_slots_i64(&self) -> i64 {
        self.geo.ring_slots as i64
    }

    fn ring_corrupted(&self, what: String) -> Error {
        Error::corrupted(self.name(), what)
    }

    // ----- sending ---------------------------------------------------------------------------

    /// Publishes a descriptor (and inline bytes) for participant `slot`. `Ok(false)`: the ring
    /// is full.
    pub(crate) fn try_publish(
        &self,
        slot: u32,
        place: Place,
        len: u64,
        inline: &[u8],
    ) -> Result<bool> {
        let Some(position) = self.claim_for_send(slot)? else {
            return Ok(false);
        };
        crash_point!("send-claimed");
        self.write_desc(position, place, len, inline);
        crash_point!("send-described");
        let state = self.slot_state(position);
        if place != Place::Inline {
            // From here a reclaim of a dead sender publishes the message instead of voiding
            // it: the room is described, and handing it to the ring is all that is left.
            state.store(
                SlotState::new(position, Phase::Written, Some(slot)).0,
                Ordering::Release,
            );
            crash_point!("send-written");
            self.set_room_owner(place, 0);
            crash_point!("send-handed");
        }
        // SeqCst: orders the armed-flag read of the wake-up after it (notify_fenced).
        state.swap(
            SlotState::new(position, Phase::Full, None).0,
            Ordering::SeqCst,
        );
        self.notify_fenced(WaitOn::NotEmpty);
        Ok(true)
    }

    /// Publishes a run of inline messages (each at most [`INLINE_MAX`] bytes) for participant
    /// `slot`, in order, as many as the ring has room for now: returns how many (0: full).
    ///
    /// Each message goes through the steps and crash points of an inline
    /// [`Chan::try_publish`] (claim, describe, hand over); receivers are woken once, after
    /// the last.
    pub(crate) fn publish_run<B: AsRef<[u8]>>(&self, slot: u32, messages: &[B]) -> Result<usize> {
        let mut count = 0;
        for message in messages {
            let bytes = message.as_ref();
            assert!(
                bytes.len() <= INLINE_MAX,
                "publish_run takes inline messages"
            );
            let claimed = match self.claim_for_send(slot) {
                Ok(Some(position)) => position,
                Ok(None) => break,
                Err(e) if count == 0 => return Err(e),
                // Met again, first, by the next send.
                Err(_) => break,
            };
            crash_point!("send-claimed");
            self.write_desc(claimed, Place::Inline, bytes.len() as u64, bytes);
            crash_point!("send-described");
            // SeqCst: the last one orders the armed-flag read of the wake-up below.
            self.slot_state(claimed).swap(
                SlotState::new(claimed, Phase::Full, None).0,
                Ordering::SeqCst,
            );
            count += 1;
        }
        if count > 0 {
            self.notify_fenced(WaitOn::NotEmpty);
        }
        Ok(count)
    }

    /// Claims the slot of the next position for `slot`'s message: `Ok(None)` if the ring is
    /// full.
    pub(super) fn claim_for_send(&self, slot: u32) -> Result<Option<u64>> {
        let tail_word = self.tail();
        let mut tail = tail_word.load(Ordering::Acquire);
        for _ in 0..self.claim_bound() {
            if !self.has_room_at(tail)? {
                return Ok(None);
            }
            let word = self.slot_state(tail);
            let claimed = SlotState::new(tail, Phase::Writing, Some(slot));
            // Claimed straight from the state a free slot of this lap has (one move of its
            // line to this core, where a load and then a CAS would be two); any other state
            // is looked at as it is.
            let empty = SlotState::new(tail, Phase::Empty, None);
            let state = match word.compare_exchange(
                empty.0,
                claimed.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.help_tail_on(tail);
                    return Ok(Some(tail));
                }
                Err(now) => SlotState(now),
            };
            let offset = state.lap_offset(tail);
            match (offset, state.phase()) {
                (0, Some(Phase::Empty)) => {
                    if word
                        .compare_exchange(state.0, claimed.0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.help_tail_on(tail);
                        return Ok(Some(tail));
                    }
                    // Another sender got it: look again at the same position.
                }
                (0, Some(_)) | (1.., _) => {
                    // Claimed already (this lap or beyond): help the hint on.
                    let next = tail.wrapping_add(1);
                    tail = match tail_word.compare_exchange(
                        tail,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => next,
                        Err(now) => now,
                    };
                }
                (offset, Some(_)) if offset == -self.ring_slots_i64() => {
                    // The previous lap's message is still there (being taken by a stopped
                    // receiver): full for now.
                    return Ok(None);
                }
                _ => {
                    return Err(self.ring_corrupted(format!(
                        "ring slot of position {tail} holds state {:#x}",
                        state.0
                    )))
                }
            }
        }
        Err(self.ring_corrupted(format!(
            "no free ring slot found near tail {tail} after {} tries",
            self.claim_bound()
        )))
    }

    /// Moves the tail hint past `tail`, just claimed, if nobody did yet: a hint, which
    /// whoever finds it behind moves on.
    #[inline(always)]
    fn help_tail_on(&self, tail: u64) {
        let _ = self.tail().compare_exchange(
            tail,
            tail.wrapping_add(1),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Whether position `tail` is less than a capacity ahead of the head. The shared `head`
    /// lags (receivers publish it every few takes, see [`Chan::publish_head`]): a sender that
    /// finds it a capacity behind walks on over the slots already taken, by their states,
    /// and keeps what it found in its process-local copy, without writing the shared word.
    fn has_room_at(&self, tail: u64) -> Result<bool> {
        let capacity = self.geo.capacity;
        let seen = self.head_seen.load(Ordering::Relaxed);
        if tail.wrapping_sub(seen) < capacity {
            return Ok(true);
        }
        let mut head = later(seen, self.head().load(Ordering::Acquire));
        for _ in 0..self.claim_bound() {
            self.head_seen.store(head, Ordering::Relaxed);
            let queued = tail.wrapping_sub(head) as i64;
            if queued < capacity as i64 {
                // A head ahead of a tail hint left behind (by a reclaim that voided the
                // dead sender's slot before moving `tail`): the claim walks the tail on.
                if queued < -(self.claim_bound() as i64) {
                    return Err(self
                        .ring_corrupted(format!("ring head {head} is far ahead of tail {tail}")));
                }
                return Ok(true);
            }
            match self.at_head(head)? {
                AtHead::Taken => head = head.wrapping_add(1),
                AtHead::Full(_) | AtHead::NotReady => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Writes the descriptor (and the inline bytes) into the claimed slot of `position`.
    pub(super) fn write_desc(&self, position: u64, place: Place, len: u64, inline: &[u8]) {
        let (kind, loc, id) = match place {
            Place::Inline => {
                let n = inline.len().min(INLINE_MAX);
                // SAFETY: the slot's inline area is INLINE_MAX bytes at offset 32; n fits. The
                // slot is ours (claimed): no receiver reads it before it is Full.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        inline.as_ptr(),
                        self.slot_ptr(position).add(32),
                        n,
                    )
                };
                (DESC_INLINE, 0, 0)
            }
            Place::Arena(chunk) => (DESC_ARENA, chunk, 0),
            Place::Overflow { entry, id } => (DESC_OVERFLOW, entry, id),
        };
        self.slot_word(position, 1)
            .store(kind << DESC_LEN_BITS | len, Ordering::Relaxed);
        self.slot_word(position, 2).store(loc, Ordering::Relaxed);
        self.slot_word(position, 3).store(id, Ordering::Relaxed);
    }

    /// Sets the owner word of a room (0: the ring's; `slot + 1`: a participant's).
    fn set_room_owner(&self, place: Place, owner: u64) {
        match place {
            Place::Inline => {}
            Place::Arena(chunk) => self.store(self.geo.alloc.owner_index(chunk), owner),
            Place::Overflow { entry, .. } => self.store(self.overflow_word(entry, 1), owner),
        }
    }

    // ----- receiving -------------------------------------------------------------------------

    fn raw_desc(&self, position: u64) -> RawDesc {
        let kind_len = self.slot_word(position, 1).load(Ordering::Relaxed);
        RawDesc {
            kind: kind_len >> DESC_LEN_BITS,
            len: kind_len & ((1 << DESC_LEN_BITS) - 1),
            loc: self.slot_word(position, 2).load(Ordering::Relaxed),
            id: self.slot_word(position, 3).load(Ordering::Relaxed),
        }
    }

    /// Copies out and checks the descriptor at `position` (the caller read the slot's state
    /// with Acquire, after the sender's hand-over). `None`: a void slot, or garbage.
    fn read_desc(&self, position: u64, inline: &mut InlineBuf) -> Option<Desc> {
        let RawDesc { kind, len, loc, id } = self.raw_desc(position);
        let place = match kind {
            DESC_INLINE if len <= INLINE_MAX as u64 => {
                // The whole area, whatever `len` says: a copy of a constant size is a few
                // vector moves, where one of a variable size is a call. Bytes past `len` are
                // left from earlier laps, and nothing reads them.
                // SAFETY: the inline area is INLINE_MAX bytes at offset 32 of the slot, and
                // `inline` is INLINE_MAX bytes; the sender finished writing it before handing
                // the slot over, and no sender writes it again before this take frees it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.slot_ptr(position).add(32),
                        inline.0.as_mut_ptr(),
                        INLINE_MAX,
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

    /// What the slot of position `head` holds for a receiver.
    fn at_head(&self, head: u64) -> Result<AtHead> {
        self.classify_head(
            head,
            SlotState(self.slot_state(head).load(Ordering::Acquire)),
        )
    }

    /// What the slot of position `head`, found in `state`, holds for a receiver.
    fn classify_head(&self, head: u64, state: SlotState) -> Result<AtHead> {
        let offset = state.lap_offset(head);
        Ok(match (offset, state.phase()) {
            (0, Some(Phase::Full)) => AtHead::Full(state),
            (0, Some(Phase::Empty | Phase::Writing | Phase::Written)) => AtHead::NotReady,
            (0, Some(Phase::Taking)) | (1.., Some(_)) => AtHead::Taken,
            // The previous lap's message is still being taken: this one is not sent yet.
            (offset, Some(_)) if offset == -self.ring_slots_i64() => AtHead::NotReady,
            _ => {
                return Err(self.ring_corrupted(format!(
                    "ring slot of position {head} holds state {:#x}",
                    state.0
                )))
            }
        })
    }

    /// Where this process's next take looks first: the later of its own hint and the shared
    /// head (other processes' receivers may have gone far ahead), unless a receiver moved the
    /// shared head back since (a take left queued, see `try_take`): then the shared head.
    /// Only a take (`note_rewind`) marks a rewind as seen: a wait that only watches the slot
    /// it names must leave the rewind for the take that has to start over from it.
    pub(super) fn take_start(&self, note_rewind: bool) -> u64 {
        let shared = self.head().load(Ordering::Acquire);
        let rewinds = self.word(C_HEAD_REWINDS / 8).load(Ordering::Acquire);
        let hint = self.take_hint.load(Ordering::Relaxed);
        if rewinds != self.rewinds_seen.load(Ordering::Relaxed) {
            if note_rewind {
                self.rewinds_seen.store(rewinds, Ordering::Relaxed);
            }
            return self.oldest_put_back(shared).unwrap_or(shared);
        }
        if hint == NO_HINT {
            return shared;
        }
        later(hint, shared)
    }

    /// The oldest message put back behind `head` (see `take_run`) and not taken since: a slot
    /// `Full` at its own position among the lap of positions before `head`. Every other
    /// position there was taken: receivers walk on only over taken slots, and a sender cannot
    /// claim a position a lap past a slot still full. A walk of the ring, paid once per rewind
    /// and receiver process, which keeps the message found whatever heads other receivers
    /// published meanwhile.
    fn oldest_put_back(&self, head: u64) -> Option<u64> {
        let slots = self.geo.ring_slots;
        (0..slots)
            .map(|back| head.wrapping_sub(slots - back))
            .find(|&position| {
                let state = SlotState(self.slot_state(position).load(Ordering::Acquire));
                state.lap_offset(position) == 0 && state.phase() == Some(Phase::Full)
            })
    }

    /// Announces that the message of `position` was put back behind the head: the head moved
    /// back to it (a hint), and the count of rewinds, which sends every receiver looking for
    /// it before its next take.
    fn note_put_back(&self, position: u64) {
        self.head().fetch_min(position, Ordering::AcqRel);
        self.word(C_HEAD_REWINDS / 8).fetch_add(1, Ordering::AcqRel);
    }

    /// Publishes `head` (positions up to it are taken) to the shared word every
    /// [`Chan::head_publish_every`] positions, and keeps it as this process's hint. The shared
    /// word is what senders read when their copy says the ring is full: writing it on every
    /// take would move its cache line between the cores twice per message.
    fn publish_head(&self, head: u64) {
        self.take_hint.store(head, Ordering::Relaxed);
        if head.is_multiple_of(self.head_publish_every()) {
            self.head().fetch_max(head, Ordering::AcqRel);
        }
    }

    /// How many takes apart receivers publish `head`: a quarter of the capacity, from 1 to 16,
    /// so that a sender waiting for room sees it move while the ring still has most of it.
    pub(super) fn head_publish_every(&self) -> u64 {
        (self.geo.capacity / 4).clamp(1, 16).next_power_of_two()
    }

    /// The exact number of positions taken: the shared head, walked on over the slots already
    /// taken (it lags by up to [`Chan::head_publish_every`] positions).
    pub(super) fn head_now(&self) -> u64 {
        let mut head = self.head().load(Ordering::Acquire);
        for _ in 0..self.claim_bound() {
            match self.at_head(head) {
                Ok(AtHead::Taken) => head = head.wrapping_add(1),
                _ => break,
            }
        }
        head
    }

    /// Whether the oldest message not yet taken is published (its slot `Full`), so that a
    /// take now finds something: the shared head, walked on over the slots already taken, as
    /// in [`Chan::head_now`]. A slot a sender has claimed but not yet handed over is not
    /// (`len` counts it). A ring that does not check out counts as published: a take then
    /// fails with the error, and so completes. Reads only: no hint of this process moves.
    pub(super) fn head_published(&self) -> bool {
        let mut head = self.head().load(Ordering::Acquire);
        for _ in 0..self.claim_bound() {
            match self.at_head(head) {
                Ok(AtHead::Taken) => head = head.wrapping_add(1),
                Ok(AtHead::NotReady) => return false,
                Ok(AtHead::Full(_)) | Err(_) => return true,
            }
        }
        true
    }

    /// Takes the oldest message for participant `slot`. `Ok(None)`: the ring is empty (or its
    /// oldest message is still being written).
    ///
    /// An overflow payload is opened before the message is taken: if that fails for a reason
    /// that may pass (out of descriptors or memory), the message stays queued and the error is
    /// returned. A payload that is gone for good (removed, corrupted) is taken, so that it does
    /// not block the ring, and its error comes back in [`Taken::payload`].
    #[inline(always)]
    pub(crate) fn try_take(&self, slot: u32, inline: &mut InlineBuf) -> Result<Option<Taken>> {
        let mut got = None;
        self.take_run(slot, 1, inline, |taken, _| got = Some(taken))?;
        Ok(got)
    }

    /// Takes up to `max` of the oldest messages for participant `slot`, in order, handing each
    /// to `each` with the inline buffer its bytes were copied into (valid until the next
    /// message of the run). Returns how many were taken: 0 when the ring is empty.
    ///
    /// Each message goes through the same steps and crash points as a single take (record,
    /// claim, describe, own, count, free); what a run saves is what surrounds them: the take
    /// lock, the start position and the head's publication are taken once per run, and
    /// senders waiting for room are woken once, after the last slot is freed. A payload that
    /// cannot be opened now ends the run with the message left queued: the error is returned
    /// only if nothing was taken before it (the next run meets it first).
    #[inline(always)]
    pub(crate) fn take_run(
        &self,
        slot: u32,
        max: usize,
        inline: &mut InlineBuf,
        mut each: impl FnMut(Taken, &InlineBuf),
    ) -> Result<usize> {
        // A look first, without the lock and the records: a receiver polling an empty ring
        // (`try_recv` in a loop) then pays two loads a poll. Only a position not yet
        // published ends it; whatever else the slot holds, the take below sorts out.
        if matches!(self.at_head(self.take_start(false)), Ok(AtHead::NotReady)) {
            return Ok(0);
        }
        let _one_take = self.take_lock.lock();
        let taken_word = self.word(self.participant_index(slot, P_TAKEN));
        let base_word = self.word(self.participant_index(slot, P_TAKE_BASE));
        let position_word = self.word(self.participant_index(slot, P_TAKE_POSITION));
        let mut head = self.take_start(true);
        let mut count = 0usize;
        let mut outcome = Ok(());
        let mut tries = 0u64;
        while count < max {
            tries += 1;
            if tries > self.claim_bound() {
                outcome = Err(self.ring_corrupted(format!(
                    "no message found near head {head} after {} tries",
                    self.claim_bound()
                )));
                break;
            }
            // The record first (released by the claim): a reclaim that finds the slot claimed
            // by us knows from it whether `taken` already counts the message.
            let base = taken_word.load(Ordering::Relaxed);
            base_word.store(base, Ordering::Relaxed);
            position_word.store(head.wrapping_add(1), Ordering::Relaxed);
            let word = self.slot_state(head);
            let claimed = SlotState::new(head, Phase::Taking, Some(slot));
            // Within a run, where the next slot is most likely published, the claim goes
            // straight from the state a published slot of this position has: the line comes
            // to this core once, ready to be written, where a load and then a CAS move it
            // twice. The first take of a call looks first: a receiver polling an empty ring
            // must not take the line of the slot being written away from its sender at every
            // poll. Any other state is looked at as it is.
            let full = SlotState::new(head, Phase::Full, None);
            // The state it is claimed from (a take left queued puts it back).
            let mut state = full;
            let found = if count > 0 {
                word.compare_exchange(full.0, claimed.0, Ordering::AcqRel, Ordering::Acquire)
                    .err()
            } else {
                Some(word.load(Ordering::Acquire))
            };
            if let Some(now) = found {
                state = match self.classify_head(head, SlotState(now)) {
                    Ok(AtHead::Full(state)) => state,
                    Ok(AtHead::NotReady) => {
                        position_word.store(0, Ordering::Relaxed);
                        break;
                    }
                    Ok(AtHead::Taken) => {
                        head = head.wrapping_add(1);
                        continue;
                    }
                    Err(e) => {
                        position_word.store(0, Ordering::Relaxed);
                        outcome = Err(e);
                        break;
                    }
                };
                if word
                    .compare_exchange(state.0, claimed.0, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue; // another receiver took it: look again
                }
            }
            crash_point!("take-claimed");
            let freed = claimed.freed(self.geo.ring_slots);
            let Some(desc) = self.read_desc(head, inline) else {
                // Void (its sender died before describing it) or garbage: skipped rather than
                // wedging every receiver behind it, and counted received, dropped and its
                // task done, since `tail` counted it sent.
                if self.raw_desc(head).kind != DESC_VOID {
                    self.word(C_CORRUPT_SKIPPED / 8)
                        .fetch_add(1, Ordering::Relaxed);
                }
                taken_word.store(base.wrapping_add(1), Ordering::Release);
                word.swap(freed.0, Ordering::SeqCst);
                position_word.store(0, Ordering::Release);
                self.notify_fenced(WaitOn::NotFull);
                self.publish_head(head.wrapping_add(1));
                self.mark_done(slot);
                // A task count that cannot get the allocator lock now is lost: one task left
                // unfinished, for a void slot met while a stopped process holds that lock.
                let _ = self.task_done(slot, Some(Instant::now()));
                head = head.wrapping_add(1);
                continue;
            };
            let payload = match desc.place {
                Place::Overflow { id, .. } => match self.open_overflow(id, desc.len) {
                    Ok(region) => Some(Ok(region)),
                    Err(e) if payload_lost(&e) => Some(Err(e)),
                    Err(e) => {
                        // Left queued for a later try: the slot back to Full, and the head
                        // back to it. Another receiver may publish a later head at any time
                        // (it walked past the slot while this one held it), so the count of
                        // rewinds is what makes every receiver look back for it before its
                        // next take (see `take_start`). A death between the two steps is
                        // finished by the reclaim (see `recover_take`).
                        word.swap(state.0, Ordering::SeqCst);
                        crash_point!("take-put-back");
                        self.note_put_back(head);
                        self.take_hint.store(head, Ordering::Relaxed);
                        position_word.store(0, Ordering::Release);
                        self.notify_fenced(WaitOn::NotEmpty);
                        return if count == 0 { Err(e) } else { Ok(count) };
                    }
                },
                _ => None,
            };
            // Within a run too, so that senders waiting for room refill the ring behind it;
            // after the payload is known to open, so that a take put back never published a
            // head past itself.
            self.publish_head(head.wrapping_add(1));
            self.set_room_owner(desc.place, u64::from(slot) + 1);
            crash_point!("take-owned");
            taken_word.store(base.wrapping_add(1), Ordering::Release);
            crash_point!("take-counted");
            word.swap(freed.0, Ordering::SeqCst);
            position_word.store(0, Ordering::Release);
            // Per message, not per run (a relaxed load unless a sender sleeps): the rest of
            // the run, and what `each` does, is no reason to keep a sender waiting.
            self.notify_fenced(WaitOn::NotFull);
            head = head.wrapping_add(1);
            count += 1;
            tries = 0;
            each(Taken { desc, payload }, inline);
        }
        self.take_hint.store(head, Ordering::Relaxed);
        // An error after some messages were taken is met again by the next run, first.
        match outcome {
            Err(e) if count == 0 => Err(e),
            _ => Ok(count),
        }
    }

    // ----- recovery --------------------------------------------------------------------------

    /// Finishes what the dead participant `slot` left half-way on the ring (see the tables at
    /// the top of this file), before the sweep frees what it owned. Takes no lock: every change
    /// is a CAS on a slot the dead one held, so it races safely with live senders and
    /// receivers helping the hints on. The caller (a reclaim) holds the membership lock, so no
    /// other reclaim of `slot` runs at once.
    pub(crate) fn recover_ring(&self, slot: u32) {
        // First past the dead one's claims, so that `head` (once receivers take what is
        // published or voided below) does not pass `tail`.
        self.help_tail_past_claimed();
        self.recover_take(slot);
        let owner = u64::from(slot) + 1;
        for index in 0..self.geo.ring_slots {
            let word = self.slot_state(index);
            let state = SlotState(word.load(Ordering::Acquire));
            if state.holder() != Some(slot) {
                continue;
            }
            let full = state.with_phase(Phase::Full);
            match state.phase() {
                Some(Phase::Writing) => {
                    // Not described, or not all of it: a message nobody can read.
                    self.slot_word(index, 1)
                        .store(DESC_VOID << DESC_LEN_BITS, Ordering::Relaxed);
                    let _ =
                        word.compare_exchange(state.0, full.0, Ordering::SeqCst, Ordering::Relaxed);
                }
                Some(Phase::Written) => {
                    // Described: hand its room to the ring, if it is the dead sender's (or
                    // handed already), and publish it; void it if the description does not
                    // check out.
                    let place = self.described_room(index, owner);
                    if let Some(place) = place {
                        self.set_room_owner(place, 0);
                    }
                    let mut scratch = InlineBuf([0; INLINE_MAX]);
                    if place.is_none() || self.read_desc(index, &mut scratch).is_none() {
                        if let Some(place) = place {
                            self.set_room_owner(place, owner); // the sweep frees it
                        }
                        self.slot_word(index, 1)
                            .store(DESC_VOID << DESC_LEN_BITS, Ordering::Relaxed);
                    }
                    let _ =
                        word.compare_exchange(state.0, full.0, Ordering::SeqCst, Ordering::Relaxed);
                }
                Some(Phase::Taking) => {
                    // A take its record does not name (recover_take finished that one): only
                    // garbage makes this. Free the slot, so that it does not block the ring.
                    self.finish_dead_take(index, state, slot, false);
                }
                _ => {}
            }
        }
        self.help_tail_past_claimed();
        self.notify(WaitOn::NotEmpty);
        self.notify(WaitOn::NotFull);
    }

    /// The room a `Written` slot describes, if it is a well-formed one the dead sender
    /// (`owner`) owns or has handed to the ring.
    fn described_room(&self, position: u64, owner: u64) -> Option<Place> {
        let RawDesc { kind, loc, id, .. } = self.raw_desc(position);
        let (place, owner_word) = match kind {
            DESC_INLINE => return Some(Place::Inline),
            DESC_ARENA if loc < self.geo.alloc.pages => {
                (Place::Arena(loc), self.geo.alloc.owner_index(loc))
            }
            DESC_OVERFLOW if loc < OVERFLOW_SLOTS => (
                Place::Overflow { entry: loc, id },
                self.overflow_word(loc, 1),
            ),
            _ => return None,
        };
        let held = self.load(owner_word)?;
        (held == owner || held == 0).then_some(place)
    }

    /// Finishes the take the dead participant `slot` recorded as in progress, if its slot is
    /// still claimed by it.
    fn recover_take(&self, slot: u32) {
        let position_word = self.word(self.participant_index(slot, P_TAKE_POSITION));
        let recorded = position_word.load(Ordering::Acquire);
        if recorded != 0 {
            let position = recorded.wrapping_sub(1);
            let state = SlotState(self.slot_state(position).load(Ordering::Acquire));
            if state == SlotState::new(position, Phase::Taking, Some(slot)) {
                self.finish_dead_take(position, state, slot, true);
            } else if state.lap_offset(position) == 0 && state.phase() == Some(Phase::Full) {
                // Put back (or not claimed yet), and perhaps not announced: announcing it
                // again costs receivers one look back.
                self.note_put_back(position);
            }
        }
        position_word.store(0, Ordering::Release);
    }

    /// Finishes a take of the dead participant `slot` at `position` (claimed, in `state`):
    /// counts it taken if `recorded` and its record says it did not yet, makes the room its
    /// own for the sweep to free, and frees the slot. The message is lost with its receiver,
    /// as one taken by a receiver that died holding it.
    fn finish_dead_take(&self, position: u64, state: SlotState, slot: u32, recorded: bool) {
        let taken_word = self.word(self.participant_index(slot, P_TAKEN));
        if recorded {
            let base = self
                .word(self.participant_index(slot, P_TAKE_BASE))
                .load(Ordering::Acquire);
            if taken_word.load(Ordering::Acquire) == base {
                taken_word.store(base.wrapping_add(1), Ordering::Release);
            }
        }
        let mut scratch = InlineBuf([0; INLINE_MAX]);
        if let Some(desc) = self.read_desc(position, &mut scratch) {
            // Still the ring's: the dead receiver had not made it its own yet.
            self.set_room_owner(desc.place, u64::from(slot) + 1);
        }
        let _ = self.slot_state(position).compare_exchange(
            state.0,
            state.freed(self.geo.ring_slots).0,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }

    /// Moves the tail hint past positions already claimed (a sender that died between its
    /// claim and its CAS on the hint leaves it behind).
    fn help_tail_past_claimed(&self) {
        let tail_word = self.tail();
        for _ in 0..self.claim_bound() {
            let tail = tail_word.load(Ordering::Acquire);
            let state = SlotState(self.slot_state(tail).load(Ordering::Acquire));
            let claimed = match (state.lap_offset(tail), state.phase()) {
                (0, Some(Phase::Empty)) => false,
                (0, Some(_)) | (1.., Some(_)) => true,
                _ => false,
            };
            if !claimed {
                return;
            }
            let _ = tail_word.compare_exchange(
                tail,
                tail.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}
