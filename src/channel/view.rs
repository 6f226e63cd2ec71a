//! [`Chan`]: one process's view of one channel segment, and its access to the shared words.
//!
//! The operations on the channel live beside this file, one concern each: `ring.rs` (publish
//! and take descriptors, and finish what a dead participant left half-way), `arena.rs` (payload
//! chunks), `overflow.rs` (payloads larger than the arena), `lock.rs` (the allocator's robust
//! mutex and journal replay), `wait.rs` (spinning, futex sleeps and wake-ups), `reclaim.rs`
//! (what a detaching or dead participant leaves), `stats.rs` (figures for inspection) and
//! `tasks.rs` (the task count of `task_done` and `join_tasks`).
//!
//! The ring takes no lock: senders and receivers claim slots with one CAS on the slot's state
//! word, which names the claimer, so a reclaim finds and finishes what a dead one held (see
//! `ring.rs`). Only allocating and freeing arena chunks, and counting tasks, take the allocator
//! lock, whose redo journal the next holder replays when the lock reports its owner dead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::journal::Words;
use super::layout::{
    Geometry, CHANNEL_MAGIC, C_ALLOC_LOCK, C_ARENA_BYTES, C_CAPACITY, C_FLAGS, C_HEAD, C_MAGIC,
    C_MEMBERSHIP_EPOCH, C_OVERFLOW_NEXT_ID, C_PARTICIPANTS, C_TAIL, FLAG_PERSISTENT, KNOWN_FLAGS,
    PARTICIPANT_STRIDE, P_DROPPED, P_TASKS_DONE,
};
use super::ring::{TakeLock, NO_HINT};
use crate::error::{Error, Result};
use crate::segment::{Region, Role};
use crate::sys;

/// One process's view of one channel segment.
pub(crate) struct Chan {
    /// The mapping, kept alive for `data`.
    pub(super) region: Arc<Region>,
    pub(super) geo: Geometry,
    /// The channel's flags word, copied out once when attaching and checked.
    flags: u64,
    /// The data area: every shared word is reached through its checked atomic views
    /// ([`sys::Window::atomic_in`]), and the byte ranges that are not words (inline payloads,
    /// arena chunks, mutexes) from its start, by offsets the geometry keeps in bounds.
    pub(super) data: sys::Window,
    /// This process's last reading of `head`: a sender rereads it, a cache line the receivers'
    /// core writes, only when its copy says the ring is full.
    pub(super) head_seen: AtomicU64,
    /// Where this process's receivers look first for the next message (`ring::NO_HINT`:
    /// nowhere yet), so that a take reads the shared `head` only when another receiver moved
    /// it back; and the count of such rewinds it last saw.
    pub(super) take_hint: AtomicU64,
    pub(super) rewinds_seen: AtomicU64,
    /// The next return (a number of `C_ARENA_RETURNS`) this process's senders look at for a
    /// chunk to take back without the allocator lock (see `arena.rs`).
    pub(super) take_back_from: AtomicU64,
    /// Serialises this process's takes: a participant records one take in progress at a time
    /// (see `ring.rs`).
    pub(super) take_lock: TakeLock,
}

// SAFETY: `data` is a window on the mapping that `region` keeps alive; all shared state is reached
// through atomics or through byte copies whose use the channel protocol orders. Region itself is
// Send + Sync.
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

impl Chan {
    /// Lays out and initialises a fresh channel in `region`'s data area; `persistent`: it never
    /// reports `Disconnected`.
    pub(crate) fn init(region: &Arc<Region>, geo: &Geometry, persistent: bool) -> Result<()> {
        let flags = if persistent { FLAG_PERSISTENT } else { 0 };
        let chan = Chan::new(Arc::clone(region), *geo, flags);
        chan.word(C_CAPACITY / 8)
            .store(geo.capacity, Ordering::Relaxed);
        chan.word(C_FLAGS / 8).store(flags, Ordering::Relaxed);
        chan.word(C_ARENA_BYTES / 8)
            .store(geo.arena_bytes, Ordering::Relaxed);
        chan.word(C_OVERFLOW_NEXT_ID / 8)
            .store(1, Ordering::Relaxed);
        geo.alloc.init(&chan);
        chan.init_ring();
        // SAFETY: the offset lies inside the data area (Geometry puts it there), is 64-byte
        // aligned, and nobody can use the mutex before the segment is marked initialised.
        unsafe { sys::robust_mutex_init(chan.data.as_ptr().add(C_ALLOC_LOCK as usize)) }
            .map_err(|e| Error::from_io(region.name(), "pthread_mutex_init", e))?;
        chan.word(C_MAGIC / 8)
            .store(CHANNEL_MAGIC, Ordering::Release);
        Ok(())
    }

