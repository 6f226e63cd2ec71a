//! The channel's shared state and the operations on it, below the public API.
//!
//! Data area of a channel segment (byte offsets; see docs/design.md):
//!
//! ```text
//! 0      config: magic, capacity, arena bytes
//! 128    producer lock (robust mutex) and its journal;   768 tail (own cache lines)
//! 896    consumer lock and its journal;                  1536 head (own cache lines)
//! 1664   allocator lock; 1728 counters; 1792 futex words and their armed flags
//! 1920   overflow table: 64 x (id, owner, length)
//! 3456   per participant, one cache line each: taken, dropped
//! ...    allocator words (tags, links, owners, journal), ring slots, arena (page aligned)
//! ```
//!
//! Three robust mutexes split the work so a producer and a consumer never contend on one lock:
//! producers serialise on the producer lock to write a slot and advance `tail`; consumers on the
//! consumer lock to read a slot and advance `head`; both take the allocator lock only to allocate
//! or free arena chunks. Every change that must be atomic across a crash (advancing `tail` and
//! handing the chunk to the ring; advancing `head` and handing the chunk to the taker) goes through
//! that lock's redo journal, which the next holder replays when the lock reports its owner dead.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::alloc::{
    replay_journal, AllocError, AllocLayout, Txn, Words, ARENA_PAGE, JOURNAL_CAPACITY,
};
use super::errors::WaitError;
use crate::error::{Error, Result};
use crate::segment::{Region, Role};
use crate::sys::{self, LockOutcome};

/// Times a channel lock is tried before its taker sleeps on it.
const LOCK_SPIN_TRIES: u32 = 64;
/// Marks a channel's data area.
const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"SHMQchan");
/// Bytes of one ring slot: a 32-byte descriptor and up to 96 bytes of inline payload.
const SLOT_BYTES: u64 = 128;
/// Payloads up to this size travel inside the ring slot and are copied out on receipt.
pub(crate) const INLINE_MAX: usize = 96;
/// Entries in the overflow table: payloads larger than the arena in flight at once.
pub(crate) const OVERFLOW_SLOTS: u64 = 64;
/// Largest ring capacity accepted.
pub(crate) const MAX_CAPACITY: u64 = 1 << 24;

// Byte offsets in the data area.
const C_MAGIC: u64 = 0;
const C_CAPACITY: u64 = 8;
const C_ARENA_BYTES: u64 = 16;
const C_OVERFLOW_NEXT_ID: u64 = 24;
const C_PRODUCER_LOCK: u64 = 128;
const C_PRODUCER_JOURNAL: u64 = 192;
const C_TAIL: u64 = 768;
const C_CONSUMER_LOCK: u64 = 896;
const C_CONSUMER_JOURNAL: u64 = 960;
const C_HEAD: u64 = 1536;
const C_ALLOC_LOCK: u64 = 1664;
const C_RETIRED: u64 = 1728;
const C_RECLAIM_EPOCH: u64 = 1736;
const C_MEMBERSHIP_EPOCH: u64 = 1744;
const C_CORRUPT_SKIPPED: u64 = 1752;
const C_WAIT_WORDS: u64 = 1792; // 4 x u32 sequence words, then 4 x u32 armed flags
const C_OVERFLOW_TABLE: u64 = 1920;
const C_PARTICIPANTS: u64 = C_OVERFLOW_TABLE + OVERFLOW_SLOTS * 24;
/// Bytes per participant record: a cache line, so receivers bumping their `dropped` counts in
/// different processes do not share one.
const PARTICIPANT_STRIDE: u64 = 64;

const _: () = assert!(C_PRODUCER_JOURNAL + 8 * (1 + 2 * JOURNAL_CAPACITY as u64) <= C_TAIL);
const _: () = assert!(C_CONSUMER_JOURNAL + 8 * (1 + 2 * JOURNAL_CAPACITY as u64) <= C_HEAD);
const _: () = assert!(sys::ROBUST_MUTEX_SIZE <= 64);

