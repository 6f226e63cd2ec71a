//! Throughput and latency through a pair of bridges on loopback, next to a plain TCP stream
//! between the same two processes in the same run.
//!
//! ```text
//! cargo run --release -p shmq-zenoh --example bridge_bench            # the full run (~1 min)
//! cargo run --release -p shmq-zenoh --example bridge_bench -- --quick  # a smoke run (seconds)
//! cargo run --release -p shmq-zenoh --example bridge_bench -- --size 1048576  # one size only
//! ```
//!
//! This process is host A: a producer and an [`Exporter`] on a local channel. It starts itself
//! again as host B: an [`Importer`] and a consumer on a channel of its own. The two share one
//! Zenoh link (peer to peer, `tcp/127.0.0.1`), and, for the baseline, one TCP connection. A
//! tells B what comes next on B's stdin; B answers on its stdout.
//!
//! - Throughput: `count` messages of one size, each stamped with CLOCK_MONOTONIC (one clock
//!   for both processes) when the producer starts writing it; the figure is the bytes over the
//!   time from the first stamp to the last arrival in B's consumer. A repetition is one such
//!   stream; the table shows the median of the repetitions. Bridged messages go producer → A's
//!   channel → exporter (one copy out) → Zenoh → importer (one copy in) → B's channel →
//!   consumer, read in place. TCP messages go `write_all` → loopback → `read_exact` into one
//!   buffer: the least any program moving bytes between hosts does.
//! - Latency: 64 B messages, one every 200 µs, each stamped at the send; the figure is the
//!   arrival time minus the stamp, median and 99th percentile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use shmq::ChannelConfig;
use shmq_zenoh::{zenoh_config, Endpoints, Exporter, Importer, Mode};
use zenoh::Wait;

const CHILD_VAR: &str = "SHMQ_BRIDGE_BENCH_CHILD";
const MIB: usize = 1 << 20;
const LATENCY_BYTES: usize = 64;
const LATENCY_GAP: Duration = Duration::from_micros(200);

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in both processes.
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn stamp_of(message: &[u8]) -> u64 {
    u64::from_le_bytes(message[..8].try_into().expect("8 bytes"))
}

/// One cell of the run: what host B is told to expect.
#[derive(Clone, Copy)]
struct Cell {
    size: usize,
    count: usize,
}

fn cells(quick: bool, only: Option<usize>) -> Vec<Cell> {
    let total = if quick { 64 * MIB } else { 2048 * MIB };
    [64 << 10, MIB, 64 * MIB]
        .into_iter()
        .filter(|&size| only.is_none_or(|only| only == size))
        .map(|size| Cell {
            size,
            count: (total / size).max(4),
        })
        .collect()
}

fn main() {
    // The bridges' warnings (and more with RUST_LOG=info) on stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if std::env::var_os(CHILD_VAR).is_some() {
        host_b();
    } else {
        let args: Vec<String> = std::env::args().collect();
        let only = args
            .iter()
            .position(|a| a == "--size")
            .map(|i| args[i + 1].parse().expect("--size BYTES"));
        host_a(args.iter().any(|a| a == "--quick"), only);
    }
}

