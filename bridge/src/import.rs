//! The importing bridge: one sender of a local channel, landing in shared memory what the
//! exporter of its key sends it, and telling the exporter how much more it takes.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmq::{SendTimeoutError, Sender};
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::sample::{Sample, SampleKind};
use zenoh::{Session, Wait};

use crate::wire::{Credit, Header, Keys};
use crate::{Error, Stopper, POLL};

/// How often an importer repeats its credit when nothing else happens: so an exporter that
/// missed one (it started later, or the credit overtook the importer's token) hears it soon.
const CREDIT_REPEAT: Duration = Duration::from_millis(500);

/// How much an importer takes beyond what it has landed in its local channel: what may be in
/// flight to it at once, and so what it may hold in memory while its local channel is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Messages in flight at most (at least 1).
    pub messages: u64,
    /// Bytes in flight at most; one message of any size is always let through alone.
    pub bytes: u64,
}

impl Default for Window {
    /// 64 messages and 64 MiB: enough to keep a loopback or LAN link busy from 64 B to 64 MiB
    /// messages (256 MiB measured no faster for 64 MiB ones), while a share-mode host holds
    /// little work it has no room for.
    fn default() -> Window {
        Window {
            messages: 64,
            bytes: 64 << 20,
        }
    }
}

/// What an [`Importer`] did, returned by [`Importer::run`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportSummary {
    /// Messages landed in the local channel.
    pub landed: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages known lost: gaps in an exporter's numbering (its link broke with messages in
    /// flight).
    pub gaps: u64,
    /// Exporters that went away without ending their stream (killed, or their host silent for
    /// a lease): messages they had taken and not delivered are lost, at most one window each
    /// plus one.
    pub exporters_lost: u64,
    /// Whether the run ended on an exporter's end of stream (with
    /// [`until_end`](Importer::until_end)).
    pub ended: bool,
}

/// What Zenoh's callbacks hand to the importer's thread, in the order they came.
enum Event {
    Data(Sample),
    ExporterUp(String),
    ExporterGone(String),
}

/// What the importer knows of one exporter run.
#[derive(Default)]
struct Run {
    /// The last `seq` received from it.
    last_seq: u64,
    /// Messages received from it.
    received: u64,
    /// Messages of it landed in the local channel, and their bytes.
    landed: u64,
    bytes: u64,
    /// Whether it ended its stream.
    ended: bool,
}

/// What the importer knows of the exporter runs it heard from, and what it last told.
#[derive(Default)]
struct CreditState {
    runs: HashMap<u64, Run>,
    /// The run whose counts the credit carries: the one a message (or the end) came from last.
    current: u64,
    published: Option<Credit>,
    /// Landed since the last credit published.
    unpublished_messages: u64,
    unpublished_bytes: u64,
}

/// The importing half of a bridge: lands the messages the exporter of a Zenoh key sends it in a
/// local channel.
///
/// It is one sender of the channel: each message lands in shared memory with one copy (out of
/// Zenoh's receive buffer), and local receivers read it in place.
pub struct Importer {
    sender: Sender,
    keys: Keys,
    window: Window,
    until_end: bool,
    events: mpsc::Receiver<Event>,
    credits: Publisher<'static>,
    stopper: Stopper,
    _data: Subscriber<()>,
    _exporters: Subscriber<()>,
    _token: LivelinessToken,
}

impl Importer {
    /// Opens channel `channel` as a sender and imports the messages of `key` into it.
    pub fn open(session: &Session, channel: &str, key: &str) -> Result<Importer, Error> {
        Importer::new(session, Sender::open(channel)?, key)
    }

