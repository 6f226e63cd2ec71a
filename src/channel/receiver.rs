//! [`Receiver`]: the receiving side of a channel, and its iterators.

use std::fmt;
use std::iter::FusedIterator;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::{blocking, Endpoint};
use super::errors::{RecvError, RecvTimeoutError, TryRecvError};
use super::message::Message;
use super::sender::Sender;
use super::{deadline_after, to_recv, to_recv_timeout, to_try_recv};
use crate::error::Result;
use crate::segment::Role;

/// The receiving side of a channel. Clone it freely; share it across threads.
///
/// Each message goes to exactly one receiver. Every blocking call has a `try_` form (no
/// waiting), a `_timeout` form and a `_deadline` form.
#[derive(Clone)]
pub struct Receiver {
    pub(super) ep: Arc<Endpoint>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("channel", &self.name())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Attaches a new receiver to the existing channel `name`.
    pub fn open(name: &str) -> Result<Receiver> {
        Ok(Receiver {
            ep: Endpoint::open(name, Role::Receiver)?,
        })
    }

    /// A new [`Sender`] of this channel, attached on this receiver's mapping of it: a process
    /// that both sends and receives maps (and prefaults) the arena once, where
    /// [`Sender::open`] would map it again. The sender is a participant of its own, as if
    /// opened by name, and lives on after this receiver is dropped.
    ///
    /// Fails as [`Sender::open`] does when the channel has no free participant slot
    /// ([`Error::TooManyParticipants`](crate::Error::TooManyParticipants)) or its membership
    /// lock cannot be had.
    pub fn open_sender(&self) -> Result<Sender> {
        Ok(Sender {
            ep: self.ep.attach_role(Role::Sender)?,
        })
    }

    super::handle_methods!();

    // ----- tasks (JoinableQueue) -------------------------------------------------------------

    super::task_methods!();

    /// Receives the oldest message, blocking while the channel is empty.
    /// Fails with `Disconnected` once every sender is gone and the ring is drained (never on a
    /// persistent channel, where it waits for a sender to come).
    pub fn recv(&self) -> Result<Message, RecvError> {
        blocking(|| self.ep.receive(None)).map_err(to_recv)
    }

    /// Receives a message if one is waiting.
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        self.ep.try_receive().map_err(to_try_recv)
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.recv_deadline(deadline),
            None => self.recv().map_err(Into::into),
        }
    }

    /// Receives a message, waiting until `deadline` at most.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Message, RecvTimeoutError> {
        self.ep.receive(Some(deadline)).map_err(to_recv_timeout)
    }

    /// Receives every message waiting now, up to `max`, appending them to `buf` in the
    /// order they were sent; blocks while the channel is empty. Returns how many were
    /// appended: at least one, or 0 if `max` is 0. As tokio's `mpsc::Receiver::recv_many`.
    ///
    /// One call takes the whole run in one pass over the ring, so a consumer that has
    /// fallen behind catches up at a lower cost per message than with [`recv`](Self::recv)
    /// in a loop (each message is still its own [`Message`], freed when it is dropped).
    /// Fails with `Disconnected` as `recv` does. A payload found lost for good fails the call
    /// after the run: the messages taken in it are in `buf` all the same.
    pub fn recv_many(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, RecvError> {
        blocking(|| self.ep.receive_many(buf, max, true, None)).map_err(to_recv)
    }

    /// [`recv_many`](Self::recv_many) without waiting: `Empty` if no message is waiting.
    pub fn try_recv_many(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TryRecvError> {
        self.ep
            .receive_many(buf, max, false, None)
            .map_err(to_try_recv)
    }

    /// [`recv_many`](Self::recv_many), waiting at most `timeout` for the first message.
    pub fn recv_many_timeout(
        &self,
        buf: &mut Vec<Message>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.recv_many_deadline(buf, max, deadline),
            None => self.recv_many(buf, max).map_err(Into::into),
        }
    }

    /// [`recv_many`](Self::recv_many), waiting until `deadline` at most for the first message.
    pub fn recv_many_deadline(
        &self,
        buf: &mut Vec<Message>,
        max: usize,
        deadline: Instant,
    ) -> Result<usize, RecvTimeoutError> {
        self.ep
            .receive_many(buf, max, true, Some(deadline))
            .map_err(to_recv_timeout)
    }

    /// Blocking iterator over messages. Ends when every sender is gone and the channel is
    /// drained, or at the first error (`RecvError::Failed`); loop on [`recv`](Self::recv) to
    /// tell the two apart. On a persistent channel (`with_disconnect(false)`) it ends only at
    /// an error. Once it has ended it stays ended, even if a new sender attaches
    /// later.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            rx: self,
            ended: false,
        }
    }

    /// Iterator over the messages waiting now. Ends at the first `Empty`, `Disconnected` or
    /// error (and may yield again later, if called again after new messages arrive).
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter { rx: self }
    }
}

/// The next message of a blocking iterator that stays ended once it has ended.
fn next_until_ended(rx: &Receiver, ended: &mut bool) -> Option<Message> {
    if *ended {
        return None;
    }
    let next = rx.recv().ok();
    *ended = next.is_none();
    next
}

/// Blocking iterator returned by [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    rx: &'a Receiver,
    ended: bool,
}

impl Iterator for Iter<'_> {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        next_until_ended(self.rx, &mut self.ended)
    }
}

/// Ends for good: a disconnected channel can gain a new sender by name, but the iterator
/// remembers that it ended.
impl FusedIterator for Iter<'_> {}

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

/// Blocking iterator that owns its receiver, returned by `Receiver::into_iter`. Behaves as
/// [`Iter`].
#[derive(Debug)]
pub struct IntoIter {
    rx: Receiver,
    ended: bool,
}

impl Iterator for IntoIter {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        next_until_ended(&self.rx, &mut self.ended)
    }
}

impl FusedIterator for IntoIter {}

impl<'a> IntoIterator for &'a Receiver {
    type Item = Message;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Receiver {
    type Item = Message;
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        IntoIter {
            rx: self,
            ended: false,
        }
    }
}
