//! `shmq bench`: a short version of the criterion benches (`benches/transfer.rs`,
//! `benches/latency.rs`), printed as one table with ratios. The workloads are in `workload.rs`.

use std::time::{Duration, Instant};

use clap::Args;

use crate::workload::{
    size_label, BoxResult, Contender, Launcher, PingContender, PingPong, Transfer, TransferSpec,
    MAX_PAYLOAD, SMALL_MESSAGE,
};

/// Options of `shmq bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Payload sizes of the throughput comparison (bytes, or with a KiB/MiB/GiB suffix):
    /// multiples of 8 bytes, below 4 GiB.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1MiB,64MiB")]
    payloads: Vec<usize>,
    /// Measuring time of each case, in milliseconds (plus a quarter of it to warm up).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    time_ms: u64,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, shift) = [("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)]
        .iter()
        .find_map(|(suffix, shift)| text.strip_suffix(suffix).map(|d| (d, *shift)))
        .unwrap_or((text, 0));
    let value: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4096, 64KiB or 16MiB"))?;
    // Checked: a size beyond what a workload can move is refused here, with the limit, rather
    // than overflowing (or failing an allocation) in the middle of the run.
    let limit = || {
        format!(
            "{text:?}: sizes must be positive multiples of 8 bytes, at most {MAX_PAYLOAD} (4 GiB \
             less 8, the pipe and socket framing's limit)"
        )
    };
    let bytes = value
        .checked_mul(1 << shift)
        .filter(|b| *b > 0 && b.is_multiple_of(8) && *b <= MAX_PAYLOAD)
        .ok_or_else(limit)?;
    Ok(bytes)
}

/// Runs `run(n)` (n items; returns their time) to warm up for a quarter of `budget`, then for
/// about `budget` in samples; returns the median seconds per item.
fn measure(budget: Duration, mut run: impl FnMut(u64) -> BoxResult<Duration>) -> BoxResult<f64> {
    let sample_time = budget / 8;
    let start = Instant::now();
    let mut n = 1u64;
    let per_item = loop {
        let t = run(n)?;
        let per_item = t.as_secs_f64() / n as f64;
        if start.elapsed() >= budget / 4 {
            break per_item;
        }
        if t < sample_time / 2 {
            n = n.saturating_mul(2);
        }
    };
    let n = ((sample_time.as_secs_f64() / per_item.max(1e-12)) as u64).max(1);
    let end = Instant::now() + budget;
    let mut samples = Vec::new();
    while samples.len() < 3 || (Instant::now() < end && samples.len() < 25) {
        samples.push(run(n)?.as_secs_f64() / n as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Payloads (or messages) per second through `spec`.
fn transfer_rate(launcher: &Launcher, spec: TransferSpec, budget: Duration) -> BoxResult<f64> {
    let what = format!(
        "{}, {} payloads",
        spec.contender.label(),
        size_label(spec.payload)
    );
    let run = || -> BoxResult<f64> {
        let mut transfer = Transfer::start(launcher, spec)?;
        let per_item = measure(budget, |n| transfer.run(n))?;
        transfer.finish()?;
        Ok(1.0 / per_item)
    };
    run().map_err(|e| format!("{what}: {e}").into())
}

/// Seconds for one message to go one way (half a round trip).
fn one_way_latency(
    launcher: &Launcher,
    contender: PingContender,
    budget: Duration,
) -> BoxResult<f64> {
    let run = || -> BoxResult<f64> {
        let mut pingpong = PingPong::start(launcher, contender)?;
        let round_trip = measure(budget, |n| pingpong.round_trips(n))?;
        pingpong.finish()?;
        Ok(round_trip / 2.0)
    };
    run().map_err(|e| format!("{} ping-pong: {e}", contender.label()).into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}x", value / b),
        _ => "-".into(),
    }
}

/// Runs `shmq bench`.
pub fn run(args: &BenchArgs) -> BoxResult<()> {
    let launcher = Launcher::current_exe(&["__bench-consumer"], &[])?;
    let budget = Duration::from_millis(args.time_ms);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "shmq bench: producer and consumer in two processes; the consumer reads every byte.\n\
         {cpus} CPUs, load average {} at start. Medians; ratios > 1 favour the first column.\n",
        load_average()
    );

    println!("Throughput (send copies a prepared buffer; loan writes every byte in place)");
    println!(
        "{:<8} {:<30} {:>10} {:>9} {:>9}",
        "payload", "contender", "GB/s", "vs pipe", "vs unix"
    );
    for &payload in &args.payloads {
        let mut rates = Vec::new();
        for contender in Contender::ALL {
            let rate = transfer_rate(&launcher, TransferSpec::new(contender, payload), budget)?;
            rates.push((contender, rate * payload as f64));
        }
        let find = |c: Contender| rates.iter().find(|(x, _)| *x == c).map(|(_, r)| *r);
        let (pipe, unix) = (find(Contender::Pipe), find(Contender::UnixSocket));
        for (contender, bytes_per_s) in &rates {
            println!(
                "{:<8} {:<30} {:>10.2} {:>9} {:>9}",
                size_label(payload),
                contender.label(),
                bytes_per_s / 1e9,
                ratio(*bytes_per_s, pipe),
                ratio(*bytes_per_s, unix),
            );
        }
    }

    println!("\nOne-way latency of a {SMALL_MESSAGE}-byte message (ping-pong round trip / 2)");
    println!(
        "{:<39} {:>10} {:>17}",
        "contender", "latency", "pipe / this"
    );
    let mut latencies = Vec::new();
    for contender in PingContender::ALL {
        latencies.push((contender, one_way_latency(&launcher, contender, budget)?));
    }
    let pipe = latencies
        .iter()
        .find(|(c, _)| *c == PingContender::Pipe)
        .map(|(_, l)| *l);
    for (contender, latency) in &latencies {
        let speedup = pipe.map_or("-".into(), |p| format!("{:.2}x", p / latency));
        println!(
            "{:<39} {:>7.0} ns {:>17}",
            contender.label(),
            latency * 1e9,
            speedup
        );
    }

    println!("\n{SMALL_MESSAGE}-byte messages, one producer process to one consumer process");
    println!("{:<39} {:>10} {:>17}", "contender", "Mmsg/s", "vs pipe");
    let mut rates = Vec::new();
    for contender in [
        Contender::ShmqSend,
        Contender::ShmqRuns,
        Contender::Pipe,
        Contender::UnixSocket,
    ] {
        let spec = TransferSpec::new(contender, SMALL_MESSAGE).capacity(1024);
        rates.push((contender, transfer_rate(&launcher, spec, budget)?));
    }
    let pipe = rates
        .iter()
        .find(|(c, _)| *c == Contender::Pipe)
        .map(|(_, r)| *r);
    for (contender, rate) in &rates {
        println!(
            "{:<39} {:>10.2} {:>17}",
            contender.label(),
            rate / 1e6,
            ratio(*rate, pipe)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_size, MAX_PAYLOAD};

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64B"), Ok(64));
        assert!(parse_size("7").is_err());
        assert!(parse_size("0MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_size("4294967288"), Ok(MAX_PAYLOAD));
        for too_big in [
            "4GiB",
            "4294967296",
            "18446744073709551608",
            "17179869184GiB",
        ] {
            let err = parse_size(too_big).expect_err(too_big);
            assert!(err.contains("at most"), "{err}");
        }
    }
}
