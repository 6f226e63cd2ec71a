//! What the handles hand out: [`Message`] (a received payload, read in place), [`Loan`] and
//! [`SliceLoan`] (room in shared memory to fill and send).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::endpoint::{Endpoint, Owner, Reserved, Stopped};
use super::errors::{SendError, SendTimeoutError, TrySendError};
use super::layout::{InlineBuf, INLINE_MAX};
use super::{deadline_after, to_send, to_send_timeout, to_try_send};
use crate::error::Error;

/// Where a received payload lies: copied out of its ring slot, or in room that the receiving
/// participant now owns (an arena chunk or an overflow segment), given back like a sender's.
pub(super) enum Body {
    Inline(InlineBuf),
    Owned(Reserved),
}

/// A received payload, read (and written) in place in shared memory. Dropping it frees its
/// memory and counts the message done (for [`Sender::join`](crate::Sender::join)).
///
/// Payloads start at a 64-byte aligned address (4096 for payloads above 96 bytes), so
/// [`as_slice`](Message::as_slice) and [`as_mut_slice`](Message::as_mut_slice) can view them as
/// any `Pod` type.
///
/// A message is writable: it dereferences mutably to its bytes ([`DerefMut`]), so a receiver
/// can work on a payload where it lies (scale an array, decode into it) without a copy. The
/// writes change this message only: no other message, queued or held, shares its bytes, and no
/// sender sees them. A payload of up to 96 bytes was copied into the `Message` on receipt, and
/// is written there.
///
/// # Soundness
///
/// A `Message` dereferences to `&[u8]` and `&mut [u8]` in memory that other processes have
/// mapped too. shmq's trust model is that peers may crash at any instant and leave garbage, but
/// are not malicious: once a message is taken, the protocol gives its bytes to this message
/// alone until it is dropped, so no peer that follows the protocol reads or writes them
/// meanwhile, and `&mut self` makes a mutable borrow the only one in this process. A process
/// that ignores the protocol (writes through a raw mapping, or corrupts the allocator) can
/// change the bytes under the reference; the values read are then garbage, but every access
/// stays inside the mapping, which the descriptor's checks guarantee. The same holds for
/// [`Loan`] and [`SliceLoan`], whose bytes belong to the sender until sent.
///
/// After `fork`, a `Message` or `Loan` the child inherited still refers to room that the
/// *parent* owns: the parent may free it and the memory be reused while the child reads (or,
/// for a loan, writes) through its copy. Dropping it in the child frees nothing. A child should
/// drop what it inherited, or read an inherited message only while it knows the parent still
/// holds it. A child must not write a message it inherited: the bytes are the parent's, which
/// may be reading them. So writing one that lies in shared memory (more than 96 bytes) is
/// refused: [`as_mut_slice`](Message::as_mut_slice) fails with [`Error::InvalidArgument`] and
/// `deref_mut` panics. An inherited message of up to 96 bytes is the child's own copy (the
/// bytes live in the `Message`, which `fork` copied), and may be written.
pub struct Message {
    pub(super) ep: Arc<Endpoint>,
    body: Body,
    len: usize,
    /// The receiving participant, which counts the message done when it drops.
    owner: Owner,
}

// SAFETY: the payload bytes belong to this message alone until it is dropped; the Endpoint it
// holds is Send + Sync and keeps the mapping alive.
unsafe impl Send for Message {}
// SAFETY: &Message only reads the payload (writing needs &mut Message).
unsafe impl Sync for Message {}

impl Message {
    pub(super) fn new(ep: Arc<Endpoint>, body: Body, len: usize, owner: Owner) -> Message {
        Message {
            ep,
            body,
            len,
            owner,
        }
    }

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

