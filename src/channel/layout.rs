//! Where everything lives in a channel's data area, and the geometry derived from its
//! configuration.
//!
//! Data area of a channel segment (byte offsets; see docs/design.md):
//!
//! ```text
//! 0      config: magic, capacity, arena bytes, next overflow id, flags
//! 384    arena returns: chunks given back without the lock; the count at the last scavenge
//! 768    tail: positions ever claimed by senders (own cache lines)
//! 1536   head: positions taken by receivers, published every few takes (own cache lines)
//! 1664   allocator lock; 1728 counters; 1792 futex words and their armed flags
//! 1920   overflow table: 64 x (id, owner, length)
//! 3456   per participant, one cache line each: taken, dropped, tasks done, leaving, and the
//!        record of the take in progress (taken before it, position)
//! ...    return hints (`RETURN_HINTS` words), allocator words (tags, links, owners, journal),
//!        ring slots, arena (page aligned)
//! ```
//!
//! A ring slot is 128 bytes: its state word ([`SlotState`]), the descriptor (kind and length,
//! location, overflow id) and up to [`INLINE_MAX`] bytes of inline payload.

use super::alloc::AllocLayout;
use crate::segment::MAX_PARTICIPANTS;
use crate::sys;

/// Size of an arena page, the allocation unit.
pub(crate) use super::alloc::ARENA_PAGE;

/// Times a channel lock is tried before its taker sleeps on it.
pub(super) const LOCK_SPIN_TRIES: u32 = 64;
/// Marks a channel's data area.
pub(super) const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"SHMQchan");
/// Bytes of one ring slot: a 32-byte descriptor and up to 96 bytes of inline payload.
pub(super) const SLOT_BYTES: u64 = 128;
/// Payloads up to this size travel inside the ring slot and are copied out on receipt.
pub(crate) const INLINE_MAX: usize = 96;
/// Entries in the overflow table: payloads larger than the arena in flight at once.
pub(crate) const OVERFLOW_SLOTS: u64 = 64;
/// Largest ring capacity accepted.
pub(crate) const MAX_CAPACITY: u64 = 1 << 24;
/// Most arena pages: the allocator indexes pages with 32 bits and keeps two values free.
pub(crate) const MAX_ARENA_PAGES: u64 = (1 << 32) - 2;
/// Largest arena accepted, in bytes (16 TiB less two pages).
pub(crate) const MAX_ARENA_BYTES: u64 = MAX_ARENA_PAGES * ARENA_PAGE;

// Byte offsets in the data area.
pub(super) const C_MAGIC: u64 = 0;
pub(super) const C_CAPACITY: u64 = 8;
pub(super) const C_ARENA_BYTES: u64 = 16;
pub(super) const C_OVERFLOW_NEXT_ID: u64 = 24;
/// The channel's flags word ([`FLAG_PERSISTENT`]); written once by the creator.
pub(super) const C_FLAGS: u64 = 32;
/// Arena chunks given back without the allocator lock (marked [`RETURNED`] in their owner
/// word, see `arena.rs`), plus frees under the lock: moves whenever arena space may have come
/// back. Its own cache lines, apart from `tail` and the words every call reads, since every
/// drop of a received arena message bumps it.
///
/// [`RETURNED`]: super::alloc::RETURNED
pub(super) const C_ARENA_RETURNS: u64 = 384;
/// [`C_ARENA_RETURNS`] as the last scavenge of returned chunks read it before its walk
/// (written under the allocator lock): an allocator that runs out of room walks the chunks
/// again only if returns came since.
pub(super) const C_ARENA_SCAVENGED_AT: u64 = 392;
/// Non-zero when a scavenge passed over a return it could not find in the hints (not written
/// yet, or overwritten): the next allocator out of room walks every chunk instead.
pub(super) const C_ARENA_HINTS_MISSED: u64 = 400;
/// Entries of the return hints: the chunk of return `n` is written at entry `n % RETURN_HINTS`
/// (see `arena.rs`), so that an allocator frees what came back without walking the arena.
pub(super) const RETURN_HINTS: u64 = 256;
/// Positions ever claimed by senders; a hint senders move on with one CAS per claim (and help
/// along when they find it behind), never ahead of a claimed slot.
pub(super) const C_TAIL: u64 = 768;
/// Positions taken by receivers: a hint they publish every few takes (`fetch_max`), never
/// ahead of a slot not yet taken; senders and `len()` walk on from it over taken slots.
pub(super) const C_HEAD: u64 = 1536;
pub(super) const C_ALLOC_LOCK: u64 = 1664;
pub(super) const C_RETIRED: u64 = 1728;
pub(super) const C_RECLAIM_EPOCH: u64 = 1736;
pub(super) const C_MEMBERSHIP_EPOCH: u64 = 1744;
pub(super) const C_CORRUPT_SKIPPED: u64 = 1752;
/// Tasks (`task_done` calls, and what reclaims credit the dead) of participants that have gone.
pub(super) const C_RETIRED_TASKS: u64 = 1760;
/// Times a receiver moved `head` back (a take left queued for a later try): receivers then
/// start their next take from the shared head instead of their own hint.
pub(super) const C_HEAD_REWINDS: u64 = 1768;
/// `WAIT_KINDS` u32 sequence words, then `WAIT_KINDS` u32 armed flags.
pub(super) const C_WAIT_WORDS: u64 = 1792;
/// Things a blocked call may wait for, each with a futex sequence word and an armed flag.
pub(super) const WAIT_KINDS: u64 = 5;
pub(super) const C_OVERFLOW_TABLE: u64 = 1920;
pub(super) const C_PARTICIPANTS: u64 = C_OVERFLOW_TABLE + OVERFLOW_SLOTS * 24;
/// Bytes per participant record: a cache line, so receivers bumping their `dropped` counts in
/// different processes do not share one.
pub(super) const PARTICIPANT_STRIDE: u64 = 64;

