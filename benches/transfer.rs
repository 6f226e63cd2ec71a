//! Cross-process throughput: shmq `send` and `loan` against a pipe and a Unix socket (both with
//! Python's length-prefixed framing), for payloads from 4 KiB to 256 MiB. The consumer is this
//! bench binary started again; it reads every byte of every payload. See docs/performance.md.
//!
//! ```text
//! cargo bench --bench transfer            # full run, a few minutes
//! cargo bench --bench transfer -- 64MiB   # one payload size
//! ```

mod common;

use std::time::Duration;

use common::{launcher, size_label, Contender, TransferSpec};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

const PAYLOADS: [usize; 6] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20];

fn transfer(c: &mut Criterion) {
    let launcher = launcher();
    let mut group = c.benchmark_group("transfer");
    // Every sample runs the same number of payloads: right for long iterations.
    group.sampling_mode(SamplingMode::Flat);
    for payload in PAYLOADS {
        let (samples, warm_up, measurement) = match payload {
            p if p <= 1 << 20 => (20, 500, 2000),
            p if p <= 64 << 20 => (10, 1000, 3000),
            _ => (10, 1000, 4000),
        };
        group
            .sample_size(samples)
            .warm_up_time(Duration::from_millis(warm_up))
            .measurement_time(Duration::from_millis(measurement))
            .throughput(Throughput::Bytes(payload as u64));
        for contender in Contender::ALL {
            let id = BenchmarkId::new(contender.id(), size_label(payload));
            common::bench_transfer(&mut group, id, &launcher, || {
                TransferSpec::new(contender, payload)
            });
        }
    }
    group.finish();
}

fn main() {
    common::run_consumer_if_asked();
    let mut criterion = Criterion::default().configure_from_args();
    transfer(&mut criterion);
    criterion.final_summary();
}
