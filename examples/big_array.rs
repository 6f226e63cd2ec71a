//! Hand a 1 GiB `f64` array to another process without copying it.
//!
//! The parent builds the array directly in shared memory, in a loan from the channel
//! (`tx.loan_slice::<f64>(n)`), and sends it: only a descriptor moves. The child reads the array
//! in place (`msg.as_slice::<f64>()`), computes its sum and sum of squares, drops the message
//! (which gives the memory back) and returns the two numbers on a second channel. The parent
//! checks them against the closed forms.
//!
//! The data channel's arena is the array's size plus a page, so the array takes the arena path.
//! (With a smaller arena it would still go through, in an overflow segment of its own created
//! for this one message: no size ceiling, but fresh pages to fault in.)
//!
//! The child finds both channels by name, given on its command line.
//!
//! ```text
//! cargo run --release --example big_array [-- --size-mib 1024]
//! ```
//!
//! Printed times: creating the channel (reserving and pre-faulting the arena, paid once per
//! channel), filling the array, the hand-over (from `loan.send()` in the parent to `recv()`
//! returning in the child, both read on the system-wide monotonic clock), the child's
//! computation, and the round trip from `send()` to the answer.

mod common;

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use common::{BoxResult, Children, DEADLINE};

/// The array holds `i % PERIOD` at index `i`: small integers, so that every partial sum is an
/// integer below 2^53 and exact in `f64`, in any order of summation.
const PERIOD: usize = 1024;

/// The child's answer, sent back as its bytes.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Answer {
    len: u64,
    sum: f64,
    sum_of_squares: f64,
    /// CLOCK_MONOTONIC, in ns, when the child's `recv()` returned.
    received_ns: u64,
    /// How long the child's computation took, in ns.
    compute_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, unlike `Instant`,
/// whose values cannot leave their process.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn main() -> ExitCode {
    common::run("big_array", "child", child, parent)
}

// ----- child -----------------------------------------------------------------------------------

/// `child <data-channel> <answer-channel>`
fn child(args: &[String]) -> BoxResult<()> {
    let [data_name, answer_name] = args else {
        return Err("child needs <data-channel> <answer-channel>".into());
    };
    let data = shmq::Receiver::open(data_name)?;
    let answer = shmq::Sender::open(answer_name)?;
    writeln!(std::io::stdout(), "ready")?;

    let msg = data.recv()?;
    let received_ns = monotonic_ns();
    // A view of the parent's array, in place: nothing is copied.
    let values: &[f64] = msg.as_slice::<f64>()?;
    let started = Instant::now();
    let (sum, sum_of_squares) = sums(values);
    let compute_ns = started.elapsed().as_nanos() as u64;
    let len = values.len() as u64;
    drop(msg); // gives the 1 GiB back to the channel's arena

    answer.send_slice(&[Answer {
        len,
        sum,
        sum_of_squares,
        received_ns,
        compute_ns,
    }])?;
    Ok(())
}

/// Sum and sum of squares, with eight accumulators each so that the loop runs at memory speed.
fn sums(values: &[f64]) -> (f64, f64) {
    let (mut s, mut q) = ([0.0f64; 8], [0.0f64; 8]);
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for k in 0..8 {
            s[k] += chunk[k];
            q[k] += chunk[k] * chunk[k];
        }
    }
    for &v in rest {
        s[0] += v;
        q[0] += v * v;
    }
    (s.iter().sum(), q.iter().sum())
}

// ----- parent ----------------------------------------------------------------------------------

/// Prints one timing line.
fn row(what: &str, time: Duration, note: &str) {
    println!("  {what:<62} {:>10} {note}", format!("{time:.2?}"));
}

fn gbps(bytes: usize, time: Duration) -> String {
    format!(
        "({:.1} GB/s)",
        bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
    )
}

/// Sum and sum of squares of `i % PERIOD` for `i` in `0..n`, in closed form.
fn expected(n: usize) -> (f64, f64) {
    let s1 = |m: u128| m * m.saturating_sub(1) / 2; // 0 + 1 + ... + (m-1)
    let s2 = |m: u128| m.saturating_sub(1) * m * (2 * m).saturating_sub(1) / 6; // squares
    let (q, r) = ((n / PERIOD) as u128, (n % PERIOD) as u128);
    let p = PERIOD as u128;
    ((q * s1(p) + s1(r)) as f64, (q * s2(p) + s2(r)) as f64)
}