    /// Imports the messages of `key` through `sender`. Declares the importer's data
    /// subscriber and then its liveliness token, so that an exporter never sends to it before
    /// it listens; messages come once [`run`](Self::run) grants credit.
    pub fn new(session: &Session, sender: Sender, key: &str) -> Result<Importer, Error> {
        let keys = Keys::new(key).map_err(Error::Key)?;
        // The session id, and a number of this start: an importer restarted with a fixed
        // session id is still a new importer to the exporter.
        let id = format!("{}-{:x}", session.zid(), crate::run_id());
        let (events, incoming) = mpsc::channel();

        let data = {
            let events = events.clone();
            session
                .declare_subscriber(keys.data(&id))
                .callback(move |sample| {
                    // Never blocks Zenoh's thread: the window bounds what can pile up here.
                    let _ = events.send(Event::Data(sample));
                })
                .wait()?
        };
        let exporters = {
            let keys = keys.clone();
            session
                .liveliness()
                .declare_subscriber(keys.exporters())
                .history(true)
                .callback(move |sample| {
                    let Some(run) = keys.id_in("exporter", sample.key_expr().as_str()) else {
                        return;
                    };
                    let event = match sample.kind() {
                        SampleKind::Put => Event::ExporterUp(run.to_owned()),
                        SampleKind::Delete => Event::ExporterGone(run.to_owned()),
                    };
                    let _ = events.send(event);
                })
                .wait()?
        };
        let credits = session
            .declare_publisher(keys.credit(&id))
            .congestion_control(CongestionControl::Block)
            .wait()?;
        let token = session
            .liveliness()
            .declare_token(keys.importer(&id))
            .wait()?;
        Ok(Importer {
            sender,
            keys,
            window: Window::default(),
            until_end: false,
            events: incoming,
            credits,
            stopper: Stopper::default(),
            _data: data,
            _exporters: exporters,
            _token: token,
        })
    }

    /// Sets the window (default [`Window::default`]).
    pub fn with_window(mut self, window: Window) -> Importer {
        self.window = Window {
            messages: window.messages.max(1),
            bytes: window.bytes,
        };
        self
    }

