//! `shmq`: command-line tool for shmq channels and segments.
//!
//! ```text
//! shmq ls [--json]              # every shmq segment: kind, size, participants, messages in flight
//! shmq info NAME [--json]       # one segment's header, queue figures and participants
//! shmq rm NAME [--force]        # remove a segment (refused while being created; in use: --force)
//! shmq gc [--json]              # remove what only the dead used; print every decision and why
//! shmq bench                    # compare shmq with a pipe and a Unix socket on this host (~15 s)
//! ```

// Submodules live in src/bin/shmq/ (the benches include workload.rs too). Layers, each using
// only those below it: the commands (admin, bench), the bench workloads, the error type.
#[path = "shmq/admin.rs"]
mod admin;
#[path = "shmq/bench.rs"]
mod bench;
#[path = "shmq/error.rs"]
mod error;
#[path = "shmq/workload.rs"]
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "shmq",
    version,
    about = "Tools for shmq shared-memory channels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every shmq segment in /dev/shm: kind, size, live and dead participants, messages
    /// and bytes in flight.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one segment in detail: header, queue figures and every participant.
    Info {
        /// The segment's name (as `shmq ls` prints it).
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a segment (a channel with its overflow payloads). Refused while it is being
    /// created, and while it has live participants unless --force.
    Rm {
        /// The segment's name.
        name: String,
        /// Remove it even though live processes use it: its name goes now, they keep using it
        /// under a tombstone name until they are done (never while it is being created).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every segment whose participants are all dead, and overflow payloads of channels
    /// that are gone; print every decision (removed or kept) and its reason.
    Gc {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare shmq with a pipe and a Unix socket between two processes on this host: transfer
    /// throughput, 64-byte latency and message rate (about 15 seconds).
    Bench(bench::BenchArgs),
    /// The consumer process of `shmq bench` (started by it).
    #[command(name = "__bench-consumer", hide = true)]
    BenchConsumer {
        /// The workload, as `shmq bench` describes it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls { json } => admin::ls(json),
        Command::Info { name, json } => admin::info(&name, json),
        Command::Rm { name, force, json } => admin::rm(&name, force, json),
        Command::Gc { json } => admin::gc(json),
        Command::Bench(args) => bench::run(&args),
        Command::BenchConsumer { args } => workload::consumer_main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmq: {e}");
            ExitCode::FAILURE
        }
    }
}