// Words of a participant record (see `Chan::participant_index`).
/// Messages taken off the ring by the participant.
pub(super) const P_TAKEN: u64 = 0;
/// Messages it received and dropped.
pub(super) const P_DROPPED: u64 = 1;
/// Its successful `task_done` calls (and payloads lost on receipt, which count as tasks done).
pub(super) const P_TASKS_DONE: u64 = 2;
/// Non-zero once its family began a normal detach: its reclaim then credits no task it took
/// and left unfinished (see `Chan::retire_participant`).
pub(super) const P_LEAVING: u64 = 3;
/// The participant's `taken` count just before its take in progress (see `P_TAKE_POSITION`).
pub(super) const P_TAKE_BASE: u64 = 4;
/// Ring position + 1 of the participant's take in progress, 0 when none: with `P_TAKE_BASE`,
/// what lets a reclaim finish the take of a receiver that died half-way exactly once.
pub(super) const P_TAKE_POSITION: u64 = 5;

const _: () = assert!(sys::ROBUST_MUTEX_SIZE <= 64);
const _: () = assert!(C_ALLOC_LOCK + sys::ROBUST_MUTEX_SIZE as u64 <= C_RETIRED);
const _: () = assert!(C_RETIRED_TASKS + 8 <= C_HEAD_REWINDS);
const _: () = assert!(C_HEAD_REWINDS + 8 <= C_WAIT_WORDS);
const _: () = assert!(C_WAIT_WORDS + 8 * WAIT_KINDS <= C_OVERFLOW_TABLE);
const _: () = assert!(8 * (P_TAKE_POSITION + 1) <= PARTICIPANT_STRIDE);

/// Flag: the channel never reports `Disconnected` (made with
/// `ChannelConfig::with_disconnect(false)`). Zero, the channel of earlier versions, disconnects.
pub(super) const FLAG_PERSISTENT: u64 = 1;
/// Every flag this version knows; an opener refuses a channel with any other bit set, since it
/// cannot know what that bit asks of it.
pub(super) const KNOWN_FLAGS: u64 = FLAG_PERSISTENT;

const _: () = assert!(C_FLAGS + 8 <= C_ARENA_RETURNS);
const _: () = assert!(C_ARENA_HINTS_MISSED + 8 + 256 <= C_TAIL);

// Descriptor kinds in a ring slot (the top 4 bits of its second word; the length below).
pub(super) const DESC_INLINE: u64 = 1;
pub(super) const DESC_ARENA: u64 = 2;
pub(super) const DESC_OVERFLOW: u64 = 3;
/// No message: what a reclaim writes into a slot whose sender died before describing it.
/// Receivers take it like a message and count it received, dropped and its task done, since
/// `tail` counted it sent.
pub(super) const DESC_VOID: u64 = 4;
/// Bits of a descriptor's second word that hold the payload length.
pub(super) const DESC_LEN_BITS: u32 = 60;

/// Where a slot is in its life: each lap of the ring takes it through
/// `Empty → Writing → (Written →) Full → Taking → Empty` (of the next lap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Free for the sender that claims its position.
    Empty = 0,
    /// Claimed by a sender (named in the state), which writes the descriptor.
    Writing = 1,
    /// Described, not yet handed to the ring: a reclaim of its dead sender publishes it.
    Written = 2,
    /// A message receivers may take.
    Full = 3,
    /// Claimed by a receiver (named in the state), which makes the payload its own.
    Taking = 4,
}

/// Bits of a slot state that hold the position (positions wrap at 2^48: a position is
/// compared only with others less than 2^47 apart).
const POSITION_BITS: u32 = 48;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
/// Bits of a slot state that hold the participant (slot + 1, or 0 for none).
const WHO_BITS: u32 = 12;
const _: () = assert!((MAX_PARTICIPANTS as u64) < (1 << WHO_BITS));

/// A ring slot's state word: `position (48 bits) | phase (4 bits) | participant (12 bits)`.
///
/// The position is the ring position the state belongs to: `Empty(p)` waits for the message of
/// position `p`, the other phases hold it. One word, so that a single CAS both claims a slot
/// and records who claimed it: a reclaim finds every slot a dead participant held from the
/// slots alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotState(pub(super) u64);

