//! Multi-producer, multi-consumer channels whose payloads stay in shared memory.
//!
//! A channel is one segment holding a ring of small descriptors and an arena of payload pages.
//! Sending copies the payload once into the arena (or, with [`Sender::loan`], lets the caller
//! build it there), and the ring carries only its place and length; the receiver reads the
//! payload in place through a [`Message`], whose drop frees the pages. Payloads of up to 96 bytes
//! travel inside the ring slot; payloads larger than the whole arena travel in an overflow segment
//! of their own, so there is no size ceiling.
//!
//! This file is the facade. Below it, from the public handles down to the shared words:
//!
//! - `sender.rs`, `receiver.rs`, `message.rs`: the public handles, messages and loans;
//!   `config.rs` and `errors.rs` their configuration and errors;
//! - `endpoint.rs`: one family of handles in this process (reserving, publishing, receiving,
//!   peer liveness);
//! - `view.rs`: [`Chan`], this process's view of the shared state, with the operations on it in
//!   `ring.rs`, `arena.rs`, `overflow.rs`, `lock.rs`, `wait.rs`, `reclaim.rs`, `stats.rs` and
//!   `tasks.rs` (the `JoinableQueue` task count);
//! - `layout.rs`: where everything lives; `alloc.rs` and `journal.rs`: the allocator and the
//!   redo journal that make multi-word updates crash-atomic.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The size and status getters shared by [`Sender`] and [`Receiver`].
macro_rules! handle_methods {
    () => {
        /// The channel's name.
        pub fn name(&self) -> &str {
            self.ep.chan.name()
        }

        /// Messages waiting in the ring (not counting received messages still held).
        pub fn len(&self) -> usize {
            self.ep.chan.len()
        }

        /// Whether no message is waiting.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Whether the ring holds `capacity` messages.
        pub fn is_full(&self) -> bool {
            self.len() >= self.capacity()
        }

        /// Messages the ring holds at most.
        pub fn capacity(&self) -> usize {
            self.ep.chan.capacity()
        }

        /// Arena bytes not in use by queued or held payloads.
        pub fn free_arena_bytes(&self) -> u64 {
            self.ep.chan.free_arena_bytes()
        }

        /// Whether the channel reports `Disconnected` when the other side has no live
        /// participant: `false` for a channel made with
        /// [`ChannelConfig::with_disconnect`](crate::ChannelConfig::with_disconnect)`(false)`,
        /// whose sends queue with no receiver and whose receives wait with no sender. Read from
        /// the channel when this handle was opened.
        pub fn disconnects(&self) -> bool {
            self.ep.chan.disconnects()
        }

        /// Which creation of the segment named [`name`](Self::name) this handle is on: the
        /// segment's creation time in nanoseconds since the Unix epoch, recorded by its creator
        /// (what `gc` and overflow payload names call its incarnation). Every handle on one
        /// segment reports the same value; a segment created later under the same name (after
        /// this one was removed) reports another. A process that re-opens a channel by name
        /// compares it to the value it was given to know that it got the same channel.
        pub fn incarnation(&self) -> u64 {
            self.ep.chan.region().incarnation()
        }

        /// The channel's figures now, as [`inspect`](crate::inspect) reports them: messages
        /// queued, in flight and done, bytes in use, the holders of its locks.
        pub fn stats(&self) -> crate::ChannelStats {
            self.ep.chan.stats()
        }

        /// How long, at most, blocking calls of this handle family spin before sleeping on a
        /// futex (default [`DEFAULT_SPIN`](crate::DEFAULT_SPIN)). `Duration::MAX` never
        /// sleeps: lowest latency, one busy core per waiting thread.
        ///
        /// While the family's waits on a condition end in their spin, each spins up to this
        /// long. When they keep outlasting it (two in a row slept), the spin is cut to about
        /// four times what the waits that ended in their spin took, at least 1 µs, and one
        /// wait in 16 spins the full time again to find out whether waits became short; the
        /// next wait that ends in its spin restores it. See
        /// [`set_adaptive_spin`](Self::set_adaptive_spin).
        pub fn set_spin(&self, spin: std::time::Duration) {
            let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
            self.ep
                .spin_ns
                .store(ns, std::sync::atomic::Ordering::Relaxed);
        }

        /// Whether blocking calls of this handle family cut their spin when it does not pay,
        /// as [`set_spin`](Self::set_spin) describes (default `true`). `false` spins the full
        /// time before every sleep: a core burnt per wait that outlasts it, for a partner
        /// whose pace is known to be bursty.
        pub fn set_adaptive_spin(&self, adaptive: bool) {
            self.ep
                .adaptive_spin
                .store(adaptive, std::sync::atomic::Ordering::Relaxed);
        }
    };
}
use handle_methods;

