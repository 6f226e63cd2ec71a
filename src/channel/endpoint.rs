//! [`Endpoint`]: one family of handles (a `Sender` or a `Receiver` and its clones) in this
//! process, and the operations the public handles are made of: reserving room, publishing,
//! receiving, and noticing that the other side is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::errors::Exhausted;
use super::layout::{Desc, InlineBuf, Place, INLINE_MAX};
use super::message::{Body, Message};
use super::view::Chan;
use super::wait::{Step, WaitError, WaitOn};
use super::{DEFAULT_SPIN, HOOKS};
use crate::error::{Error, Result};
use crate::segment::{validate_name, CreateSpec, Kind, Participant, Region, Role};

/// How often a blocked call looks for dead peers.
pub(super) const PEER_RECHECK: Duration = Duration::from_millis(25);

/// Why an operation stopped short, before its caller gives it its public error type.
#[derive(Debug)]
pub(super) enum Stopped {
    /// The deadline passed while waiting for room (`Some`: which limit) or for a message or
    /// for `join` (`None`).
    Deadline(Option<Exhausted>),
    /// No peer is left: every receiver (for senders) or every sender (for receivers) is gone.
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

/// Room for one payload owned by one participant: a sender's before it is published, a
/// receiver's once it has taken the message.
pub(super) enum Reserved {
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

impl Reserved {
    /// Start of the reserved bytes (4096-byte aligned).
    pub(super) fn ptr(&self) -> *mut u8 {
        match self {
            Reserved::Arena { ptr, .. } => *ptr,
            Reserved::Overflow { region, .. } => region.data_ptr(),
        }
    }
}

/// One family of handles (a `Sender` or `Receiver` and its clones) in this process.
pub(super) struct Endpoint {
    pub(super) chan: Chan,
    participant: Option<Participant>,
    pub(super) slot: u32,
    peer_role: Role,
    pub(super) spin_ns: AtomicU64,
    /// The cached answer of `peers_alive`: `epoch << 1 | alive`, in one word so that threads
    /// sharing the endpoint never combine one scan's answer with another's epoch.
    peer_cache: AtomicU64,
    peer_checked_ns: AtomicU64,
}

fn clock_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Endpoint {
    pub(super) fn new(region: Arc<Region>, participant: Participant) -> Result<Arc<Endpoint>> {
        let chan = Chan::attach(region)?;
        let peer_role = match participant.role() {
            Role::Sender => Role::Receiver,
            _ => Role::Sender,
        };
        let ep = Endpoint {
            slot: participant.slot(),
            chan,
            participant: Some(participant),
            peer_role,
            spin_ns: AtomicU64::new(DEFAULT_SPIN.as_nanos() as u64),
            peer_cache: AtomicU64::new(u64::MAX),
            peer_checked_ns: AtomicU64::new(0),
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

    fn spin(&self) -> Duration {
        Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed))
    }

    /// Whether a peer (a receiver for senders, a sender for receivers) is alive. Cheap while the
    /// membership epoch is unchanged; with `max_age`, rescans the table if the cached answer is
    /// older, which is how deaths that nobody has reclaimed yet are noticed.
    pub(super) fn peers_alive(&self, max_age: Option<Duration>) -> bool {
        let epoch = self.chan.membership_epoch();
        let fresh_enough = match max_age {
            None => true,
            Some(age) => {
                clock_ns().saturating_sub(self.peer_checked_ns.load(Ordering::Relaxed))
                    < age.as_nanos() as u64
            }
        };
        let cached = self.peer_cache.load(Ordering::Acquire);
        if cached != u64::MAX && cached >> 1 == epoch & (u64::MAX >> 1) && fresh_enough {
            return cached & 1 == 1;
        }
        if max_age.is_some() {
            // Whoever finds the cache stale frees what dead peers held, rather than leaving it
            // to a call that happens to sleep (rate-limited by max_age; no lock is held here).
            // The reclaim hook bumps the membership epoch itself.
            let _ = self.chan.region().reclaim_dead();
        }
        let epoch = self.chan.membership_epoch() & (u64::MAX >> 1);
        let alive = self.chan.any_alive(self.peer_role);
        self.peer_checked_ns.store(clock_ns(), Ordering::Relaxed);
        // Never replace an answer for a newer epoch with one for an older epoch.
        let fresh = epoch << 1 | u64::from(alive);
        let _ = self
            .peer_cache
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current == u64::MAX || current >> 1 <= epoch).then_some(fresh)
            });
        alive
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
            .wait_for(on, deadline, self.spin(), attempt)
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
        self.wait_for(WaitOn::NotFull, deadline, Some(Exhausted::Ring), || {
            if self.chan.try_publish(place, len, inline)? {
                Ok(Step::Ready(()))
            } else if !self.peers_alive(Some(PEER_RECHECK)) {
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }

    /// Reserves room for `len` payload bytes: an arena chunk, or an overflow segment for a
    /// payload larger than the arena.
    pub(super) fn reserve(&self, len: u64, deadline: Option<Instant>) -> Result<Reserved, Stopped> {
        if !self.peers_alive(None) {
            return Err(Stopped::Disconnected);
        }
        let arena = self.chan.geometry().arena_bytes;
        if len <= arena && arena > 0 {
            let chunk =
                self.wait_for(
                    WaitOn::Space,
                    deadline,
                    Some(Exhausted::Arena),
                    || match self.chan.try_alloc(len, self.slot)? {
                        Some(chunk) => Ok(Step::Ready(chunk)),
                        None if !self.peers_alive(Some(PEER_RECHECK)) => Ok(Step::Disconnected),
                        None => Ok(Step::Retry),
                    },
                )?;
            let Some(ptr) = self.chan.chunk_ptr(chunk, len) else {
                let _ = self.chan.free_chunk(chunk, self.slot);
                return Err(Error::corrupted(self.chan.name(), "chunk outside arena").into());
            };
            return Ok(Reserved::Arena { chunk, ptr });
        }
        // A payload no segment can hold is refused now, not after waiting for an overflow slot.
        crate::segment::segment_len(self.chan.name(), 0, len)?;
        let waiting_for = Some(Exhausted::OverflowTable);
        let (entry, id) = self.wait_for(WaitOn::Space, deadline, waiting_for, || {
            match self.chan.try_reserve_overflow(len, self.slot)? {
                Some(found) => Ok(Step::Ready(found)),
                None if !self.peers_alive(Some(PEER_RECHECK)) => Ok(Step::Disconnected),
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
            Ok((region, _)) => Ok(Reserved::Overflow { entry, id, region }),
            Err(e) => {
                let _ = self.chan.release_overflow(entry, id, self.slot);
                Err(Stopped::Failed(e))
            }
        }
    }

    /// Gives back room this participant owns (an unsent loan, or a received message).
    pub(super) fn release(&self, reserved: &Reserved) {
        let _ = match reserved {
            Reserved::Arena { chunk, .. } => self.chan.free_chunk(*chunk, self.slot),
            Reserved::Overflow { entry, id, .. } => {
                self.chan.release_overflow(*entry, *id, self.slot)
            }
        };
    }

    /// Publishes `len` bytes of reserved room as a message. On failure the room stays reserved.
    pub(super) fn send_reserved(
        &self,
        reserved: &Reserved,
        len: u64,
        deadline: Option<Instant>,
    ) -> Result<(), Stopped> {
        let place = match reserved {
            Reserved::Arena { chunk, .. } => Place::Arena(*chunk),
            Reserved::Overflow { entry, id, .. } => Place::Overflow {
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
            if !self.peers_alive(None) {
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

    /// Waits until every message sent before the call has been received and dropped.
    pub(super) fn join(&self, deadline: Option<Instant>) -> Result<(), Stopped> {
        let chan = &self.chan;
        let target = chan.sent_total();
        self.wait_for(WaitOn::Done, deadline, None, || {
            if chan.done_total() >= target {
                Ok(Step::Ready(()))
            } else if !self.peers_alive(Some(PEER_RECHECK)) && chan.done_total() < target {
                // Re-read after the liveness scan: a receiver may have finished meanwhile.
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }

    // ----- receiving -------------------------------------------------------------------------

    /// Receives the oldest message.
    pub(super) fn receive(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Message, Stopped> {
        let mut inline = InlineBuf([0; INLINE_MAX]);
        let desc = self.wait_for(WaitOn::NotEmpty, deadline, None, || {
            if let Some(desc) = self.chan.try_take(self.slot, &mut inline)? {
                return Ok(Step::Ready(desc));
            }
            if self.peers_alive(Some(PEER_RECHECK)) {
                return Ok(Step::Retry);
            }
            // Every sender is gone; anything they published before dying is still delivered.
            match self.chan.try_take(self.slot, &mut inline)? {
                Some(desc) => Ok(Step::Ready(desc)),
                None => Ok(Step::Disconnected),
            }
        })?;
        Ok(self.message(desc, inline)?)
    }

    /// Turns a taken descriptor into a [`Message`] that reads the payload in place.
    fn message(self: &Arc<Self>, desc: Desc, inline: InlineBuf) -> Result<Message> {
        let body = match desc.place {
            Place::Inline => Body::Inline(inline),
            Place::Arena(chunk) => {
                // read_desc checked that the chunk holds `len` bytes.
                let ptr = self
                    .chan
                    .chunk_ptr(chunk, desc.len)
                    .unwrap_or(std::ptr::null_mut());
                Body::Owned(Reserved::Arena { chunk, ptr })
            }
            Place::Overflow { entry, id } => {
                let name = self.chan.overflow_name(id);
                let opened =
                    Region::open(&name, Kind::Overflow, &[], true, None).and_then(|(region, _)| {
                        if (region.data_len() as u64) < desc.len {
                            Err(Error::corrupted(
                                &name,
                                "overflow payload shorter than its descriptor",
                            ))
                        } else {
                            Ok(region)
                        }
                    });
                match opened {
                    Ok(region) => Body::Owned(Reserved::Overflow { entry, id, region }),
                    Err(e) => {
                        let _ = self.chan.release_overflow(entry, id, self.slot);
                        self.chan.mark_done(self.slot);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Message::new(Arc::clone(self), body, desc.len as usize))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Every Message and Loan holds an Arc of this endpoint, so none is outstanding. Sweep
        // as for a dead participant (anything a failed free left owned by this slot is freed
        // now, not blamed on the slot's next occupant), move the counts to the retired total,
        // then detach.
        let _ = self.chan.reclaim(self.slot);
        drop(self.participant.take());
        self.chan.bump_membership();
    }
}
