//! [`Endpoint`]: one family of handles (a `Sender` or a `Receiver` and its clones) in this
//! process, and the operations the public handles are made of: reserving room, publishing,
//! receiving, and noticing that the other side is gone.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::errors::{Exhausted, TaskDoneError};
use super::layout::{InlineBuf, Place, INLINE_MAX, WAIT_KINDS};
use super::lock::lock_deadline;
use super::message::{Body, Message};
use super::ring::Taken;
use super::spin::SpinBudget;
use super::view::Chan;
use super::wait::{Step, WaitError, WaitOn};
use super::{DEFAULT_SPIN, HOOKS};
use crate::error::{Error, Result};
use crate::segment::{
    lock_until, validate_name, CreateSpec, Kind, Participant, Region, Role, MEMBERSHIP_TIMEOUT,
};
use crate::sys;

/// How often a blocked call looks for dead peers.
pub(super) const PEER_RECHECK: Duration = Duration::from_millis(25);

/// Why an operation stopped short, before its caller gives it its public error type.
#[derive(Debug)]
pub(super) enum Stopped {
    /// The deadline passed while waiting for room (`Some`: which limit) or for a message or
    /// for `join` (`None`).
    Deadline(Option<Exhausted>),
    /// No peer is left: every receiver (for senders) or every sender (for receivers) is gone
    /// (never on a persistent channel).
    Disconnected,
    /// The operation failed.
    Failed(Error),
}

impl Stopped {
    /// The stop of a wait for `waiting_for`.
    fn from_wait(e: WaitError, waiting_for: Option<Exhausted>) -> Stopped {
        match e {
            WaitError::Timeout => Stopped::Deadline(waiting_for),
            WaitError::Disconnected => Stopped::Disconnected,
            WaitError::Failed(e) => Stopped::Failed(e),
        }
    }
}

impl From<Error> for Stopped {
    fn from(e: Error) -> Self {
        Stopped::Failed(e)
    }
}

/// Runs a blocking operation (`deadline` of `None`): a wait without a deadline cannot time out,
/// but if an internal step ever did, the operation is retried rather than reported as something
/// it is not.
pub(super) fn blocking<T>(mut op: impl FnMut() -> Result<T, Stopped>) -> Result<T, Stopped> {
    loop {
        match op() {
            Err(Stopped::Deadline(_)) => continue,
            other => return other,
        }
    }
}

/// Which participant owns something, and in which process: after a `fork`, what the parent
/// owned is still the parent's, and the child must neither free it nor count it done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) slot: u32,
    fork_generation: u64,
}

impl Owner {
    /// Whether it belongs to this process (not to a parent it was inherited from).
    pub(super) fn is_ours(&self) -> bool {
        self.fork_generation == sys::fork_generation()
    }
}

/// Room for one payload owned by one participant: a sender's before it is published, a
/// receiver's once it has taken the message.
#[derive(Clone)]
pub(super) struct Reserved {
    pub(super) room: Room,
    pub(super) owner: Owner,
}

/// Where reserved room lies.
#[derive(Clone)]
pub(super) enum Room {
    Arena {
        chunk: u64,
        ptr: *mut u8,
    },
    Overflow {
        entry: u64,
        id: u64,
        region: Arc<Region>,
    },
}

// SAFETY: a Reserved is a description of room (an offset-derived address into the channel's
// mapping, or the Arc of an overflow mapping); the bytes are reached only by the one Loan or
// Message that owns it, whose own Send/Sync rules govern that. Moving the description between
// threads (a deferred release) touches no byte.
unsafe impl Send for Reserved {}
// SAFETY: as above; &Reserved only reads the description.
unsafe impl Sync for Reserved {}

impl Reserved {
    /// Start of the reserved bytes (4096-byte aligned).
    pub(super) fn ptr(&self) -> *mut u8 {
        match &self.room {
            Room::Arena { ptr, .. } => *ptr,
            Room::Overflow { region, .. } => region.data_ptr(),
        }
    }
}