/// Task counting (Python's `JoinableQueue.task_done` and `join`), the same on [`Sender`] and
/// [`Receiver`]: any handle may finish a task or wait for all of them.
macro_rules! task_methods {
    () => {
        /// Counts one task done, like `JoinableQueue.task_done()`: every message ever sent
        /// through the channel (by any sender) is one task, unfinished until some handle
        /// (any, of either side, in any process) calls `task_done` for it.
        ///
        /// Fails with [`TaskDoneError::TooMany`](crate::TaskDoneError::TooMany), counting
        /// nothing, when every task sent is done already (Python's `ValueError`), exactly so
        /// however many processes race. As in Python a call may come before the `recv` of the
        /// message it finishes: the count is of messages sent, not received. Tasks are counted
        /// apart from [`Message`](crate::Message) drops, which
        /// [`Sender::join`](crate::Sender::join) counts.
        ///
        /// A participant that *dies* (killed, or exits without dropping its handles) gets the
        /// tasks it received and never finished counted done when it is reclaimed, so
        /// [`join_tasks`](Self::join_tasks) never waits for the dead (Python's would). One
        /// whose handles are all dropped leaves its unfinished tasks unfinished: call
        /// `task_done` before dropping the last clone. Call it on the handle family that
        /// received the task, so that a death credits exactly what was left undone.
        ///
        /// Takes the channel's allocator lock for a moment, waiting for it while a stopped
        /// process holds it; [`try_task_done`](Self::try_task_done) does not wait.
        pub fn task_done(&self) -> Result<(), crate::TaskDoneError> {
            self.ep.task_done(None)
        }

        /// Like [`task_done`](Self::task_done), waiting at most the lock grace (20 ms) for
        /// the allocator lock: `Failed(Error::LockTimeout { .. })`, counting nothing, when a
        /// stopped process holds it.
        pub fn try_task_done(&self) -> Result<(), crate::TaskDoneError> {
            self.ep.task_done(Some(std::time::Instant::now()))
        }

        /// Blocks until no task is unfinished, like `JoinableQueue.join()`: until as many tasks
        /// are done as messages were sent, re-evaluated whenever the counts move (a message sent
        /// meanwhile makes it wait again).
        ///
        /// It waits for the count alone, never for a peer: there is no `Disconnected` (any
        /// handle may finish tasks), and messages still queued when every receiver is gone keep
        /// it waiting until someone receives and finishes them. Tasks taken by participants
        /// that died count as done once they are reclaimed, which the waiting call itself
        /// does every 25 ms. Fails only if the channel cannot be read
        /// (`Error::Corrupted`, say).
        pub fn join_tasks(&self) -> crate::Result<()> {
            loop {
                // A wait without a deadline does not end without being done (or failing).
                if self.ep.join_tasks(None)? {
                    return Ok(());
                }
            }
        }

        /// Like [`join_tasks`](Self::join_tasks), without waiting: `Err(Timeout)` while a task
        /// is unfinished.
        pub fn try_join_tasks(&self) -> Result<(), crate::JoinTasksTimeoutError> {
            self.join_tasks_deadline(std::time::Instant::now())
        }

        /// Like [`join_tasks`](Self::join_tasks), waiting at most `timeout`.
        pub fn join_tasks_timeout(
            &self,
            timeout: std::time::Duration,
        ) -> Result<(), crate::JoinTasksTimeoutError> {
            match super::deadline_after(timeout) {
                Some(deadline) => self.join_tasks_deadline(deadline),
                None => self.join_tasks().map_err(Into::into),
            }
        }

        /// Like [`join_tasks`](Self::join_tasks), waiting until `deadline` at most.
        pub fn join_tasks_deadline(
            &self,
            deadline: std::time::Instant,
        ) -> Result<(), crate::JoinTasksTimeoutError> {
            match self.ep.join_tasks(Some(deadline)) {
                Ok(true) => Ok(()),
                Ok(false) => Err(crate::JoinTasksTimeoutError::Timeout),
                Err(e) => Err(e.into()),
            }
        }

        /// Tasks sent and not done yet, Python's `JoinableQueue` count of unfinished tasks (a
        /// snapshot, like any count other processes change).
        pub fn unfinished_tasks(&self) -> u64 {
            self.ep.chan.unfinished_tasks()
        }
    };
}
use task_methods;