    /// The payload as `&mut [T]`, written in place. Fails with [`Error::InvalidArgument`] as
    /// [`as_slice`](Self::as_slice) does, and for a message in shared memory that this process
    /// inherited through `fork` (its bytes are the parent's; see the Soundness section).
    pub fn as_mut_slice<T: Pod>(&mut self) -> Result<&mut [T], Error> {
        let len = self.len;
        let name = self.ep.chan.name().to_owned();
        let bytes = self.bytes_mut()?;
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::InvalidArgument {
            name,
            what: format!(
                "a {len}-byte message cannot be written as [{}]: {e:?}",
                std::any::type_name::<T>()
            ),
        })
    }

    /// A copy of the payload in fresh heap memory.
    pub fn to_vec(&self) -> Vec<u8> {
        self[..].to_vec()
    }

    /// The payload, writable; refused for room in shared memory that a parent process owns.
    fn bytes_mut(&mut self) -> Result<&mut [u8], Error> {
        let ptr = match &mut self.body {
            Body::Inline(buf) => return Ok(&mut buf.0[..self.len.min(INLINE_MAX)]),
            Body::Owned(room) => room.ptr(),
        };
        if !self.owner.is_ours() {
            return Err(Error::InvalidArgument {
                name: self.ep.chan.name().to_owned(),
                what: "this message was inherited through fork: its bytes belong to the parent \
                       process, which alone may write them"
                    .to_owned(),
            });
        }
        if ptr.is_null() {
            return Ok(&mut []);
        }
        // SAFETY: as in `deref`: the chunk (or overflow data area) holds `len` bytes, checked on
        // receipt, owned by this message (of this process: checked above) until it drops, and
        // the mapping lives as long as self; `&mut self` makes this the only borrow of them.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, self.len) })
    }
}