// Descriptor kinds in a ring slot.
const DESC_INLINE: u64 = 1;
const DESC_ARENA: u64 = 2;
const DESC_OVERFLOW: u64 = 3;

/// What a blocked thread waits for; each has a futex sequence word and an armed flag.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WaitOn {
    NotEmpty = 0,
    NotFull = 1,
    Space = 2,
    Done = 3,
}

const ALL_WAITS: [WaitOn; 4] = [
    WaitOn::NotEmpty,
    WaitOn::NotFull,
    WaitOn::Space,
    WaitOn::Done,
];

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
    pub(crate) ring_offset: u64,
    pub(crate) arena_offset: u64,
    pub(crate) data_len: u64,
}

impl Geometry {
    pub(crate) fn new(capacity: u64, arena_bytes: u64, participants: u64) -> Option<Geometry> {
        if capacity == 0 || capacity > MAX_CAPACITY || participants == 0 {
            return None;
        }
        let ring_slots = capacity.next_power_of_two();
        let pages = arena_bytes / ARENA_PAGE;
        if pages * ARENA_PAGE != arena_bytes || pages > (1 << 32) - 2 {
            return None;
        }
        let alloc_base_bytes = C_PARTICIPANTS + participants * PARTICIPANT_STRIDE;
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
            ring_offset,
            arena_offset,
            data_len,
        })
    }
}

/// One process's view of one channel segment.
pub(crate) struct Chan {
    /// Keeps the mapping alive for views owned by handles; `None` for borrowed views.
    #[allow(dead_code)] // held for its Drop, never read
    keep: Option<Arc<Region>>,
    region: *const Region,
    geo: Geometry,
    base: *mut u8,
    /// This process's last reading of `head` (producers) and `tail` (consumers): each side
    /// rereads the other's index, a cache line the other core writes, only when its copy says
    /// the ring is full (or empty).
    head_seen: AtomicU64,
    tail_seen: AtomicU64,
}

// SAFETY: `region` and `base` point into a mapping that `keep` (or the borrow a view is built
// from) keeps alive; all shared state is reached through atomics or through byte copies whose
// use the channel protocol orders. Region itself is Send + Sync.
unsafe impl Send for Chan {}
// SAFETY: as above.
unsafe impl Sync for Chan {}

impl Words for Chan {
    fn load(&self, index: u64) -> Option<u64> {
        self.word_checked(index).map(|w| w.load(Ordering::Acquire))
    }
    fn store(&self, index: u64, value: u64) {
        if let Some(w) = self.word_checked(index) {
            w.store(value, Ordering::Release);
        }
    }
}

/// Outcome of one non-blocking attempt inside a wait loop.
pub(crate) enum Step<T> {
    Ready(T),
    Retry,
    Disconnected,
}

/// A held robust mutex of the channel; unlocks on drop.
struct Held<'a> {
    ptr: *mut u8,
    _chan: &'a Chan,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard was made by Chan::lock on this thread, which holds the mutex.
        unsafe { sys::robust_mutex_unlock(self.ptr) }
    }
}

impl Chan {
    /// Lays out and initialises a fresh channel in `region`'s data area.
    pub(crate) fn init(region: &Region, geo: &Geometry) -> Result<()> {
        let chan = Chan {
            keep: None,
            region: region as *const Region,
            geo: *geo,
            base: region.data_ptr(),
            head_seen: AtomicU64::new(0),
            tail_seen: AtomicU64::new(0),
        };
        chan.init_words()
    }

    /// Runs `f` on a view of the channel in `region` (for the segment's reclaim and teardown
    /// hooks, which only have a borrow).
    pub(crate) fn with_view<R>(region: &Region, f: impl FnOnce(&Chan) -> R) -> Result<R> {
        let chan = Chan::check(region, None)?;
        Ok(f(&chan))
    }