/// One family of handles (a `Sender` or `Receiver` and its clones) in this process.
pub(super) struct Endpoint {
    pub(super) chan: Chan,
    role: Role,
    peer_role: Role,
    /// This process's participant. A family inherited through `fork` registers a participant
    /// of the child's own on first use (see [`Endpoint::owner`]).
    participant: Mutex<Option<Participant>>,
    /// `participant`'s slot and the fork generation it was attached in, for the hot path to
    /// read without the mutex (the generation is written last).
    slot: AtomicU32,
    fork_generation: AtomicU64,
    pub(super) spin_ns: AtomicU64,
    /// Whether blocking calls adapt their spin to how their recent waits ended (see spin.rs;
    /// on by default).
    pub(super) adaptive_spin: AtomicBool,
    /// Per condition waited for ([`WaitOn`]), how this family's recent waits on it ended.
    spin_history: [SpinBudget; WAIT_KINDS as usize],
    /// The cached answer of `peers_alive`: `epoch << 1 | alive`, in one word so that threads
    /// sharing the endpoint never combine one scan's answer with another's epoch.
    peer_cache: AtomicU64,
    peer_checked_ns: AtomicU64,
    /// Room whose release found the allocator lock held (by a stopped process): given back by
    /// the next release that gets the lock, or with the slot when the family goes.
    deferred: Mutex<Vec<Reserved>>,
    /// Whether `deferred` may hold something: what every wait loop checks, with one load.
    has_deferred: AtomicBool,
}

/// How long a handle inherited through `fork` waits for its family's registration mutex, which
/// a thread of the parent may have held at the fork (it would then never be released here).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);

impl Endpoint {
    pub(super) fn new(region: Arc<Region>, participant: Participant) -> Result<Arc<Endpoint>> {
        let chan = Chan::attach(region)?;
        let role = participant.role();
        let peer_role = match role {
            Role::Sender => Role::Receiver,
            _ => Role::Sender,
        };
        chan.set_leaving(participant.slot(), false);
        let ep = Endpoint {
            slot: AtomicU32::new(participant.slot()),
            fork_generation: AtomicU64::new(sys::fork_generation()),
            chan,
            role,
            participant: Mutex::new(Some(participant)),
            peer_role,
            spin_ns: AtomicU64::new(DEFAULT_SPIN.as_nanos() as u64),
            adaptive_spin: AtomicBool::new(true),
            spin_history: Default::default(),
            peer_cache: AtomicU64::new(u64::MAX),
            peer_checked_ns: AtomicU64::new(0),
            deferred: Mutex::new(Vec::new()),
            has_deferred: AtomicBool::new(false),
        };
        ep.chan.bump_membership();
        Ok(Arc::new(ep))
    }

    pub(super) fn open(name: &str, role: Role) -> Result<Arc<Endpoint>> {
        validate_name(name)?;
        let (region, mut participants) =
            Region::open(name, Kind::Channel, &[role], true, Some(&HOOKS))?;
        let participant = participants
            .pop()
            .ok_or_else(|| Error::corrupted(name, "participant missing after open"))?;
        Endpoint::new(region, participant)
    }

    /// A new family of `role` on this family's mapping: one more participant of the same
    /// region, so that a process that both sends and receives maps (and prefaults) the channel
    /// once. Waits for the membership lock as `open` does.
    pub(super) fn attach_role(&self, role: Role) -> Result<Arc<Endpoint>> {
        let region = Arc::clone(self.chan.region());
        let participant = region.attach(role, Instant::now() + MEMBERSHIP_TIMEOUT)?;
        Endpoint::new(region, participant)
    }

    /// The participant this process acts as. In a child forked without exec, the first call
    /// attaches a participant of the child's own (the inherited one stays the parent's, which
    /// the parent keeps using): the child then counts as a sender or receiver in its own
    /// right, and its death is seen apart from the parent's.
    #[inline]
    pub(super) fn owner(&self, deadline: Option<Instant>) -> Result<Owner> {
        self.owner_by(|| deadline)
    }

