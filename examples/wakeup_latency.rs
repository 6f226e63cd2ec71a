//! Wake-up latency of a receiver that sleeps, three ways in one run: a plain blocking `recv`,
//! a `Select` over the channel and seven idle ones, and `.await` on `recv_async` under a
//! current-thread tokio runtime.
//!
//! ```text
//! cargo run --release --features async --example wakeup_latency [-- --rounds 3000 --gap-us 500]
//! ```
//!
//! The program starts one receiving child per way (it runs itself again as
//! `wakeup_latency child <way> <channel>`), then measures rounds in turn across the three. Each
//! round it waits `--gap-us` (long enough for the receiver to stop spinning and sleep on its
//! futex word), stamps CLOCK_MONOTONIC into a 64-byte message and sends it; the child stamps
//! the clock again as soon as its receive returns and sends the difference back. So each
//! figure is one process's send to another's wake-up, the path a message takes to a waiter
//! that went to sleep. `--quick` runs 200 rounds (what CI runs).

mod common;

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::{BoxResult, Children, DEADLINE};

/// The ways a child waits, in the order of the report.
const WAYS: [&str; 3] = ["blocking recv", "Select (8 channels)", "recv_async (tokio)"];
/// Idle channels beside the measured one in the `Select`.
const IDLE: usize = 7;

fn main() -> ExitCode {
    common::run("wakeup_latency", "child", child, parent)
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A 64-byte ping carrying its send time (0: stop).
fn ping(t: u64) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    bytes[..8].copy_from_slice(&t.to_le_bytes());
    bytes
}

fn stamp_of(msg: &[u8]) -> BoxResult<u64> {
    Ok(u64::from_le_bytes(
        msg.get(..8).ok_or("short ping")?.try_into()?,
    ))
}

// ----- child -----------------------------------------------------------------------------------

fn child(args: &[String]) -> BoxResult<()> {
    let [way, base] = args else {
        return Err("child needs <way> <channel>".into());
    };
    let way: usize = way.parse()?;
    let rx = shmq::Receiver::open(&format!("{base}-ping"))?;
    let idle: Vec<shmq::Receiver> = (0..IDLE)
        .map(|i| shmq::Receiver::open(&format!("{base}-idle-{i}")))
        .collect::<Result<_, _>>()?;
    let pong = shmq::Sender::open(&format!("{base}-pong"))?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    // Each arm receives one ping and answers it; false at the stop ping.
    let answer = |msg: shmq::Message, woke: u64| -> BoxResult<bool> {
        let sent = stamp_of(&msg)?;
        if sent == 0 {
            return Ok(false);
        }
        pong.send(&woke.saturating_sub(sent).to_le_bytes())?;
        Ok(true)
    };
    match way {
        0 => loop {
            let msg = rx.recv()?;
            if !answer(msg, now_ns())? {
                return Ok(());
            }
        },
        1 => {
            let mut sel = shmq::Select::new();
            let measured = sel.recv(&rx);
            for idle_rx in &idle {
                sel.recv(idle_rx);
            }
            loop {
                let oper = sel.select();
                if oper.index() != measured {
                    return Err("an idle channel was selected".into());
                }
                let msg = oper.recv(&rx)?;
                if !answer(msg, now_ns())? {
                    return Ok(());
                }
            }
        }
        _ => {
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            runtime.block_on(async {
                loop {
                    let msg = rx.recv_async().await?;
                    if !answer(msg, now_ns())? {
                        return Ok(());
                    }
                }
            })
        }
    }
}

// ----- parent ----------------------------------------------------------------------------------

struct Options {
    rounds: usize,
    gap: Duration,
}

fn options(args: &[String]) -> BoxResult<Options> {
    let mut options = Options {
        rounds: 3000,
        gap: Duration::from_micros(500),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse()?,
            "--gap-us" => options.gap = Duration::from_micros(value()?.parse()?),
            "--quick" => options.rounds = 200,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(options)
}

/// One child's channels, held by the parent.
struct Way {
    ping: shmq::Sender,
    pong: shmq::Receiver,
    _idle: Vec<shmq::Sender>,
    _keep: Vec<shmq::Receiver>,
    nanos: Vec<u64>,
}

fn parent(args: &[String]) -> BoxResult<()> {
    let options = options(args)?;
    let config = shmq::ChannelConfig::default()
        .with_capacity(16)
        .with_arena_bytes(64 << 10);
    let exe = std::env::current_exe()?;
    let mut children = Children::new();
    let mut ways = Vec::new();
    for way in 0..WAYS.len() {
        let base = format!("wakeup-{}-{way}", std::process::id());
        let (ping, ping_rx) = shmq::channel(&format!("{base}-ping"), config.clone())?;
        let (pong_tx, pong) = shmq::channel(&format!("{base}-pong"), config.clone())?;
        let mut idle = Vec::new();
        let mut keep = vec![ping_rx];
        for i in 0..IDLE {
            let (tx, rx) = shmq::channel(&format!("{base}-idle-{i}"), config.clone())?;
            idle.push(tx);
            keep.push(rx);
        }
        drop(pong_tx);
        // The parent's wait for the answer spins: only the child's wake-up is measured.
        pong.set_spin(Duration::MAX);
        let mut command = Command::new(&exe);
        command.args(["child", &way.to_string(), &base]);
        children.spawn(command)?;
        ways.push(Way {
            ping,
            pong,
            _idle: idle,
            _keep: keep,
            nanos: Vec::with_capacity(options.rounds),
        });
    }
    children.wait_ready(Instant::now() + DEADLINE, |i| WAYS[i].to_owned())?;

    for round in 0..options.rounds * WAYS.len() {
        let way = &mut ways[round % WAYS.len()];
        std::thread::sleep(options.gap);
        way.ping.send(&ping(now_ns()))?;
        let answer = way.pong.recv_timeout(DEADLINE)?;
        way.nanos.push(u64::from_le_bytes(answer[..8].try_into()?));
    }
    for way in &ways {
        way.ping.send(&ping(0))?;
    }
    children.wait_all(Instant::now() + DEADLINE)?;

    println!(
        "wake-up latency of a sleeping receiver, {} rounds each, {:?} apart (µs)",
        options.rounds, options.gap
    );
    println!("{:<22} {:>8} {:>8} {:>8}", "way", "median", "p90", "p99");
    for (name, way) in WAYS.iter().zip(&mut ways) {
        way.nanos.sort_unstable();
        let at = |q: f64| way.nanos[((way.nanos.len() - 1) as f64 * q) as usize] as f64 / 1e3;
        println!(
            "{name:<22} {:>8.1} {:>8.1} {:>8.1}",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    Ok(())
}
