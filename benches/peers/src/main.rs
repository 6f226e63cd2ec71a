//! `shmq-peers`: shmq against iceoryx2, each measurement between two real processes (this
//! binary started again as the receiving child). Prints a markdown table; see
//! docs/performance.md, "Issue 13".
//!
//! ```text
//! cargo run --release -p shmq-peers                      # every cell, a few minutes
//! cargo run --release -p shmq-peers -- --quick --cells rate,latency
//! ```

mod cell;
mod cleanup;
mod clock;
mod contender;
mod drive;
mod error;
mod iceoryx2_side;
mod limits;
mod options;
mod pattern;
mod pinning;
mod plan;
mod process;
mod report;
mod shmq_side;
mod stats;
mod usage;

use std::time::Duration;

use cell::Cell;
use cleanup::{Names, ShmqSweeper};
use contender::{Contender, Measurement};
use drive::READY;
use error::BoxResult;
use options::Options;
use pinning::Pinning;
use plan::Plan;
use process::{ChildArgs, Peer, CHILD_COMMAND};
use report::{Row, RunInfo};

/// The longest a measurement of one contender in one cell may take before the watchdog
/// calls it hung: generous, a full cell takes a few seconds.
fn measurement_deadline(quick: bool) -> Duration {
    Duration::from_secs(if quick { 120 } else { 600 })
}

/// Runs a measurement child when started with the hidden subcommand, else the whole run.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((first, rest)) if first == CHILD_COMMAND => child_main(rest),
        _ => parent_main(&args),
    };
    if let Err(e) = result {
        eprintln!("shmq-peers: {e}");
        std::process::exit(1);
    }
}

/// The receiving process of one measurement.
fn child_main(args: &[String]) -> BoxResult<()> {
    process::die_with_parent();
    let args = ChildArgs::parse(args)?;
    if let Some(cpu) = args.cpu {
        pinning::pin_to(cpu)?;
    }
    let plan = Plan::new(args.cell, args.quick);
    args.contender.serve(args.cell, &plan, &args.names)
}

/// The run: every selected cell for both contenders, then the table and what the run left.
fn parent_main(args: &[String]) -> BoxResult<()> {
    let options = Options::parse(args)?;
    if options.help {
        println!("{}", options::USAGE);
        return Ok(());
    }
    if options.list {
        for cell in Cell::all() {
            println!("{}", cell.id());
        }
        return Ok(());
    }
    let pinning = if options.pin { Pinning::choose() } else { None };
    if let Some(pins) = pinning {
        pinning::pin_to(pins.parent)?;
    }
    let _sweeper = ShmqSweeper;
    let run = cleanup::run_id();
    for path in cleanup::remove_dead_runs() {
        eprintln!(
            "shmq-peers: removed {} (left by a run that was killed)",
            path.display()
        );
    }
    let commit = report::commit();
    let started = report::utc_now();
    let load_at_start = report::load_average();
    let mut rows = Vec::new();
    let mut failures = 0;
    for (index, &cell) in options.cells.iter().enumerate() {
        let mut row = Row::new(cell);
        for round in 0..options.rounds {
            if matches!(cell, Cell::Latency { .. }) {
                match limits::spin_ping_pong_one_way_ns(options.quick, pinning) {
                    Ok(ns) => row.spin_ping_pong_ns.push(ns),
                    Err(e) => {
                        failures += 1;
                        eprintln!("shmq-peers: spin ping-pong failed: {e}");
                    }
                }
            }
            let mut this_round = Vec::new();
            for contender in Contender::in_round(round) {
                eprintln!(
                    "shmq-peers: {} {} (round {} of {}) ...",
                    contender.id(),
                    cell.id(),
                    round + 1,
                    options.rounds
                );
                let names = Names {
                    run: run.clone(),
                    measurement: format!("{run}-{index}-{round}-{}", contender.id()),
                };
                match measure(contender, cell, &names, &options, pinning) {
                    Ok(m) => this_round.push((contender, m)),
                    Err(e) => {
                        failures += 1;
                        eprintln!("shmq-peers: {} {} failed: {e}", contender.id(), cell.id());
                    }
                }
            }
            row.add_round(this_round);
        }
        rows.push(row);
    }
    let info = RunInfo {
        commit,
        started,
        ended: report::utc_now(),
        load_at_start,
        load_at_end: report::load_average(),
        quick: options.quick,
        rounds: options.rounds,
        pinning,
    };
    print!("{}", report::render(&rows, &info));
    print!("{}", report_leftovers(&run));
    if failures > 0 {
        return Err(format!("{failures} measurement(s) failed").into());
    }
    Ok(())
}

/// After every measurement's processes are gone: asks iceoryx2 to clean up after dead nodes
/// of the run's domain, lists what the run still has in /dev/shm and /tmp/iceoryx2 (what the
/// libraries left after their own cleanup), removes it, and says what it removed.
fn report_leftovers(run: &str) -> String {
    let dead_nodes = iceoryx2_side::remove_dead_nodes(run);
    let left = cleanup::run_files(run);
    let removed = cleanup::remove_run_files(run);
    let still = cleanup::run_files(run);
    let mut out = String::from("\nFiles of this run after both libraries dropped everything");
    if dead_nodes > 0 {
        out.push_str(&format!(
            " (and iceoryx2 cleaned {dead_nodes} dead node(s))"
        ));
    }
    if left.is_empty() {
        out.push_str(": none.\n");
    } else {
        out.push_str(":\n\n");
        for path in &left {
            let fate = if removed.contains(path) {
                "removed by the benchmark"
            } else {
                "could not be removed"
            };
            out.push_str(&format!("- {} ({fate})\n", path.display()));
        }
    }
    if !still.is_empty() {
        out.push_str(&format!("{} file(s) of this run remain.\n", still.len()));
    }
    out
}

/// One contender in one cell: its channels or services under `names`, and a child that
/// receives.
fn measure(
    contender: Contender,
    cell: Cell,
    names: &Names,
    options: &Options,
    pinning: Option<Pinning>,
) -> BoxResult<Measurement> {
    let quick = options.quick;
    let plan = Plan {
        print_each: options.each,
        ..Plan::new(cell, quick)
    };
    let args = ChildArgs {
        contender,
        cell,
        names: names.clone(),
        quick,
        cpu: pinning.map(|pins| pins.child),
    };
    let start_child = || -> BoxResult<Peer> {
        let mut peer = Peer::spawn(&args, measurement_deadline(quick), cleanup::after_failure)?;
        peer.expect(READY)?;
        Ok(peer)
    };
    let measurement = contender.measure(cell, &plan, names, &start_child);
    // A failed measurement may leave its channels behind (a killed child's, for one).
    cleanup::remove_shmq_objects(&names.run);
    measurement
}
