//! A pool of worker processes: the batch-job pattern of `multiprocessing.Pool`, built from two
//! channels. Workers take jobs from one channel and put results (or failures) on another; the
//! main process shows a progress bar while results arrive and ends with a summary of failures.
//!
//! - Jobs and results are plain structs (`bytemuck::Pod`) sent as bytes with `send_slice` and read
//!   back in place with `as_slice`: no pickling. Both are under 96 bytes, so they travel inside
//!   the channel's ring and take no arena memory.
//! - Workers find both channels by name, given on their command line.
//! - Some jobs fail on purpose (every job whose id is 3 modulo 7): a failure is a result like
//!   any other, with a status, so one bad job never takes a worker down.
//! - Shutdown needs no sentinels: when the feeder thread drops the job `Sender`, each worker's
//!   `for msg in jobs.iter()` ends; when every worker has dropped its result `Sender`, the main
//!   process's receive loop sees `Disconnected`.
//!
//! ```text
//! cargo run --release --example worker_pool [-- --jobs 400 --workers 3]
//! ```
//!
//! The progress bar is drawn on stderr when it is a terminal; otherwise (in CI, or piped) the
//! example prints a plain progress line every 25 %.

mod common;

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use common::{BoxResult, Children, DEADLINE};
use indicatif::{ProgressBar, ProgressStyle};

/// Time a job takes besides its computation, standing for real work.
const WORK: Duration = Duration::from_millis(3);

/// A job: a fixed header of plain integers, sent as its bytes.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Job {
    id: u64,
    /// The input: the job computes the length of the Collatz sequence starting here.
    input: u64,
}

/// A job's outcome. `#[repr(C)]` with no padding (8 + 4 + 4 + 8 bytes), as `Pod` requires.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct JobResult {
    id: u64,
    /// [`STATUS_OK`] or [`STATUS_FAILED`].
    status: u32,
    /// Which worker ran the job.
    worker: u32,
    /// The answer, or for a failure the error code.
    value: u64,
}

const STATUS_OK: u32 = 0;
const STATUS_FAILED: u32 = 1;
/// Error code of the jobs that fail on purpose.
const ERR_REJECTED: u64 = 3;

fn main() -> ExitCode {
    common::run("worker_pool", "worker", worker, pool)
}

fn job(id: u64) -> Job {
    Job {
        id,
        input: 1 + id.wrapping_mul(7919) % 1_000_000,
    }
}

/// What a worker does with a job. Deterministic, so the main process can check the answers.
fn run_job(job: &Job) -> Result<u64, u64> {
    if job.id % 7 == 3 {
        return Err(ERR_REJECTED);
    }
    let (mut x, mut steps) = (job.input, 0u64);
    while x != 1 {
        x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
        steps += 1;
    }
    Ok(steps)
}

// ----- worker process --------------------------------------------------------------------------

/// `worker <index> <jobs-channel> <results-channel>`
fn worker(args: &[String]) -> BoxResult<()> {
    let [index, jobs_name, results_name] = args else {
        return Err("worker needs <index> <jobs-channel> <results-channel>".into());
    };
    let index: u32 = index.parse()?;
    let jobs = shmq::Receiver::open(jobs_name)?;
    let results = shmq::Sender::open(results_name)?;
    writeln!(std::io::stdout(), "ready")?;

    // Ends when the feeder has dropped its sender and the job queue is drained.
    for msg in jobs.iter() {
        // The job is read in place; `let [job] = ...` also rejects a message of the wrong size.
        let &[job] = msg.as_slice::<Job>()? else {
            return Err(format!("worker {index}: a job of {} bytes", msg.len()).into());
        };
        drop(msg); // done with the message: free it now rather than at the end of the loop body
        std::thread::sleep(WORK);
        let (status, value) = match run_job(&job) {
            Ok(steps) => (STATUS_OK, steps),
            Err(code) => (STATUS_FAILED, code),
        };
        let result = JobResult {
            id: job.id,
            status,
            worker: index,
            value,
        };
        results.send_slice(&[result])?;
    }
    Ok(())
}

// ----- main process ----------------------------------------------------------------------------