    fn init_words(&self) -> Result<()> {
        self.word(C_CAPACITY / 8)
            .store(self.geo.capacity, Ordering::Relaxed);
        self.word(C_ARENA_BYTES / 8)
            .store(self.geo.arena_bytes, Ordering::Relaxed);
        self.word(C_OVERFLOW_NEXT_ID / 8)
            .store(1, Ordering::Relaxed);
        self.geo.alloc.init(self);
        for lock in [C_PRODUCER_LOCK, C_CONSUMER_LOCK, C_ALLOC_LOCK] {
            // SAFETY: the offset lies inside the data area (Geometry puts it there), is 64-byte
            // aligned, and nobody can use the mutex before the segment is marked initialised.
            unsafe { sys::robust_mutex_init(self.base.add(lock as usize)) }
                .map_err(|e| Error::from_io(self.region().name(), "pthread_mutex_init", e))?;
        }
        self.word(C_MAGIC / 8)
            .store(CHANNEL_MAGIC, Ordering::Release);
        Ok(())
    }

    /// Checks the channel's configuration words and builds this process's view.
    pub(crate) fn attach(region: Arc<Region>) -> Result<Chan> {
        let ptr: *const Region = &*region;
        // SAFETY: ptr comes from the Arc, which the returned Chan keeps in `keep`.
        Chan::check(unsafe { &*ptr }, Some(region))
    }

    fn check(region: &Region, keep: Option<Arc<Region>>) -> Result<Chan> {
        let name = region.name().to_owned();
        let data_len = region.data_len() as u64;
        let read = |offset: u64| -> u64 {
            if offset + 8 > data_len {
                return 0;
            }
            // SAFETY: in bounds (checked above) and 8-aligned (data area is page aligned).
            let word = unsafe { &*region.data_ptr().add(offset as usize).cast::<AtomicU64>() };
            word.load(Ordering::Acquire)
        };
        let magic = read(C_MAGIC);
        if magic != CHANNEL_MAGIC {
            return Err(Error::corrupted(&name, format!("channel magic {magic:#x}")));
        }
        let (capacity, arena_bytes) = (read(C_CAPACITY), read(C_ARENA_BYTES));
        let geo = Geometry::new(capacity, arena_bytes, region.capacity() as u64)
            .filter(|g| g.data_len == data_len)
            .ok_or_else(|| {
                Error::corrupted(
                    &name,
                    format!("capacity {capacity} and arena {arena_bytes} do not match a {data_len}-byte data area"),
                )
            })?;
        Ok(Chan {
            keep,
            region: region as *const Region,
            geo,
            base: region.data_ptr(),
            head_seen: AtomicU64::new(0),
            tail_seen: AtomicU64::new(0),
        })
    }

    pub(crate) fn region(&self) -> &Region {
        // SAFETY: either `keep` holds the Arc this points into, or the Chan was built by
        // `init`/`with_view` from a borrow that outlives it (it never leaves those functions).
        unsafe { &*self.region }
    }

