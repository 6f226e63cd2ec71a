//! [`Select`]: waiting on receives and sends of many channels at once, with crossbeam-channel's
//! API.
//!
//! A select arms the futex word of every operation (the same sequence words and armed flags a
//! blocking call uses, see `wait.rs`), re-checks every operation, then sleeps on all the words
//! at once with `futex_waitv`. A peer of any channel that changes what an operation waits for
//! bumps that channel's word, which ends the sleep. Sleeps last at most 25 ms, as a blocking
//! call's do, so that an operation whose peers were killed is seen as disconnected.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;
use super::errors::{RecvError, SendTimeoutError, TryRecvError};
use super::message::Message;
use super::receiver::Receiver;
use super::sender::Sender;
use super::wait::{WaitOn, MAX_SLEEP};
use super::{deadline_after, to_try_recv};
use crate::sys;

/// How long a select sleeps on one word at a time where `futex_waitv` is missing: the other
/// operations are re-checked at least this often.
const FALLBACK_SLICE: Duration = Duration::from_millis(1);

/// Waits on several operations (receives and sends, of any channels) until one is ready, as
/// crossbeam-channel's `Select` does.
///
/// Add operations with [`recv`](Select::recv) and [`send`](Select::send), each of which returns
/// the operation's index; then [`select`](Select::select) (or `try_`, `_timeout`, `_deadline`)
/// picks one ready operation and returns a [`SelectedOperation`] to complete it with, or
/// [`ready`](Select::ready) only says which one is ready.
///
/// - **One operation completes.** For a receive, `select` takes the message (it is held in the
///   `SelectedOperation` until [`SelectedOperation::recv`] hands it over); no other operation
///   of the select takes or sends anything.
/// - **Fairness.** When several operations are ready, one is chosen at random.
/// - **Disconnection counts as ready.** A receive whose channel has no sender left and nothing
///   queued, or a send whose channel has no receiver left, is ready: completing it returns
///   the `Disconnected` error. A killed peer shows up as such within about 50 ms.
/// - **A receive is ready** when its channel's oldest message is published, so that a take
///   finds it: a message a sender has begun (claimed its ring slot) but not yet handed over
///   counts in [`Receiver::len`], but not as ready. [`ready`](Select::ready) and
///   [`select`](Select::select) sleep until the sender hands it over.
/// - **A send is ready** when its channel's ring has a free slot (or it is disconnected). The
///   payload is copied when the send is completed: if another sender took the last slot
///   meanwhile, or the arena has no room for the payload, [`SelectedOperation::send`] waits for
///   room, but no longer than the select would have waited (see there).
///
/// Sleeping uses `futex_waitv` (Linux 5.16 and later) on up to 128 channels' words at once.
/// Where the kernel refuses it (older kernels, some seccomp filters), or with more than 128
/// distinct words, a select sleeps on one word at a time for at most 1 ms and re-checks every
/// operation in between: the same results, with up to 1 ms more latency for a message on
/// another channel, and about a thousand wake-ups a second while it waits.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pid = std::process::id();
/// let config = shmq::ChannelConfig::default().with_arena_bytes(1 << 20);
/// let (jobs_tx, jobs) = shmq::channel(&format!("doc-sel-jobs-{pid}"), config.clone())?;
/// let (control_tx, control) = shmq::channel(&format!("doc-sel-ctl-{pid}"), config)?;
/// control_tx.send(b"stop")?;
///
/// let mut sel = shmq::Select::new();
/// let job = sel.recv(&jobs);
/// let ctl = sel.recv(&control);
/// let oper = sel.select();
/// match oper.index() {
///     i if i == job => println!("job: {} bytes", oper.recv(&jobs)?.len()),
///     i if i == ctl => assert_eq!(&oper.recv(&control)?[..], b"stop"),
///     _ => unreachable!(),
/// }
/// # drop(jobs_tx);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Select<'a> {
    /// Every operation added, by index; `None` once removed.
    ops: Vec<Option<Operation<'a>>>,
    /// Scratch order of one pass over the operations (kept to spare an allocation per call).
    order: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Operation<'a> {
    Recv(&'a Receiver),
    Send(&'a Sender),
}

impl Operation<'_> {
    fn endpoint(&self) -> &Arc<Endpoint> {
        match self {
            Operation::Recv(rx) => &rx.ep,
            Operation::Send(tx) => &tx.ep,
        }
    }

    fn waits_on(&self) -> WaitOn {
        match self {
            Operation::Recv(_) => WaitOn::NotEmpty,
            Operation::Send(_) => WaitOn::NotFull,
        }
    }
}

