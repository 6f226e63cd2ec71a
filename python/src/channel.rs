//! `Channel`: one shmq channel as the Python queues (and later pipes) use it.
//!
//! A `Channel` is a per-process handle on a channel, created (`Channel.create`) or found by name
//! (`Channel.open`). It opens the channel's `Sender` and `Receiver` lazily, each the first time
//! this process sends or receives, and carries whole Python objects as frames (see `frame.rs`):
//! `send_frame` copies a pickle and its out-of-band buffers into shared memory in one copy,
//! `recv_frame` hands them back without one (`message.rs`), and `loan` lends room to build an
//! object in place (`loan.rs`). Every call that may wait runs through `wait::blocking`: the GIL
//! is released, Ctrl-C interrupts it, and a signal handler that returns lets it go on.
//!
//! What the Python layer adds: pickling (`shmq/_pickle.py`), the exceptions and messages of
//! multiprocessing (`shmq/queues.py`), and the per-process cache (`shmq/_channels.py`).
//!
//! Channels made here are persistent (`ChannelConfig::with_disconnect(false)`): a Python queue
//! never disconnects, so a producer may put before any consumer exists and a consumer waits
//! while no producer does. A process that both puts and gets opens its second side on the
//! first one's mapping (`open_receiver`/`open_sender`), so the arena is mapped once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use shmq::{
    ChannelConfig, JoinTasksTimeoutError, Receiver, RecvTimeoutError, SendTimeoutError, Sender,
    TaskDoneError,
};

use crate::buffers::ReadBuffer;
use crate::errors::{to_py, IntoPy};
use crate::frame;
use crate::loan::Loan;
use crate::message::{self, Decoded, Delivery, DETACHED_COPY};
use crate::wait::{blocking, deadline_after, Slice};

/// Registers this file's classes and constants in the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Channel>()?;
    m.add_class::<message::MessageBuffer>()?;
    m.add_class::<Loan>()?;
    m.add("FRAME_KIND_PICKLE", frame::KIND_PICKLE)?;
    m.add("FRAME_KIND_BYTES", frame::KIND_BYTES)?;
    m.add("FRAME_KIND_BYTEARRAY", frame::KIND_BYTEARRAY)?;
    m.add("FRAME_KIND_MEMORYVIEW", frame::KIND_MEMORYVIEW)?;
    m.add("FRAME_HEADER_LEN", frame::HEADER_LEN)?;
    m.add("FRAME_ENTRY_LEN", frame::ENTRY_LEN)?;
    m.add("FRAME_VERSION", frame::VERSION)?;
    Ok(())
}

/// Frames up to this size are assembled in a small heap buffer and sent with one copying send
/// (the core puts those of 96 bytes or less inline in the ring slot); larger ones are built
/// directly in a loan.
const SMALL_FRAME: usize = 4096;

/// Participants a channel made by `Channel.create` has room for by default: each process that
/// uses a queue takes one or two.
const DEFAULT_PARTICIPANTS: u32 = 1024;
// `Channel.create`'s signature spells the default out; keep the two equal.
const _: () = assert!(DEFAULT_PARTICIPANTS == 1024);

/// Why a channel operation stopped, other than success or the caller's deadline.
pub(crate) enum Stop {
    /// The other side has no live participant: never on the persistent channels made here
    /// (a channel of the same name made by Rust code might disconnect).
    Disconnected,
    /// The operation failed.
    Failed(shmq::Error),
    /// This `Channel` was closed while the call waited.
    Closed,
}

impl Stop {
    fn into_py(self) -> PyErr {
        match self {
            Stop::Failed(e) => to_py(e),
            Stop::Disconnected => PyRuntimeError::new_err("the channel's other side is gone"),
            Stop::Closed => closed_error(),
        }
    }
}

fn closed_error() -> PyErr {
    PyOSError::new_err("handle is closed")
}

/// Sorts a failed timed send: `None` when it is only "not yet" (the deadline of this slice
/// passed, or a lock was held for a moment longer: a sliced wait retries both until the
/// caller's own deadline), else why it stopped. Gives back what the send carried.
pub(crate) fn sort_send_error<T>(err: SendTimeoutError<T>) -> (T, Option<Stop>) {
    let stop = match &err {
        SendTimeoutError::Timeout(_) => None,
        SendTimeoutError::Disconnected(_) => Some(Stop::Disconnected),
        SendTimeoutError::Failed(shmq::Error::LockTimeout { .. }, _) => None,
        SendTimeoutError::Failed(e, _) => Some(Stop::Failed(e.clone())),
        _ => Some(Stop::Failed(shmq::Error::Corrupted {
            name: String::new(),
            what: format!("unexpected send error: {err}"),
        })),
    };
    (err.into_inner(), stop)
}

/// As [`sort_send_error`], for a timed receive.
fn sort_recv_error(err: RecvTimeoutError) -> Option<Stop> {
    match err {
        RecvTimeoutError::Timeout => None,
        RecvTimeoutError::Disconnected => Some(Stop::Disconnected),
        RecvTimeoutError::Failed(shmq::Error::LockTimeout { .. }) => None,
        RecvTimeoutError::Failed(e) => Some(Stop::Failed(e)),
        other => Some(Stop::Failed(shmq::Error::Corrupted {
            name: String::new(),
            what: format!("unexpected receive error: {other}"),
        })),
    }
}

