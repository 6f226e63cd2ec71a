//! [`Sender`]: the sending side of a channel.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::endpoint::{blocking, Endpoint, Stopped};
use super::errors::{SendError, SendTimeoutError, TrySendError};
use super::message::{Loan, SliceLoan};
use super::receiver::Receiver;
use super::{deadline_after, to_send, to_send_timeout, to_try_send};
use crate::error::{Error, Result};
use crate::segment::Role;

/// The sending side of a channel. Clone it freely; share it across threads.
///
/// All clones form one participant: the channel counts as disconnected for receivers once every
/// sender family everywhere is dropped or dead (unless it was made with
/// [`ChannelConfig::with_disconnect`](crate::ChannelConfig::with_disconnect)`(false)`).
///
/// Every blocking call has a `try_` form (no waiting), a `_timeout` form and a `_deadline` form.
#[derive(Clone)]
pub struct Sender {
    pub(super) ep: Arc<Endpoint>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.name())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Attaches a new sender to the existing channel `name`.
    pub fn open(name: &str) -> Result<Sender> {
        Ok(Sender {
            ep: Endpoint::open(name, Role::Sender)?,
        })
    }

    /// A new [`Receiver`] of this channel, attached on this sender's mapping of it: a process
    /// that both sends and receives maps (and prefaults) the arena once, where
    /// [`Receiver::open`] would map it again. The receiver is a participant of its own, as if
    /// opened by name, and lives on after this sender is dropped.
    ///
    /// Fails as [`Receiver::open`] does when the channel has no free participant slot
    /// ([`Error::TooManyParticipants`]) or its membership lock cannot be had.
    pub fn open_receiver(&self) -> Result<Receiver> {
        Ok(Receiver {
            ep: self.ep.attach_role(Role::Receiver)?,
        })
    }

    super::handle_methods!();

    // ----- tasks (JoinableQueue) -------------------------------------------------------------

    super::task_methods!();

    // ----- copying sends -------------------------------------------------------------------

    /// Sends a copy of `bytes`, blocking while the channel is full.
    ///
    /// The bytes are copied once, into shared memory; the receiver reads them in place.
    pub fn send(&self, bytes: &[u8]) -> Result<(), SendError> {
        blocking(|| self.ep.send_bytes(bytes, None)).map_err(|e| to_send(e, ()))
    }

    /// Sends a copy of `bytes` if the channel has room now.
    pub fn try_send(&self, bytes: &[u8]) -> Result<(), TrySendError> {
        self.ep
            .try_send_bytes(bytes)
            .map_err(|e| to_try_send(e, ()))
    }

    /// Sends a copy of `bytes`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, bytes: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.send_deadline(bytes, deadline),
            None => self.send(bytes).map_err(Into::into),
        }
    }

    /// Sends a copy of `bytes`, waiting until `deadline` at most for room.
    pub fn send_deadline(&self, bytes: &[u8], deadline: Instant) -> Result<(), SendTimeoutError> {
        self.ep
            .send_bytes(bytes, Some(deadline))
            .map_err(|e| to_send_timeout(e, ()))
    }

    /// Sends copies of `messages`, in order, as many as the channel has room for, blocking
    /// while it has room for none: returns how many were sent, at least one (0 only for an
    /// empty slice). Like `write(2)`, a call may send fewer than all: loop on the rest.
    ///
    /// Messages of at most 96 bytes go in one pass over the ring, which costs less per
    /// message than [`send`](Self::send) in a loop, and wakes a sleeping receiver once. A
    /// larger message is sent by itself: alone if it comes first, or by the next call if it
    /// comes after small ones.
    ///
    /// ```no_run
    /// # fn demo(tx: &shmq::Sender, records: &[Vec<u8>]) -> Result<(), shmq::SendError> {
    /// let mut rest = records;
    /// while !rest.is_empty() {
    ///     let sent = tx.send_many(rest)?;
    ///     rest = &rest[sent..];
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_many<B: AsRef<[u8]>>(&self, messages: &[B]) -> Result<usize, SendError> {
        blocking(|| self.ep.send_many(messages, None)).map_err(|e| to_send(e, ()))
    }

    /// [`send_many`](Self::send_many) without waiting: `Full` if not even the first fits now.
    pub fn try_send_many<B: AsRef<[u8]>>(&self, messages: &[B]) -> Result<usize, TrySendError> {
        self.ep
            .send_many(messages, Some(Instant::now()))
            .map_err(|e| to_try_send(e, ()))
    }

    /// [`send_many`](Self::send_many), waiting at most `timeout` for room for the first.
    pub fn send_many_timeout<B: AsRef<[u8]>>(
        &self,
        messages: &[B],
        timeout: Duration,
    ) -> Result<usize, SendTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.send_many_deadline(messages, deadline),
            None => self.send_many(messages).map_err(Into::into),
        }
    }

    /// [`send_many`](Self::send_many), waiting until `deadline` at most for room for the first.
    pub fn send_many_deadline<B: AsRef<[u8]>>(
        &self,
        messages: &[B],
        deadline: Instant,
    ) -> Result<usize, SendTimeoutError> {
        self.ep
            .send_many(messages, Some(deadline))
            .map_err(|e| to_send_timeout(e, ()))
    }

    /// Sends a copy of `items` as their bytes, blocking while the channel is full.
    pub fn send_slice<T: Pod>(&self, items: &[T]) -> Result<(), SendError> {
        self.send(bytemuck::cast_slice(items))
    }

    /// Sends a copy of `items` if the channel has room now.
    pub fn try_send_slice<T: Pod>(&self, items: &[T]) -> Result<(), TrySendError> {
        self.try_send(bytemuck::cast_slice(items))
    }

    /// Sends a copy of `items`, waiting at most `timeout` for room.
    pub fn send_slice_timeout<T: Pod>(
        &self,
        items: &[T],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.send_timeout(bytemuck::cast_slice(items), timeout)
    }

    /// Sends a copy of `items`, waiting until `deadline` at most for room.
    pub fn send_slice_deadline<T: Pod>(
        &self,
        items: &[T],
        deadline: Instant,
    ) -> Result<(), SendTimeoutError> {
        self.send_deadline(bytemuck::cast_slice(items), deadline)
    }

    // ----- loans ---------------------------------------------------------------------------

    /// Lends `len` bytes of shared memory to fill and [`Loan::send`] without any copy.
    /// Blocks while the arena has no room. The bytes start zeroed or hold old payloads.
    pub fn loan(&self, len: usize) -> Result<Loan, SendError> {
        blocking(|| self.loan_until(len, None)).map_err(|e| to_send(e, ()))
    }

    /// Like [`loan`](Self::loan), if the arena has room now.
    pub fn try_loan(&self, len: usize) -> Result<Loan, TrySendError> {
        self.loan_until(len, Some(Instant::now()))
            .map_err(|e| to_try_send(e, ()))
    }

    /// Like [`loan`](Self::loan), waiting at most `timeout` for room.
    pub fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<Loan, SendTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.loan_deadline(len, deadline),
            None => self.loan(len).map_err(Into::into),
        }
    }

    /// Like [`loan`](Self::loan), waiting until `deadline` at most for room.
    pub fn loan_deadline(&self, len: usize, deadline: Instant) -> Result<Loan, SendTimeoutError> {
        self.loan_until(len, Some(deadline))
            .map_err(|e| to_send_timeout(e, ()))
    }

    /// Lends room for `n` values of `T` (payloads are 4096-byte aligned), blocking while the
    /// arena has no room.
    pub fn loan_slice<T: Pod>(&self, n: usize) -> Result<SliceLoan<T>, SendError> {
        let len = self.slice_len::<T>(n).map_err(SendError::from)?;
        Ok(SliceLoan::new(self.loan(len)?, n))
    }

    /// Like [`loan_slice`](Self::loan_slice), if the arena has room now.
    pub fn try_loan_slice<T: Pod>(&self, n: usize) -> Result<SliceLoan<T>, TrySendError> {
        let len = self.slice_len::<T>(n).map_err(TrySendError::from)?;
        Ok(SliceLoan::new(self.try_loan(len)?, n))
    }

    /// Like [`loan_slice`](Self::loan_slice), waiting at most `timeout` for room.
    pub fn loan_slice_timeout<T: Pod>(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<SliceLoan<T>, SendTimeoutError> {
        let len = self.slice_len::<T>(n).map_err(SendTimeoutError::from)?;
        Ok(SliceLoan::new(self.loan_timeout(len, timeout)?, n))
    }

    /// Like [`loan_slice`](Self::loan_slice), waiting until `deadline` at most for room.
    pub fn loan_slice_deadline<T: Pod>(
        &self,
        n: usize,
        deadline: Instant,
    ) -> Result<SliceLoan<T>, SendTimeoutError> {
        let len = self.slice_len::<T>(n).map_err(SendTimeoutError::from)?;
        Ok(SliceLoan::new(self.loan_deadline(len, deadline)?, n))
    }

    /// Bytes of `n` values of `T`, if a payload can hold them.
    fn slice_len<T: Pod>(&self, n: usize) -> Result<usize, Error> {
        let invalid = |what: String| Error::InvalidArgument {
            name: self.name().to_owned(),
            what,
        };
        if std::mem::align_of::<T>() > 4096 {
            return Err(invalid(format!(
                "{} needs {}-byte alignment; payloads are 4096-byte aligned",
                std::any::type_name::<T>(),
                std::mem::align_of::<T>()
            )));
        }
        n.checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| invalid(format!("{n} elements overflow a byte length")))
    }

    fn loan_until(&self, len: usize, deadline: Option<Instant>) -> Result<Loan, Stopped> {
        let reserved = self.ep.reserve(len as u64, deadline)?;
        Ok(Loan::new(Arc::clone(&self.ep), reserved, len))
    }

    // ----- join ----------------------------------------------------------------------------

    /// Blocks until every message sent through this channel before the call (by any sender)
    /// has been received and dropped, like `JoinableQueue.join()`.
    ///
    /// Counts messages, not identities: a later message dropped early can stand in for an
    /// earlier one still held. Messages taken by a receiver that died count as done.
    /// A `Receiver` held by this process keeps the channel connected: if it never receives,
    /// `join` waits for workers that may be gone (use [`join_timeout`](Self::join_timeout)).
    /// On a persistent channel (`with_disconnect(false)`) `join` waits while no receiver
    /// exists, for one to come.
    pub fn join(&self) -> Result<(), SendError> {
        blocking(|| self.ep.join(None)).map_err(|e| to_send(e, ()))
    }

    /// Like [`join`](Self::join), without waiting: `Err(Timeout)` while a message sent before
    /// the call is not done yet.
    pub fn try_join(&self) -> Result<(), SendTimeoutError> {
        self.join_deadline(Instant::now())
    }

    /// Like [`join`](Self::join), waiting at most `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), SendTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.join_deadline(deadline),
            None => self.join().map_err(Into::into),
        }
    }

    /// Like [`join`](Self::join), waiting until `deadline` at most.
    pub fn join_deadline(&self, deadline: Instant) -> Result<(), SendTimeoutError> {
        self.ep
            .join(Some(deadline))
            .map_err(|e| to_send_timeout(e, ()))
    }
}