impl fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self
            .ops
            .iter()
            .flatten()
            .map(|op| match op {
                Operation::Recv(rx) => format!("recv({})", rx.name()),
                Operation::Send(tx) => format!("send({})", tx.name()),
            })
            .collect();
        f.debug_struct("Select").field("ops", &ops).finish()
    }
}

/// What a ready operation found, kept until it is completed.
// A `Message` carries its inline payload (up to 96 bytes) by value; boxing it here would cost
// an allocation per selected receive, to save a move of about 250 bytes.
#[allow(clippy::large_enum_variant)]
enum Found {
    /// A receive took a message, or found the channel disconnected or failing.
    Received(Result<Message, RecvError>),
    /// A send found room in the ring (`false`), or no receiver left (`true`).
    Sendable { disconnected: bool },
    /// [`Select::ready`] only looked.
    Looked,
}

/// An operation of a [`Select`] chosen as ready, to be completed with
/// [`recv`](SelectedOperation::recv) or [`send`](SelectedOperation::send) on the handle it was
/// added with.
///
/// As in crossbeam-channel, dropping it without completing it is a bug and panics (a received
/// message it held is then dropped as if received).
#[must_use = "a selected operation must be completed with `recv` or `send`"]
pub struct SelectedOperation<'a> {
    index: usize,
    operation: Operation<'a>,
    found: Option<Found>,
    /// The deadline of the select that chose it (`None`: it could wait for ever), which a
    /// selected send keeps.
    deadline: Option<Instant>,
}

impl fmt::Debug for SelectedOperation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedOperation")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// [`Select::try_select`] found no operation ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrySelectError;

/// [`Select::select_timeout`] or [`Select::select_deadline`] found no operation ready in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectTimeoutError;

/// [`Select::try_ready`] found no operation ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TryReadyError;

/// [`Select::ready_timeout`] or [`Select::ready_deadline`] found no operation ready in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyTimeoutError;

macro_rules! unit_error {
    ($ty:ty, $text:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }
        impl std::error::Error for $ty {}
    };
}
unit_error!(TrySelectError, "no operation of the select is ready");
unit_error!(
    SelectTimeoutError,
    "no operation of the select became ready in time"
);
unit_error!(TryReadyError, "no operation of the select is ready");
unit_error!(
    ReadyTimeoutError,
    "no operation of the select became ready in time"
);

impl<'a> Select<'a> {
    /// An empty select.
    pub fn new() -> Select<'a> {
        Select {
            ops: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Adds a receive from `rx` and returns its index.
    pub fn recv(&mut self, rx: &'a Receiver) -> usize {
        self.ops.push(Some(Operation::Recv(rx)));
        self.ops.len() - 1
    }

    /// Adds a send on `tx` and returns its index. The payload is given when the operation is
    /// completed ([`SelectedOperation::send`]).
    pub fn send(&mut self, tx: &'a Sender) -> usize {
        self.ops.push(Some(Operation::Send(tx)));
        self.ops.len() - 1
    }

    /// Removes the operation of `index`; the indices of the others stay as they were.
    ///
    /// # Panics
    ///
    /// If no operation has that index, or it was removed already.
    pub fn remove(&mut self, index: usize) {
        let removed = self.ops.get_mut(index).and_then(Option::take);
        assert!(
            removed.is_some(),
            "no operation with index {index} in this select"
        );
    }

    /// Picks a ready operation without waiting. A send it picks does not wait either (see
    /// [`SelectedOperation::send`]).
    pub fn try_select(&mut self) -> Result<SelectedOperation<'a>, TrySelectError> {
        self.pass(true)
            .map(|oper| oper.within(Instant::now()))
            .ok_or(TrySelectError)
    }

