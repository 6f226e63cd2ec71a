//! Worker processes share a counter and an array of per-worker results; one of them is killed
//! with SIGKILL while it holds the locks, half-way through an update, and the others recover.
//!
//! Each worker repeatedly takes the counter's lock, then the results' lock, and adds one to the
//! counter and one to its own slot of the results, so that `counter == sum(results)` whenever
//! nobody holds the locks. The victim stops half-way through one update (counter incremented,
//! its result not yet) and sleeps while holding both locks; the parent kills it there. The next
//! worker to lock is told the owner died, repairs the counter by recomputing it from the
//! per-worker results, marks both consistent and carries on.
//!
//! Run with `cargo run --example shared_counter`. The parent starts the workers by re-running
//! this program as `shared_counter worker <index> <counter-name> <results-name> [hold-at <n>]`,
//! prints the totals and exits with status 0 if they are consistent.

mod common;

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{wait_until, DEADLINE};
use shmq::{LockError, SharedArray, SharedArrayGuard, SharedValue, SharedValueGuard};

/// Worker processes.
const WORKERS: usize = 4;
/// Updates each worker makes.
const ITERATIONS: u64 = 2_000;
/// The worker that gets killed.
const VICTIM: usize = 2;
/// The update during which the victim stops, holding the locks.
const VICTIM_HOLDS_AT: u64 = 500;
/// Work a worker does between updates, without holding a lock.
const WORK: Duration = Duration::from_micros(100);
/// What a worker's stdout reader reports when the worker's stdout closes.
const EOF: &str = "<eof>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => parent(),
        Some("worker") => worker(&args[1..]).map(|()| true),
        Some(_) => Err(
            "usage: shared_counter [worker <index> <counter-name> <results-name> [hold-at <n>]]"
                .into(),
        ),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shared_counter: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Locks the counter, then the results, repairing the counter if a holder of either died.
fn lock_both(
    counter: &SharedValue<u64>,
    results: &SharedArray<u64>,
    who: &str,
) -> shmq::Result<(SharedValueGuard<u64>, SharedArrayGuard<u64>)> {
    let (mut count, counter_died) = match counter.lock() {
        Ok(guard) => (guard, false),
        Err(LockError::OwnerDied(dead)) => (dead.into_inner(), true),
        Err(e) => return Err(e.into()),
    };
    let (mut done, results_died) = match results.lock() {
        Ok(guard) => (guard, false),
        Err(LockError::OwnerDied(dead)) => (dead.into_inner(), true),
        Err(e) => return Err(e.into()),
    };
    if counter_died || results_died {
        // Each result slot is one word, written after the counter: the results are intact and
        // the counter may be ahead of them. Recompute it.
        let sum: u64 = done.iter().sum();
        println!(
            "{who}: a lock holder died; counter was {}, per-worker results sum to {sum}: \
             counter repaired to {sum}",
            *count
        );
        *count = sum;
        done.mark_consistent();
        count.mark_consistent();
    }
    Ok((count, done))
}

/// One worker process: `<index> <counter-name> <results-name> [hold-at <n>]`.
fn worker(args: &[String]) -> Result<(), Box<dyn Error>> {
    let [index, counter_name, results_name, rest @ ..] = args else {
        return Err("worker needs <index> <counter-name> <results-name>".into());
    };
    let index: usize = index.parse()?;
    let hold_at: Option<u64> = match rest {
        [] => None,
        [flag, n] if flag == "hold-at" => Some(n.parse()?),
        _ => return Err("worker: unexpected arguments".into()),
    };
    let counter = SharedValue::<u64>::open(counter_name)?;
    let results = SharedArray::<u64>::open(results_name)?;
    if index >= results.len() {
        return Err(format!("worker index {index} out of range").into());
    }
    let who = format!("worker {index}");
    println!("ready");
    for i in 0..ITERATIONS {
        let (mut count, mut done) = lock_both(&counter, &results, &who)?;
        *count += 1;
        if hold_at == Some(i) {
            // Half-way through an update, holding both locks: the parent kills us here.
            println!("holding");
            std::thread::sleep(DEADLINE);
            return Err("the victim was not killed".into());
        }
        done[index] += 1;
        drop((done, count));
        std::thread::sleep(WORK); // stands for real work, done without the locks
    }
    println!("{who}: finished {ITERATIONS} updates");
    Ok(())
}

