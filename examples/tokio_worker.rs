//! A worker that waits on a job queue and a control queue at once from async code, with
//! `recv_async` and `tokio::select!`: no thread blocks, and the same process could serve
//! sockets on the same runtime.
//!
//! ```text
//! cargo run --release --features async --example tokio_worker
//! ```
//!
//! The boss (examples/common/jobs.rs) starts two workers, hands out 200 jobs of 64-256 KiB,
//! checks each answer, then sends each worker `stop` on the control queue. `select_worker` is
//! the same worker written with `shmq::select!`.

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::io::Write;
use std::process::ExitCode;

use common::BoxResult;

fn main() -> ExitCode {
    common::run("tokio_worker", "worker", worker, |_| {
        jobs::boss("tokio_worker", 2, 200)
    })
}

fn worker(args: &[String]) -> BoxResult<()> {
    let boss: u32 = args.first().ok_or("worker needs the boss's pid")?.parse()?;
    let names = jobs::Names::of(boss);
    let jobs = shmq::Receiver::open(&names.jobs)?;
    let control = shmq::Receiver::open(&names.control)?;
    let results = shmq::Sender::open(&names.results)?;
    writeln!(std::io::stdout(), "ready")?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(async {
        loop {
            // Both futures are pending on shmq's waiter thread; the one that loses the race is
            // dropped, which takes nothing from its queue (the futures are cancel-safe).
            tokio::select! {
                job = jobs.recv_async() => {
                    let job = job?;
                    results.send_async(&jobs::answer(&job)?).await?;
                }
                command = control.recv_async() => {
                    let command = command?;
                    if &command[..] == b"stop" {
                        return Ok(());
                    }
                    return Err(format!("unknown command {:?}", &command[..]).into());
                }
            }
        }
    })
}
