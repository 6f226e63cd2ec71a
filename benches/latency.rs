//! Small messages between two processes: one-way latency of a 64-byte message by ping-pong
//! (shmq with default waiting, shmq spinning, pipe, Unix socket), and the rate of 64-byte
//! messages from one producer process to one consumer process. See docs/performance.md.
//!
//! ```text
//! cargo bench --bench latency
//! ```

mod common;

use std::time::Duration;

use common::{check, launcher, Contender, PingContender, PingPong, TransferSpec, SMALL_MESSAGE};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Ring capacity of the rate workload's channel.
const RATE_CAPACITY: usize = 1024;

fn latency(c: &mut Criterion) {
    let launcher = launcher();
    let mut group = c.benchmark_group("latency");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for contender in PingContender::ALL {
        let mut session: Option<PingPong> = None;
        group.bench_function(contender.id(), |b| {
            let pingpong = session.get_or_insert_with(|| {
                check(
                    "starting the echo process",
                    PingPong::start(&launcher, contender),
                )
            });
            // One iteration is one round trip; half of it is reported: the one-way latency.
            b.iter_custom(|n| check("ping-pong", pingpong.round_trips(n)) / 2);
        });
        if let Some(pingpong) = session {
            check("ending the echo process", pingpong.finish());
        }
    }
    group.finish();
}

fn rate(c: &mut Criterion) {
    let launcher = launcher();
    let mut group = c.benchmark_group("rate");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for contender in [
        Contender::ShmqSend,
        Contender::ShmqRuns,
        Contender::Pipe,
        Contender::UnixSocket,
    ] {
        let id = BenchmarkId::from_parameter(contender.id());
        common::bench_transfer(&mut group, id, &launcher, || {
            TransferSpec::new(contender, SMALL_MESSAGE).capacity(RATE_CAPACITY)
        });
    }
    group.finish();
}

fn main() {
    common::run_consumer_if_asked();
    let mut criterion = Criterion::default().configure_from_args();
    latency(&mut criterion);
    rate(&mut criterion);
    criterion.final_summary();
}