    pub(crate) fn name(&self) -> &str {
        self.region().name()
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn word_checked(&self, index: u64) -> Option<&AtomicU64> {
        let offset = index.checked_mul(8)?;
        if offset.checked_add(8)? > self.geo.data_len {
            return None;
        }
        // SAFETY: in bounds of the data area (checked above), 8-aligned, and the mapping lives
        // as long as self.region; every shared access to these words is atomic.
        Some(unsafe { &*self.base.add(offset as usize).cast::<AtomicU64>() })
    }

    /// A word of the fixed layout; `index` comes from this module's constants or the geometry.
    fn word(&self, index: u64) -> &AtomicU64 {
        self.word_checked(index)
            .expect("channel layout word in bounds")
    }

    fn wait_word(&self, on: WaitOn) -> &AtomicU32 {
        let offset = C_WAIT_WORDS as usize + 4 * on as usize;
        // SAFETY: fixed offset inside the control block, 4-aligned; shared accesses are atomic.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    /// Non-zero while some thread may sleep on `on`'s word: set by each sleeper before it
    /// re-checks its condition, swapped to zero by the one waker that then issues FUTEX_WAKE.
    /// One wake-up system call per sleep, and a sleeper that died costs one spurious wake.
    fn armed(&self, on: WaitOn) -> &AtomicU32 {
        let offset = C_WAIT_WORDS as usize + 16 + 4 * on as usize;
        // SAFETY: as for wait_word.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    fn participant_word(&self, slot: u32, field: u64) -> &AtomicU64 {
        self.word(self.participant_index(slot, field))
    }

    /// Word index of field `field` (0: taken, 1: dropped) of participant `slot`'s record.
    fn participant_index(&self, slot: u32, field: u64) -> u64 {
        (C_PARTICIPANTS + (slot as u64 % self.geo.participants) * PARTICIPANT_STRIDE) / 8 + field
    }

    fn dropped(&self, slot: u32) -> &AtomicU64 {
        self.participant_word(slot, 1)
    }

    fn tail(&self) -> &AtomicU64 {
        self.word(C_TAIL / 8)
    }

    fn head(&self) -> &AtomicU64 {
        self.word(C_HEAD / 8)
    }

    fn overflow_word(&self, entry: u64, field: u64) -> u64 {
        C_OVERFLOW_TABLE / 8 + (entry % OVERFLOW_SLOTS) * 3 + field
    }

    /// Ring capacity (messages).
    pub(crate) fn capacity(&self) -> usize {
        self.geo.capacity as usize
    }

    /// Messages in the ring right now.
    pub(crate) fn len(&self) -> usize {
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        tail.saturating_sub(head).min(self.geo.capacity) as usize
    }

    /// Messages ever published.
    pub(crate) fn sent_total(&self) -> u64 {
        self.tail().load(Ordering::Acquire)
    }

    /// Messages received and dropped (or reclaimed from dead receivers).
    pub(crate) fn done_total(&self) -> u64 {
        // A reclaim in progress makes the epoch odd; retry until it is even and unchanged.
        let mut done = 0;
        for _ in 0..10_000 {
            let epoch = self.word(C_RECLAIM_EPOCH / 8).load(Ordering::Acquire);
            done = self.word(C_RETIRED / 8).load(Ordering::Acquire);
            for slot in 0..self.geo.participants as u32 {
                done = done.wrapping_add(self.dropped(slot).load(Ordering::Acquire));
            }
            if epoch.is_multiple_of(2)
                && self.word(C_RECLAIM_EPOCH / 8).load(Ordering::Acquire) == epoch
            {
                return done;
            }
            std::hint::spin_loop();
        }
        // Still odd: the retirer died half-way. Taking its lock replays its journal and makes
        // the epoch even again; under the lock the counts cannot move.
        let Ok(_held) = self.lock_alloc() else {
            return done;
        };
        let mut done = self.word(C_RETIRED / 8).load(Ordering::Acquire);
        for slot in 0..self.geo.participants as u32 {
            done = done.wrapping_add(self.dropped(slot).load(Ordering::Acquire));
        }
        done
    }

    /// Pages of the arena free right now.
    pub(crate) fn free_arena_bytes(&self) -> u64 {
        self.geo.alloc.free_page_count(self) * ARENA_PAGE
    }

    /// Descriptors skipped because they did not validate.
    pub(crate) fn corrupt_skipped(&self) -> u64 {
        self.word(C_CORRUPT_SKIPPED / 8).load(Ordering::Relaxed)
    }

    /// The channel's figures now, for inspection tools.
    pub(crate) fn stats(&self) -> crate::inspect::ChannelStats {
        let mut stats = crate::inspect::ChannelStats {
            capacity: self.capacity(),
            queued: self.len(),
            arena_bytes: self.geo.arena_bytes,
            arena_free_bytes: self.free_arena_bytes(),
            sent_total: self.sent_total(),
            done_total: self.done_total(),
            corrupt_skipped: self.corrupt_skipped(),
            ..Default::default()
        };
        stats.messages_in_flight = stats.sent_total.saturating_sub(stats.done_total);
        stats.bytes_in_flight = stats.arena_bytes.saturating_sub(stats.arena_free_bytes);
        for entry in 0..OVERFLOW_SLOTS {
            if self.load(self.overflow_word(entry, 0)).unwrap_or(0) != 0 {
                stats.overflow_payloads += 1;
                let len = self.load(self.overflow_word(entry, 2)).unwrap_or(0);
                stats.bytes_in_flight = stats.bytes_in_flight.saturating_add(len);
            }
        }
        stats
    }

    /// Changes whenever a participant attaches, detaches or is reclaimed.
    pub(crate) fn membership_epoch(&self) -> u64 {
        self.word(C_MEMBERSHIP_EPOCH / 8).load(Ordering::Acquire)
    }

    pub(crate) fn bump_membership(&self) {
        self.word(C_MEMBERSHIP_EPOCH / 8)
            .fetch_add(1, Ordering::AcqRel);
        for on in ALL_WAITS {
            self.wait_word(on).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(self.wait_word(on));
        }
    }

    fn lock(&self, offset: u64, journal: u64) -> Result<Held<'_>> {
        // SAFETY: the offset is one of the three mutexes of the fixed layout, initialised before
        // the segment was marked ready; the mapping outlives the guard (it borrows self).
        let ptr = unsafe { self.base.add(offset as usize) };
        let failed = |e| Error::from_io(self.name(), "pthread_mutex_lock", e);
        // Holders keep these locks for well under a microsecond, and glibc's robust mutexes
        // never spin: try for a moment before sleeping in the kernel.
        let mut outcome = LockOutcome::Busy;
        for _ in 0..LOCK_SPIN_TRIES {
            // SAFETY: as above.
            outcome = unsafe { sys::robust_mutex_try_lock(ptr) }.map_err(failed)?;
            if outcome != LockOutcome::Busy {
                break;
            }
            std::hint::spin_loop();
        }
        if outcome == LockOutcome::Busy {
            // SAFETY: as above.
            outcome = unsafe { sys::robust_mutex_lock(ptr, None) }.map_err(failed)?;
        }
        match outcome {
            LockOutcome::Acquired => {}
            LockOutcome::OwnerDied => {
                // The previous holder died inside its critical section: finish what it committed.
                // The ring journals end with the write of `tail` or `head`; once that write has
                // landed the whole operation has, and other locks' holders may since have moved
                // the same chunk on (a consumer taking it): replaying would undo their work.
                let marker = match offset {
                    C_PRODUCER_LOCK => Some(C_TAIL / 8),
                    C_CONSUMER_LOCK => Some(C_HEAD / 8),
                    _ => None,
                };
                replay_journal(self, journal / 8, self.journal_span(), marker);
                if offset == C_ALLOC_LOCK {
                    // It may have died inside retire_participant with the epoch odd.
                    let epoch = self.word(C_RECLAIM_EPOCH / 8);
                    let value = epoch.load(Ordering::Acquire);
                    epoch.store(value.wrapping_add(value % 2), Ordering::Release);
                }
                // SAFETY: we hold the mutex (OwnerDied means acquired).
                unsafe { sys::robust_mutex_mark_consistent(ptr) };
                // A replay may have moved `tail` or `head` or freed space: wake whoever waits
                // rather than leave them to their next timed re-check.
                for on in ALL_WAITS {
                    self.notify(on);
                }
            }
            LockOutcome::Busy | LockOutcome::Unrecoverable => {
                return Err(Error::corrupted(
                    self.name(),
                    "a channel lock is unrecoverable",
                ));
            }
        }
        Ok(Held { ptr, _chan: self })
    }

    /// Words a journal may write: the control block's mutable words and the allocator.
    fn journal_span(&self) -> std::ops::Range<u64> {
        C_TAIL / 8..self.geo.alloc.span().end
    }

    fn lock_producer(&self) -> Result<Held<'_>> {
        self.lock(C_PRODUCER_LOCK, C_PRODUCER_JOURNAL)
    }