/// The worker processes; any still running are killed and reaped on drop.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn parent() -> Result<bool, Box<dyn Error>> {
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let pid = std::process::id();
    let counter_name = format!("example-counter-{pid}");
    let results_name = format!("example-results-{pid}");
    // Declared before the workers, so they are dropped after the workers are killed and reaped:
    // the last handle to go unlinks both segments, whatever happens.
    let counter = SharedValue::<u64>::create(&counter_name, 0)?;
    let results = SharedArray::<u64>::create(&results_name, WORKERS, 0)?;
    // Hold the counter's lock until every worker runs, so that all are busy when the victim
    // is killed.
    let mut start_gate = Some(counter.lock()?);

    let exe = std::env::current_exe()?;
    let mut workers = Workers(Vec::new());
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    for index in 0..WORKERS {
        let mut command = Command::new(&exe);
        command
            .arg("worker")
            .arg(index.to_string())
            .arg(&counter_name)
            .arg(&results_name);
        if index == VICTIM {
            command.arg("hold-at").arg(VICTIM_HOLDS_AT.to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("worker stdout is not piped")?;
        workers.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send((index, EOF.to_owned()));
        });
    }
    drop(tx);

    let (mut ready, mut closed, mut killed) = (0, 0, false);
    while closed < WORKERS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (index, line) = match rx.recv_timeout(remaining) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("parent: the workers did not finish within {DEADLINE:?}");
                return Ok(false);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match line.as_str() {
            "ready" => {
                ready += 1;
                if ready == WORKERS {
                    println!("parent: all {WORKERS} workers started, {ITERATIONS} updates each");
                    drop(start_gate.take());
                }
            }
            "holding" if index == VICTIM => {
                let victim = &mut workers.0[index];
                victim.kill()?; // SIGKILL
                victim.wait()?;
                killed = true;
                println!(
                    "parent: killed worker {index} with SIGKILL while it holds the locks, \
                     half-way through update {VICTIM_HOLDS_AT}"
                );
            }
            EOF => {
                closed += 1;
                if start_gate.is_some() {
                    eprintln!("parent: worker {index} exited before it started");
                    return Ok(false);
                }
            }
            _ => println!("{line}"), // workers name themselves
        }
    }

    let mut all_ok = killed;
    if !killed {
        eprintln!("parent: the victim never reported holding the locks");
    }
    for (index, child) in workers.0.iter_mut().enumerate() {
        let Some(status) = wait_until(child, deadline)? else {
            eprintln!("parent: worker {index} did not exit");
            return Ok(false);
        };
        if index != VICTIM && !status.success() {
            eprintln!("parent: worker {index} failed: {status}");
            all_ok = false;
        }
    }

    // Normally a worker has repaired the counter already; if the others had finished before
    // the victim died, the parent is the one to find the dead owner and repair it.
    let (count, done) = lock_both(&counter, &results, "parent")?;
    let total: u64 = done.iter().sum();
    let expected = (WORKERS as u64 - 1) * ITERATIONS + VICTIM_HOLDS_AT;
    println!("counter                 = {}", *count);
    println!("per-worker results      = {:?}", &*done);
    println!("sum of per-worker       = {total}");
    println!(
        "expected                = {expected} ({} workers x {ITERATIONS} + {VICTIM_HOLDS_AT} by the killed worker)",
        WORKERS - 1
    );
    let consistent = *count == total
        && total == expected
        && done.iter().enumerate().all(|(i, &n)| {
            n == if i == VICTIM {
                VICTIM_HOLDS_AT
            } else {
                ITERATIONS
            }
        });
    println!(
        "{} in {:.2?}",
        if consistent {
            "consistent"
        } else {
            "INCONSISTENT"
        },
        started.elapsed()
    );
    Ok(all_ok && consistent)
}
