//! `shmq-bridge`: carries a shmq channel's messages between hosts over Zenoh.
//!
//! ```text
//! shmq-bridge export CHANNEL [--key KEY] [--listen EP]... [--connect EP]... [--config FILE] [--mode fanout|share]
//! shmq-bridge import CHANNEL [--key KEY] [--listen EP]... [--connect EP]... [--config FILE]
//!                            [--create --capacity N --arena-bytes BYTES [--keep-open]]
//!                            [--window-messages N] [--window-bytes BYTES] [--until-end]
//! ```
//!
//! The log goes to stderr; `RUST_LOG` sets its level (`info` by default).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shmq::{ChannelConfig, Sender};
use shmq_zenoh::{zenoh_config, Endpoints, Exporter, Importer, Mode, Window};
use zenoh::Wait;

#[derive(Parser, Debug)]
#[command(
    name = "shmq-bridge",
    version,
    about = "Carry a shmq channel's messages between hosts over Zenoh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Be one receiver of a local channel and send what it takes to the importers of KEY.
    /// Exits once every local sender is gone, the channel is empty and every message sent is
    /// confirmed.
    Export {
        #[command(flatten)]
        link: Link,
        /// fanout: every importer gets every message; share: each message goes to exactly one
        /// importer with room (a work queue spread over hosts).
        #[arg(long, default_value_t = Mode::Fanout)]
        mode: Mode,
    },
    /// Be one sender of a local channel and land in it what the exporter of KEY sends.
    Import {
        #[command(flatten)]
        link: Link,
        /// Create the local channel if it does not exist (otherwise attach to it).
        #[arg(long)]
        create: bool,
        /// With --create: the ring's capacity in messages.
        #[arg(long, requires = "create", default_value_t = 64)]
        capacity: usize,
        /// With --create: the arena's size in bytes (larger messages travel in overflow
        /// segments of their own).
        #[arg(long, requires = "create", default_value_t = 64 << 20)]
        arena_bytes: usize,
        /// With --create: a persistent channel (never Disconnected): messages queue while no
        /// local receiver is there.
        #[arg(long, requires = "create")]
        keep_open: bool,
        /// Messages in flight to this importer at most (what it may hold beyond its channel).
        #[arg(long, default_value_t = Window::default().messages)]
        window_messages: u64,
        /// Bytes in flight to this importer at most (one larger message passes alone).
        #[arg(long, default_value_t = Window::default().bytes)]
        window_bytes: u64,
        /// Exit once an exporter ends its stream (its local channel disconnected and every
        /// message landed here), instead of serving exporters until killed.
        #[arg(long)]
        until_end: bool,
    },
}

/// The arguments both directions share: the channel, the key and the Zenoh link.
#[derive(Args, Debug)]
struct Link {
    /// The local channel's name.
    channel: String,
    /// The Zenoh key the channel is bridged on (default `shmq/CHANNEL`). One exporter per key.
    #[arg(long)]
    key: Option<String>,
    /// Listen on this Zenoh endpoint (`tcp/0.0.0.0:7447`, `unixsock-stream/PATH`); repeatable.
    /// Any --listen or --connect turns multicast scouting off: a peer-to-peer link, no router.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Connect to this Zenoh endpoint (`tcp/hostA:7447`); repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// Zenoh's configuration (JSON5): TLS, access control, routers. --listen and --connect
    /// replace its endpoints.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Link {
    fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("shmq/{}", self.channel))
    }

    fn session(&self) -> Result<zenoh::Session, shmq_zenoh::Error> {
        let endpoints = Endpoints {
            listen: self.listen.clone(),
            connect: self.connect.clone(),
        };
        let config = zenoh_config(self.config.as_deref(), &endpoints)?;
        Ok(zenoh::open(config).wait()?)
    }
}

fn main() -> ExitCode {
    init_log();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shmq-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log: on stderr, at the level `RUST_LOG` says (`info` by default), without colours.
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn run(command: Command) -> Result<(), shmq_zenoh::Error> {
    match command {
        Command::Export { link, mode } => {
            let session = link.session()?;
            let summary = Exporter::open(&session, &link.channel, &link.key(), mode)?.run()?;
            eprintln!(
                "shmq-bridge: exported {} messages ({} bytes, {} sends); {} unconfirmed at a \
                 lost importer",
                summary.taken, summary.bytes, summary.sent, summary.unconfirmed_at_loss
            );
        }
        Command::Import {
            link,
            create,
            capacity,
            arena_bytes,
            keep_open,
            window_messages,
            window_bytes,
            until_end,
        } => {
            let sender = if create {
                let config = ChannelConfig::default()
                    .with_capacity(capacity)
                    .with_arena_bytes(arena_bytes)
                    .with_disconnect(!keep_open);
                create_or_open(&link.channel, config)?
            } else {
                Sender::open(&link.channel)?
            };
            let session = link.session()?;
            let window = Window {
                messages: window_messages,
                bytes: window_bytes,
            };
            let summary = Importer::new(&session, sender, &link.key())?
                .with_window(window)
                .until_end(until_end)
                .run()?;
            eprintln!(
                "shmq-bridge: imported {} messages ({} bytes); {} lost in flight, {} exporters \
                 lost",
                summary.landed, summary.bytes, summary.gaps, summary.exporters_lost
            );
        }
    }
    Ok(())
}

/// Creates channel `name` with `config`, or opens it as a sender if it exists (or is being
/// created by another process right now).
fn create_or_open(name: &str, config: ChannelConfig) -> Result<Sender, shmq::Error> {
    let mut tries = 0;
    loop {
        match shmq::channel(name, config.clone()) {
            // The receiver family the creation opened goes: the channel's receivers are the
            // local processes, and a persistent channel keeps messages for them meanwhile.
            Ok((sender, _receiver)) => return Ok(sender),
            Err(shmq::Error::AlreadyExists { .. }) => match Sender::open(name) {
                Ok(sender) => return Ok(sender),
                // Between our create and open, its creator may still be laying it out (or
                // have gone and unlinked it): try again, a few times.
                Err(shmq::Error::NotReady { .. } | shmq::Error::NotFound { .. }) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}