    fn new(region: Arc<Region>, geo: Geometry, flags: u64) -> Chan {
        // SAFETY: the Chan holds the Arc of the region for as long as it holds the window.
        let data = unsafe { region.data_window() };
        Chan {
            data,
            region,
            geo,
            flags,
            head_seen: AtomicU64::new(0),
            take_hint: AtomicU64::new(NO_HINT),
            rewinds_seen: AtomicU64::new(0),
            take_back_from: AtomicU64::new(0),
            take_lock: TakeLock::default(),
        }
    }

    /// Checks the channel's configuration words (copied out once) and builds this process's
    /// view.
    pub(crate) fn attach(region: Arc<Region>) -> Result<Chan> {
        let name = region.name();
        let data_len = region.data_len() as u64;
        let read = |offset: u64| -> u64 {
            region
                .data_atomic::<AtomicU64>(offset as usize)
                .map_or(0, |w| w.load(Ordering::Acquire))
        };
        let magic = read(C_MAGIC);
        if magic != CHANNEL_MAGIC {
            return Err(Error::corrupted(name, format!("channel magic {magic:#x}")));
        }
        let (capacity, arena_bytes) = (read(C_CAPACITY), read(C_ARENA_BYTES));
        let geo = Geometry::new(capacity, arena_bytes, region.capacity() as u64)
            .filter(|g| g.data_len == data_len)
            .ok_or_else(|| {
                Error::corrupted(
                    name,
                    format!("capacity {capacity} and arena {arena_bytes} do not match a {data_len}-byte data area"),
                )
            })?;
        // A bit this version does not know asks for a behaviour it cannot give (a newer
        // writer's): refused, rather than taken for a channel of the known kind.
        let flags = read(C_FLAGS);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::incompatible(
                name,
                "channel flags",
                format!("no bits outside {KNOWN_FLAGS:#x}"),
                format!("{flags:#x}"),
            ));
        }
        Ok(Chan::new(region, geo, flags))
    }

    /// Whether the channel reports `Disconnected` when one side has no live participant (it
    /// was not made with `with_disconnect(false)`).
    pub(crate) fn disconnects(&self) -> bool {
        self.flags & FLAG_PERSISTENT == 0
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub(crate) fn name(&self) -> &str {
        self.region.name()
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The word at `index` (in words) of the data area, if it lies inside it.
    #[inline]
    pub(super) fn word_checked(&self, index: u64) -> Option<&AtomicU64> {
        let offset = usize::try_from(index.checked_mul(8)?).ok()?;
        self.data.atomic_in(offset)
    }

    /// A word of the fixed layout; `index` comes from the layout's constants or the geometry,
    /// which keep it in bounds.
    #[inline]
    pub(super) fn word(&self, index: u64) -> &AtomicU64 {
        self.word_checked(index)
            .expect("channel layout word in bounds")
    }

    /// Word index of field `field` (`P_TAKEN`, `P_DROPPED`, `P_TASKS_DONE`, `P_LEAVING`) of
    /// participant `slot`'s record.
    pub(super) fn participant_index(&self, slot: u32, field: u64) -> u64 {
        (C_PARTICIPANTS + (slot as u64 % self.geo.participants) * PARTICIPANT_STRIDE) / 8 + field
    }

    /// Messages received and dropped by participant `slot` (since it attached).
    pub(super) fn dropped(&self, slot: u32) -> &AtomicU64 {
        self.word(self.participant_index(slot, P_DROPPED))
    }

    /// Tasks participant `slot` counted done (since it attached).
    pub(super) fn tasks_done(&self, slot: u32) -> &AtomicU64 {
        self.word(self.participant_index(slot, P_TASKS_DONE))
    }

    pub(super) fn tail(&self) -> &AtomicU64 {
        self.word(C_TAIL / 8)
    }

    pub(super) fn head(&self) -> &AtomicU64 {
        self.word(C_HEAD / 8)
    }

    /// Ring capacity (messages).
    pub(crate) fn capacity(&self) -> usize {
        self.geo.capacity as usize
    }

    /// Messages in the ring right now (positions claimed by senders and not yet taken, so a
    /// message being written counts).
    pub(crate) fn len(&self) -> usize {
        let head = self.head_now();
        let tail = self.tail().load(Ordering::Acquire);
        tail.saturating_sub(head).min(self.geo.capacity) as usize
    }

    /// Messages ever sent: positions claimed, so a message being written counts (it is either
    /// published or, if its sender dies, voided and counted done by the receiver that takes it).
    pub(crate) fn sent_total(&self) -> u64 {
        self.tail().load(Ordering::Acquire)
    }

    /// Changes whenever a participant attaches, detaches or is reclaimed.
    pub(crate) fn membership_epoch(&self) -> u64 {
        self.word(C_MEMBERSHIP_EPOCH / 8).load(Ordering::Acquire)
    }

    /// Whether a live participant with `role` exists (slot scan: one syscall per slot in use).
    pub(crate) fn any_alive(&self, role: Role) -> bool {
        self.region.any_alive_with_role(role)
    }
}