    /// Blocks until an operation is ready and picks it.
    ///
    /// # Panics
    ///
    /// If the select has no operation (it would wait for ever).
    pub fn select(&mut self) -> SelectedOperation<'a> {
        assert!(self.has_operations(), "select() with no operation");
        loop {
            if let Some(oper) = self.wait(None, true) {
                return oper;
            }
        }
    }

    /// Waits at most `timeout` for an operation to be ready, and picks it. A send it picks
    /// keeps the same deadline (see [`SelectedOperation::send`]).
    pub fn select_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.select_deadline(deadline),
            None => Ok(self.select()),
        }
    }

    /// Waits until `deadline` at most for an operation to be ready, and picks it. A send it
    /// picks keeps the same deadline (see [`SelectedOperation::send`]).
    pub fn select_deadline(
        &mut self,
        deadline: Instant,
    ) -> Result<SelectedOperation<'a>, SelectTimeoutError> {
        self.wait(Some(deadline), true)
            .map(|oper| oper.within(deadline))
            .ok_or(SelectTimeoutError)
    }

    /// The index of an operation ready now, without completing it.
    ///
    /// Only a hint, as in crossbeam-channel: another thread or process may take the message
    /// (or the ring slot) before this one acts on it, so follow it with a `try_` call.
    pub fn try_ready(&mut self) -> Result<usize, TryReadyError> {
        self.pass(false)
            .map(|oper| oper.into_index())
            .ok_or(TryReadyError)
    }

    /// Blocks until an operation is ready and returns its index (a hint: see
    /// [`try_ready`](Self::try_ready)).
    ///
    /// # Panics
    ///
    /// If the select has no operation.
    pub fn ready(&mut self) -> usize {
        assert!(self.has_operations(), "ready() with no operation");
        loop {
            if let Some(oper) = self.wait(None, false) {
                return oper.into_index();
            }
        }
    }

    /// Waits at most `timeout` for an operation to be ready and returns its index.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.ready_deadline(deadline),
            None => Ok(self.ready()),
        }
    }

    /// Waits until `deadline` at most for an operation to be ready and returns its index.
    pub fn ready_deadline(&mut self, deadline: Instant) -> Result<usize, ReadyTimeoutError> {
        self.wait(Some(deadline), false)
            .map(|oper| oper.into_index())
            .ok_or(ReadyTimeoutError)
    }

    fn has_operations(&self) -> bool {
        self.ops.iter().any(Option::is_some)
    }

    /// One look at every operation, in a random order; with `complete`, a ready receive takes
    /// its message.
    fn pass(&mut self, complete: bool) -> Option<SelectedOperation<'a>> {
        self.order.clear();
        self.order.extend(
            self.ops
                .iter()
                .enumerate()
                .filter_map(|(i, op)| op.map(|_| i)),
        );
        shuffle(&mut self.order);
        for &index in &self.order {
            let operation = self.ops[index]?;
            if let Some(found) = look(operation, complete) {
                return Some(SelectedOperation {
                    index,
                    operation,
                    found: Some(found),
                    deadline: None,
                });
            }
        }
        None
    }

    /// Passes until one finds an operation ready or `deadline` passes: spinning first (for the
    /// longest spin of the handles involved), then sleeping on every operation's word.
    fn wait(&mut self, deadline: Option<Instant>, complete: bool) -> Option<SelectedOperation<'a>> {
        if let Some(oper) = self.pass(complete) {
            return Some(oper);
        }
        let ops: Vec<Operation<'a>> = self.ops.iter().flatten().copied().collect();
        if ops.is_empty() {
            // Nothing can become ready: wait out the deadline, as crossbeam does.
            if let Some(d) = deadline {
                std::thread::sleep(d.saturating_duration_since(Instant::now()));
            }
            return None;
        }
        let spin = ops.iter().map(|op| op.endpoint().spin()).max();
        let start = Instant::now();
        let timed_out = |now: Instant| deadline.is_some_and(|d| now >= d);
        // Spin: watch each operation's progress word, and pass when one moved (or every 64
        // polls, for what no single word shows).
        let mut seen: Vec<u64> = ops.iter().map(|op| progress(op)).collect();
        let mut polls = 0u32;
        loop {
            let now = Instant::now();
            if timed_out(now) {
                return None;
            }
            if now.duration_since(start) >= spin.unwrap_or_default() {
                break;
            }
            std::hint::spin_loop();
            polls = polls.wrapping_add(1);
            let mut moved = polls.is_multiple_of(64);
            for (op, seen) in ops.iter().zip(seen.iter_mut()) {
                let now = progress(op);
                moved |= now != *seen;
                *seen = now;
            }
            if moved {
                if let Some(oper) = self.pass(complete) {
                    return Some(oper);
                }
            }
        }
        loop {
            // Arm every word, then look: a peer that makes an operation ready after its word
            // was armed bumps the word, and the sleep below returns at once.
            let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(ops.len());
            for op in &ops {
                let chan = &op.endpoint().chan;
                let on = op.waits_on();
                let seq = chan.arm(on);
                let word = chan.wait_word(on);
                if !words.iter().any(|(w, _)| std::ptr::eq(*w, word)) {
                    words.push((word, seq));
                }
            }
            if let Some(oper) = self.pass(complete) {
                return Some(oper);
            }
            let now = Instant::now();
            if timed_out(now) {
                return None;
            }
            let mut until = now + MAX_SLEEP;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            let slept = words.len() <= sys::FUTEX_WAITV_MAX
                && sys::futex_wait_any_supported()
                && sys::futex_wait_any(&words, Some(until)) == sys::WaitAny::Returned;
            if !slept {
                // One word at a time, briefly, and a pass over all of them in between.
                let slice = until.saturating_duration_since(now).min(FALLBACK_SLICE);
                let (word, seq) = words[0];
                sys::futex_wait(word, seq, Some(slice));
            }
        }
    }
}