    /// [`Endpoint::owner`] with the deadline computed only if a forked child must register
    /// (a call that does not wait reads the clock only then).
    #[inline]
    fn owner_by(&self, deadline: impl FnOnce() -> Option<Instant>) -> Result<Owner> {
        let generation = sys::fork_generation();
        if self.fork_generation.load(Ordering::Acquire) == generation {
            return Ok(Owner {
                slot: self.slot.load(Ordering::Relaxed),
                fork_generation: generation,
            });
        }
        self.register_in_child(generation, deadline())
    }

    #[cold]
    fn register_in_child(&self, generation: u64, deadline: Option<Instant>) -> Result<Owner> {
        // A call with a deadline keeps it (plus the lock grace); a blocking one waits up to
        // REGISTER_TIMEOUT for what a fork may have left locked for ever.
        let until = lock_deadline(deadline).unwrap_or_else(|| Instant::now() + REGISTER_TIMEOUT);
        let started = Instant::now();
        let Some(mut participant) = lock_until(&self.participant, until) else {
            return Err(Error::LockTimeout {
                name: self.chan.name().to_owned(),
                lock: "registration",
                holder_pid: None,
                waited: started.elapsed(),
            });
        };
        if self.fork_generation.load(Ordering::Acquire) != generation {
            // The inherited participant is the parent's: dropping it here leaves its slot alone.
            drop(participant.take());
            let fresh = self.chan.region().attach(self.role, until)?;
            self.chan.set_leaving(fresh.slot(), false);
            self.slot.store(fresh.slot(), Ordering::Relaxed);
            self.fork_generation.store(generation, Ordering::Release);
            *participant = Some(fresh);
            self.peer_cache.store(u64::MAX, Ordering::Release);
            self.chan.bump_membership();
        }
        Ok(Owner {
            slot: self.slot.load(Ordering::Relaxed),
            fork_generation: generation,
        })
    }