fn parent(args: &[String]) -> BoxResult<()> {
    let mut size_mib = 1024usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size-mib" => size_mib = value.parse::<usize>()?.max(1),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let bytes = size_mib << 20;
    let n = bytes / size_of::<f64>();
    let started = Instant::now();
    let deadline = started + DEADLINE;

    let pid = std::process::id();
    let (data_name, answer_name) = (format!("ba-{pid}"), format!("ba-answer-{pid}"));
    println!(
        "big_array: {size_mib} MiB of f64 ({n} values) to a child process through channel \
         {data_name:?}"
    );
    // One message at a time; an arena of the array's size plus a page, so the array is
    // allocated in the arena (the arena path), not in an overflow segment.
    let t = Instant::now();
    let data_config = shmq::ChannelConfig::default()
        .with_capacity(1)
        .with_arena_bytes(bytes + 4096);
    let (data_tx, data_rx) = shmq::channel(&data_name, data_config)?;
    row(
        &format!("create the channel (reserves and pre-faults {size_mib} MiB + 4 KiB)"),
        t.elapsed(),
        "",
    );
    // The answer is 40 bytes: it travels inside the ring, the arena can be one page.
    let answer_config = shmq::ChannelConfig::default()
        .with_capacity(1)
        .with_arena_bytes(4096);
    let (answer_tx, answer_rx) = shmq::channel(&answer_name, answer_config)?;

    // Declared after the channels, so dropped before them: on an early return the child is
    // killed and reaped first, then our handles go and the last one unlinks each segment.
    let mut children = Children::new();
    let t = Instant::now();
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("child").arg(&data_name).arg(&answer_name);
    children.spawn(command)?;
    children.wait_ready(deadline, |_| "the child".to_string())?;
    // The child holds its own handles now (a channel with no receiver at all is disconnected).
    drop(data_rx);
    drop(answer_tx);
    row(
        "start the child, which attaches to both channels",
        t.elapsed(),
        "",
    );

    // Build the array where it will be read: in a loan of the arena.
    let t = Instant::now();
    let mut loan = data_tx.loan_slice::<f64>(n)?;
    for (i, v) in loan.iter_mut().enumerate() {
        *v = (i % PERIOD) as f64;
    }
    let fill = t.elapsed();
    row(
        "fill the array in the loan, in place",
        fill,
        &gbps(bytes, fill),
    );

    let sent_ns = monotonic_ns();
    let sent = Instant::now();
    loan.send()?; // publishes a descriptor; the array stays where it is
    let msg = answer_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|e| format!("no answer from the child: {e}"))?;
    let round_trip = sent.elapsed();
    let &[answer] = msg.as_slice::<Answer>()? else {
        return Err(format!("an answer of {} bytes", msg.len()).into());
    };
    drop(msg);

    let hand_over = Duration::from_nanos(answer.received_ns.saturating_sub(sent_ns));
    let compute = Duration::from_nanos(answer.compute_ns);
    row(
        "hand-over: loan.send() here -> recv() returns in the child",
        hand_over,
        "(no copy)",
    );
    row(
        "child computes sum and sum of squares, in place",
        compute,
        &gbps(bytes, compute),
    );
    row(
        "round trip: loan.send() -> answer received here",
        round_trip,
        "",
    );
    println!(
        "  arena free again once the child dropped the message: {} of {} MiB",
        data_tx.free_arena_bytes() >> 20,
        (bytes + 4096) >> 20
    );

    let (sum, sum_of_squares) = expected(n);
    println!("  sum            = {:.0} (expected {sum:.0})", answer.sum);
    println!(
        "  sum of squares = {:.0} (expected {sum_of_squares:.0})",
        answer.sum_of_squares
    );
    if answer.len != n as u64 || answer.sum != sum || answer.sum_of_squares != sum_of_squares {
        return Err(format!("wrong answer {answer:?}").into());
    }

    drop(data_tx); // the child has exited or is about to: the last handle unlinks each segment
    drop(answer_rx);
    children.wait_all(deadline)?;
    common::ensure_unlinked(&[&data_name, &answer_name])?;
    println!(
        "ok: the child read every value in place; done in {:.2?}, both segments are gone",
        started.elapsed()
    );
    Ok(())
}