/// What a channel is, learnt once per `Channel` when it first opens a role.
#[derive(Clone, Copy, Debug)]
struct Facts {
    /// Which creation of the name this is (the segment's creation time, ns since the epoch).
    incarnation: u64,
    /// Bytes of the arena: payloads up to this size travel in it, larger ones in overflow
    /// segments.
    arena_bytes: u64,
}

/// A handle on either side, for the queries both sides answer.
enum AnyHandle {
    Tx(Sender),
    Rx(Receiver),
}

/// A borrowed handle of either side.
#[derive(Clone, Copy)]
enum HandleRef<'a> {
    Tx(&'a Sender),
    Rx(&'a Receiver),
}

impl AnyHandle {
    fn as_ref(&self) -> HandleRef<'_> {
        match self {
            AnyHandle::Tx(h) => HandleRef::Tx(h),
            AnyHandle::Rx(h) => HandleRef::Rx(h),
        }
    }

    fn len(&self) -> usize {
        match self {
            AnyHandle::Tx(h) => h.len(),
            AnyHandle::Rx(h) => h.len(),
        }
    }
    fn capacity(&self) -> usize {
        match self {
            AnyHandle::Tx(h) => h.capacity(),
            AnyHandle::Rx(h) => h.capacity(),
        }
    }
    fn free_arena_bytes(&self) -> u64 {
        match self {
            AnyHandle::Tx(h) => h.free_arena_bytes(),
            AnyHandle::Rx(h) => h.free_arena_bytes(),
        }
    }
    fn stats(&self) -> shmq::ChannelStats {
        match self {
            AnyHandle::Tx(h) => h.stats(),
            AnyHandle::Rx(h) => h.stats(),
        }
    }
    fn try_task_done(&self) -> Result<(), TaskDoneError> {
        match self {
            AnyHandle::Tx(h) => h.try_task_done(),
            AnyHandle::Rx(h) => h.try_task_done(),
        }
    }
    fn join_tasks_deadline(&self, deadline: Instant) -> Result<(), JoinTasksTimeoutError> {
        match self {
            AnyHandle::Tx(h) => h.join_tasks_deadline(deadline),
            AnyHandle::Rx(h) => h.join_tasks_deadline(deadline),
        }
    }
    fn unfinished_tasks(&self) -> u64 {
        match self {
            AnyHandle::Tx(h) => h.unfinished_tasks(),
            AnyHandle::Rx(h) => h.unfinished_tasks(),
        }
    }
}

/// Locks one of the role cells. These mutexes are only ever taken while attached to the
/// interpreter (holding the GIL), and never across `detach`: so no thread holds one when
/// another thread forks (fork needs the GIL), and a forked child never finds one locked for
/// ever. A poisoned lock (a panic while held) holds a plain `Option`, still valid.
fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One shmq channel in this process, with its sender and receiver opened when first needed.
///
/// Made by `Channel.create(name, capacity, arena_bytes)` (which holds both sides from the
/// start) or `Channel.open(name)` (which opens nothing until used). Frozen and thread-safe: one
/// `Channel` serves every thread of the process, and `shmq/_channels.py` keeps one per name.
#[pyclass(frozen, weakref, module = "shmq._shmq", name = "Channel")]
pub(crate) struct Channel {
    name: String,
    /// The incarnation the opener was told to expect (from a pickled handle), checked when a
    /// role is first opened.
    expected_incarnation: Option<u64>,
    facts: OnceLock<Facts>,
    sender: Mutex<Option<Sender>>,
    receiver: Mutex<Option<Receiver>>,
    closed: AtomicBool,
    /// How its handles wait (`set_spin`, `set_adaptive_spin`): given to each side as it opens,
    /// and to the sides already open when it changes.
    waiting: Mutex<Waiting>,
}

/// How a channel's blocking calls wait before they sleep (see `Sender::set_spin`).
#[derive(Clone, Copy)]
struct Waiting {
    spin: Duration,
    adaptive: bool,
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting {
            spin: shmq::DEFAULT_SPIN,
            adaptive: true,
        }
    }
}

impl Waiting {
    fn apply_to_sender(self, tx: &Sender) {
        tx.set_spin(self.spin);
        tx.set_adaptive_spin(self.adaptive);
    }

    fn apply_to_receiver(self, rx: &Receiver) {
        rx.set_spin(self.spin);
        rx.set_adaptive_spin(self.adaptive);
    }
}