mod alloc;
mod arena;
#[cfg(test)]
mod arena_model;
mod config;
mod endpoint;
mod errors;
#[cfg(feature = "async")]
mod future;
mod journal;
mod layout;
mod lock;
mod message;
mod overflow;
#[cfg(feature = "async")]
mod reactor;
mod receiver;
mod reclaim;
mod ring;
#[cfg(test)]
mod ring_model;
mod select;
mod select_macro;
mod sender;
mod spin;
mod stats;
mod tasks;
#[cfg(feature = "serde")]
mod typed;
mod view;
mod wait;

pub use config::ChannelConfig;
pub use errors::{
    Exhausted, JoinTasksTimeoutError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TaskDoneError, TryRecvError, TrySendError,
};
#[cfg(feature = "async")]
pub use future::pending_async_waits;
pub use message::{Loan, Message, SliceLoan};
pub use receiver::{IntoIter, Iter, Receiver, TryIter};
pub use select::{
    ReadyTimeoutError, Select, SelectTimeoutError, SelectedOperation, TryReadyError, TrySelectError,
};
pub use sender::Sender;
pub use stats::ChannelStats;

pub(crate) use overflow::{ObjectName, OverflowName};
pub(crate) use view::Chan;

use endpoint::{Endpoint, Stopped};
use layout::{Geometry, MAX_ARENA_BYTES, MAX_CAPACITY};

use crate::error::{Error, Result};
use crate::segment::{
    validate_name, CreateSpec, Kind, KindHooks, Region, Role, FLAG_AUTO_UNLINK, MAX_PARTICIPANTS,
};

/// How long a blocked call spins before it sleeps, unless changed with `set_spin`.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

fn reclaim_hook(region: &Arc<Region>, slot: u32) -> bool {
    let Ok(chan) = Chan::attach(Arc::clone(region)) else {
        return true; // not a channel any more: nothing to free
    };
    // Bounded: a lock held by a stopped process leaves the slot for a later reclaim, rather
    // than freezing the attach or detach that runs this.
    match chan.reclaim(slot, true, Some(Instant::now())) {
        Err(Error::LockTimeout { .. }) => false,
        _ => {
            chan.bump_membership();
            true
        }
    }
}

fn teardown_hook(region: &Arc<Region>) {
    if let Ok(chan) = Chan::attach(Arc::clone(region)) {
        chan.teardown();
    }
}

/// What the segment layer runs for a channel when a participant dies or the channel goes.
pub(crate) static HOOKS: KindHooks = KindHooks {
    reclaim: reclaim_hook,
    teardown: teardown_hook,
};