fn pool(args: &[String]) -> BoxResult<()> {
    let (mut jobs, mut workers) = (400u64, 3usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--jobs" => jobs = value.parse()?,
            "--workers" => workers = value.parse::<usize>()?.clamp(1, 64),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let started = Instant::now();
    let deadline = started + DEADLINE;

    let pid = std::process::id();
    let (jobs_name, results_name) = (format!("wp-jobs-{pid}"), format!("wp-results-{pid}"));
    // Jobs and results are small: they live in the ring, and the arena can stay small.
    let config = shmq::ChannelConfig::default().with_arena_bytes(64 << 10);
    let (jobs_tx, jobs_rx) = shmq::channel(&jobs_name, config.clone().with_capacity(16))?;
    let (results_tx, results_rx) = shmq::channel(&results_name, config.with_capacity(256))?;
    // Declared after the channels, so dropped before them: on an early return the workers are
    // killed and reaped first, then our handles go and the last one unlinks each segment.
    let mut children = Children::new();
    for index in 0..workers {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("worker")
            .arg(index.to_string())
            .arg(&jobs_name)
            .arg(&results_name);
        children.spawn(command)?;
    }
    children.wait_ready(deadline, |index| format!("worker {index}"))?;
    // The workers hold their own handles now. Our receiver of jobs and sender of results must
    // go: the workers' job loop ends only when no sender of jobs is left, ours only when no
    // sender of results is left.
    drop(jobs_rx);
    drop(results_tx);
    println!(
        "worker_pool: {jobs} jobs for {workers} worker processes \
         (channels {jobs_name:?} and {results_name:?})"
    );

    let bar = ProgressBar::new(jobs);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} jobs, {msg} [{elapsed}]",
    )?);
    bar.set_message("0 failed");
    let plain = bar.is_hidden(); // not a terminal: fall back to a line every 25 %

    let mut seen = vec![false; jobs as usize];
    let mut per_worker = vec![0u64; workers];
    let mut failures = Vec::new();
    std::thread::scope(|scope| -> BoxResult<()> {
        // Moved in, so that on an early return the workers are killed before the scope waits
        // for the feeder: a feeder blocked on a full job queue then sees `Disconnected`.
        let mut children = children;
        // Feed the jobs from a thread while this one collects results: with bounded queues,
        // one thread doing both would deadlock once both queues are full.
        let feeder = scope.spawn(move || -> Result<(), shmq::SendError> {
            for id in 0..jobs {
                jobs_tx.send_slice(&[job(id)])?;
            }
            Ok(()) // `jobs_tx` is dropped here: the workers' loops end once the queue drains
        });

        let mut received = 0u64;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match results_rx.recv_timeout(left) {
                Ok(msg) => msg,
                // Every worker has exited and every result has been received.
                Err(shmq::RecvTimeoutError::Disconnected) => break,
                Err(e) => return Err(e.into()),
            };
            let &[result] = msg.as_slice::<JobResult>()? else {
                return Err(format!("a result of {} bytes", msg.len()).into());
            };
            let id = result.id as usize;
            if id >= seen.len() || std::mem::replace(&mut seen[id], true) {
                return Err(format!("unexpected result {result:?}").into());
            }
            *per_worker
                .get_mut(result.worker as usize)
                .ok_or("result from an unknown worker")? += 1;
            match (result.status, run_job(&job(result.id))) {
                (STATUS_OK, Ok(want)) if result.value == want => {}
                (STATUS_FAILED, Err(code)) if result.value == code => failures.push(result),
                _ => return Err(format!("wrong result {result:?}").into()),
            }
            received += 1;
            bar.inc(1);
            bar.set_message(format!("{} failed", failures.len()));
            if plain && (received * 4 / jobs.max(1)) > ((received - 1) * 4 / jobs.max(1)) {
                println!(
                    "progress: {received}/{jobs} jobs, {} failed, {:.2?}",
                    failures.len(),
                    started.elapsed()
                );
            }
        }
        feeder.join().map_err(|_| "the feeder thread panicked")??;
        children.wait_all(deadline)?;
        Ok(())
    })?;
    bar.finish();

    let failed = failures.len() as u64;
    let received = seen.iter().filter(|&&s| s).count() as u64;
    println!(
        "done in {:.2?}: {} succeeded, {failed} failed, {received} of {jobs} results received",
        started.elapsed(),
        received - failed
    );
    let shares: Vec<String> = per_worker
        .iter()
        .enumerate()
        .map(|(i, n)| format!("worker {i}: {n}"))
        .collect();
    println!("jobs per worker: {}", shares.join(", "));
    if !failures.is_empty() {
        failures.sort_by_key(|r| r.id);
        println!("failures ({failed}):");
        for r in failures.iter().take(5) {
            println!(
                "  job {:>4} (input {:>6}) on worker {}: error {} (rejected: id % 7 == 3)",
                r.id,
                job(r.id).input,
                r.worker,
                r.value
            );
        }
        if failures.len() > 5 {
            println!("  ... and {} more", failures.len() - 5);
        }
    }
    if received != jobs || failed != (jobs + 3) / 7 {
        return Err(format!("expected {jobs} results of which {} failed", (jobs + 3) / 7).into());
    }
    drop(results_rx); // our last handle: it unlinks the results segment
    common::ensure_unlinked(&[&jobs_name, &results_name])?;
    println!("ok: every job ran once and every answer checks; both segments are gone");
    Ok(())
}
