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

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use indicatif::{ProgressBar, ProgressStyle};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Upper bound on the whole run, so that a bug shows up as a failure rather than a hang.
const DEADLINE: Duration = Duration::from_secs(60);
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("worker") => worker(&args[1..]),
        _ => pool(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker_pool: {e}");
            ExitCode::FAILURE
        }
    }
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
    let config = shmq::ChannelConfig::default().arena_bytes(64 << 10);
    let (jobs_tx, jobs_rx) = shmq::channel(&jobs_name, config.clone().capacity(16))?;
    let (results_tx, results_rx) = shmq::channel(&results_name, config.capacity(256))?;
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
    for _ in 0..workers {
        let (index, line) = children.next_line(deadline)?;
        if line != "ready" {
            return Err(format!("worker {index} said {line:?} instead of ready").into());
        }
    }
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
    for name in [&jobs_name, &results_name] {
        if std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists() {
            return Err(format!("/dev/shm/shmq.{name} is still there").into());
        }
    }
    println!("ok: every job ran once and every answer checks; both segments are gone");
    Ok(())
}

/// Child processes whose stdout lines we read; any still running are killed and reaped on
/// drop, so that a failed run leaves no process (and so no segment) behind.
struct Children {
    procs: Vec<Child>,
    /// Children whose stdout is still open.
    open: usize,
    lines_tx: mpsc::Sender<(usize, Option<String>)>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
}

impl Children {
    fn new() -> Self {
        let (lines_tx, lines) = mpsc::channel();
        Children {
            procs: Vec::new(),
            open: 0,
            lines_tx,
            lines,
        }
    }

    /// Starts `command` with no stdin and its stdout read line by line.
    fn spawn(&mut self, mut command: Command) -> BoxResult<()> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take();
        let index = self.procs.len();
        self.procs.push(child);
        let stdout = stdout.ok_or("child stdout is not piped")?;
        self.open += 1;
        let lines_tx = self.lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send((index, Some(line))).is_err() {
                    return;
                }
            }
            let _ = lines_tx.send((index, None));
        });
        Ok(())
    }

    /// The next line a child printed, waiting until `deadline`. A child that closes its stdout
    /// having said everything and exited with success is fine; one that failed is an error.
    fn next_line(&mut self, deadline: Instant) -> BoxResult<(usize, String)> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((index, Some(line))) => return Ok((index, line)),
                Ok((index, None)) => {
                    self.open -= 1;
                    let status = self.procs[index].wait()?;
                    if !status.success() {
                        return Err(format!("child {index} failed ({status})").into());
                    }
                    if self.open == 0 {
                        return Err("every child exited before saying what was expected".into());
                    }
                }
                Err(_) => return Err("timed out waiting for the children".into()),
            }
        }
    }

    /// Waits until `deadline` for every child to exit, and checks that each succeeded.
    fn wait_all(&mut self, deadline: Instant) -> BoxResult<()> {
        for (index, child) in self.procs.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() >= deadline {
                    return Err(format!("child {index} did not exit in time").into());
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if !status.success() {
                return Err(format!("child {index} failed ({status})").into());
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.procs {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
