//! The async API (feature `async`): futures for `recv`, `send`, `loan` and `join`, woken by
//! the per-process waiter thread of `reactor.rs`. Runtime-agnostic: they need only a `Waker`.
//!
//! Each poll arms the channel's futex word, makes one non-blocking attempt, and registers with
//! the waiter if the attempt was not ready. Nothing is taken or sent except by an attempt that
//! completes the future in the same poll, so a future dropped while pending has moved no
//! message; its drop removes its registration.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::endpoint::{Endpoint, Stopped};
use super::errors::{RecvError, SendError};
use super::layout::INLINE_MAX;
use super::message::{Loan, Message};
use super::reactor::reactor;
use super::receiver::Receiver;
use super::sender::Sender;
use super::to_send;
use super::wait::WaitOn;

/// A future that repeats `attempt` (`None`: not ready) each time `on`'s word may have moved.
struct Waiting<F> {
    ep: Arc<Endpoint>,
    on: WaitOn,
    registration: Option<u64>,
    attempt: F,
}

impl<F> Waiting<F> {
    fn new(ep: &Arc<Endpoint>, on: WaitOn, attempt: F) -> Self {
        Waiting {
            ep: Arc::clone(ep),
            on,
            registration: None,
            attempt,
        }
    }

    fn cancel(&mut self) {
        if let Some(id) = self.registration.take() {
            reactor().cancel(id);
        }
    }
}

// The attempt closure is never pinned in place (it is called through `&mut`), so the future
// may move freely.
impl<F> Unpin for Waiting<F> {}

impl<T, F: FnMut() -> Option<T>> Future for Waiting<F> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        // Armed before the attempt: a peer that makes it ready afterwards moves the word.
        let seq = this.ep.chan.arm(this.on);
        if let Some(done) = (this.attempt)() {
            this.cancel();
            return Poll::Ready(done);
        }
        let id = reactor().register(this.registration, &this.ep.chan, this.on, seq, cx.waker());
        this.registration = Some(id);
        Poll::Pending
    }
}

impl<F> Drop for Waiting<F> {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// How many async operations of this process are registered with its waiter thread now:
/// futures that are pending (polled, not ready, not dropped), at most one registration each.
/// A diagnostic: it is 0 once every future has completed or been dropped, which is how tests
/// check that cancelled futures leave nothing behind.
pub fn pending_async_waits() -> usize {
    reactor().pending()
}

/// One non-blocking attempt's result as a future's: `None` while it must wait.
fn ready_or_wait<T>(result: Result<T, Stopped>) -> Option<Result<T, Stopped>> {
    match result {
        Err(Stopped::Deadline(_)) => None,
        other => Some(other),
    }
}

fn to_recv_error(stop: Stopped) -> RecvError {
    match stop {
        Stopped::Failed(e) => RecvError::Failed(e),
        Stopped::Deadline(_) | Stopped::Disconnected => RecvError::Disconnected,
    }
}

impl Receiver {
    /// Receives the oldest message, waiting without blocking the thread: the async form of
    /// [`recv`](Receiver::recv), with the same results.
    ///
    /// Cancel-safe: a future dropped before it completes has taken nothing, and leaves no
    /// registration behind. Works under any executor; the wake-up comes from one waiter thread
    /// per process (named `shmq-waiter`) that sleeps on every pending future's channel at once.
    pub fn recv_async(&self) -> impl Future<Output = Result<Message, RecvError>> + Send + '_ {
        Waiting::new(&self.ep, WaitOn::NotEmpty, move || {
            ready_or_wait(self.ep.try_receive()).map(|r| r.map_err(to_recv_error))
        })
    }
}

impl Sender {
    /// Sends a copy of `bytes`, waiting without blocking the thread while the channel is full:
    /// the async form of [`send`](Sender::send).
    ///
    /// A payload of more than 96 bytes is copied once, when room for it is found, and then
    /// published when the ring has a free slot. Cancel-safe: a future dropped before it
    /// completes has sent nothing (room it had found is given back).
    // Written out rather than `async fn`, so that the signature promises `Send`.
    #[allow(clippy::manual_async_fn)]
    pub fn send_async<'a>(
        &'a self,
        bytes: &'a [u8],
    ) -> impl Future<Output = Result<(), SendError>> + Send + 'a {
        async move {
            if bytes.len() <= INLINE_MAX {
                let now = || Some(Instant::now());
                return Waiting::new(&self.ep, WaitOn::NotFull, move || {
                    ready_or_wait(self.ep.send_bytes(bytes, now()))
                })
                .await
                .map_err(|e| to_send(e, ()));
            }
            let mut loan = self.loan_async(bytes.len()).await?;
            loan.copy_from_slice(bytes);
            loan.send_async().await.map_err(to_send_back)
        }
    }

    /// Loans room for `len` bytes, waiting without blocking the thread while the arena (or
    /// the overflow table) has none: the async form of [`loan`](Sender::loan).
    ///
    /// A loan larger than the arena creates its overflow segment inside the poll that finds
    /// room, as [`loan`](Sender::loan) does. Cancel-safe: a future dropped before it completes
    /// holds no room.
    pub fn loan_async(
        &self,
        len: usize,
    ) -> impl Future<Output = Result<Loan, SendError>> + Send + '_ {
        map_stop(Waiting::new(&self.ep, WaitOn::Space, move || {
            ready_or_wait(self.ep.reserve(len as u64, Some(Instant::now())))
                .map(|r| r.map(|reserved| Loan::new(Arc::clone(&self.ep), reserved, len)))
        }))
    }

    /// Waits without blocking the thread until every message sent before the call has been
    /// received and dropped: the async form of [`join`](Sender::join), with its results.
    pub fn join_async(&self) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        // The target is fixed when the join begins, as for `join`.
        let target = self.ep.chan.sent_total();
        map_stop(Waiting::new(&self.ep, WaitOn::Done, move || {
            // As `join` does, act as this process's own participant first: a child forked
            // without exec registers one of its own here, so that while it waits it counts as
            // a live sender apart from its parent (one load once it has).
            if let Err(e) = self.ep.owner(Some(Instant::now())) {
                return Some(Err(Stopped::Failed(e)));
            }
            ready_or_wait(self.ep.join_until(target, Some(Instant::now())))
        }))
    }
}

impl Loan {
    /// Publishes the loaned bytes as a message, waiting without blocking the thread while the
    /// ring is full: the async form of [`send`](Loan::send). A failure gives the loan back in
    /// its error. Cancel-safe: a future dropped before it completes drops the unsent loan,
    /// which gives its room back.
    pub fn send_async(self) -> impl Future<Output = Result<(), SendError<Loan>>> + Send {
        let ep = Arc::clone(self.endpoint());
        let mut loan = Some(self);
        Waiting::new(&ep, WaitOn::NotFull, move || {
            let attempt = loan.take()?.publish(Some(Instant::now()));
            match attempt {
                Ok(()) => Some(Ok(())),
                Err((Stopped::Deadline(_), back)) => {
                    loan = Some(back);
                    None
                }
                Err((stop, back)) => Some(Err(to_send(stop, back))),
            }
        })
    }
}

/// A failed send of a loan as a failed copying send (the copy is gone with the loan).
fn to_send_back(e: SendError<Loan>) -> SendError {
    match e {
        SendError::Disconnected(_) => SendError::Disconnected(()),
        SendError::Failed(e, _) => SendError::Failed(e, ()),
    }
}

/// Turns a future's internal stop into the public send error.
async fn map_stop<T>(future: impl Future<Output = Result<T, Stopped>>) -> Result<T, SendError> {
    future.await.map_err(|e| to_send(e, ()))
}