/// A unique channel name for one stream.
fn name(host: &str, what: &str, n: usize) -> String {
    format!("bench-bridge-{host}-{what}-{}-{n}", std::process::id())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn host_a(quick: bool, only: Option<usize>) {
    let reps = if quick { 1 } else { 5 };
    let latency_count = if quick { 200 } else { 5000 };
    let zenoh_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("tcp/127.0.0.1:{zenoh_port}");
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_VAR, &endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start host B");
    let mut to_b = child.stdin.take().unwrap();
    let mut from_b = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answer = move || from_b.next().expect("host B answers").expect("read host B");

    let session = zenoh::open(
        zenoh_config(
            None,
            &Endpoints {
                listen: vec![endpoint.clone()],
                connect: vec![],
            },
        )
        .expect("config"),
    )
    .wait()
    .expect("zenoh session");
    let tcp_port: u16 = answer().parse().expect("host B's TCP port");
    let mut tcp = TcpStream::connect(("127.0.0.1", tcp_port)).expect("connect to host B");
    tcp.set_nodelay(true).unwrap();

    println!(
        "bridge_bench: {} repetitions per cell, {}",
        reps,
        if quick { "quick" } else { "full" }
    );
    println!(
        "{:>10} {:>8} {:>14} {:>14} {:>7}",
        "size", "count", "bridge GB/s", "TCP GB/s", "ratio"
    );
    let mut stream = 0;
    for cell in cells(quick, only) {
        let (mut bridge, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            stream += 1;
            bridge.push(bridged_stream(
                &session,
                cell,
                stream,
                &mut to_b,
                &mut answer,
                None,
            ));
            plain.push(tcp_stream(&mut tcp, cell, &mut to_b, &mut answer));
        }
        let (bridge, plain) = (median(&mut bridge), median(&mut plain));
        println!(
            "{:>10} {:>8} {:>14.2} {:>14.2} {:>7.2}",
            size_label(cell.size),
            cell.count,
            bridge,
            plain,
            bridge / plain
        );
    }
    stream += 1;
    let latency = Cell {
        size: LATENCY_BYTES,
        count: latency_count,
    };
    bridged_stream(
        &session,
        latency,
        stream,
        &mut to_b,
        &mut answer,
        Some(LATENCY_GAP),
    );
    let bridge_latency = answer();
    writeln!(to_b, "tcp-latency {}", latency.count).unwrap();
    let mut message = [0u8; LATENCY_BYTES];
    for _ in 0..latency.count {
        message[..8].copy_from_slice(&now_ns().to_le_bytes());
        tcp.write_all(&message).unwrap();
        std::thread::sleep(LATENCY_GAP);
    }
    let tcp_latency = answer();
    println!("64 B one-way latency (median / p99, µs): bridge {bridge_latency}, TCP {tcp_latency}");
    writeln!(to_b, "quit").unwrap();
    child.wait().expect("host B exits");
}

fn size_label(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// One stream through the bridges: returns GB/s (or, with `gap`, the latency stream: its
/// figures come from host B).
fn bridged_stream(
    session: &zenoh::Session,
    cell: Cell,
    stream: usize,
    to_b: &mut impl Write,
    answer: &mut impl FnMut() -> String,
    gap: Option<Duration>,
) -> f64 {
    let channel = name("a", "bridge", stream);
    let key = format!("bench/{channel}");
    let config = ChannelConfig::default()
        .with_capacity(64)
        .with_arena_bytes(256 * MIB);
    let (tx, rx) = shmq::channel(&channel, config).expect("channel on A");
    let exporter = Exporter::new(session, rx, &key, Mode::Fanout).expect("exporter");
    let exporting = std::thread::spawn(move || exporter.run().expect("exporter runs"));
    let what = if gap.is_some() { "latency" } else { "bridge" };
    writeln!(to_b, "{what} {key} {} {}", cell.size, cell.count).unwrap();
    assert_eq!(answer(), "ready");
    // One warm-up message, so that the importer's first credit is in before the clock starts.
    tx.send(&[0u8; 8]).unwrap();
    assert_eq!(answer(), "warm");
    for _ in 0..cell.count {
        let mut loan = tx.loan(cell.size).unwrap();
        loan[..8].copy_from_slice(&now_ns().to_le_bytes());
        loan.send().unwrap();
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
    }
    drop(tx);
    exporting.join().expect("exporter thread");
    if gap.is_some() {
        return 0.0;
    }
    answer().parse().expect("GB/s from host B")
}

/// One stream over the plain TCP connection: returns GB/s.
fn tcp_stream(
    tcp: &mut TcpStream,
    cell: Cell,
    to_b: &mut impl Write,
    answer: &mut impl FnMut() -> String,
) -> f64 {
    writeln!(to_b, "tcp {} {}", cell.size, cell.count).unwrap();
    assert_eq!(answer(), "ready");
    let mut message = vec![0u8; cell.size];
    for _ in 0..cell.count {
        message[..8].copy_from_slice(&now_ns().to_le_bytes());
        tcp.write_all(&message).unwrap();
    }
    answer().parse().expect("GB/s from host B")
}

fn host_b() {
    let endpoint = std::env::var(CHILD_VAR).unwrap();
    let session = zenoh::open(
        zenoh_config(
            None,
            &Endpoints {
                listen: vec![],
                connect: vec![endpoint],
            },
        )
        .expect("config"),
    )
    .wait()
    .expect("zenoh session");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    println!("{}", listener.local_addr().unwrap().port());
    let (mut tcp, _) = listener.accept().expect("host A connects");
    tcp.set_nodelay(true).unwrap();
    let mut stream = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read host A");
        let words: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| -> usize { words[i].parse().expect("a number") };
        match words[0] {
            "bridge" | "latency" => {
                stream += 1;
                let (key, size, count) = (words[1], number(2), number(3));
                let channel = name("b", "bridge", stream);
                let config = ChannelConfig::default()
                    .with_capacity(64)
                    .with_arena_bytes(256 * MIB);
                let (tx, rx) = shmq::channel(&channel, config).expect("channel on B");
                let importer = Importer::new(&session, tx, key)
                    .expect("importer")
                    .until_end(true);
                let importing = std::thread::spawn(move || importer.run().expect("importer runs"));
                println!("ready");
                let warm = rx.recv().expect("the warm-up message");
                drop(warm);
                println!("warm");
                let mut first = None;
                let mut latencies = Vec::with_capacity(count);
                let mut last = 0;
                for _ in 0..count {
                    let message = rx.recv().expect("a message");
                    last = now_ns();
                    let stamp = stamp_of(&message);
                    first.get_or_insert(stamp);
                    latencies.push(last.saturating_sub(stamp));
                    assert_eq!(message.len(), size);
                }
                importing.join().expect("importer thread");
                if words[0] == "latency" {
                    println!("{}", latency_figures(&mut latencies));
                } else {
                    let seconds = (last - first.unwrap()) as f64 / 1e9;
                    println!("{}", (size * count) as f64 / seconds / 1e9);
                }
            }
            "tcp" => {
                let (size, count) = (number(1), number(2));
                println!("ready");
                let mut buffer = vec![0u8; size];
                let (mut first, mut last) = (None, 0);
                for _ in 0..count {
                    tcp.read_exact(&mut buffer).expect("read a message");
                    last = now_ns();
                    first.get_or_insert(stamp_of(&buffer));
                }
                let seconds = (last - first.unwrap()) as f64 / 1e9;
                println!("{}", (size * count) as f64 / seconds / 1e9);
            }
            "tcp-latency" => {
                let count = number(1);
                let mut buffer = [0u8; LATENCY_BYTES];
                let mut latencies = Vec::with_capacity(count);
                for _ in 0..count {
                    tcp.read_exact(&mut buffer).expect("read a message");
                    latencies.push(now_ns().saturating_sub(stamp_of(&buffer)));
                }
                println!("{}", latency_figures(&mut latencies));
            }
            "quit" => break,
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// "median / p99" in microseconds.
fn latency_figures(nanos: &mut [u64]) -> String {
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    format!("{:.1} / {:.1}", at(0.5), at(0.99))
}