    fn lock_consumer(&self) -> Result<Held<'_>> {
        self.lock(C_CONSUMER_LOCK, C_CONSUMER_JOURNAL)
    }

    fn lock_alloc(&self) -> Result<Held<'_>> {
        self.lock(C_ALLOC_LOCK, self.geo.alloc.journal * 8)
    }

    fn commit<const N: usize>(&self, txn: Txn<'_, Chan, N>, journal_offset: u64) -> Result<()> {
        if txn.commit(journal_offset / 8) {
            Ok(())
        } else {
            Err(Error::corrupted(self.name(), "journal overflow"))
        }
    }

    fn alloc_error(&self, e: AllocError) -> Error {
        match e {
            AllocError::NoSpace => Error::corrupted(self.name(), "arena full"),
            AllocError::Corrupted(what) => Error::corrupted(self.name(), format!("arena: {what}")),
        }
    }

    /// Wakes threads waiting on `on`, making a syscall only if one armed the word since the
    /// last wake-up.
    pub(crate) fn notify(&self, on: WaitOn) {
        fence(Ordering::SeqCst);
        let armed = self.armed(on);
        if armed.load(Ordering::Relaxed) != 0 && armed.swap(0, Ordering::SeqCst) != 0 {
            self.wait_word(on).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(self.wait_word(on));
        }
    }

    /// A word that changes when what `on` waits for may have happened: spinning threads watch
    /// it and run their full (locked) attempt only when it moved.
    fn progress(&self, on: WaitOn) -> &AtomicU64 {
        match on {
            WaitOn::NotEmpty => self.tail(),
            WaitOn::NotFull | WaitOn::Done => self.head(),
            WaitOn::Space => self.word(self.geo.alloc.free_pages),
        }
    }

    // ----- arena ---------------------------------------------------------------------------

    /// Allocates a chunk for `len` bytes owned by participant `slot`. `Ok(None)`: no room now.
    pub(crate) fn try_alloc(&self, len: u64, slot: u32) -> Result<Option<u64>> {
        let pages = AllocLayout::pages_for(len);
        let _held = self.lock_alloc()?;
        let mut txn = Txn::<Chan>::new(self);
        match self.geo.alloc.alloc(&mut txn, pages, slot as u64 + 1) {
            Ok(chunk) => {
                self.commit(txn, self.geo.alloc.journal * 8)?;
                Ok(Some(chunk))
            }
            Err(AllocError::NoSpace) => Ok(None),
            Err(e) => Err(self.alloc_error(e)),
        }
    }

    /// Frees a chunk that participant `slot` owns; `done` also counts one message done.
    pub(crate) fn free_chunk(&self, chunk: u64, slot: u32) -> Result<()> {
        {
            let _held = self.lock_alloc()?;
            let owner = self.load(self.geo.alloc.owner_index(chunk)).unwrap_or(0);
            if owner != slot as u64 + 1 {
                return Err(Error::corrupted(
                    self.name(),
                    format!("chunk {chunk} is owned by {owner}, not by participant {slot}"),
                ));
            }
            let mut txn = Txn::<Chan>::new(self);
            self.geo
                .alloc
                .free(&mut txn, chunk)
                .map_err(|e| self.alloc_error(e))?;
            self.commit(txn, self.geo.alloc.journal * 8)?;
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
        Some(unsafe { self.base.add((self.geo.arena_offset + start) as usize) })
    }

    // ----- overflow segments ---------------------------------------------------------------

    /// The name of overflow payload `id` of this channel.
    pub(crate) fn overflow_name(&self, id: u64) -> String {
        // The creation time tells apart channels that reuse a name, so a leftover of an earlier
        // incarnation never collides with a new payload.
        let incarnation = self.region().header().created_unix_ns;
        format!("{}~{incarnation:x}.{id:x}", self.name())
    }

    /// Reserves an overflow table entry for `len` bytes owned by `slot`. `Ok(None)`: table full.
    pub(crate) fn try_reserve_overflow(&self, len: u64, slot: u32) -> Result<Option<(u64, u64)>> {
        let _held = self.lock_alloc()?;
        let mut txn = Txn::<Chan, 4>::new(self);
        let next_id = txn.get(C_OVERFLOW_NEXT_ID / 8).unwrap_or(1).max(1);
        for entry in 0..OVERFLOW_SLOTS {
            if txn.get(self.overflow_word(entry, 0)).unwrap_or(1) == 0 {
                txn.set(self.overflow_word(entry, 0), next_id);
                txn.set(self.overflow_word(entry, 1), slot as u64 + 1);
                txn.set(self.overflow_word(entry, 2), len);
                txn.set(C_OVERFLOW_NEXT_ID / 8, next_id.wrapping_add(1));
                self.commit(txn, self.geo.alloc.journal * 8)?;
                return Ok(Some((entry, next_id)));
            }
        }
        Ok(None)
    }

    /// Unlinks overflow payload `entry` (if it is `id` owned by `slot`) and frees the entry.
    pub(crate) fn release_overflow(&self, entry: u64, id: u64, slot: u32) -> Result<()> {
        {
            let _held = self.lock_alloc()?;
            let found_id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            let owner = self.load(self.overflow_word(entry, 1)).unwrap_or(0);
            if found_id != id || owner != slot as u64 + 1 {
                return Err(Error::corrupted(
                    self.name(),
                    format!("overflow entry {entry} changed hands"),
                ));
            }
            let _ = sys::shm_unlink(&crate::segment::os_name(&self.overflow_name(id)));
            let mut txn = Txn::<Chan, 4>::new(self);
            for field in 0..3 {
                txn.set(self.overflow_word(entry, field), 0);
            }
            self.commit(txn, self.geo.alloc.journal * 8)?;
        }
        self.notify(WaitOn::Space);
        Ok(())
    }

    // ----- ring ------------------------------------------------------------------------------

    fn slot_ptr(&self, position: u64) -> *mut u8 {
        let offset = self.geo.ring_offset + (position & (self.geo.ring_slots - 1)) * SLOT_BYTES;
        // SAFETY: the masked index is below ring_slots, so the slot lies inside the ring, which
        // lies inside the data area by construction of the geometry.
        unsafe { self.base.add(offset as usize) }
    }

    fn slot_word(&self, position: u64, field: u64) -> &AtomicU64 {
        // SAFETY: field < 4 keeps the word inside the slot's 32-byte descriptor; 8-aligned.
        unsafe {
            &*self
                .slot_ptr(position)
                .add(8 * field as usize)
                .cast::<AtomicU64>()
        }
    }

    /// Publishes a descriptor (and inline bytes). `Ok(false)`: the ring is full.
    pub(crate) fn try_publish(&self, place: Place, len: u64, inline: &[u8]) -> Result<bool> {
        {
            let _held = self.lock_producer()?;
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
    pub(crate) fn try_take(&self, slot: u32, inline: &mut InlineBuf) -> Result<Option<Desc>> {
        let mut skipped = false;
        let taken = {
            let _held = self.lock_consumer()?;
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
                let taken_index = self.participant_index(slot, 0);
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
                break Some(desc);
            }
        };
        if taken.is_some() || skipped {
            self.notify(WaitOn::NotFull);
        }
        Ok(taken)
    }

    /// Counts one message taken by `slot` as done.
    pub(crate) fn mark_done(&self, slot: u32) {
        self.dropped(slot).fetch_add(1, Ordering::AcqRel);
        self.notify(WaitOn::Done);
    }

    /// Moves `slot`'s counts into the retired total and zeroes them (on detach or reclaim).
    pub(crate) fn retire_participant(&self, slot: u32) -> Result<()> {
        let epoch = self.word(C_RECLAIM_EPOCH / 8);
        let _held = self.lock_alloc()?;
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

    /// Frees everything the dead participant `slot` held. Idempotent.
    pub(crate) fn reclaim(&self, slot: u32) -> Result<()> {
        // Taking each lock replays any journal the dead participant left committed.
        drop(self.lock_producer()?);
        drop(self.lock_consumer()?);
        let owner = slot as u64 + 1;
        let chunks = {
            let _held = self.lock_alloc()?;
            self.geo
                .alloc
                .chunks(self)
                .map_err(|e| self.alloc_error(e))?
        };
        for (chunk, _, chunk_owner) in chunks {
            if chunk_owner == owner {
                let _ = self.free_chunk(chunk, slot);
            }
        }
        for entry in 0..OVERFLOW_SLOTS {
            let id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            if id != 0 && self.load(self.overflow_word(entry, 1)) == Some(owner) {
                let _ = self.release_overflow(entry, id, slot);
            }
        }
        self.retire_participant(slot)
    }

    /// Unlinks every overflow payload still referenced (the channel is going away).
    pub(crate) fn teardown(&self) {
        for entry in 0..OVERFLOW_SLOTS {
            let id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            if id != 0 {
                let _ = sys::shm_unlink(&crate::segment::os_name(&self.overflow_name(id)));
            }
        }
    }

    /// Whether a live participant with `role` exists (slot scan: one syscall per slot in use).
    pub(crate) fn any_alive(&self, role: Role) -> bool {
        self.region().any_alive_with_role(role)
    }

    // ----- waiting ---------------------------------------------------------------------------

    /// Repeats `attempt` until it is ready, spinning for `spin` and then sleeping on the futex
    /// word of `on`, until `deadline`. A sleep lasts at most `MAX_SLEEP`, so the attempt runs
    /// at least that often; attempts re-check their peers' liveness (and reclaim the dead) at most
    /// every 25 ms, which is how a blocked call notices a killed peer.
    pub(crate) fn wait_for<T>(
        &self,
        on: WaitOn,
        deadline: Option<Instant>,
        spin: Duration,
        mut attempt: impl FnMut() -> Result<Step<T>>,
    ) -> Result<T, WaitError> {
        const MAX_SLEEP: Duration = Duration::from_millis(25);
        let run = |attempt: &mut dyn FnMut() -> Result<Step<T>>| match attempt() {
            Ok(Step::Ready(v)) => Some(Ok(v)),
            Ok(Step::Retry) => None,
            Ok(Step::Disconnected) => Some(Err(WaitError::Disconnected)),
            Err(e) => Some(Err(WaitError::Failed(e))),
        };
        if let Some(done) = run(&mut attempt) {
            return done;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(WaitError::Timeout); // try_ forms: one attempt, no spinning
        }
        // Spin: watch a progress word with one PAUSE per poll (about 25 ns here) and run the
        // locked attempt only when it moved, or every 64 polls for conditions it does not show.
        let start = Instant::now();
        let progress = self.progress(on);
        let mut seen = progress.load(Ordering::Acquire);
        let mut polls = 0u32;
        loop {
            std::hint::spin_loop();
            polls = polls.wrapping_add(1);
            let now = progress.load(Ordering::Acquire);
            if now != seen || polls.is_multiple_of(64) {
                seen = now;
                if let Some(done) = run(&mut attempt) {
                    return done;
                }
                let elapsed = start.elapsed();
                if elapsed >= spin || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
        loop {
            self.armed(on).store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let seq = self.wait_word(on).load(Ordering::SeqCst);
            let outcome = run(&mut attempt);
            let now = Instant::now();
            let timed_out = deadline.is_some_and(|d| now >= d);
            if outcome.is_none() && !timed_out {
                let mut slice = MAX_SLEEP;
                if let Some(d) = deadline {
                    slice = slice.min(d - now);
                }
                sys::futex_wait(self.wait_word(on), seq, Some(slice));
            }
            if let Some(done) = outcome {
                return done;
            }
            if timed_out {
                return Err(WaitError::Timeout);
            }
        }
    }
}
