//! A bridge that carries a [shmq] channel's messages to other hosts over [Zenoh].
//!
//! Shared memory ends at the host. On each host, local processes keep their zero-copy shmq
//! channel; a bridge process joins it and moves its messages over a Zenoh session:
//!
//! - an [`Exporter`] is one receiver of a local channel: it takes each message once and sends it,
//!   reliably and with back-pressure, to the importers of its key ([`Mode::Fanout`]: every
//!   importer gets every message; [`Mode::Share`]: each message goes to exactly one);
//! - an [`Importer`] is one sender of a local channel on another host: each message it gets
//!   lands in shared memory with one copy, and local receivers read it in place.
//!
//! # Flow control and presence
//!
//! Each side declares a Zenoh liveliness token under the key. The exporter takes messages from
//! its local channel only while an importer is there, so nothing sent before any remote host
//! listens (or while every one is gone) vanishes: it waits in the local channel. Each importer
//! publishes a credit (what it has landed in its local channel, and its window), and the exporter
//! sends an importer no more than its window beyond what it confirmed. So a slow remote (or a
//! full remote channel) slows the local producer instead of dropping messages, Zenoh's queues
//! never fill, and in share mode a host gets new messages only as fast as it lands them.
//!
//! # Delivery
//!
//! While both bridges live, each message arrives exactly once and in order, its bytes unchanged,
//! whatever its size. A killed bridge loses the messages in flight through it, and the log of the
//! surviving side says how many (docs/guide.md, "Across hosts"): at most one window per importer,
//! and one more for a killed exporter. The local channel of a killed bridge stays healthy: the
//! bridge was one participant, reclaimed like any other.
//!
//! # Example
//!
//! ```no_run
//! use zenoh::Wait;
//!
//! # fn main() -> Result<(), shmq_zenoh::Error> {
//! // On host A, beside the producer of channel "jobs":
//! let endpoints = shmq_zenoh::Endpoints {
//!     listen: vec!["tcp/0.0.0.0:7447".into()],
//!     ..Default::default()
//! };
//! let session = zenoh::open(shmq_zenoh::zenoh_config(None, &endpoints)?).wait()?;
//! let exporter = shmq_zenoh::Exporter::open(&session, "jobs", "shmq/jobs", shmq_zenoh::Mode::Share)?;
//! exporter.run()?; // until every local sender is gone and every message is confirmed
//!
//! // On host B (another process): `Importer::open(&session, "jobs", "shmq/jobs")?.run()`,
//! // with `connect: vec!["tcp/hostA:7447".into()]`.
//! # Ok(()) }
//! ```
//!
//! The `shmq-bridge` command wraps both (`shmq-bridge export CHANNEL ...`, `shmq-bridge import
//! CHANNEL ...`).
//!
//! [shmq]: https://docs.rs/shmq
//! [Zenoh]: https://zenoh.io
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// Layers, each using only those above it: wire (keys and headers) -> importers (the exporter's
// flow control, pure) -> config (Zenoh's configuration) -> export, import (the two bridges) ->
// the binary.
mod wire;

mod importers;

mod config;

mod export;
mod import;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use config::{zenoh_config, Endpoints, MAX_MESSAGE_BYTES};
pub use export::{ExportSummary, Exporter};
pub use import::{ImportSummary, Importer, Window};
pub use wire::Credit;

/// How an [`Exporter`] spreads messages over the importers of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every importer gets every message (publish/subscribe). The exporter sends at the pace of
    /// the slowest importer.
    #[default]
    Fanout,
    /// Each message goes to exactly one importer, one with room in its window, in turn: the
    /// work queue of a process pool spread over hosts, balanced by demand.
    Share,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "fanout" => Ok(Mode::Fanout),
            "share" => Ok(Mode::Share),
            other => Err(format!("unknown mode {other:?}: use fanout or share")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Fanout => "fanout",
            Mode::Share => "share",
        })
    }
}

/// Why a bridge could not start or go on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Zenoh refused something (the configuration, opening the session, a declaration).
    Zenoh(zenoh::Error),
    /// The local channel refused something (opening it, or an operation the OS refused).
    Channel(shmq::Error),
    /// The key is not a plain Zenoh key.
    Key(String),
    /// A local channel operation ended in a way this version of the bridge does not know.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Zenoh(e) => write!(f, "zenoh: {e}"),
            Error::Channel(e) => write!(f, "local channel: {e}"),
            Error::Key(why) | Error::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Zenoh(e) => Some(e.as_ref()),
            Error::Channel(e) => Some(e),
            Error::Key(_) | Error::Other(_) => None,
        }
    }
}

impl From<zenoh::Error> for Error {
    fn from(e: zenoh::Error) -> Error {
        Error::Zenoh(e)
    }
}

impl From<shmq::Error> for Error {
    fn from(e: shmq::Error) -> Error {
        Error::Channel(e)
    }
}

/// A handle that asks a running bridge to stop: [`Exporter::run`] and [`Importer::run`] return
/// within about [`POLL`] of [`Stopper::stop`]. Clone it into a signal handler's thread, say.
#[derive(Clone, Debug, Default)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Asks the bridge to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How often a waiting bridge looks again at what it waits for besides its main event (a stop,
/// an importer that came or went): the bound on how late it notices those.
pub const POLL: Duration = Duration::from_millis(100);

/// A run id for one exporter: distinct for each start, so an importer tells a restarted exporter
/// from the one before it.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}
