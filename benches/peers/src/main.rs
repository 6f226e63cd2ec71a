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
mod options;
mod pattern;
mod plan;
mod process;
mod report;
mod shmq_side;
mod stats;
mod usage;

use std::time::Duration;

use cell::Cell;
use cleanup::{SegmentSweeper, Snapshot};
use contender::{Contender, Measurement};
use drive::READY;
use error::BoxResult;
use options::Options;
use plan::Plan;
use process::{ChildArgs, Peer, CHILD_COMMAND};
use report::Row;

/// The longest a measurement of one contender in one cell may take before the watchdog
/// calls it hung: generous, a full cell takes a few seconds.
fn measurement_deadline(quick: bool) -> Duration {
    Duration::from_secs(if quick { 120 } else { 600 })
}

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
    let plan = Plan::new(args.cell, args.quick);
    args.contender.serve(args.cell, &plan, &args.base_name)
}

/// The run: every selected cell for both contenders, then the table.
fn parent_main(args: &[String]) -> BoxResult<()> {
    let options = Options::parse(args)?;
    if options.list {
        for cell in Cell::all() {
            println!("{}", cell.id());
        }
        return Ok(());
    }
    let _sweeper = SegmentSweeper;
    let stale = iceoryx2_side::remove_dead_nodes();
    if stale > 0 {
        eprintln!("shmq-peers: removed the stale resources of {stale} dead iceoryx2 node(s)");
    }
    let before = Snapshot::take();
    let commit = report::commit();
    let started = report::utc_now();
    let mut rows = Vec::new();
    let mut failures = 0;
    for (index, &cell) in options.cells.iter().enumerate() {
        let mut row = Row {
            cell,
            shmq: None,
            iceoryx2: None,
        };
        for contender in Contender::ALL {
            eprintln!("shmq-peers: {} {} ...", contender.id(), cell.id());
            match measure(contender, cell, index, options.quick) {
                Ok(m) => match contender {
                    Contender::Shmq => row.shmq = Some(m),
                    Contender::Iceoryx2 => row.iceoryx2 = Some(m),
                },
                Err(e) => {
                    failures += 1;
                    eprintln!("shmq-peers: {} {} failed: {e}", contender.id(), cell.id());
                }
            }
        }
        rows.push(row);
    }
    print!(
        "{}",
        report::render(&rows, &commit, &started, options.quick)
    );
    cleanup::remove_own_shmq_segments();
    iceoryx2_side::remove_dead_nodes();
    let left = Snapshot::take().new_since(&before);
    if left.is_empty() {
        println!("\nShared memory and iceoryx2 files left by this run: none.");
    } else {
        println!("\nShared memory and iceoryx2 files left by this run:");
        for path in &left {
            println!("- {}", path.display());
        }
    }
    if failures > 0 {
        return Err(format!("{failures} measurement(s) failed").into());
    }
    Ok(())
}

/// One contender in one cell: its channels or services under a name unique to this run,
/// cell and contender, and a child that receives.
fn measure(contender: Contender, cell: Cell, index: usize, quick: bool) -> BoxResult<Measurement> {
    let plan = Plan::new(cell, quick);
    let args = ChildArgs {
        contender,
        cell,
        base_name: format!("{}-{index}-{}", cleanup::run_base(), contender.id()),
        quick,
    };
    let start_child = || -> BoxResult<Peer> {
        let mut peer = Peer::spawn(&args, measurement_deadline(quick), cleanup::after_failure)?;
        peer.expect(READY)?;
        Ok(peer)
    };
    let measurement = contender.measure(cell, &plan, &args.base_name, &start_child);
    // A failed measurement may leave its channels behind (a killed child's, for one).
    cleanup::remove_own_shmq_segments();
    measurement
}