impl Channel {
    fn new(name: String, expected_incarnation: Option<u64>) -> Channel {
        Channel {
            name,
            expected_incarnation,
            facts: OnceLock::new(),
            sender: Mutex::new(None),
            receiver: Mutex::new(None),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Waiting::default()),
        }
    }

    /// Changes how the handles wait, for the sides open now and those opened later.
    fn set_waiting(&self, change: impl FnOnce(&mut Waiting)) {
        let mut waiting = lock(&self.waiting);
        change(&mut waiting);
        if let Some(tx) = lock(&self.sender).as_ref() {
            waiting.apply_to_sender(tx);
        }
        if let Some(rx) = lock(&self.receiver).as_ref() {
            waiting.apply_to_receiver(rx);
        }
    }

    /// The channel's name.
    pub(crate) fn name_str(&self) -> &str {
        &self.name
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// This process's sender, opened now if it has none.
    pub(crate) fn sender(&self, py: Python<'_>) -> PyResult<Sender> {
        self.check_open()?;
        if let Some(tx) = lock(&self.sender).as_ref() {
            return Ok(tx.clone());
        }
        // Through a receiver this process holds, if any: it shares that mapping instead of
        // mapping and prefaulting the arena a second time.
        let held_rx = lock(&self.receiver).clone();
        let name = self.name.as_str();
        let tx = match held_rx {
            Some(rx) => py.detach(|| rx.open_sender()),
            None => py.detach(|| Sender::open(name)),
        }
        .py_err()?;
        self.learn_facts(HandleRef::Tx(&tx))?;
        let tx = lock(&self.sender).get_or_insert(tx).clone();
        // After it is in place: a `set_waiting` now either finds it or is seen here.
        lock(&self.waiting).apply_to_sender(&tx);
        Ok(tx)
    }

    /// This process's receiver, opened now if it has none.
    pub(crate) fn receiver(&self, py: Python<'_>) -> PyResult<Receiver> {
        self.check_open()?;
        if let Some(rx) = lock(&self.receiver).as_ref() {
            return Ok(rx.clone());
        }
        // Through a sender this process holds, as in `sender`.
        let held_tx = lock(&self.sender).clone();
        let name = self.name.as_str();
        let rx = match held_tx {
            Some(tx) => py.detach(|| tx.open_receiver()),
            None => py.detach(|| Receiver::open(name)),
        }
        .py_err()?;
        self.learn_facts(HandleRef::Rx(&rx))?;
        let rx = lock(&self.receiver).get_or_insert(rx).clone();
        // After it is in place: a `set_waiting` now either finds it or is seen here.
        lock(&self.waiting).apply_to_receiver(&rx);
        Ok(rx)
    }

    /// A handle of either side for queries (the sender, opened if neither is).
    fn any_handle(&self, py: Python<'_>) -> PyResult<AnyHandle> {
        self.check_open()?;
        if let Some(tx) = lock(&self.sender).as_ref() {
            return Ok(AnyHandle::Tx(tx.clone()));
        }
        if let Some(rx) = lock(&self.receiver).as_ref() {
            return Ok(AnyHandle::Rx(rx.clone()));
        }
        Ok(AnyHandle::Tx(self.sender(py)?))
    }

    /// The channel's incarnation and arena size, learnt once, from `handle`, a side just
    /// opened (and not yet kept); checks the identity that a pickled handle promised. On a
    /// mismatch the caller drops `handle`. Both figures come from the very segment the handle
    /// maps, never from another one of the same name.
    fn learn_facts(&self, handle: HandleRef<'_>) -> PyResult<Facts> {
        if let Some(facts) = self.facts.get() {
            return Ok(*facts);
        }
        let (incarnation, stats) = match handle {
            HandleRef::Tx(h) => (h.incarnation(), h.stats()),
            HandleRef::Rx(h) => (h.incarnation(), h.stats()),
        };
        let facts = Facts {
            incarnation,
            arena_bytes: stats.arena_bytes,
        };
        if let Some(expected) = self.expected_incarnation {
            if expected != facts.incarnation {
                // The channel the handle was pickled from is gone; another one has its name.
                return Err(to_py(shmq::Error::NotFound {
                    name: self.name.clone(),
                }));
            }
        }
        Ok(*self.facts.get_or_init(|| facts))
    }

    /// Runs `op` in `wait::blocking` slices until it is done, `deadline` passes (`Ok(None)`)
    /// or this `Channel` is closed (`OSError("handle is closed")`). `op(until)` returns by
    /// `until` with `Ok(Some(_))` when done, `Ok(None)` for "not yet", or why it stopped.
    fn wait_until<T: Send>(
        &self,
        py: Python<'_>,
        deadline: Option<Instant>,
        mut op: impl FnMut(Instant) -> Result<Option<T>, Stop> + Send,
    ) -> PyResult<Option<T>> {
        let outcome = blocking(py, deadline, |until| {
            if self.closed.load(Ordering::Acquire) {
                return Slice::Done(Err(Stop::Closed));
            }
            match op(until) {
                Ok(Some(done)) => Slice::Done(Ok(done)),
                Ok(None) => Slice::NotYet,
                Err(stop) => Slice::Done(Err(stop)),
            }
        })?;
        match outcome {
            None => Ok(None),
            Some(Ok(done)) => Ok(Some(done)),
            Some(Err(stop)) => Err(stop.into_py()),
        }
    }

    /// Sends a small message (a frame assembled in `bytes`) with one copying send.
    fn send_copy(&self, py: Python<'_>, bytes: &[u8], deadline: Option<Instant>) -> PyResult<bool> {
        let tx = self.sender(py)?;
        let sent = self.wait_until(py, deadline, |until| match tx.send_deadline(bytes, until) {
            Ok(()) => Ok(Some(())),
            Err(e) => sort_send_error(e).1.map_or(Ok(None), Err),
        })?;
        Ok(sent.is_some())
    }

    /// Sends `run`, small messages (frames assembled in bytes), in order through the core's
    /// batch send, waiting until `deadline` (`None`: for ever) whenever the channel is full.
    /// Returns how many were sent: all of them, unless the deadline passed first.
    fn send_run(
        &self,
        py: Python<'_>,
        run: &[&[u8]],
        deadline: Option<Instant>,
    ) -> PyResult<usize> {
        let tx = self.sender(py)?;
        let mut sent = 0;
        self.wait_until(py, deadline, |until| {
            // One call sends as many as fit once the first does (inline ones in one pass, a
            // larger one alone): call again on the rest until none is left or time is up.
            while sent < run.len() {
                match tx.send_many_deadline(&run[sent..], until) {
                    Ok(count) => sent += count,
                    Err(e) => return sort_send_error(e).1.map_or(Ok(None), Err),
                }
            }
            Ok(Some(()))
        })?;
        Ok(sent)
    }

    /// Sends a frame too large to assemble on the heap: room is reserved in the channel, the
    /// frame is built straight into it and published, waiting until `deadline` for each.
    /// `Ok(false)` when the deadline passed first (the room is given back).
    fn send_large(
        &self,
        py: Python<'_>,
        frame: &LargeFrame,
        deadline: Option<Instant>,
    ) -> PyResult<bool> {
        let (kind, layout, parts) = (frame.kind, &frame.layout, &frame.parts);
        let Some((loan, _tx)) = self.reserve(py, layout.total, deadline)? else {
            return Ok(false);
        };
        let mut slot = Some(loan);
        if let Some(loan) = slot.as_mut() {
            let fill = |loan: &mut shmq::Loan| {
                // SAFETY: every part is the memory of an export held in `frame._exports`, which
                // stays taken (and so alive and unmoved) while the copy runs, with or without
                // the GIL: `frame` is borrowed for this whole call. Unwritten, as `fill_frame`
                // also asks, is the caller's part: the buffer protocol cannot stop another
                // Python thread writing a buffer that is being put (as for `send_frame`).
                unsafe { fill_frame(&mut loan[..], kind, layout, parts) }
            };
            if layout.total >= DETACHED_COPY {
                py.detach(|| fill(loan));
            } else {
                fill(loan);
            }
        }
        // The loan is dropped unsent (its room given back) if the deadline passes first.
        self.publish(py, &mut slot, deadline)
    }

    /// Reserves `len` bytes of the channel's memory, waiting until `deadline` (`None`: for
    /// ever) for room. `Ok(None)` when the deadline passed first.
    pub(crate) fn reserve(
        &self,
        py: Python<'_>,
        len: usize,
        deadline: Option<Instant>,
    ) -> PyResult<Option<(shmq::Loan, Sender)>> {
        let tx = self.sender(py)?;
        let loan = self.wait_until(py, deadline, |until| match tx.loan_deadline(len, until) {
            Ok(loan) => Ok(Some(loan)),
            Err(e) => sort_send_error(e).1.map_or(Ok(None), Err),
        })?;
        Ok(loan.map(|loan| (loan, tx)))
    }

    /// Publishes the loan in `slot`, waiting until `deadline` for room in the ring. `Ok(true)`
    /// when sent (the slot is then empty); `Ok(false)` when the deadline passed first, and `Err`
    /// when the send failed, both with the loan back in the slot.
    pub(crate) fn publish(
        &self,
        py: Python<'_>,
        slot: &mut Option<shmq::Loan>,
        deadline: Option<Instant>,
    ) -> PyResult<bool> {
        let outcome = blocking(py, deadline, |until| {
            let Some(loan) = slot.take() else {
                return Slice::Done(Ok(()));
            };
            match loan.send_deadline(until) {
                Ok(()) => Slice::Done(Ok(())),
                Err(e) => {
                    let (loan, stop) = sort_send_error(e);
                    *slot = Some(loan);
                    match stop {
                        None => Slice::NotYet,
                        Some(stop) => Slice::Done(Err(stop)),
                    }
                }
            }
        })?;
        match outcome {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            // A failed send leaves the loan in `slot`: the caller gives the room back (a
            // `Loan` with live views keeps it until they go).
            Some(Err(stop)) => Err(stop.into_py()),
        }
    }

    /// Receives one message, waiting until `deadline` (`None`: for ever). `Ok(None)` when the
    /// deadline passed first.
    pub(crate) fn receive(
        &self,
        py: Python<'_>,
        deadline: Option<Instant>,
    ) -> PyResult<Option<shmq::Message>> {
        let rx = self.receiver(py)?;
        self.wait_until(py, deadline, |until| match rx.recv_deadline(until) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => sort_recv_error(e).map_or(Ok(None), Err),
        })
    }

    /// Receives the messages ready now, up to `max` and at least one, waiting until
    /// `deadline` (`None`: for ever) for the first: an empty list when the deadline passed
    /// first. A payload lost for good among them is reported after the run (the core appends
    /// every message it took first): it comes back beside them, for the caller to raise once
    /// it has handed them over, not instead of them.
    fn receive_many(
        &self,
        py: Python<'_>,
        max: usize,
        deadline: Option<Instant>,
    ) -> PyResult<(Vec<shmq::Message>, Option<Stop>)> {
        let rx = self.receiver(py)?;
        let mut taken = Vec::new();
        let mut after_run = None;
        self.wait_until(py, deadline, |until| {
            match rx.recv_many_deadline(&mut taken, max, until) {
                Ok(_) => Ok(Some(())),
                Err(e) if !taken.is_empty() => {
                    after_run = sort_recv_error(e);
                    Ok(Some(()))
                }
                Err(e) => sort_recv_error(e).map_or(Ok(None), Err),
            }
        })?;
        Ok((taken, after_run))
    }

    /// The arena size (opening a side if none is open yet: the figure is learnt then).
    fn arena_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        if let Some(facts) = self.facts.get() {
            return Ok(facts.arena_bytes);
        }
        let handle = self.any_handle(py)?;
        Ok(self.learn_facts(handle.as_ref())?.arena_bytes)
    }
}