    pub(super) fn spin(&self) -> Duration {
        Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed))
    }

    /// The history a wait on `on` consults and records in, unless adaptation is off.
    fn spin_history(&self, on: WaitOn) -> Option<&SpinBudget> {
        self.adaptive_spin
            .load(Ordering::Relaxed)
            .then(|| &self.spin_history[on as usize])
    }

    /// Whether a peer (a receiver for senders, a sender for receivers) is alive. Cheap while the
    /// membership epoch is unchanged and the cached answer younger than `max_age`; otherwise
    /// rescans the table, which is how deaths that nobody has reclaimed yet are noticed.
    pub(super) fn peers_alive(&self, max_age: Duration) -> bool {
        let epoch = self.chan.membership_epoch();
        // The coarse clock (a few ms of resolution, no more than a memory read) is precise
        // enough for a 25 ms age, and every send asks.
        let fresh_enough = sys::coarse_clock_ns()
            .saturating_sub(self.peer_checked_ns.load(Ordering::Relaxed))
            < max_age.as_nanos() as u64;
        let cached = self.peer_cache.load(Ordering::Acquire);
        if cached != u64::MAX && cached >> 1 == epoch & (u64::MAX >> 1) && fresh_enough {
            return cached & 1 == 1;
        }
        // Whoever finds the cache stale frees what dead peers held, rather than leaving it to a
        // call that happens to sleep (rate-limited by max_age; no channel lock is held here).
        // Only if the membership lock is free now: its holder may be stopped, and this call
        // has a deadline to keep. The reclaim hook bumps the membership epoch itself.
        let _ = self.chan.region().try_reclaim_dead();
        let epoch = self.chan.membership_epoch() & (u64::MAX >> 1);
        let alive = self.chan.any_alive(self.peer_role);
        self.peer_checked_ns
            .store(sys::coarse_clock_ns(), Ordering::Relaxed);
        // Never replace an answer for a newer epoch with one for an older epoch.
        let fresh = epoch << 1 | u64::from(alive);
        let _ = self
            .peer_cache
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current == u64::MAX || current >> 1 <= epoch).then_some(fresh)
            });
        alive
    }

    /// Whether the other side counts as gone, which is what makes a call stop with
    /// `Disconnected`: no live peer (see [`Endpoint::peers_alive`]), on a channel that
    /// disconnects. A persistent channel (`with_disconnect(false)`) never does, but its peers
    /// are scanned all the same, since the scan is also what reclaims the dead.
    pub(super) fn peer_gone(&self) -> bool {
        let alive = self.peers_alive(PEER_RECHECK);
        !alive && self.chan.disconnects()
    }

    /// Waits for `on` with `attempt`; a deadline that passes is a stop for `waiting_for`.
    fn wait_for<T>(
        &self,
        on: WaitOn,
        deadline: Option<Instant>,
        waiting_for: Option<Exhausted>,
        attempt: impl FnMut() -> Result<Step<T>>,
    ) -> Result<T, Stopped> {
        self.chan
            .wait_for(on, deadline, self.spin(), self.spin_history(on), attempt)
            .map_err(|e| Stopped::from_wait(e, waiting_for))
    }

    // ----- sending ---------------------------------------------------------------------------

    fn publish(
        &self,
        place: Place,
        len: u64,
        inline: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Stopped> {
        let owner = self.owner(deadline)?;
        self.wait_for(WaitOn::NotFull, deadline, Some(Exhausted::Ring), || {
            if self.chan.try_publish(owner.slot, place, len, inline)? {
                Ok(Step::Ready(()))
            } else if self.peer_gone() {
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }

    /// Reserves room for `len` payload bytes: an arena chunk, or an overflow segment for a
    /// payload larger than the arena.
    pub(super) fn reserve(&self, len: u64, deadline: Option<Instant>) -> Result<Reserved, Stopped> {
        let owner = self.owner(deadline)?;
        // Rechecked when older than PEER_RECHECK: a receiver killed a moment ago is noticed
        // even while the ring has room (nobody bumps the epoch for a death).
        if self.peer_gone() {
            return Err(Stopped::Disconnected);
        }
        let arena = self.chan.geometry().arena_bytes;
        if len <= arena && arena > 0 {
            let chunk = self.wait_for(WaitOn::Space, deadline, Some(Exhausted::Arena), || {
                self.release_deferred();
                match self.chan.try_alloc(len, owner.slot, deadline)? {
                    Some(chunk) => Ok(Step::Ready(chunk)),
                    None if self.peer_gone() => Ok(Step::Disconnected),
                    None => Ok(Step::Retry),
                }
            })?;
            let Some(ptr) = self.chan.chunk_ptr(chunk, len) else {
                let _ = self.chan.free_chunk(chunk, owner.slot, deadline);
                return Err(Error::corrupted(self.chan.name(), "chunk outside arena").into());
            };
            return Ok(Reserved {
                room: Room::Arena { chunk, ptr },
                owner,
            });
        }
        // A payload no segment can hold is refused now, not after waiting for an overflow slot.
        crate::segment::segment_len(self.chan.name(), 0, len)?;
        let waiting_for = Some(Exhausted::OverflowTable);
        let (entry, id) = self.wait_for(WaitOn::Space, deadline, waiting_for, || {
            self.release_deferred();
            match self.chan.try_reserve_overflow(len, owner.slot, deadline)? {
                Some(found) => Ok(Step::Ready(found)),
                None if self.peer_gone() => Ok(Step::Disconnected),
                None => Ok(Step::Retry),
            }
        })?;
        let spec = CreateSpec {
            name: &self.chan.overflow_name(id),
            kind: Kind::Overflow,
            data_len: len,
            capacity: 0,
            flags: 0,
            populate: true,
            hooks: None,
        };
        match Region::create(spec, &[], |_| Ok(())) {
            Ok((region, _)) => Ok(Reserved {
                room: Room::Overflow { entry, id, region },
                owner,
            }),
            Err(e) => {
                let _ = self
                    .chan
                    .release_overflow(entry, id, owner.slot, Some(Instant::now()));
                Err(Stopped::Failed(e))
            }
        }
    }

    /// Gives back room this participant owns (an unsent loan, or a received message). An
    /// arena chunk goes back without a lock (see arena.rs). An overflow payload's release is
    /// bounded in time: if the allocator lock is not free within the lock grace (a stopped
    /// holder), it is kept for a later release, or for the sweep of this slot when the family
    /// goes.
    /// Room inherited from a parent process is the parent's, and is left alone.
    pub(super) fn release(&self, reserved: &Reserved) {
        if !reserved.owner.is_ours() {
            return;
        }
        match self.free(reserved) {
            Err(Error::LockTimeout { .. }) => {
                // try_lock: held only for a push or a take, but a fork can leave it locked for
                // ever in the child. Not deferred here, the room stays owned by this slot, and
                // the sweep when the family goes frees it.
                if let Ok(mut deferred) = self.deferred.try_lock() {
                    deferred.push(reserved.clone());
                    self.has_deferred.store(true, Ordering::Release);
                }
            }
            // The lock was free: give back what earlier releases could not.
            _ => self.release_deferred(),
        }
    }

    fn free(&self, reserved: &Reserved) -> Result<()> {
        let slot = reserved.owner.slot;
        match &reserved.room {
            // No lock: the next allocation frees it (see arena.rs).
            Room::Arena { chunk, .. } => self.chan.return_chunk(*chunk, slot),
            Room::Overflow { entry, id, .. } => {
                self.chan
                    .release_overflow(*entry, *id, slot, Some(Instant::now()))
            }
        }
    }

    /// Gives back what earlier releases deferred, until the allocator lock is found held
    /// again. Called after every release that got the lock, and by every wait loop of this
    /// family (a receiver waiting for messages may hold the very pages its senders wait for).
    fn release_deferred(&self) {
        if !self.has_deferred.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut deferred) = self.deferred.try_lock() else {
            return;
        };
        while let Some(reserved) = deferred.last() {
            if reserved.owner.is_ours() {
                if let Err(Error::LockTimeout { .. }) = self.free(reserved) {
                    break; // still held: the next call tries again
                }
            }
            // Freed, or not ours to free (inherited through fork), or gone for good.
            deferred.pop();
        }
        self.has_deferred
            .store(!deferred.is_empty(), Ordering::Release);
    }

    /// Publishes `len` bytes of reserved room as a message. On failure the room stays reserved.
    pub(super) fn send_reserved(
        &self,
        reserved: &Reserved,
        len: u64,
        deadline: Option<Instant>,
    ) -> Result<(), Stopped> {
        if !reserved.owner.is_ours() {
            return Err(Stopped::Failed(Error::InvalidArgument {
                name: self.chan.name().to_owned(),
                what: "this loan was inherited through fork: its room belongs to the parent \
                       process, which alone may send or drop it"
                    .to_owned(),
            }));
        }
        let place = match &reserved.room {
            Room::Arena { chunk, .. } => Place::Arena(*chunk),
            Room::Overflow { entry, id, .. } => Place::Overflow {
                entry: *entry,
                id: *id,
            },
        };
        self.publish(place, len, &[], deadline)
    }

    /// Sends a copy of `bytes`.
    pub(super) fn send_bytes(
        &self,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Stopped> {
        if bytes.len() <= INLINE_MAX {
            self.owner(deadline)?;
            if self.peer_gone() {
                return Err(Stopped::Disconnected);
            }
            return self.publish(Place::Inline, bytes.len() as u64, bytes, deadline);
        }
        let len = bytes.len() as u64;
        let reserved = self.reserve(len, deadline)?;
        // SAFETY: the reservation is `len` writable bytes that only this sender can reach until
        // it is published; `bytes` is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), reserved.ptr(), bytes.len()) };
        let sent = self.send_reserved(&reserved, len, deadline);
        if sent.is_err() {
            self.release(&reserved);
        }
        sent
    }

    /// One attempt of [`Endpoint::send_bytes`], for the `try_` form: a message of at most
    /// [`INLINE_MAX`] bytes costs no clock read (a forked child's first call excepted, which
    /// registers with a deadline of now), as [`Endpoint::try_receive`].
    pub(super) fn try_send_bytes(&self, bytes: &[u8]) -> Result<(), Stopped> {
        if bytes.len() > INLINE_MAX {
            return self.send_bytes(bytes, Some(Instant::now()));
        }
        let owner = self.owner_by(|| Some(Instant::now()))?;
        if self.peer_gone() {
            return Err(Stopped::Disconnected);
        }
        if self
            .chan
            .try_publish(owner.slot, Place::Inline, bytes.len() as u64, bytes)?
        {
            Ok(())
        } else {
            Err(Stopped::Deadline(Some(Exhausted::Ring)))
        }
    }

    /// Sends a run of `messages` in order, waiting until `deadline` for room for the first:
    /// as many as fit then, and at least one. Small messages (at most [`INLINE_MAX`] bytes
    /// each) go in one run ([`Chan::publish_run`]); a larger first message goes alone, as by
    /// [`Endpoint::send_bytes`], and a larger one later ends the run before it.
    pub(super) fn send_many<B: AsRef<[u8]>>(
        &self,
        messages: &[B],
        deadline: Option<Instant>,
    ) -> Result<usize, Stopped> {
        let Some(first) = messages.first() else {
            return Ok(0);
        };
        let small = messages
            .iter()
            .take_while(|m| m.as_ref().len() <= INLINE_MAX)
            .count();
        if small == 0 {
            return self.send_bytes(first.as_ref(), deadline).map(|()| 1);
        }
        let owner = self.owner(deadline)?;
        if self.peer_gone() {
            return Err(Stopped::Disconnected);
        }
        let run = &messages[..small];
        self.wait_for(
            WaitOn::NotFull,
            deadline,
            Some(Exhausted::Ring),
            || match self.chan.publish_run(owner.slot, run)? {
                0 if self.peer_gone() => Ok(Step::Disconnected),
                0 => Ok(Step::Retry),
                sent => Ok(Step::Ready(sent)),
            },
        )
    }

    /// Waits until every message sent before the call has been received and dropped.
    pub(super) fn join(&self, deadline: Option<Instant>) -> Result<(), Stopped> {
        self.owner(deadline)?;
        self.join_until(self.chan.sent_total(), deadline)
    }

    /// Waits until `target` messages (the sent total when the join began) are done.
    pub(super) fn join_until(&self, target: u64, deadline: Option<Instant>) -> Result<(), Stopped> {
        let chan = &self.chan;
        self.wait_for(WaitOn::Done, deadline, None, || {
            // Only a consistent count may say done (a stopped retirer leaves none to be had).
            let done = || {
                chan.done_total_consistent()
                    .is_ok_and(|done| done >= target)
            };
            if done() {
                Ok(Step::Ready(()))
            } else if self.peer_gone() && !done() {
                // Re-read after the liveness scan: a receiver may have finished meanwhile.
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }

    // ----- tasks -----------------------------------------------------------------------------

    /// Counts one task done by this participant (see `tasks.rs`).
    pub(super) fn task_done(&self, deadline: Option<Instant>) -> Result<(), TaskDoneError> {
        let owner = self.owner(deadline)?;
        match self.chan.task_done(owner.slot, deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TaskDoneError::TooMany),
            Err(e) => Err(TaskDoneError::Failed(e)),
        }
    }

    /// Waits until every task sent is done, re-evaluating both counts on every attempt.
    /// `Ok(false)`: the deadline passed first.
    pub(super) fn join_tasks(&self, deadline: Option<Instant>) -> Result<bool> {
        self.owner(deadline)?;
        let chan = &self.chan;
        let on = WaitOn::Tasks;
        let waited = chan.wait_for(on, deadline, self.spin(), self.spin_history(on), || {
            self.release_deferred();
            if chan.tasks_all_done() {
                return Ok(Step::Ready(()));
            }
            // Reclaiming the dead is what counts their unfinished tasks done: rescan (and
            // reclaim) whenever the last scan is PEER_RECHECK old. The answer itself is not
            // wanted: no peer's absence means the count cannot move (any handle may finish a
            // task), and a reclaim wakes this wait.
            let _ = self.peers_alive(PEER_RECHECK);
            Ok(Step::Retry)
        });
        match waited {
            Ok(()) => Ok(true),
            // The attempt never reports Disconnected.
            Err(WaitError::Timeout | WaitError::Disconnected) => Ok(false),
            Err(WaitError::Failed(e)) => Err(e),
        }
    }

    // ----- receiving -------------------------------------------------------------------------

    /// Receives the oldest message.
    pub(super) fn receive(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Message, Stopped> {
        let owner = self.owner(deadline)?;
        let mut inline = InlineBuf([0; INLINE_MAX]);
        let taken = self.wait_for(WaitOn::NotEmpty, deadline, None, || {
            self.take_once(|| self.chan.try_take(owner.slot, &mut inline))
        })?;
        Ok(self.message(taken, inline, owner)?)
    }

    /// Receives the oldest message if one is ready, without waiting: one attempt, and no
    /// clock read unless a lock is found busy (`try_recv` in a polling loop is a hot path).
    pub(super) fn try_receive(self: &Arc<Self>) -> Result<Message, Stopped> {
        let owner = self.owner_by(|| Some(Instant::now()))?;
        let mut inline = InlineBuf([0; INLINE_MAX]);
        match self.take_once(|| self.chan.try_take(owner.slot, &mut inline))? {
            Step::Ready(taken) => Ok(self.message(taken, inline, owner)?),
            Step::Retry => Err(Stopped::Deadline(None)),
            Step::Disconnected => Err(Stopped::Disconnected),
        }
    }

    /// Receives the messages ready now, up to `max` and at least one (waiting for it until
    /// `deadline`), appending them to `buf` in order: one run of takes ([`Chan::take_run`]).
    /// `wait` false: one attempt, as [`Endpoint::try_receive`]. A payload lost for good is
    /// reported after the run, with every message taken in it appended to `buf`.
    pub(super) fn receive_many(
        self: &Arc<Self>,
        buf: &mut Vec<Message>,
        max: usize,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<usize, Stopped> {
        if max == 0 {
            return Ok(0);
        }
        let owner = if wait {
            self.owner(deadline)?
        } else {
            self.owner_by(|| Some(Instant::now()))?
        };
        let mut inline = InlineBuf([0; INLINE_MAX]);
        let mut lost = None;
        let mut attempt = || {
            self.take_once(|| {
                let n =
                    self.chan
                        .take_run(owner.slot, max, &mut inline, |taken, bytes| {
                            match self.message(taken, InlineBuf(bytes.0), owner) {
                                Ok(message) => buf.push(message),
                                Err(e) => {
                                    lost.get_or_insert(e);
                                }
                            }
                        })?;
                Ok((n > 0).then_some(n))
            })
        };
        let taken = if wait {
            self.wait_for(WaitOn::NotEmpty, deadline, None, attempt)?
        } else {
            match attempt()? {
                Step::Ready(n) => n,
                Step::Retry => return Err(Stopped::Deadline(None)),
                Step::Disconnected => return Err(Stopped::Disconnected),
            }
        };
        match lost {
            Some(e) => Err(e.into()),
            None => Ok(taken),
        }
    }

    /// One attempt of a receive with `take` (a take or a run of takes): what it took, or
    /// whether to wait. Inlined into every caller, as `message` is, to keep the receive path
    /// as it was with one caller.
    #[inline(always)]
    fn take_once<T>(&self, mut take: impl FnMut() -> Result<Option<T>>) -> Result<Step<T>> {
        self.release_deferred();
        if let Some(taken) = take()? {
            return Ok(Step::Ready(taken));
        }
        if !self.peer_gone() {
            return Ok(Step::Retry);
        }
        // Every sender is gone; anything they published before dying is still delivered.
        match take()? {
            Some(taken) => Ok(Step::Ready(taken)),
            None => Ok(Step::Disconnected),
        }
    }

    /// Turns a taken message into a [`Message`] that reads the payload in place.
    // Always inlined: out of line, its 96-byte inline buffer is copied once more per message.
    #[inline(always)]
    fn message(self: &Arc<Self>, taken: Taken, inline: InlineBuf, owner: Owner) -> Result<Message> {
        let Taken { desc, payload } = taken;
        let room = match desc.place {
            Place::Inline => {
                return Ok(Message::new(
                    Arc::clone(self),
                    Body::Inline(inline),
                    desc.len as usize,
                    owner,
                ))
            }
            Place::Arena(chunk) => {
                // read_desc checked that the chunk holds `len` bytes.
                let ptr = self
                    .chan
                    .chunk_ptr(chunk, desc.len)
                    .unwrap_or(std::ptr::null_mut());
                Room::Arena { chunk, ptr }
            }
            Place::Overflow { entry, id } => match payload {
                Some(Ok(region)) => {
                    // Mapped during the take without page tables; filled now.
                    region.prefault_data();
                    Room::Overflow { entry, id, region }
                }
                // The payload is gone for good (try_take leaves it queued otherwise): report
                // it, and count the message done, and its task, since no receiver can ever
                // have it. (A task count that cannot get the allocator lock within the lock
                // grace is lost: one task left unfinished, for the rare payload lost while a
                // stopped process holds that lock, as for a void slot in try_take.)
                lost => {
                    let _ = self
                        .chan
                        .release_overflow(entry, id, owner.slot, Some(Instant::now()));
                    self.chan.mark_done(owner.slot);
                    let _ = self.chan.task_done(owner.slot, Some(Instant::now()));
                    return Err(match lost {
                        Some(Err(e)) => e,
                        _ => Error::corrupted(self.chan.name(), "overflow payload not opened"),
                    });
                }
            },
        };
        let body = Body::Owned(Reserved { room, owner });
        Ok(Message::new(
            Arc::clone(self),
            body,
            desc.len as usize,
            owner,
        ))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Every Message and Loan holds an Arc of this endpoint, so none is outstanding.
        let participant = match self.participant.get_mut() {
            Ok(participant) => participant.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(participant) = participant else {
            return;
        };
        if participant.is_inherited() {
            // Inherited through fork and never used here: the parent's, left alone.
            return;
        }
        // Sweep as for a dead participant (what a failed or deferred release left owned by
        // this slot is freed now, not blamed on the slot's next occupant), move the counts to
        // the retired total, then detach. Bounded: if a lock is held by a stopped process, let
        // go without detaching, and the next attach or gc reclaims the slot as a dead one's.
        // Marked as leaving first, so that either way its unfinished tasks stay unfinished: a
        // process that lets go of a handle is alive, and may finish them through another.
        self.chan.set_leaving(participant.slot(), true);
        self.deferred
            .get_mut()
            .map(|d| d.clear())
            .unwrap_or_else(|p| p.into_inner().clear());
        match self
            .chan
            .reclaim(participant.slot(), false, Some(Instant::now()))
        {
            Err(Error::LockTimeout { .. }) => participant.abandon(),
            _ => drop(participant),
        }
        self.chan.bump_membership();
    }
}