/// Creates channel `name` and returns its first sender and receiver.
///
/// Other processes attach with [`Sender::open`] and [`Receiver::open`]. The channel's segment is
/// unlinked when its last handle anywhere is dropped.
///
/// A channel counts as disconnected while it has no receiver (or no sender): keep the returned
/// `Receiver` until the processes that will receive have opened theirs, or make the channel
/// persistent with [`ChannelConfig::with_disconnect`]`(false)`, which never disconnects.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-channel-{}", std::process::id());
/// let config = shmq::ChannelConfig::default().with_arena_bytes(1 << 20);
/// let (tx, rx) = shmq::channel(&name, config)?;
/// tx.send(b"hello")?;
/// let msg = rx.recv()?;
/// assert_eq!(&msg[..], b"hello");
/// # Ok(()) }
/// ```
pub fn channel(name: &str, config: ChannelConfig) -> Result<(Sender, Receiver)> {
    validate_name(name)?;
    let invalid = |what: String| Error::InvalidArgument {
        name: name.to_owned(),
        what,
    };
    let participants = config.max_participants();
    if !(2..=MAX_PARTICIPANTS).contains(&participants) {
        return Err(invalid(format!(
            "max_participants {participants} (2 to {MAX_PARTICIPANTS}: the first sender and receiver take two)"
        )));
    }
    let capacity = u64::try_from(config.capacity())
        .ok()
        .filter(|c| (1..=MAX_CAPACITY).contains(c))
        .ok_or_else(|| {
            invalid(format!(
                "capacity {} (1 to {MAX_CAPACITY} messages)",
                config.capacity()
            ))
        })?;
    // Rounded up to pages with checked arithmetic: near usize::MAX the rounding overflows.
    let arena = u64::try_from(config.arena_bytes())
        .ok()
        .and_then(|bytes| bytes.checked_next_multiple_of(layout::ARENA_PAGE))
        .filter(|&bytes| bytes <= MAX_ARENA_BYTES)
        .ok_or_else(|| {
            invalid(format!(
                "arena_bytes {} (at most {MAX_ARENA_BYTES}: {} pages of {} bytes)",
                config.arena_bytes(),
                MAX_ARENA_BYTES / layout::ARENA_PAGE,
                layout::ARENA_PAGE
            ))
        })?;
    let geo = Geometry::new(capacity, arena, u64::from(participants)).ok_or_else(|| {
        invalid(format!(
            "capacity {capacity} with an arena of {arena} bytes and {participants} participants"
        ))
    })?;
    let spec = CreateSpec {
        name,
        kind: Kind::Channel,
        data_len: geo.data_len,
        capacity: participants,
        flags: FLAG_AUTO_UNLINK,
        populate: true,
        hooks: Some(&HOOKS),
    };
    let (region, participants) = Region::create(spec, &[Role::Sender, Role::Receiver], |r| {
        Chan::init(r, &geo, !config.disconnect())
    })?;
    let mut participants = participants.into_iter();
    let (Some(tx), Some(rx)) = (participants.next(), participants.next()) else {
        return Err(Error::corrupted(name, "participants missing after create"));
    };
    let sender = Sender {
        ep: Endpoint::new(Arc::clone(&region), tx)?,
    };
    let receiver = Receiver {
        ep: Endpoint::new(region, rx)?,
    };
    Ok((sender, receiver))
}

/// The deadline `timeout` from now; `None` if it is too far to represent (no deadline).
fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

// How an internal stop becomes each public error, carrying back `value`.

fn to_send<T>(stop: Stopped, value: T) -> SendError<T> {
    match stop {
        // A blocking call retries deadlines (see endpoint::blocking); never reported as such.
        Stopped::Deadline(_) | Stopped::Disconnected => SendError::Disconnected(value),
        Stopped::Failed(e) => SendError::Failed(e, value),
    }
}

fn to_try_send<T>(stop: Stopped, value: T) -> TrySendError<T> {
    match stop {
        Stopped::Deadline(what) => TrySendError::Full(value, what.unwrap_or(Exhausted::Ring)),
        Stopped::Disconnected => TrySendError::Disconnected(value),
        Stopped::Failed(e) => TrySendError::Failed(e, value),
    }
}

fn to_send_timeout<T>(stop: Stopped, value: T) -> SendTimeoutError<T> {
    match stop {
        Stopped::Deadline(_) => SendTimeoutError::Timeout(value),
        Stopped::Disconnected => SendTimeoutError::Disconnected(value),
        Stopped::Failed(e) => SendTimeoutError::Failed(e, value),
    }
}

fn to_recv(stop: Stopped) -> RecvError {
    match stop {
        Stopped::Deadline(_) | Stopped::Disconnected => RecvError::Disconnected,
        Stopped::Failed(e) => RecvError::Failed(e),
    }
}

fn to_try_recv(stop: Stopped) -> TryRecvError {
    match stop {
        Stopped::Deadline(_) => TryRecvError::Empty,
        Stopped::Disconnected => TryRecvError::Disconnected,
        Stopped::Failed(e) => TryRecvError::Failed(e),
    }
}

fn to_recv_timeout(stop: Stopped) -> RecvTimeoutError {
    match stop {
        Stopped::Deadline(_) => RecvTimeoutError::Timeout,
        Stopped::Disconnected => RecvTimeoutError::Disconnected,
        Stopped::Failed(e) => RecvTimeoutError::Failed(e),
    }
}