/// The deadline of a call: `block=False` makes one attempt now; otherwise `timeout` seconds
/// from now, or none.
pub(crate) fn call_deadline(block: bool, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    if block {
        deadline_after(timeout)
    } else {
        Ok(Some(Instant::now()))
    }
}

/// A frame checked and ready to send.
enum Outgoing {
    /// A frame of at most [`SMALL_FRAME`] bytes, assembled on the heap: it goes with one
    /// copying send (inline in the ring slot when it is 96 bytes or less).
    Small(Vec<u8>),
    /// A larger frame, built straight in the channel's memory when it is sent.
    Large(LargeFrame),
}

/// A frame larger than [`SMALL_FRAME`]: where its parts come from and where they go.
struct LargeFrame {
    kind: u8,
    layout: frame::Layout,
    /// `(source address, length, offset in the frame)` of the pickle and of each buffer, the
    /// memory of `exports`.
    parts: Vec<(usize, usize, usize)>,
    /// The buffer exports `parts` point into, never read: held so that the memory stays
    /// alive and unmoved until the frame is dropped.
    _exports: Vec<ReadBuffer>,
}

impl Outgoing {
    /// Takes the exports of `pickle` and of each of `buffers`, checks that they make a frame,
    /// and assembles it now if it is small.
    fn prepare(
        kind: u8,
        pickle: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<Outgoing> {
        let pickle = ReadBuffer::get(pickle)?;
        let mut exports: Vec<ReadBuffer> = buffers
            .try_iter()?
            .map(|b| ReadBuffer::get(&b?))
            .collect::<PyResult<_>>()?;
        let lens: Vec<usize> = exports.iter().map(ReadBuffer::len).collect();
        let layout =
            frame::layout(pickle.len(), &lens).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut parts = Vec::with_capacity(exports.len() + 1);
        parts.push((pickle.addr(), pickle.len(), layout.pickle_offset));
        for (buffer, &(offset, _)) in exports.iter().zip(&layout.buffers) {
            parts.push((buffer.addr(), buffer.len(), offset));
        }
        if layout.total <= SMALL_FRAME {
            let mut small = vec![0u8; layout.total];
            // SAFETY: every part is the memory of a ReadBuffer in `pickle` or `exports`, alive
            // until this function returns.
            unsafe { fill_frame(&mut small, kind, &layout, &parts) };
            return Ok(Outgoing::Small(small));
        }
        exports.push(pickle);
        Ok(Outgoing::Large(LargeFrame {
            kind,
            layout,
            parts,
            _exports: exports,
        }))
    }

    /// The assembled bytes of a small frame; `None` for a large one.
    fn small_bytes(&self) -> Option<&[u8]> {
        match self {
            Outgoing::Small(bytes) => Some(bytes),
            Outgoing::Large(_) => None,
        }
    }
}

/// Copies each `(source address, length, offset in dst)` part into `dst` after writing the
/// frame header.
///
/// # Safety
///
/// Every source range must be the memory of a [`ReadBuffer`] that stays alive (and unwritten)
/// during the call.
unsafe fn fill_frame(
    dst: &mut [u8],
    kind: u8,
    layout: &frame::Layout,
    parts: &[(usize, usize, usize)],
) {
    frame::write_header(dst, kind, layout);
    for &(addr, len, at) in parts {
        // SAFETY: the caller's promise: `addr..addr + len` is a live buffer export.
        let src = unsafe { ReadBuffer::as_slice_unchecked(addr, len) };
        dst[at..at + len].copy_from_slice(src);
    }
}

#[pymethods]
impl Channel {
    /// Creates channel `name` with a ring of `capacity` messages and an arena of `arena_bytes`
    /// (rounded up to 4 KiB pages), holding its sender and receiver. Fails with
    /// `AlreadyExistsError` if the name is taken, `InvalidArgumentError` for sizes out of range.
    /// The channel is persistent (`ChannelConfig::with_disconnect(false)`): it never reports
    /// its other side gone, so sends queue while no receiver exists and receives wait while no
    /// sender does, as Python's queues and `shmq.Pipe` need.
    #[staticmethod]
    // The default is written out (it is DEFAULT_PARTICIPANTS) so that the signature Python sees
    // shows it.
    #[pyo3(signature = (name, capacity, arena_bytes, max_participants = 1024))]
    fn create(
        py: Python<'_>,
        name: String,
        capacity: usize,
        arena_bytes: usize,
        max_participants: u32,
    ) -> PyResult<Channel> {
        let config = ChannelConfig::default()
            .with_disconnect(false)
            .with_capacity(capacity)
            .with_arena_bytes(arena_bytes)
            .with_max_participants(max_participants);
        let (tx, rx) = py.detach(|| shmq::channel(&name, config)).py_err()?;
        let chan = Channel::new(name, None);
        chan.learn_facts(HandleRef::Tx(&tx))?;
        *lock(&chan.sender) = Some(tx);
        *lock(&chan.receiver) = Some(rx);
        Ok(chan)
    }

