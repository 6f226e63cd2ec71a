//! Shared by the criterion benches: the workloads of `shmq bench` (included from the binary's
//! source, so the benches and `shmq bench` measure the same thing) and the consumer re-exec.
#![allow(dead_code)] // each bench uses part of the workloads

#[path = "../../src/bin/shmq/workload.rs"]
mod workload;

pub use workload::*;

/// Set in the environment of a bench binary started again as the consumer process.
const CONSUMER_ENV: &str = "SHMQ_BENCH_CONSUMER";

/// Call first in `main`, before criterion parses the arguments: in a consumer process, runs the
/// consumer and exits.
pub fn run_consumer_if_asked() {
    if std::env::var_os(CONSUMER_ENV).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match consumer_main(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench consumer {args:?}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// How the producer starts its consumer: this bench binary again, marked by the environment.
pub fn launcher() -> Launcher {
    Launcher::current_exe(&[], &[(CONSUMER_ENV, "1")]).expect("cannot find the bench executable")
}

/// Unwraps a workload result inside a benchmark (a failure ends the bench with its message;
/// the sessions' destructors kill and reap their consumers on the way out).
pub fn check<T>(what: &str, result: BoxResult<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Benchmarks the transfer `spec()` as `id` in `group`: starts its consumer on first use (so a
/// filtered-out benchmark starts none), runs `n` payloads per iteration, and checks at the end
/// what the consumer read.
pub fn bench_transfer(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: criterion::BenchmarkId,
    launcher: &Launcher,
    spec: impl Fn() -> TransferSpec,
) {
    let mut session: Option<Transfer> = None;
    group.bench_function(id, |b| {
        let transfer = session.get_or_insert_with(|| {
            check("starting the consumer", Transfer::start(launcher, spec()))
        });
        b.iter_custom(|n| check("transfer", transfer.run(n)));
    });
    if let Some(transfer) = session {
        check("checking what the consumer read", transfer.finish());
    }
}
