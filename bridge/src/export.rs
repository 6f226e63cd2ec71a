//! The exporting bridge: one receiver of a local channel, sending what it takes to the importers
//! of its key, within their credit.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmq::{Receiver, RecvTimeoutError};
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

use crate::importers::Importers;
use crate::wire::{Credit, Header, Keys};
use crate::{run_id, Error, Mode, Stopper, POLL};

/// How long a finished exporter waits for its importers to acknowledge the end of its stream.
const END_ACK_PATIENCE: Duration = Duration::from_secs(10);

/// What an [`Exporter`] did, returned by [`Exporter::run`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// Messages taken from the local channel.
    pub taken: u64,
    /// Messages sent over Zenoh (a fanout message counts once per importer).
    pub sent: u64,
    /// Bytes taken from the local channel.
    pub bytes: u64,
    /// Messages sent to importers that went away before confirming them (each landed just before
    /// its importer went, or is lost).
    pub unconfirmed_at_loss: u64,
    /// Whether the run ended because the local channel disconnected (every local sender gone,
    /// nothing queued) and every message sent was confirmed, rather than by a stop.
    pub drained: bool,
}

/// A received message as the bytes of a Zenoh payload, read in place.
struct InPlace(shmq::Message);

impl AsRef<[u8]> for InPlace {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The importers' table and the condition the exporter waits on for it to change.
type Table = Arc<(Mutex<Importers>, Condvar)>;

fn lock(table: &Table) -> MutexGuard<'_, Importers> {
    // A panic in a Zenoh callback cannot leave the table half-updated (each update is one call
    // of a method that does not panic), so a poisoned lock is still a consistent table.
    table
        .0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits up to `timeout` for the table to change (or a spurious wake-up), and gives the lock
/// back.
fn wait_for_change<'a>(
    table: &'a Table,
    importers: MutexGuard<'a, Importers>,
    timeout: Duration,
) -> MutexGuard<'a, Importers> {
    // Poisoning: as in `lock`.
    table
        .1
        .wait_timeout(importers, timeout)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .0
}

/// The exporting half of a bridge: takes messages from a local channel and sends them to the
/// importers of a Zenoh key.
///
/// It is one receiver of the channel. It takes a message only while some importer may be sent
/// it (one is connected and has room in its window; in [`Mode::Fanout`], every connected one
/// has), so messages wait in the local channel, not in the bridge, while nobody is listening.
pub struct Exporter {
    session: Session,
    receiver: Receiver,
    keys: Keys,
    mode: Mode,
    run: u64,
    table: Table,
    stopper: Stopper,
    _token: LivelinessToken,
    _importers: Subscriber<()>,
    _credits: Subscriber<()>,
}

impl Exporter {
    /// Opens channel `channel` as a receiver and exports it on `key`.
    pub fn open(
        session: &Session,
        channel: &str,
        key: &str,
        mode: Mode,
    ) -> Result<Exporter, Error> {
        Exporter::new(session, Receiver::open(channel)?, key, mode)
    }