    /// A handle on the existing channel `name`, which opens its sender or receiver only when
    /// first used (so a `NotFoundError` for a missing channel comes then). With `incarnation`,
    /// the channel found must be that creation of the name, else `NotFoundError`.
    #[staticmethod]
    #[pyo3(signature = (name, incarnation = None))]
    fn open(name: String, incarnation: Option<u64>) -> Channel {
        Channel::new(name, incarnation)
    }

    /// The channel's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Which creation of the name this channel is (see `Channel.open`): known once a role is
    /// open, else the value given to `open`, else `None`.
    #[getter]
    fn incarnation(&self) -> Option<u64> {
        self.facts
            .get()
            .map(|f| f.incarnation)
            .or(self.expected_incarnation)
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How long, at most, a blocking call of this process's handles spins before it sleeps,
    /// in seconds (default 20 µs); `math.inf` never sleeps (lowest latency, one busy core
    /// per waiting thread). See `set_adaptive_spin` for when the spin is cut.
    fn set_spin(&self, seconds: f64) -> PyResult<()> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(PyValueError::new_err(format!(
                "spin must be a non-negative number of seconds, not {seconds}"
            )));
        }
        // Past what a Duration holds (math.inf included): never sleeps.
        let spin = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        self.set_waiting(|waiting| waiting.spin = spin);
        Ok(())
    }

