//! A worker that waits on a job queue and a control queue at once, with `shmq::select!`
//! (the `Select` API under it): the shmq version of a `multiprocessing` worker that polls two
//! queues, without polling.
//!
//! ```text
//! cargo run --release --example select_worker
//! ```
//!
//! The boss (examples/common/jobs.rs) starts two workers, hands out 200 jobs of 64-256 KiB,
//! checks each answer, then sends each worker `stop` on the control queue. `tokio_worker` is
//! the same worker written with `.await`.

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::io::Write;
use std::process::ExitCode;

use common::BoxResult;

fn main() -> ExitCode {
    common::run("select_worker", "worker", worker, |_| {
        jobs::boss("select_worker", 2, 200)
    })
}

fn worker(args: &[String]) -> BoxResult<()> {
    let boss: u32 = args.first().ok_or("worker needs the boss's pid")?.parse()?;
    let names = jobs::Names::of(boss);
    let jobs = shmq::Receiver::open(&names.jobs)?;
    let control = shmq::Receiver::open(&names.control)?;
    let results = shmq::Sender::open(&names.results)?;
    writeln!(std::io::stdout(), "ready")?;
    loop {
        // Sleeps on both queues' futex words at once; whichever gets a message first wins
        // (at random if both have one). A boss that dies shows up as `Disconnected`.
        shmq::select! {
            recv(jobs) -> job => {
                let job = job?; // read in place in shared memory
                results.send(&jobs::answer(&job)?)?;
            }
            recv(control) -> command => {
                let command = command?;
                if &command[..] == b"stop" {
                    return Ok(());
                }
                return Err(format!("unknown command {:?}", &command[..]).into());
            }
        }
    }
}