    /// Exports what `receiver` receives on `key`. Declares the exporter's liveliness token and
    /// starts following the importers; nothing is taken before [`run`](Self::run).
    pub fn new(
        session: &Session,
        receiver: Receiver,
        key: &str,
        mode: Mode,
    ) -> Result<Exporter, Error> {
        let keys = Keys::new(key).map_err(Error::Key)?;
        let run = run_id();
        let table: Table = Arc::new((Mutex::new(Importers::new(run)), Condvar::new()));

        let importers = {
            let (table, keys) = (table.clone(), keys.clone());
            session
                .liveliness()
                .declare_subscriber(keys.importers())
                .history(true)
                .callback(move |sample| {
                    let key = sample.key_expr().as_str();
                    let Some(id) = keys.id_in("importer", key) else {
                        return;
                    };
                    let mut importers = lock(&table);
                    match sample.kind() {
                        SampleKind::Put => {
                            if importers.connect(id) {
                                tracing::info!(importer = id, "importer connected");
                            }
                        }
                        SampleKind::Delete => {
                            if let Some(gone) = importers.disconnect(id) {
                                if gone.unconfirmed == 0 {
                                    tracing::info!(
                                        importer = id,
                                        sent = gone.sent,
                                        "importer gone; 0 of the {} messages sent to it \
                                         unconfirmed",
                                        gone.sent
                                    );
                                } else {
                                    tracing::warn!(
                                        importer = id,
                                        sent = gone.sent,
                                        unconfirmed = gone.unconfirmed,
                                        "importer gone; {} of the {} messages sent to it \
                                         unconfirmed (landed just before it went, or lost)",
                                        gone.unconfirmed,
                                        gone.sent
                                    );
                                }
                                importers.count_loss(gone.unconfirmed);
                            }
                        }
                    }
                    drop(importers);
                    table.1.notify_all();
                })
                .wait()?
        };
        let credits = {
            let (table, keys) = (table.clone(), keys.clone());
            session
                .declare_subscriber(keys.credits())
                .callback(move |sample| {
                    let key = sample.key_expr().as_str();
                    let Some(id) = keys.id_in("credit", key) else {
                        return;
                    };
                    let Some(credit) = Credit::decode(&sample.payload().to_bytes()) else {
                        tracing::warn!(importer = id, "malformed credit ignored");
                        return;
                    };
                    if lock(&table).credit(id, credit) {
                        tracing::info!(importer = id, %credit, "first credit");
                    }
                    table.1.notify_all();
                })
                .wait()?
        };
        let token = session
            .liveliness()
            .declare_token(keys.exporter(&format!("{run:016x}")))
            .wait()?;
        Ok(Exporter {
            session: session.clone(),
            receiver,
            keys,
            mode,
            run,
            table,
            stopper: Stopper::default(),
            _token: token,
            _importers: importers,
            _credits: credits,
        })
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Takes messages from the local channel and sends them, until the channel disconnects
    /// (every local sender gone, nothing queued; then it waits until every message sent is
    /// confirmed or its importer gone, and tells each importer the stream ended) or until a
    /// [`Stopper`] stops it.
    pub fn run(self) -> Result<ExportSummary, Error> {
        tracing::info!(
            key = self.keys.base(),
            mode = %self.mode,
            run = format!("{:016x}", self.run),
            "exporting"
        );
        let mut summary = ExportSummary::default();
        while !self.stopper.is_stopped() {
            // Take nothing until someone may be sent it (the smallest message: bytes are
            // checked again once its size is known).
            if !self.wait_for_room(0) {
                continue;
            }
            match self.receiver.recv_timeout(POLL) {
                Ok(message) => {
                    summary.taken += 1;
                    summary.bytes += message.len() as u64;
                    // Read in place: Zenoh serialises the message straight out of shared
                    // memory (the one copy of the exporting side), and its room goes back to
                    // the local producer once every put is done with it.
                    let payload = ZBytes::from(bytes::Bytes::from_owner(InPlace(message)));
                    summary.sent += self.deliver(payload)?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    summary.drained = self.finish();
                    break;
                }
                Err(RecvTimeoutError::Failed(e)) => return Err(Error::Channel(e)),
                Err(other) => return Err(Error::Other(format!("local channel: {other}"))),
            }
        }
        summary.unconfirmed_at_loss = lock(&self.table).losses();
        tracing::info!(
            taken = summary.taken,
            sent = summary.sent,
            bytes = summary.bytes,
            drained = summary.drained,
            "exporter done"
        );
        Ok(summary)
    }

    /// Waits up to [`POLL`] for importers that may be sent a message of `len` bytes; whether
    /// there are.
    fn wait_for_room(&self, len: u64) -> bool {
        self.wait_until(|importers| importers.targets(self.mode, len).map(drop))
            .is_some()
    }

    /// Waits up to [`POLL`] for importers that may be sent a message of `len` bytes, and counts
    /// it sent to them in the same critical section (so an importer that goes meanwhile is
    /// counted gone with it, never skipped): their ids, each with the message's `seq`.
    fn claim(&self, len: u64) -> Option<Vec<(String, u64)>> {
        self.wait_until(|importers| {
            let targets = importers.targets(self.mode, len)?;
            Some(
                targets
                    .into_iter()
                    .filter_map(|id| importers.sent(&id, len).map(|seq| (id, seq)))
                    .collect(),
            )
        })
    }

    /// Waits up to [`POLL`] for `ready` to return something, under the table's lock.
    fn wait_until<T>(&self, mut ready: impl FnMut(&mut Importers) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + POLL;
        let mut importers = lock(&self.table);
        loop {
            if let Some(found) = ready(&mut importers) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            importers = wait_for_change(&self.table, importers, left);
        }
    }

    /// Sends one message to the importers that may have it, waiting for one (or, in fanout,
    /// for all) to have room. Returns how many puts went out; 0 if the bridge was stopped
    /// holding it (the message is then lost, and logged).
    fn deliver(&self, payload: ZBytes) -> Result<u64, Error> {
        let len = payload.len() as u64;
        let numbered = loop {
            if self.stopper.is_stopped() {
                tracing::warn!("stopped holding one message: it is lost");
                return Ok(0);
            }
            if let Some(numbered) = self.claim(len) {
                break numbered;
            }
        };
        let mut puts = 0;
        for (id, seq) in numbered {
            let header = Header::Message { run: self.run, seq };
            let put = self
                .session
                .put(self.keys.data(&id), payload.clone())
                .attachment(header.encode())
                .congestion_control(CongestionControl::Block)
                .wait();
            match put {
                Ok(()) => puts += 1,
                Err(e) => tracing::warn!(importer = id, "put failed, message lost for it: {e}"),
            }
        }
        Ok(puts)
    }

    /// After the local channel disconnected: waits until every message sent is confirmed (or
    /// its importer gone), then tells each importer the stream ended. Whether it got there
    /// (false if stopped first).
    fn finish(&self) -> bool {
        let mut importers = lock(&self.table);
        while importers.unconfirmed() > 0 {
            if self.stopper.is_stopped() {
                return false;
            }
            importers = wait_for_change(&self.table, importers, POLL);
        }
        let sent = importers.sent_counts();
        drop(importers);
        for (id, sent) in sent {
            let end = Header::End {
                run: self.run,
                sent,
            };
            let put = self
                .session
                .put(self.keys.data(&id), ZBytes::new())
                .attachment(end.encode())
                .congestion_control(CongestionControl::Block)
                .wait();
            if let Err(e) = put {
                tracing::warn!(importer = id, "could not send the end of the stream: {e}");
            }
        }
        // The token stays until each importer acknowledged the end: its removal travels at a
        // higher priority than data, and could overtake the end and read as a death.
        let deadline = Instant::now() + END_ACK_PATIENCE;
        let mut importers = lock(&self.table);
        while !importers.all_ended() {
            if self.stopper.is_stopped() || Instant::now() >= deadline {
                tracing::warn!("not every importer acknowledged the end of the stream");
                break;
            }
            importers = wait_for_change(&self.table, importers, POLL);
        }
        tracing::info!("local channel disconnected and every message confirmed");
        true
    }
}