    /// Whether blocking calls cut their spin while it does not pay (default `True`): after
    /// two waits in a row that outlasted it, to about four times what the waits that ended
    /// in their spin took, with one wait in 16 spinning the full time again. `False` spins
    /// the full time before every sleep.
    fn set_adaptive_spin(&self, adaptive: bool) {
        self.set_waiting(|waiting| waiting.adaptive = adaptive);
    }

    /// Sends one frame: `pickle` (any bytes-like object) and `buffers` (C-contiguous buffers,
    /// written at aligned offsets after it), tagged `kind`. `True` once the message is in the
    /// channel; `False` if it could not be sent by the deadline (`block=False`: now), when the
    /// ring or the arena is full. The copy of large buffers runs with the GIL released.
    #[pyo3(signature = (kind, pickle, buffers, block = true, timeout = None))]
    fn send_frame(
        &self,
        py: Python<'_>,
        kind: u8,
        pickle: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let deadline = call_deadline(block, timeout)?;
        match Outgoing::prepare(kind, pickle, buffers)? {
            Outgoing::Small(bytes) => self.send_copy(py, &bytes, deadline),
            Outgoing::Large(frame) => self.send_large(py, &frame, deadline),
        }
    }

    /// Sends `frames`, an iterable of `(kind, pickle, buffers)` as `send_frame` takes them,
    /// in order, waiting until one deadline for all of them (`block=False`: none). Every frame
    /// is checked (and each small one assembled) before the first is sent, so a bad one sends
    /// nothing. Returns how many were sent: all of them, unless the deadline passed first.
    ///
    /// Each run of consecutive small frames goes through the core's batch send
    /// (`Sender::send_many_deadline`): one pass over the ring and one wake-up of a sleeping
    /// receiver per run of inline messages, where `send_frame` in a loop pays both per frame.
    /// Large frames are built in a loan one at a time, as by `send_frame`.
    #[pyo3(signature = (frames, block = true, timeout = None))]
    fn send_frames(
        &self,
        py: Python<'_>,
        frames: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        let deadline = call_deadline(block, timeout)?;
        let outgoing: Vec<Outgoing> = frames
            .try_iter()?
            .map(|item| {
                let (kind, pickle, buffers): (u8, Bound<'_, PyAny>, Bound<'_, PyAny>) =
                    item?.extract()?;
                Outgoing::prepare(kind, &pickle, &buffers)
            })
            .collect::<PyResult<_>>()?;
        let mut sent = 0;
        while let Some(next) = outgoing.get(sent) {
            let (attempted, done) = match next {
                Outgoing::Large(frame) => (1, usize::from(self.send_large(py, frame, deadline)?)),
                Outgoing::Small(_) => {
                    let run: Vec<&[u8]> = outgoing[sent..]
                        .iter()
                        .map_while(Outgoing::small_bytes)
                        .collect();
                    (run.len(), self.send_run(py, &run, deadline)?)
                }
            };
            sent += done;
            if done < attempted {
                break; // the deadline passed: what follows stays unsent, so order holds
            }
        }
        Ok(sent)
    }

