//! Multi-producer, multi-consumer channels whose payloads stay in shared memory.
//!
//! A channel is one segment holding a ring of small descriptors and an arena of payload pages.
//! Sending copies the payload once into the arena (or, with [`Sender::loan`], lets the caller
//! build it there), and the ring carries only its place and length; the receiver reads the
//! payload in place through a [`Message`], whose drop frees the pages. Payloads of up to 96 bytes
//! travel inside the ring slot; payloads larger than the whole arena travel in an overflow segment
//! of their own, so there is no size ceiling.

mod alloc;
mod core;
mod errors;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytemuck::Pod;

pub(crate) use self::core::Chan;
use self::core::{Desc, Geometry, InlineBuf, Place, Step, WaitOn, INLINE_MAX};
use self::errors::WaitError;
pub use self::errors::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::error::{Error, Result};
use crate::segment::{
    validate_name, CreateSpec, Kind, KindHooks, Participant, Region, Role, DEFAULT_PARTICIPANTS,
    FLAG_AUTO_UNLINK, MAX_PARTICIPANTS,
};

fn reclaim_hook(region: &Region, slot: u32) {
    let _ = Chan::with_view(region, |chan| {
        let _ = chan.reclaim(slot);
        chan.bump_membership();
    });
}

fn teardown_hook(region: &Region) {
    let _ = Chan::with_view(region, |chan| chan.teardown());
}

pub(crate) static HOOKS: KindHooks = KindHooks {
    reclaim: reclaim_hook,
    teardown: teardown_hook,
};

/// How long a blocked call spins before it sleeps, unless changed with `set_spin`.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// How often a blocked call looks for dead peers.
const PEER_RECHECK: Duration = Duration::from_millis(25);

/// Size and limits of a new channel. Build it with the methods, starting from `default()`.
///
/// ```
/// let config = shmq::ChannelConfig::default().capacity(64).arena_bytes(256 << 20);
/// assert_eq!(config.get_capacity(), 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    capacity: usize,
    arena_bytes: usize,
    max_participants: u32,
}

impl Default for ChannelConfig {
    /// 64 messages, a 64 MiB arena, 64 participants.
    fn default() -> Self {
        ChannelConfig {
            capacity: 64,
            arena_bytes: 64 << 20,
            max_participants: DEFAULT_PARTICIPANTS,
        }
    }
}

impl ChannelConfig {
    /// Messages the ring holds before `send` blocks (1 to 2^24).
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// Bytes of payload the arena holds (rounded up to 4 KiB pages). Payloads larger than the
    /// arena travel in overflow segments of their own; `send` blocks while the arena has no room.
    ///
    /// The arena is reserved and faulted in when the channel is created, and mapped in full
    /// (prefaulted) by every `open`: this costs up to about a second per GiB, once. Create
    /// channels once and reuse them.
    pub fn arena_bytes(mut self, bytes: usize) -> Self {
        self.arena_bytes = bytes;
        self
    }

    /// Participant slots: open `Sender` and `Receiver` families at once, live or dead but not
    /// yet reclaimed (2 to 1024).
    pub fn max_participants(mut self, slots: u32) -> Self {
        self.max_participants = slots;
        self
    }

    /// The configured capacity.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }

    /// The configured arena size in bytes.
    pub fn get_arena_bytes(&self) -> usize {
        self.arena_bytes
    }
}