/// The word a spinning select watches for `op`.
fn progress(op: &Operation<'_>) -> u64 {
    op.endpoint()
        .chan
        .progress(op.waits_on())
        .load(Ordering::Acquire)
}

/// Whether `op` is ready, and what it found; with `complete`, a ready receive takes its
/// message.
fn look(op: Operation<'_>, complete: bool) -> Option<Found> {
    match op {
        Operation::Recv(rx) if complete => match rx.ep.try_receive().map_err(to_try_recv) {
            Ok(msg) => Some(Found::Received(Ok(msg))),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Found::Received(Err(RecvError::Disconnected))),
            Err(TryRecvError::Failed(e)) => Some(Found::Received(Err(RecvError::Failed(e)))),
        },
        // The head slot published, not merely claimed: a sender between its claim and its
        // hand-over makes `len` count a message that a take cannot have yet, and reporting
        // that as ready would have a `ready` loop spin until the sender goes on.
        Operation::Recv(rx) => {
            (rx.ep.chan.head_published() || rx.ep.peer_gone()).then_some(Found::Looked)
        }
        Operation::Send(tx) => {
            let disconnected = tx.ep.peer_gone();
            (disconnected || !tx.is_full()).then_some(Found::Sendable { disconnected })
        }
    }
}

impl<'a> SelectedOperation<'a> {
    /// The index of the operation (as returned when it was added).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The operation, to be completed by `deadline` (a send's wait for room).
    fn within(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn into_index(mut self) -> usize {
        self.found = None;
        self.index
    }

    /// Completes a selected receive: the message it took, or `Disconnected` (every sender
    /// gone and the channel drained), or the failure it met.
    ///
    /// # Panics
    ///
    /// If `rx` is not a handle of the channel the operation was added with, or the operation
    /// is a send.
    pub fn recv(mut self, rx: &Receiver) -> Result<Message, RecvError> {
        let Operation::Recv(added) = self.operation else {
            panic!("SelectedOperation::recv on a send operation");
        };
        assert!(
            same_channel(&added.ep, &rx.ep),
            "SelectedOperation::recv with a receiver of another channel than the selected one"
        );
        match self.found.take() {
            Some(Found::Received(result)) => result,
            _ => unreachable!("a selected receive holds what it found"),
        }
    }

    /// Completes a selected send by sending a copy of `bytes` on `tx`: `Disconnected` if the
    /// channel had no receiver when it was selected, otherwise as [`Sender::send`], which
    /// waits for room if another sender took the free slot meanwhile (or the arena has no room
    /// for the payload), with one difference: it keeps the deadline of the select that chose
    /// it. After [`Select::select`] it waits as long as it takes; after
    /// [`select_timeout`](Select::select_timeout) or
    /// [`select_deadline`](Select::select_deadline) until that deadline at most, and then
    /// fails with [`SendTimeoutError::Timeout`], having sent nothing; after
    /// [`try_select`](Select::try_select) it does not wait at all (one attempt, as
    /// [`Sender::try_send`]). In `select!`, that is: no `default` arm, a `default(timeout)`
    /// arm, a `default` arm.
    ///
    /// crossbeam-channel's selected send always completes, since its select reserves the slot
    /// for the operation it picks. A ring shared between processes has no reservation that a
    /// killed or stopped picker could not strand, so here the slot can be lost to another
    /// sender between the pick and the send; a caller who bounded the select's wait would not
    /// want the send to wait without bound, hence the deadline and the `Timeout` case.
    ///
    /// # Panics
    ///
    /// If `tx` is not a handle of the channel the operation was added with, or the operation
    /// is a receive.
    pub fn send(mut self, tx: &Sender, bytes: &[u8]) -> Result<(), SendTimeoutError> {
        let Operation::Send(added) = self.operation else {
            panic!("SelectedOperation::send on a receive operation");
        };
        assert!(
            same_channel(&added.ep, &tx.ep),
            "SelectedOperation::send with a sender of another channel than the selected one"
        );
        match (self.found.take(), self.deadline) {
            (Some(Found::Sendable { disconnected: true }), _) => {
                Err(SendTimeoutError::Disconnected(()))
            }
            (_, Some(deadline)) => tx.send_deadline(bytes, deadline),
            (_, None) => tx.send(bytes).map_err(Into::into),
        }
    }
}

impl Drop for SelectedOperation<'_> {
    fn drop(&mut self) {
        if self.found.is_some() && !std::thread::panicking() {
            panic!(
                "a SelectedOperation (index {}) was dropped without being completed",
                self.index
            );
        }
    }
}