impl SlotState {
    /// The state of `phase` for `position`, held by participant `slot` (`None` for no one).
    pub(super) fn new(position: u64, phase: Phase, slot: Option<u32>) -> SlotState {
        let who = slot.map_or(0, |s| u64::from(s) + 1) & ((1 << WHO_BITS) - 1);
        SlotState(
            (position & POSITION_MASK) << (64 - POSITION_BITS) | (phase as u64) << WHO_BITS | who,
        )
    }

    /// The position's low 48 bits.
    fn position_bits(self) -> u64 {
        self.0 >> (64 - POSITION_BITS)
    }

    /// How far this state's position lies after `position` (negative: before it), for
    /// positions less than 2^47 apart.
    pub(super) fn lap_offset(self, position: u64) -> i64 {
        let diff = self.position_bits().wrapping_sub(position) & POSITION_MASK;
        // Sign-extend the 48-bit difference.
        ((diff << (64 - POSITION_BITS)) as i64) >> (64 - POSITION_BITS)
    }

    /// Its phase, or `None` for a value no phase has (garbage).
    pub(super) fn phase(self) -> Option<Phase> {
        Some(match (self.0 >> WHO_BITS) & 0xf {
            0 => Phase::Empty,
            1 => Phase::Writing,
            2 => Phase::Written,
            3 => Phase::Full,
            4 => Phase::Taking,
            _ => return None,
        })
    }

    /// The state of `phase` for the same position, held by no one.
    pub(super) fn with_phase(self, phase: Phase) -> SlotState {
        SlotState::new(self.position_bits(), phase, None)
    }

    /// The state of the slot freed for the next lap: `Empty` at this position + `ring_slots`.
    pub(super) fn freed(self, ring_slots: u64) -> SlotState {
        SlotState::new(
            self.position_bits().wrapping_add(ring_slots),
            Phase::Empty,
            None,
        )
    }

    /// The participant slot holding it, if any.
    pub(super) fn holder(self) -> Option<u32> {
        match self.0 & ((1 << WHO_BITS) - 1) {
            0 => None,
            who => Some(who as u32 - 1),
        }
    }
}

/// Where a payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the ring slot itself.
    Inline,
    /// In the arena chunk starting at this page.
    Arena(u64),
    /// In the overflow segment of this table entry, with this id.
    Overflow { entry: u64, id: u64 },
}

/// A descriptor copied out of a ring slot and checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc {
    pub(crate) place: Place,
    pub(crate) len: u64,
}

/// Inline payload storage, aligned like arena payloads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct InlineBuf(pub(crate) [u8; INLINE_MAX]);

/// Geometry of a channel, derived from (capacity, arena bytes, participant slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) capacity: u64,
    pub(crate) ring_slots: u64,
    pub(crate) arena_bytes: u64,
    pub(crate) participants: u64,
    pub(crate) alloc: AllocLayout,
    /// Byte offset of the return hints.
    pub(crate) return_hints: u64,
    pub(crate) ring_offset: u64,
    pub(crate) arena_offset: u64,
    pub(crate) data_len: u64,
}

impl Geometry {
    pub(crate) fn new(capacity: u64, arena_bytes: u64, participants: u64) -> Option<Geometry> {
        if capacity == 0
            || capacity > MAX_CAPACITY
            || participants == 0
            || participants > u64::from(MAX_PARTICIPANTS)
        {
            return None;
        }
        let ring_slots = capacity.next_power_of_two();
        let pages = arena_bytes / ARENA_PAGE;
        if !arena_bytes.is_multiple_of(ARENA_PAGE) || pages > MAX_ARENA_PAGES {
            return None;
        }
        let return_hints = participants
            .checked_mul(PARTICIPANT_STRIDE)?
            .checked_add(C_PARTICIPANTS)?;
        let alloc_base_bytes = return_hints.checked_add(RETURN_HINTS * 8)?;
        // With at most 2^32 pages and 1024 participants, the allocator's word offsets stay far
        // below 2^64: AllocLayout::at adds them up unchecked.
        let alloc = AllocLayout::at(alloc_base_bytes / 8, pages);
        let alloc_end =
            alloc_base_bytes.checked_add(AllocLayout::words_needed(pages).checked_mul(8)?)?;
        let ring_offset = alloc_end.next_multiple_of(SLOT_BYTES);
        let ring_end = ring_offset.checked_add(ring_slots.checked_mul(SLOT_BYTES)?)?;
        let arena_offset = ring_end.next_multiple_of(ARENA_PAGE);
        let data_len = arena_offset.checked_add(arena_bytes)?;
        Some(Geometry {
            capacity,
            ring_slots,
            arena_bytes,
            participants,
            alloc,
            return_hints,
            ring_offset,
            arena_offset,
            data_len,
        })
    }
}