/// Creates channel `name` and returns its first sender and receiver.
///
/// Other processes attach with [`Sender::open`] and [`Receiver::open`]. The channel's segment is
/// unlinked when its last handle anywhere is dropped.
///
/// A channel counts as disconnected while it has no receiver (or no sender): keep the returned
/// `Receiver` until the processes that will receive have opened theirs.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-channel-{}", std::process::id());
/// let (tx, rx) = shmq::channel(&name, shmq::ChannelConfig::default().arena_bytes(1 << 20))?;
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
    if config.max_participants < 2 || config.max_participants > MAX_PARTICIPANTS {
        return Err(invalid(format!(
            "max_participants {} (2 to {MAX_PARTICIPANTS}: the first sender and receiver take two)",
            config.max_participants
        )));
    }
    let arena = (config.arena_bytes as u64).div_ceil(4096) * 4096;
    let geo = Geometry::new(
        config.capacity as u64,
        arena,
        config.max_participants as u64,
    )
    .ok_or_else(|| {
        invalid(format!(
            "capacity {} (1 to {}) with an arena of {} bytes",
            config.capacity,
            core::MAX_CAPACITY,
            config.arena_bytes
        ))
    })?;
    let spec = CreateSpec {
        name,
        kind: Kind::Channel,
        data_len: geo.data_len,
        capacity: config.max_participants,
        flags: FLAG_AUTO_UNLINK,
        populate: true,
    };
    let (region, participants) = Region::create(spec, &[Role::Sender, Role::Receiver], |r| {
        Chan::init(r, &geo)
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

/// One family of handles (a `Sender` or `Receiver` and its clones) in this process.
struct Endpoint {
    chan: Chan,
    participant: Option<Participant>,
    slot: u32,
    peer_role: Role,
    spin_ns: AtomicU64,
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
    fn new(region: Arc<Region>, participant: Participant) -> Result<Arc<Endpoint>> {
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

    fn open(name: &str, role: Role) -> Result<Arc<Endpoint>> {
        validate_name(name)?;
        let (region, mut participants) = Region::open(name, Kind::Channel, &[role], true)?;
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
    fn peers_alive(&self, max_age: Option<Duration>) -> bool {
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

    fn wait_for<T>(
        &self,
        on: WaitOn,
        deadline: Option<Instant>,
        attempt: impl FnMut() -> Result<Step<T>>,
    ) -> Result<T, WaitError> {
        self.chan.wait_for(on, deadline, self.spin(), attempt)
    }

    // ----- sending ---------------------------------------------------------------------------

    fn publish(
        &self,
        place: Place,
        len: u64,
        inline: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), WaitError> {
        self.wait_for(WaitOn::NotFull, deadline, || {
            if self.chan.try_publish(place, len, inline)? {
                Ok(Step::Ready(()))
            } else if !self.peers_alive(Some(PEER_RECHECK)) {
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }

    fn reserve(&self, len: u64, deadline: Option<Instant>) -> Result<Reserved, WaitError> {
        if !self.peers_alive(None) {
            return Err(WaitError::Disconnected);
        }
        let arena = self.chan.geometry().arena_bytes;
        if len <= arena && arena > 0 {
            let chunk = self.wait_for(WaitOn::Space, deadline, || {
                match self.chan.try_alloc(len, self.slot)? {
                    Some(chunk) => Ok(Step::Ready(chunk)),
                    None if !self.peers_alive(Some(PEER_RECHECK)) => Ok(Step::Disconnected),
                    None => Ok(Step::Retry),
                }
            })?;
            let ptr = self.chan.chunk_ptr(chunk, len).ok_or_else(|| {
                WaitError::Failed(Error::corrupted(self.chan.name(), "chunk outside arena"))
            })?;
            return Ok(Reserved::Arena { chunk, ptr });
        }
        let (entry, id) = self.wait_for(WaitOn::Space, deadline, || {
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
        };
        match Region::create(spec, &[], |_| Ok(())) {
            Ok((region, _)) => Ok(Reserved::Overflow { entry, id, region }),
            Err(e) => {
                let _ = self.chan.release_overflow(entry, id, self.slot);
                Err(WaitError::Failed(e))
            }
        }
    }

    fn release(&self, reserved: &Reserved) {
        let _ = match reserved {
            Reserved::Arena { chunk, .. } => self.chan.free_chunk(*chunk, self.slot),
            Reserved::Overflow { entry, id, .. } => {
                self.chan.release_overflow(*entry, *id, self.slot)
            }
        };
    }

    fn send_reserved(
        &self,
        reserved: &Reserved,
        len: u64,
        deadline: Option<Instant>,
    ) -> Result<(), WaitError> {
        let place = match reserved {
            Reserved::Arena { chunk, .. } => Place::Arena(*chunk),
            Reserved::Overflow { entry, id, .. } => Place::Overflow {
                entry: *entry,
                id: *id,
            },
        };
        self.publish(place, len, &[], deadline)
    }

    fn send_bytes(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), WaitError> {
        if bytes.len() <= INLINE_MAX {
            if !self.peers_alive(None) {
                return Err(WaitError::Disconnected);
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

    // ----- receiving -------------------------------------------------------------------------

    fn receive(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Message, WaitError> {
        let mut inline = InlineBuf([0; INLINE_MAX]);
        let desc = self.wait_for(WaitOn::NotEmpty, deadline, || {
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
        self.message(desc, inline).map_err(WaitError::Failed)
    }

    fn message(self: &Arc<Self>, desc: Desc, inline: InlineBuf) -> Result<Message> {
        let body = match desc.place {
            Place::Inline => Body::Inline(inline),
            Place::Arena(chunk) => {
                // read_desc checked that the chunk holds `len` bytes.
                let ptr = self
                    .chan
                    .chunk_ptr(chunk, desc.len)
                    .unwrap_or(std::ptr::null_mut());
                Body::Arena { chunk, ptr }
            }
            Place::Overflow { entry, id } => {
                let name = self.chan.overflow_name(id);
                let opened =
                    Region::open(&name, Kind::Overflow, &[], true).and_then(|(region, _)| {
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
                    Ok(region) => Body::Overflow { entry, id, region },
                    Err(e) => {
                        let _ = self.chan.release_overflow(entry, id, self.slot);
                        self.chan.mark_done(self.slot);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Message {
            ep: Arc::clone(self),
            body,
            len: desc.len as usize,
        })
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

/// Room for one payload, not yet published.
enum Reserved {
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
    fn ptr(&self) -> *mut u8 {
        match self {
            Reserved::Arena { ptr, .. } => *ptr,
            Reserved::Overflow { region, .. } => region.data_ptr(),
        }
    }
}

/// The sending side of a channel. Clone it freely; share it across threads.
///
/// All clones form one participant: the channel counts as disconnected for receivers once every
/// sender family everywhere is dropped or dead.
#[derive(Clone)]
pub struct Sender {
    ep: Arc<Endpoint>,
}

/// The receiving side of a channel. Clone it freely; share it across threads.
///
/// Each message goes to exactly one receiver.
#[derive(Clone)]
pub struct Receiver {
    ep: Arc<Endpoint>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.name())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("channel", &self.name())
            .finish_non_exhaustive()
    }
}

fn deadline_after(timeout: Duration) -> Option<Instant> {
    // A timeout too large to represent is no timeout.
    Instant::now().checked_add(timeout)
}

macro_rules! common_methods {
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

        /// How long blocking calls of this handle family spin before sleeping on a futex
        /// (default [`DEFAULT_SPIN`]). `Duration::MAX` never sleeps: lowest latency, one busy
        /// core per waiting thread.
        pub fn set_spin(&self, spin: Duration) {
            let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
            self.ep.spin_ns.store(ns, Ordering::Relaxed);
        }
    };
}

impl Sender {
    /// Attaches a new sender to the existing channel `name`.
    pub fn open(name: &str) -> Result<Sender> {
        Ok(Sender {
            ep: Endpoint::open(name, Role::Sender)?,
        })
    }

    common_methods!();

    /// Sends a copy of `bytes`, blocking while the channel is full.
    ///
    /// The bytes are copied once, into shared memory; the receiver reads them in place.
    pub fn send(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.ep.send_bytes(bytes, None).map_err(Into::into)
    }

    /// Sends a copy of `bytes` if the channel has room now.
    pub fn try_send(&self, bytes: &[u8]) -> Result<(), TrySendError> {
        self.ep
            .send_bytes(bytes, Some(Instant::now()))
            .map_err(Into::into)
    }

    /// Sends a copy of `bytes`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, bytes: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.ep
            .send_bytes(bytes, deadline_after(timeout))
            .map_err(Into::into)
    }

    /// Sends a copy of `items` as their bytes.
    pub fn send_slice<T: Pod>(&self, items: &[T]) -> Result<(), SendError> {
        self.send(bytemuck::cast_slice(items))
    }

    /// Lends `len` bytes of shared memory to fill and [`Loan::send`] without any copy.
    /// Blocks while the arena has no room. The bytes start zeroed or hold old payloads.
    pub fn loan(&self, len: usize) -> Result<Loan, SendError> {
        self.loan_until(len, None).map_err(Into::into)
    }

    /// Like [`loan`](Self::loan), if the arena has room now.
    pub fn try_loan(&self, len: usize) -> Result<Loan, TrySendError> {
        self.loan_until(len, Some(Instant::now()))
            .map_err(Into::into)
    }

    /// Like [`loan`](Self::loan), waiting at most `timeout` for room.
    pub fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<Loan, SendTimeoutError> {
        self.loan_until(len, deadline_after(timeout))
            .map_err(Into::into)
    }

    /// Lends room for `n` values of `T` (payloads are 4096-byte aligned).
    pub fn loan_slice<T: Pod>(&self, n: usize) -> Result<SliceLoan<T>, SendError> {
        if std::mem::align_of::<T>() > 4096 {
            return Err(SendError::Failed(Error::InvalidArgument {
                name: self.name().to_owned(),
                what: format!(
                    "{} needs {}-byte alignment; payloads are 4096-byte aligned",
                    std::any::type_name::<T>(),
                    std::mem::align_of::<T>()
                ),
            }));
        }
        let len = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| SendError::Failed(self.too_long(n)))?;
        Ok(SliceLoan {
            loan: self.loan(len)?,
            n,
            _type: PhantomData,
        })
    }

    fn too_long(&self, n: usize) -> Error {
        Error::InvalidArgument {
            name: self.name().to_owned(),
            what: format!("{n} elements overflow a byte length"),
        }
    }

    fn loan_until(&self, len: usize, deadline: Option<Instant>) -> Result<Loan, WaitError> {
        let reserved = self.ep.reserve(len as u64, deadline)?;
        Ok(Loan {
            ep: Arc::clone(&self.ep),
            ptr: reserved.ptr(),
            reserved: Some(reserved),
            len,
        })
    }

    /// Blocks until every message sent through this channel before the call (by any sender)
    /// has been received and dropped, like `JoinableQueue.join()`.
    ///
    /// Counts messages, not identities: a later message dropped early can stand in for an
    /// earlier one still held. Messages taken by a receiver that died count as done.
    /// A `Receiver` held by this process keeps the channel connected: if it never receives,
    /// `join` waits for workers that may be gone (use [`join_timeout`](Self::join_timeout)).
    pub fn join(&self) -> Result<(), SendError> {
        self.join_until(None).map_err(Into::into)
    }

    /// Like [`join`](Self::join), waiting at most `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), SendTimeoutError> {
        self.join_until(deadline_after(timeout)).map_err(Into::into)
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        let chan = &self.ep.chan;
        let target = chan.sent_total();
        self.ep.wait_for(WaitOn::Done, deadline, || {
            if chan.done_total() >= target {
                Ok(Step::Ready(()))
            } else if !self.ep.peers_alive(Some(PEER_RECHECK)) && chan.done_total() < target {
                // Re-read after the liveness scan: a receiver may have finished meanwhile.
                Ok(Step::Disconnected)
            } else {
                Ok(Step::Retry)
            }
        })
    }
}

impl Receiver {
    /// Attaches a new receiver to the existing channel `name`.
    pub fn open(name: &str) -> Result<Receiver> {
        Ok(Receiver {
            ep: Endpoint::open(name, Role::Receiver)?,
        })
    }

    common_methods!();

    /// Receives the oldest message, blocking while the channel is empty.
    /// Fails with `Disconnected` once every sender is gone and the ring is drained.
    pub fn recv(&self) -> Result<Message, RecvError> {
        self.ep.receive(None).map_err(Into::into)
    }

    /// Receives a message if one is waiting.
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        self.ep.receive(Some(Instant::now())).map_err(Into::into)
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        self.ep.receive(deadline_after(timeout)).map_err(Into::into)
    }

    /// Blocking iterator over messages. Ends when every sender is gone and the channel is
    /// drained, or at the first error (`RecvError::Failed`); loop on [`recv`](Self::recv) to
    /// tell the two apart.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rx: self }
    }

    /// Iterator over the messages waiting now. Ends at the first `Empty`, `Disconnected` or
    /// error.
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter { rx: self }
    }
}

/// Blocking iterator returned by [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    rx: &'a Receiver,
}

impl Iterator for Iter<'_> {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        self.rx.recv().ok()
    }
}

/// Non-blocking iterator returned by [`Receiver::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a> {
    rx: &'a Receiver,
}

impl Iterator for TryIter<'_> {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

impl<'a> IntoIterator for &'a Receiver {
    type Item = Message;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Shared memory lent by [`Sender::loan`]: fill it, then [`send`](Loan::send) it.
/// Dropping an unsent loan gives its memory back.
pub struct Loan {
    ep: Arc<Endpoint>,
    reserved: Option<Reserved>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Loan is the only handle to its bytes until sent; the Endpoint it holds is Send+Sync.
unsafe impl Send for Loan {}
// SAFETY: &Loan only gives shared access to the bytes.
unsafe impl Sync for Loan {}

impl Loan {
    /// Publishes the loaned bytes as a message, blocking while the ring is full.
    pub fn send(mut self) -> Result<(), SendError> {
        self.send_until(None).map_err(Into::into)
    }

    /// Publishes the loaned bytes, waiting at most `timeout` for room in the ring. On failure
    /// the loan's memory is given back.
    pub fn send_timeout(mut self, timeout: Duration) -> Result<(), SendTimeoutError> {
        self.send_until(deadline_after(timeout)).map_err(Into::into)
    }

    fn send_until(&mut self, deadline: Option<Instant>) -> Result<(), WaitError> {
        let Some(reserved) = self.reserved.take() else {
            return Ok(());
        };
        let sent = self.ep.send_reserved(&reserved, self.len as u64, deadline);
        if sent.is_err() {
            self.ep.release(&reserved);
        }
        sent
    }
}

impl Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/len describe the reserved bytes, exclusively ours until sent, alive as
        // long as the endpoint (held by self) keeps the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for deref; &mut self makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(reserved) = self.reserved.take() {
            self.ep.release(&reserved);
        }
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A [`Loan`] seen as `[T]`, returned by [`Sender::loan_slice`].
pub struct SliceLoan<T: Pod> {
    loan: Loan,
    n: usize,
    _type: PhantomData<T>,
}

impl<T: Pod> SliceLoan<T> {
    /// Publishes the values as a message.
    pub fn send(self) -> Result<(), SendError> {
        self.loan.send()
    }

    /// The untyped loan.
    pub fn into_bytes(self) -> Loan {
        self.loan
    }
}

impl<T: Pod> Deref for SliceLoan<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the loan holds n * size_of::<T>() bytes at a 4096-aligned address (arena pages
        // and overflow data areas are page aligned), and any bytes are a valid T (Pod).
        unsafe { std::slice::from_raw_parts(self.loan.ptr.cast::<T>(), self.n) }
    }
}

impl<T: Pod> DerefMut for SliceLoan<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for deref; &mut self makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.loan.ptr.cast::<T>(), self.n) }
    }
}

impl<T: Pod> fmt::Debug for SliceLoan<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceLoan")
            .field("len", &self.n)
            .finish_non_exhaustive()
    }
}

enum Body {
    Inline(InlineBuf),
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

/// A received payload, read in place in shared memory. Dropping it frees its memory.
///
/// Payloads start at a 64-byte aligned address (4096 for payloads above 96 bytes), so
/// [`as_slice`](Message::as_slice) can view them as any `Pod` type.
pub struct Message {
    ep: Arc<Endpoint>,
    body: Body,
    len: usize,
}

// SAFETY: the payload bytes belong to this message alone until it is dropped; the Endpoint it
// holds is Send + Sync and keeps the mapping alive.
unsafe impl Send for Message {}
// SAFETY: &Message only reads the payload.
unsafe impl Sync for Message {}

impl Message {
    /// The payload as `&[T]`, read in place. Fails with [`Error::InvalidArgument`] if the length
    /// is not a multiple of `size_of::<T>()` (or `T` needs more than 4096-byte alignment).
    pub fn as_slice<T: Pod>(&self) -> Result<&[T], Error> {
        bytemuck::try_cast_slice(self).map_err(|e| Error::InvalidArgument {
            name: self.ep.chan.name().to_owned(),
            what: format!(
                "a {}-byte message cannot be read as [{}]: {e:?}",
                self.len,
                std::any::type_name::<T>()
            ),
        })
    }

    /// A copy of the payload in fresh heap memory.
    pub fn to_vec(&self) -> Vec<u8> {
        self[..].to_vec()
    }
}

impl Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let ptr = match &self.body {
            Body::Inline(buf) => return &buf.0[..self.len.min(INLINE_MAX)],
            Body::Arena { ptr, .. } => *ptr as *const u8,
            Body::Overflow { region, .. } => region.data_ptr() as *const u8,
        };
        if ptr.is_null() {
            return &[];
        }
        // SAFETY: the chunk (or overflow data area) holds `len` bytes, checked on receipt, owned
        // by this message until it drops, and the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        let ep = &self.ep;
        match &self.body {
            Body::Inline(_) => {}
            Body::Arena { chunk, .. } => {
                let _ = ep.chan.free_chunk(*chunk, ep.slot);
            }
            Body::Overflow { entry, id, .. } => {
                let _ = ep.chan.release_overflow(*entry, *id, ep.slot);
            }
        }
        ep.chan.mark_done(ep.slot);
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