/// Whether two endpoints are handles of one channel: the same family, or families of the same
/// segment creation (opened by name apart).
fn same_channel(a: &Arc<Endpoint>, b: &Arc<Endpoint>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.chan.name() == b.chan.name()
            && a.chan.region().incarnation() == b.chan.region().incarnation())
}

/// Shuffles `items` in place (Fisher-Yates) with a per-thread xorshift generator: fairness
/// between ready operations needs no more than that.
fn shuffle(items: &mut [usize]) {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    if items.len() < 2 {
        return;
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // Seeded once per thread from the clock and the thread's stack address.
            let seed = sys::coarse_clock_ns() ^ (state as *const Cell<u64> as u64).rotate_left(32);
            x = seed | 1;
        }
        for i in (1..items.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let j = (x % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
        state.set(x);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::layout::{Phase, Place, SlotState};
    use crate::ChannelConfig;

    // A slot a sender has claimed and not yet handed over (a sender preempted, or stopped, or
    // killed and not yet reclaimed, between the two steps) counts in `len` but gives a take
    // nothing: reported as ready, it had `ready` loops spin for as long as the sender stood
    // still. Made here by running the sender's steps one by one (ring.rs, `try_publish`),
    // which no public call can stop between.
    #[test]
    fn a_claimed_head_slot_is_ready_only_once_it_is_published() {
        let name = format!("unit-sel-claimed-{}", std::process::id());
        let config = ChannelConfig::default()
            .with_capacity(4)
            .with_arena_bytes(64 << 10);
        let (tx, rx) = crate::channel(&name, config).expect("create");
        let owner = tx.ep.owner(None).expect("owner");
        let position = tx
            .ep
            .chan
            .claim_for_send(owner.slot)
            .expect("claim")
            .expect("a free slot");
        assert_eq!(rx.len(), 1, "the claimed slot counts as queued");
        let mut sel = Select::new();
        let on_rx = sel.recv(&rx);
        assert_eq!(sel.try_ready(), Err(TryReadyError));
        assert_eq!(
            sel.ready_timeout(Duration::from_millis(20)),
            Err(ReadyTimeoutError)
        );
        assert!(sel.try_select().is_err(), "nothing to take yet");

        // The sender's last steps: describe the message, hand the slot over, wake.
        tx.ep.chan.write_desc(position, Place::Inline, 5, b"hello");
        tx.ep.chan.slot_state(position).swap(
            SlotState::new(position, Phase::Full, None).0,
            Ordering::SeqCst,
        );
        tx.ep.chan.notify(WaitOn::NotEmpty);
        assert_eq!(sel.try_ready(), Ok(on_rx));
        assert_eq!(rx.len(), 1, "ready took nothing");
        assert_eq!(&sel.select().recv(&rx).expect("recv")[..], b"hello");
    }
}