impl Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let ptr = match &self.body {
            Body::Inline(buf) => return &buf.0[..self.len.min(INLINE_MAX)],
            Body::Owned(room) => room.ptr() as *const u8,
        };
        if ptr.is_null() {
            return &[];
        }
        // SAFETY: the chunk (or overflow data area) holds `len` bytes, checked on receipt, owned
        // by this message until it drops, and the mapping lives as long as self (see the
        // Soundness section above for writes by peers that break the protocol).
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl DerefMut for Message {
    /// The payload, writable in place.
    ///
    /// # Panics
    ///
    /// If the message lies in shared memory (more than 96 bytes) and this process inherited it
    /// through `fork`: its bytes are the parent's (see the Soundness section of [`Message`]).
    /// [`as_mut_slice`](Message::as_mut_slice) reports that as an error instead.
    fn deref_mut(&mut self) -> &mut [u8] {
        match self.bytes_mut() {
            Ok(bytes) => bytes,
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        // A message inherited through fork is the parent's to free and count (the child may
        // read it while the parent keeps it).
        if !self.owner.is_ours() {
            return;
        }
        let ep = &self.ep;
        if let Body::Owned(room) = &self.body {
            ep.release(room);
        }
        ep.chan.mark_done(self.owner.slot);
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

/// Shared memory lent by [`Sender::loan`](crate::Sender::loan): fill it, then
/// [`send`](Loan::send) it. Dropping an unsent loan gives its memory back.
///
/// A send that fails gives the loan back inside its error
/// ([`into_inner`](SendError::into_inner)), filled as it was: send it again, or drop it.
/// See [`Message`]'s Soundness section for the trust model of the bytes.
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

// The send errors carry the loan back to the caller, as crossbeam's `SendError<T>` carries `T`:
// large, but returned only on failure.
#[allow(clippy::result_large_err)]
impl Loan {
    pub(super) fn new(ep: Arc<Endpoint>, reserved: Reserved, len: usize) -> Loan {
        Loan {
            ep,
            ptr: reserved.ptr(),
            reserved: Some(reserved),
            len,
        }
    }

    /// The family of handles this loan was made by.
    #[cfg(feature = "async")]
    pub(super) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    /// Publishes the loaned bytes as a message, blocking while the ring is full.
    pub fn send(self) -> Result<(), SendError<Loan>> {
        let mut loan = self;
        loop {
            match loan.publish(None) {
                Ok(()) => return Ok(()),
                // A wait without a deadline does not time out; should a step ever report it,
                // retry rather than call it something it is not (endpoint::blocking's rule,
                // written out here because the loan moves in and out of each attempt).
                Err((Stopped::Deadline(_), back)) => loan = back,
                Err((e, back)) => return Err(to_send(e, back)),
            }
        }
    }

    /// Publishes the loaned bytes if the ring has room now.
    pub fn try_send(self) -> Result<(), TrySendError<Loan>> {
        self.publish(Some(Instant::now()))
            .map_err(|(e, loan)| to_try_send(e, loan))
    }

    /// Publishes the loaned bytes, waiting at most `timeout` for room in the ring.
    pub fn send_timeout(self, timeout: Duration) -> Result<(), SendTimeoutError<Loan>> {
        match deadline_after(timeout) {
            Some(deadline) => self.send_deadline(deadline),
            None => self.send().map_err(Into::into),
        }
    }

    /// Publishes the loaned bytes, waiting until `deadline` at most for room in the ring.
    pub fn send_deadline(self, deadline: Instant) -> Result<(), SendTimeoutError<Loan>> {
        self.publish(Some(deadline))
            .map_err(|(e, loan)| to_send_timeout(e, loan))
    }

    /// Publishes the reservation. On success it belongs to the ring (and this loan, spent, has
    /// nothing left to give back); on failure the loan comes back intact.
    pub(super) fn publish(mut self, deadline: Option<Instant>) -> Result<(), (Stopped, Loan)> {
        let Some(reserved) = self.reserved.take() else {
            return Ok(());
        };
        match self.ep.send_reserved(&reserved, self.len as u64, deadline) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.reserved = Some(reserved);
                Err((e, self))
            }
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // Unsent: give the room back.
        if let Some(reserved) = self.reserved.take() {
            self.ep.release(&reserved);
        }
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

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A [`Loan`] seen as `[T]`, returned by [`Sender::loan_slice`](crate::Sender::loan_slice).
pub struct SliceLoan<T: Pod> {
    loan: Loan,
    n: usize,
    _type: PhantomData<T>,
}

// As for Loan: the errors carry the loan back.
#[allow(clippy::result_large_err)]
impl<T: Pod> SliceLoan<T> {
    pub(super) fn new(loan: Loan, n: usize) -> SliceLoan<T> {
        SliceLoan {
            loan,
            n,
            _type: PhantomData,
        }
    }

    /// Publishes the values as a message, blocking while the ring is full.
    pub fn send(self) -> Result<(), SendError<SliceLoan<T>>> {
        let n = self.n;
        self.loan
            .send()
            .map_err(|e| map_send(e, |loan| SliceLoan::new(loan, n)))
    }

    /// Publishes the values if the ring has room now.
    pub fn try_send(self) -> Result<(), TrySendError<SliceLoan<T>>> {
        let n = self.n;
        self.loan
            .try_send()
            .map_err(|e| map_try_send(e, |loan| SliceLoan::new(loan, n)))
    }

    /// Publishes the values, waiting at most `timeout` for room in the ring.
    pub fn send_timeout(self, timeout: Duration) -> Result<(), SendTimeoutError<SliceLoan<T>>> {
        let n = self.n;
        self.loan
            .send_timeout(timeout)
            .map_err(|e| map_send_timeout(e, |loan| SliceLoan::new(loan, n)))
    }

    /// Publishes the values, waiting until `deadline` at most for room in the ring.
    pub fn send_deadline(self, deadline: Instant) -> Result<(), SendTimeoutError<SliceLoan<T>>> {
        let n = self.n;
        self.loan
            .send_deadline(deadline)
            .map_err(|e| map_send_timeout(e, |loan| SliceLoan::new(loan, n)))
    }

    /// The untyped loan.
    pub fn into_bytes(self) -> Loan {
        self.loan
    }
}

fn map_send<T, U>(e: SendError<T>, f: impl FnOnce(T) -> U) -> SendError<U> {
    match e {
        SendError::Disconnected(t) => SendError::Disconnected(f(t)),
        SendError::Failed(e, t) => SendError::Failed(e, f(t)),
    }
}

fn map_try_send<T, U>(e: TrySendError<T>, f: impl FnOnce(T) -> U) -> TrySendError<U> {
    match e {
        TrySendError::Full(t, what) => TrySendError::Full(f(t), what),
        TrySendError::Disconnected(t) => TrySendError::Disconnected(f(t)),
        TrySendError::Failed(e, t) => TrySendError::Failed(e, f(t)),
    }
}

fn map_send_timeout<T, U>(e: SendTimeoutError<T>, f: impl FnOnce(T) -> U) -> SendTimeoutError<U> {
    match e {
        SendTimeoutError::Timeout(t) => SendTimeoutError::Timeout(f(t)),
        SendTimeoutError::Disconnected(t) => SendTimeoutError::Disconnected(f(t)),
        SendTimeoutError::Failed(e, t) => SendTimeoutError::Failed(e, f(t)),
    }
}

impl<T: Pod> Deref for SliceLoan<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the loan holds n * size_of::<T>() bytes at a 4096-aligned address (arena pages
        // and overflow data areas are page aligned; loan_slice refuses T aligned beyond that),
        // and any bytes are a valid T (Pod).
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
