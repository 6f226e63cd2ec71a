//! A channel's figures, for `len`-style queries and for inspection tools.

use std::sync::atomic::Ordering;

use super::journal::Words;
use super::layout::{
    ARENA_PAGE, C_ALLOC_LOCK, C_CORRUPT_SKIPPED, C_RECLAIM_EPOCH, C_RETIRED, C_RETIRED_TASKS,
    OVERFLOW_SLOTS, P_DROPPED, P_TASKS_DONE,
};
use super::view::Chan;

/// A channel's figures at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Ring capacity in messages.
    pub capacity: usize,
    /// Messages waiting in the ring.
    pub queued: usize,
    /// Messages sent and not yet received and dropped (queued plus held by receivers).
    pub messages_in_flight: u64,
    /// Payload bytes in the arena and in overflow segments, queued or held.
    pub bytes_in_flight: u64,
    /// Arena size in bytes.
    pub arena_bytes: u64,
    /// Arena bytes free.
    pub arena_free_bytes: u64,
    /// Overflow payloads in flight.
    pub overflow_payloads: u64,
    /// Messages ever sent.
    pub sent_total: u64,
    /// Messages received and dropped (or reclaimed from dead receivers).
    pub done_total: u64,
    /// Tasks done: successful `task_done` calls (on any handle), and the tasks that reclaims
    /// of dead participants counted done for them (see [`Sender::task_done`]).
    ///
    /// [`Sender::task_done`]: crate::Sender::task_done
    pub tasks_done_total: u64,
    /// Tasks sent and not done yet (`sent_total - tasks_done_total`), what
    /// [`Sender::join_tasks`](crate::Sender::join_tasks) waits to see at zero: Python's
    /// `JoinableQueue` count of unfinished tasks.
    pub unfinished_tasks: u64,
    /// Ring descriptors skipped because they did not validate (a sign of corruption).
    pub corrupt_skipped: u64,
    /// The process holding the channel's one lock, the allocator's, right now, if any.
    /// Holders keep it for well under a microsecond: one that shows here again and again is
    /// stopped. (The ring takes no lock.)
    pub allocator_lock_holder: Option<u32>,
}

/// The counts participants keep per slot and move into a channel-wide word when they go.
#[derive(Clone, Copy, Debug)]
pub(super) enum Count {
    /// Messages received and dropped (`dropped`, into `retired`): what `Sender::join` waits for.
    Messages,
    /// Tasks done (`tasks_done`, into `retired tasks`): what `join_tasks` waits for.
    Tasks,
}

impl Count {
    /// Byte offset of the channel-wide word of what retired participants counted.
    fn retired(self) -> u64 {
        match self {
            Count::Messages => C_RETIRED,
            Count::Tasks => C_RETIRED_TASKS,
        }
    }

    /// The field of a participant record that counts it.
    fn field(self) -> u64 {
        match self {
            Count::Messages => P_DROPPED,
            Count::Tasks => P_TASKS_DONE,
        }
    }
}

impl Chan {
    /// `count` over the channel: the retired word plus every participant's. Exact only while
    /// the allocator lock is held (no participant retires meanwhile, and task counts move only
    /// under it); otherwise see [`Chan::count_consistent`].
    pub(super) fn count_sum(&self, count: Count) -> u64 {
        let mut total = self.word(count.retired() / 8).load(Ordering::Acquire);
        for slot in 0..self.geo.participants as u32 {
            let index = self.participant_index(slot, count.field());
            total = total.wrapping_add(self.word(index).load(Ordering::Acquire));
        }
        total
    }

    /// `count` read while no participant retires. `Err` holds a best-effort figure, possibly
    /// counting a retiring participant's share twice, when that could not be had: a retirer
    /// stopped in the middle holds the allocator lock. A join must not take such a figure for
    /// done.
    pub(super) fn count_consistent(&self, count: Count) -> Result<u64, u64> {
        // A reclaim in progress makes the epoch odd; retry until it is even and unchanged.
        let mut total = 0;
        for _ in 0..10_000 {
            let epoch = self.word(C_RECLAIM_EPOCH / 8).load(Ordering::Acquire);
            total = self.count_sum(count);
            if epoch.is_multiple_of(2)
                && self.word(C_RECLAIM_EPOCH / 8).load(Ordering::Acquire) == epoch
            {
                return Ok(total);
            }
            std::hint::spin_loop();
        }
        // Still odd: the retirer died half-way. Taking its lock replays its journal and makes
        // the epoch even again; under the lock the counts cannot move.
        let Ok(_held) = self.lock_alloc(Some(std::time::Instant::now())) else {
            return Err(total);
        };
        Ok(self.count_sum(count))
    }

    /// Messages received and dropped (or reclaimed from dead receivers), best effort: see
    /// [`Chan::done_total_consistent`].
    pub(crate) fn done_total(&self) -> u64 {
        self.done_total_consistent().unwrap_or_else(|best| best)
    }

    /// Messages received and dropped (or reclaimed from dead receivers), read while no count
    /// moves (see [`Chan::count_consistent`]). `join` must not take an `Err` figure for done.
    pub(crate) fn done_total_consistent(&self) -> Result<u64, u64> {
        self.count_consistent(Count::Messages)
    }

    /// Bytes of the arena free right now: free pages, and pages given back by receivers that
    /// no allocator has needed yet (see `arena.rs`).
    pub(crate) fn free_arena_bytes(&self) -> u64 {
        let free = self.geo.alloc.free_page_count(self) + self.returned_pages();
        free.min(self.geo.alloc.pages) * ARENA_PAGE
    }

    /// Descriptors skipped because they did not validate.
    pub(crate) fn corrupt_skipped(&self) -> u64 {
        self.word(C_CORRUPT_SKIPPED / 8).load(Ordering::Relaxed)
    }

    /// The channel's figures now, for inspection tools.
    pub(crate) fn stats(&self) -> ChannelStats {
        let mut stats = ChannelStats {
            capacity: self.capacity(),
            queued: self.len(),
            arena_bytes: self.geo.arena_bytes,
            arena_free_bytes: self.free_arena_bytes(),
            sent_total: self.sent_total(),
            done_total: self.done_total(),
            tasks_done_total: self.tasks_done_total(),
            corrupt_skipped: self.corrupt_skipped(),
            allocator_lock_holder: self.lock_holder(C_ALLOC_LOCK),
            ..Default::default()
        };
        stats.messages_in_flight = stats.sent_total.saturating_sub(stats.done_total);
        stats.unfinished_tasks = stats.sent_total.saturating_sub(stats.tasks_done_total);
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
}