    /// Receives one frame: `(kind, pickle, buffers)`, or `None` if nothing came by the
    /// deadline (`block=False`: now). `buffers` are `MessageBuffer`s exported in place (the
    /// message stays in shared memory until the last view of them goes), or `bytearray` copies
    /// for buffers under `copy_below` bytes and for all of them with `copy=True` (the message
    /// is then freed before this returns). The bare-bytes kinds come back as `bytes` and
    /// `bytearray`.
    #[pyo3(signature = (block = true, timeout = None, copy = false, copy_below = 65536))]
    fn recv_frame<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
        copy: bool,
        copy_below: usize,
    ) -> PyResult<Option<Decoded<'py>>> {
        let deadline = call_deadline(block, timeout)?;
        let Some(msg) = self.receive(py, deadline)? else {
            return Ok(None);
        };
        let delivery = Delivery { copy, copy_below };
        message::decode(py, &self.name, msg, delivery).map(Some)
    }

    /// Receives up to `max_items` frames (at least 1): waits until the deadline (`block=False`:
    /// not at all) for the first, then takes every message ready now, up to `max_items`, in
    /// one call of the core's batch receive (`Receiver::recv_many_deadline`). Returns them in
    /// order, each decoded as `recv_frame` decodes it; an empty list if nothing came by the
    /// deadline. A message that cannot be decoded (a corrupted frame) is, in its place, the
    /// exception `recv_frame` would raise for it, and a payload lost for good in the run is
    /// such an exception after the rest: the caller raises them in turn, without losing the
    /// messages taken with them.
    #[pyo3(signature = (max_items, block = true, timeout = None, copy = false, copy_below = 65536))]
    fn recv_frames<'py>(
        &self,
        py: Python<'py>,
        max_items: usize,
        block: bool,
        timeout: Option<f64>,
        copy: bool,
        copy_below: usize,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        if max_items == 0 {
            return Err(PyValueError::new_err("max_items must be at least 1"));
        }
        let deadline = call_deadline(block, timeout)?;
        let delivery = Delivery { copy, copy_below };
        let (taken, after_run) = self.receive_many(py, max_items, deadline)?;
        let mut entries = Vec::with_capacity(taken.len() + 1);
        for msg in taken {
            entries.push(match message::decode(py, &self.name, msg, delivery) {
                Ok(frame) => frame.into_pyobject(py)?.into_any(),
                Err(e) => e.into_value(py).into_bound(py).into_any(),
            });
        }
        if let Some(stop) = after_run {
            entries.push(stop.into_py().into_value(py).into_bound(py).into_any());
        }
        Ok(entries)
    }

    /// Sends `data` (any bytes-like object) as a message of its own, with no frame: for tests
    /// and raw users. `True` once sent, `False` if not by the deadline.
    #[pyo3(signature = (data, block = true, timeout = None))]
    fn send_raw(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let deadline = call_deadline(block, timeout)?;
        let data = ReadBuffer::get(data)?;
        // SAFETY: `data` is a live export for the whole call.
        let bytes = unsafe { ReadBuffer::as_slice_unchecked(data.addr(), data.len()) };
        self.send_copy(py, bytes, deadline)
    }

    /// Receives one message as `bytes`, with no frame decoding; `None` if nothing came by the
    /// deadline.
    #[pyo3(signature = (block = true, timeout = None))]
    fn recv_raw<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let deadline = call_deadline(block, timeout)?;
        match self.receive(py, deadline)? {
            None => Ok(None),
            Some(msg) => message::copy_out(py, &msg, message::CopyAs::Bytes).map(Some),
        }
    }

    /// Lends room for a frame of `kind` whose one out-of-band buffer, of `nbytes`, the caller
    /// fills in place: the header and `pickle` are written now, and the returned `Loan`
    /// exports the buffer's bytes (writable). `Loan.send()` publishes it; `Loan.discard()`, or
    /// dropping it, gives the room back. `None` if no room was free by the deadline. The whole
    /// frame must fit the arena (`ValueError` otherwise: send such objects with `send_frame`).
    #[pyo3(signature = (kind, pickle, nbytes, block = true, timeout = None))]
    fn loan(
        slf: &Bound<'_, Self>,
        kind: u8,
        pickle: &Bound<'_, PyAny>,
        nbytes: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Loan>> {
        let py = slf.py();
        let this = slf.get();
        let deadline = call_deadline(block, timeout)?;
        let pickle = ReadBuffer::get(pickle)?;
        let layout = frame::layout(pickle.len(), &[nbytes])
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let arena = this.arena_bytes(py)?;
        if layout.total as u64 > arena || layout.total <= SMALL_FRAME {
            // Beyond the arena the room would be an overflow segment, whose mapping goes with
            // the loan when it is sent, under arrays that still view it; a tiny one would be
            // inline. Neither can be lent.
            return Err(PyValueError::new_err(format!(
                "a loan of {nbytes} bytes ({} with its frame) cannot be made in channel {:?}: \
                 loans must be larger than {SMALL_FRAME} bytes and fit its arena of {arena} bytes",
                layout.total, this.name
            )));
        }
        let Some((mut loan, tx)) = this.reserve(py, layout.total, deadline)? else {
            return Ok(None);
        };
        let parts = [(pickle.addr(), pickle.len(), layout.pickle_offset)];
        // SAFETY: the one part is the memory of `pickle`, alive for this call.
        unsafe { fill_frame(&mut loan[..], kind, &layout, &parts) };
        let (offset, len) = layout.buffers[0];
        Ok(Some(Loan::new(slf.clone().unbind(), tx, loan, offset, len)))
    }

    /// Marks one task done, `JoinableQueue.task_done()`'s count (kept in the channel, shared
    /// by every process): `True`, or `False` when every item ever put is done already (the
    /// caller raises multiprocessing's "called too many times"). Waits only for the
    /// channel's allocator lock, in slices, so a stopped holder cannot freeze it unseen.
    fn task_done(&self, py: Python<'_>) -> PyResult<bool> {
        let handle = self.any_handle(py)?;
        let done = self.wait_until(py, None, |_until| match handle.try_task_done() {
            Ok(()) => Ok(Some(true)),
            Err(TaskDoneError::TooMany) => Ok(Some(false)),
            Err(TaskDoneError::Failed(shmq::Error::LockTimeout { .. })) => Ok(None),
            Err(TaskDoneError::Failed(e)) => Err(Stop::Failed(e)),
            Err(other) => Err(Stop::Failed(shmq::Error::Corrupted {
                name: self.name.clone(),
                what: format!("unexpected task_done error: {other}"),
            })),
        })?;
        Ok(done.expect("a wait with no deadline ends only when done"))
    }

    /// Waits until every item ever put is marked done (`JoinableQueue.join()`), re-evaluated
    /// as items are put meanwhile, for at most `timeout` seconds (`None`: for ever). `True`
    /// when they are, `False` when the timeout passed first. Tasks that a process killed
    /// while holding them never finished count as done (shmq's rule: a dead worker never
    /// wedges `join`).
    #[pyo3(signature = (timeout = None))]
    fn join_tasks(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = deadline_after(timeout)?;
        let handle = self.any_handle(py)?;
        let joined = self.wait_until(py, deadline, |until| {
            match handle.join_tasks_deadline(until) {
                Ok(()) => Ok(Some(())),
                Err(JoinTasksTimeoutError::Timeout) => Ok(None),
                Err(JoinTasksTimeoutError::Failed(shmq::Error::LockTimeout { .. })) => Ok(None),
                Err(JoinTasksTimeoutError::Failed(e)) => Err(Stop::Failed(e)),
                Err(other) => Err(Stop::Failed(shmq::Error::Corrupted {
                    name: self.name.clone(),
                    what: format!("unexpected join error: {other}"),
                })),
            }
        })?;
        Ok(joined.is_some())
    }

    /// Items put and not yet marked done (the count `join()` waits on).
    fn unfinished_tasks(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.any_handle(py)?.unfinished_tasks())
    }

    /// Messages waiting in the ring (not counting received messages still held).
    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.any_handle(py)?.len())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.len(py)
    }

    /// Messages the ring holds at most.
    fn capacity(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.any_handle(py)?.capacity())
    }

    /// Bytes of the arena (payloads larger than this travel in overflow segments).
    #[pyo3(name = "arena_bytes")]
    fn py_arena_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        self.arena_bytes(py)
    }

    /// Arena bytes not in use by queued or held messages.
    fn free_arena_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.any_handle(py)?.free_arena_bytes())
    }

    /// The channel's figures now, as `shmq.list_segments()` reports them: `capacity`,
    /// `queued`, `messages_in_flight`, `bytes_in_flight`, `arena_bytes`, `arena_free_bytes`,
    /// `overflow_payloads`, `sent_total`, `done_total`, `corrupt_skipped`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.check_open()?;
        crate::admin::stats_dict(py, &self.any_handle(py)?.stats())
    }

    /// Drops this process's sender and receiver: later calls raise `OSError("handle is
    /// closed")`, and calls waiting in other threads stop within a wait slice with that error.
    /// Received buffers and unsent loans stay valid (they hold the mapping themselves).
    /// Closing twice is allowed.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let tx = lock(&self.sender).take();
        let rx = lock(&self.receiver).take();
        drop((tx, rx));
    }

    /// Moves this channel's receiver (if it has one open) into a new `Channel` of the same
    /// name, which it returns: this one keeps only its sender. No new mapping or participant is
    /// made. `shmq.Pipe` uses it to give each end of a pipe the one role it plays.
    fn split_receiver(&self) -> PyResult<Channel> {
        self.check_open()?;
        let chan = Channel::new(self.name.clone(), self.incarnation());
        if let Some(facts) = self.facts.get() {
            let _ = chan.facts.set(*facts);
        }
        *lock(&chan.receiver) = lock(&self.receiver).take();
        Ok(chan)
    }

    /// Which sides this process has open: `(sender, receiver)` (for tests of the handle cache).
    fn _open_sides(&self) -> (bool, bool) {
        (lock(&self.sender).is_some(), lock(&self.receiver).is_some())
    }

    /// Called in a child right after `fork`: registers the inherited sender as the child's own
    /// participant now rather than at its first use, which keeps the channel alive for the
    /// child even if the parent drops it before the child touches it (a receiver registers at
    /// its first receive: the core has no other way yet). Errors are ignored: the first use
    /// registers again.
    fn _after_fork_in_child(&self) {
        let tx = lock(&self.sender).clone();
        if let Some(tx) = tx {
            // A join that does not wait: it registers the child (`Endpoint::owner`) and
            // changes nothing.
            let _ = tx.try_join();
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmq._shmq.Channel {:?}{}>",
            self.name,
            if self.closed() { " (closed)" } else { "" }
        )
    }
}
