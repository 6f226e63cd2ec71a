//! The boss of the two job-and-control examples (`select_worker`, `tokio_worker`): it makes a
//! job queue, a control queue and a result queue, starts worker processes (the example run
//! again as `<example> worker`), hands out jobs, collects one result per job, then tells each
//! worker to stop on the control queue. Only the workers differ: one waits with `Select`, the
//! other with `.await`.

use std::process::Command;
use std::time::Instant;

use crate::common::{ensure_unlinked, BoxResult, Children, DEADLINE};

/// The channels a worker opens, named after the boss's pid.
pub struct Names {
    pub jobs: String,
    pub control: String,
    pub results: String,
}

impl Names {
    /// The names of the channels of the boss with process id `pid`.
    pub fn of(pid: u32) -> Names {
        Names {
            jobs: format!("jobs-{pid}"),
            control: format!("control-{pid}"),
            results: format!("results-{pid}"),
        }
    }
}

/// Job `id`: `id` as 8 bytes, then `64 KiB * (1 + id % 4)` bytes of `id as u8`.
pub fn job(id: u64) -> Vec<u8> {
    let mut bytes = id.to_le_bytes().to_vec();
    bytes.resize(8 + (64 << 10) * (1 + id as usize % 4), id as u8);
    bytes
}

/// What a worker answers for a job: its id and the sum of its bytes after the id.
pub fn answer(job: &[u8]) -> BoxResult<[u8; 16]> {
    let id = u64::from_le_bytes(job.get(..8).ok_or("short job")?.try_into()?);
    let sum: u64 = job[8..].iter().map(|&b| u64::from(b)).sum();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Runs the boss with `workers` workers and `jobs` jobs, checking every answer.
pub fn boss(program: &str, workers: usize, jobs: u64) -> BoxResult<()> {
    let deadline = Instant::now() + DEADLINE;
    let names = Names::of(std::process::id());
    let config = shmq::ChannelConfig::default()
        .with_capacity(16)
        .with_arena_bytes(4 << 20);
    let (jobs_tx, jobs_rx) = shmq::channel(&names.jobs, config.clone())?;
    let (control_tx, control_rx) = shmq::channel(&names.control, config.clone())?;
    let (results_tx, results) = shmq::channel(&names.results, config)?;
    let mut children = Children::new();
    for _ in 0..workers {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("worker").arg(std::process::id().to_string());
        children.spawn(command)?;
    }
    children.wait_ready(deadline, |i| format!("worker {i}"))?;
    // The workers hold their own handles now.
    drop((jobs_rx, control_rx, results_tx));
    let started = Instant::now();
    // Hand out jobs while collecting results. Never block on a full job queue: a worker whose
    // result waits for room in the result queue still holds its job's arena pages, and a boss
    // blocked on a send would never read the results that make that room.
    let (mut sent, mut answered) = (0u64, 0u64);
    while answered < jobs {
        while sent < jobs {
            match jobs_tx.try_send(&job(sent)) {
                Ok(()) => sent += 1,
                Err(shmq::TrySendError::Full(..)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let result = results.recv_timeout(left)?;
        let id = u64::from_le_bytes(result[..8].try_into()?);
        let expected = answer(&job(id))?;
        if result[..] != expected[..] {
            return Err(format!("wrong answer for job {id}").into());
        }
        answered += 1;
    }
    for _ in 0..workers {
        control_tx.send(b"stop")?;
    }
    children.wait_all(deadline)?;
    println!(
        "{program}: {workers} workers answered {jobs} jobs in {:.0?}, then stopped on the \
         control queue",
        started.elapsed()
    );
    drop((jobs_tx, control_tx, results));
    ensure_unlinked(&[&names.jobs, &names.control, &names.results])
}