    /// Whether [`run`](Self::run) returns once an exporter ends its stream (its local channel
    /// disconnected and everything it sent landed here). Off by default: the importer serves
    /// exporters that come and go until it is stopped.
    pub fn until_end(mut self, until_end: bool) -> Importer {
        self.until_end = until_end;
        self
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Lands what the exporters send, until stopped (or, with [`until_end`](Self::until_end),
    /// until a stream ends).
    pub fn run(self) -> Result<ImportSummary, Error> {
        tracing::info!(key = self.keys.base(), window = ?self.window, "importing");
        let mut summary = ImportSummary::default();
        let mut credit = CreditState::default();
        self.publish_credit(&mut credit, true)?;
        let mut last_credit = Instant::now();
        let mut next = None;
        while !self.stopper.is_stopped() {
            let event = match next.take() {
                Some(event) => event,
                None => match self.events.recv_timeout(POLL) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if last_credit.elapsed() >= CREDIT_REPEAT {
                            self.publish_credit(&mut credit, true)?;
                            last_credit = Instant::now();
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match event {
                Event::Data(sample) => {
                    let header = sample
                        .attachment()
                        .and_then(|a| Header::decode(&a.to_bytes()));
                    match header {
                        None => tracing::warn!("a sample without a valid header ignored"),
                        Some(Header::Message { run, seq }) => {
                            let from = credit.runs.entry(run).or_default();
                            if seq <= from.last_seq {
                                tracing::warn!(
                                    run = format!("{run:016x}"),
                                    seq,
                                    "a message received twice ignored"
                                );
                                continue;
                            }
                            let gap = seq - from.last_seq - 1;
                            if gap > 0 {
                                tracing::warn!(
                                    run = format!("{run:016x}"),
                                    "{gap} messages lost in flight (numbers {} to {})",
                                    from.last_seq + 1,
                                    seq - 1
                                );
                                summary.gaps = summary.gaps.saturating_add(gap);
                            }
                            from.last_seq = seq;
                            from.received += 1;
                            if !self.land(sample.payload())? {
                                tracing::warn!("stopped holding one message: it is lost");
                                break;
                            }
                            let len = sample.payload().len() as u64;
                            from.landed += 1;
                            from.bytes += len;
                            credit.current = run;
                            credit.unpublished_messages += 1;
                            credit.unpublished_bytes += len;
                            summary.landed += 1;
                            summary.bytes += len;
                            // Coalesce credits while more is waiting, but never past half the
                            // window (in messages or bytes), so the exporter always has room
                            // to send the next one while this importer lands what it has.
                            next = self.events.try_recv().ok();
                            if next.is_none()
                                || credit.unpublished_messages * 2 >= self.window.messages
                                || credit.unpublished_bytes * 2 >= self.window.bytes
                            {
                                self.publish_credit(&mut credit, false)?;
                            }
                        }
                        Some(Header::End { run, sent }) => {
                            let from = credit.runs.entry(run).or_default();
                            tracing::info!(
                                run = format!("{run:016x}"),
                                sent,
                                received = from.received,
                                "the exporter ended its stream: {} of its {sent} messages to \
                                 this importer landed",
                                from.received
                            );
                            from.ended = true;
                            credit.current = run;
                            self.publish_credit(&mut credit, false)?;
                            if self.until_end {
                                summary.ended = true;
                                break;
                            }
                        }
                    }
                }
                Event::ExporterUp(run) => {
                    tracing::info!(run, "exporter connected");
                    self.publish_credit(&mut credit, true)?;
                }
                Event::ExporterGone(run) => {
                    let from = u64::from_str_radix(&run, 16)
                        .ok()
                        .and_then(|r| credit.runs.get(&r));
                    match from {
                        Some(from) if from.ended => {
                            tracing::info!(run, "exporter gone after ending its stream");
                        }
                        _ => {
                            let received = from.map_or(0, |r| r.received);
                            tracing::warn!(
                                run,
                                received,
                                "exporter gone without ending its stream after {received} \
                                 messages to this importer: what it had taken and not sent \
                                 is lost (at most {} messages)",
                                self.window.messages + 1
                            );
                            summary.exporters_lost += 1;
                        }
                    }
                }
            }
        }
        tracing::info!(
            landed = summary.landed,
            bytes = summary.bytes,
            gaps = summary.gaps,
            "importer done"
        );
        Ok(summary)
    }

    /// Publishes the importer's credit for the run it landed a message of last: always with
    /// `again`, else only if it changed since the last one published.
    fn publish_credit(&self, state: &mut CreditState, again: bool) -> Result<(), Error> {
        let from = state.runs.get(&state.current);
        let credit = Credit {
            run: state.current,
            landed_messages: from.map_or(0, |r| r.landed),
            landed_bytes: from.map_or(0, |r| r.bytes),
            window_messages: self.window.messages,
            window_bytes: self.window.bytes,
            ended: from.is_some_and(|r| r.ended),
        };
        if !again && state.published == Some(credit) {
            return Ok(());
        }
        self.credits.put(credit.encode()).wait()?;
        state.published = Some(credit);
        state.unpublished_messages = 0;
        state.unpublished_bytes = 0;
        Ok(())
    }

    /// Lands one message in the local channel with one copy, waiting for room and for a local
    /// receiver as long as it takes. `false` if stopped first.
    fn land(&self, payload: &ZBytes) -> Result<bool, Error> {
        let mut waiting_for_receiver = false;
        let mut no_receiver = || {
            if !std::mem::replace(&mut waiting_for_receiver, true) {
                tracing::warn!("the local channel has no receiver: waiting for one");
            }
            std::thread::sleep(POLL);
        };
        let mut loan = loop {
            if self.stopper.is_stopped() {
                return Ok(false);
            }
            match self.sender.loan_timeout(payload.len(), POLL) {
                Ok(loan) => break loan,
                Err(SendTimeoutError::Timeout(())) => {}
                Err(SendTimeoutError::Disconnected(())) => no_receiver(),
                Err(SendTimeoutError::Failed(e, ())) => return Err(Error::Channel(e)),
                Err(other) => return Err(Error::Other(format!("local channel: {other}"))),
            }
        };
        let mut at = 0;
        for slice in payload.slices() {
            loan[at..at + slice.len()].copy_from_slice(slice);
            at += slice.len();
        }
        loop {
            match loan.send_timeout(POLL) {
                Ok(()) => return Ok(true),
                Err(SendTimeoutError::Timeout(back)) => loan = back,
                Err(SendTimeoutError::Disconnected(back)) => {
                    loan = back;
                    no_receiver();
                }
                Err(SendTimeoutError::Failed(e, _)) => return Err(Error::Channel(e)),
                Err(other) => return Err(Error::Other(format!("local channel: {other}"))),
            }
            if self.stopper.is_stopped() {
                return Ok(false);
            }
        }
    }
}
