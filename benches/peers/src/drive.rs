//! The loops both contenders share: the parent's repetitions of a one-way stream and of a
//! ping-pong, and the child's side of each. A contender supplies only how one message is
//! sent, received or echoed; timing, counting and reporting are the same for both.

use std::time::Instant;

use crate::clock::monotonic_ns;
use crate::error::BoxResult;
use crate::plan::Plan;
use crate::process::{report, Peer};
use crate::usage::Usage;

/// The report word of a finished repetition: `done <end ns> <usage delta>`.
const DONE: &str = "done";

/// The report word of a child that has attached and is waiting for messages.
pub const READY: &str = "ready";

/// What the measured repetitions of a one-way stream gave.
#[derive(Clone, Debug)]
pub struct StreamResult {
    /// Seconds of each measured repetition, from the sender's first send to the receiver's
    /// check of the last message.
    pub seconds: Vec<f64>,
    /// The receiver's counters over the measured repetitions.
    pub receiver_usage: Usage,
    /// Messages of the measured repetitions.
    pub messages: u64,
}

/// Parent side of a stream: runs every repetition of `plan`, `send(seq)` sending message
/// `seq`, sequence numbers running on across repetitions. Each repetition starts once the
/// receiver has reported the previous one, so the queue is empty at its start.
pub fn drive_stream(
    peer: &mut Peer,
    plan: &Plan,
    mut send: impl FnMut(u64) -> BoxResult<()>,
) -> BoxResult<StreamResult> {
    let n = plan.messages_per_repetition;
    let mut result = StreamResult {
        seconds: Vec::new(),
        receiver_usage: Usage::default(),
        messages: 0,
    };
    for repetition in 0..plan.total_repetitions() {
        let first = u64::from(repetition) * n;
        // Only for `--each`, and before the clock starts: a getrusage call is no part of a
        // repetition.
        let sender_before = plan.print_each.then(Usage::now);
        let start_ns = monotonic_ns();
        for seq in first..first + n {
            send(seq)?;
        }
        let (end_ns, usage) = parse_done(&peer.expect(DONE)?)?;
        if let Some(before) = sender_before {
            let ns = end_ns.saturating_sub(start_ns);
            print_repetition(repetition, plan, ns, usage, Usage::now() - before);
        }
        if repetition >= plan.warm_up_repetitions {
            result
                .seconds
                .push(end_ns.saturating_sub(start_ns) as f64 / 1e9);
            result.receiver_usage = result.receiver_usage.plus(usage);
            result.messages += n;
        }
    }
    Ok(result)
}

/// One line on stderr for repetition `repetition` of a stream (see [`Plan::print_each`]).
fn print_repetition(repetition: u32, plan: &Plan, ns: u64, receiver: Usage, sender: Usage) {
    let kind = if repetition < plan.warm_up_repetitions {
        "warm-up"
    } else {
        "measured"
    };
    eprintln!(
        "shmq-peers:   repetition {repetition} ({kind}): {:.3} ms; receiver {} voluntary / {} \
         involuntary switches, sender {} / {}",
        ns as f64 / 1e6,
        receiver.voluntary_switches,
        receiver.involuntary_switches,
        sender.voluntary_switches,
        sender.involuntary_switches,
    );
}

/// Child side of a stream: receives and checks every message of every repetition of
/// `plan` (`receive(seq)` receives message `seq` and fails unless it is that message), and
/// reports the end time and its own counters after each repetition.
pub fn serve_stream(plan: &Plan, mut receive: impl FnMut(u64) -> BoxResult<()>) -> BoxResult<()> {
    let n = plan.messages_per_repetition;
    for repetition in 0..plan.total_repetitions() {
        let first = u64::from(repetition) * n;
        let before = Usage::now();
        for seq in first..first + n {
            receive(seq)?;
        }
        let end_ns = monotonic_ns();
        let usage = Usage::now() - before;
        report(&format!("{DONE} {end_ns} {}", usage.to_fields()))?;
    }
    Ok(())
}

/// Parent side of a ping-pong: `round_trip(seq)` sends ping `seq` and waits for its pong.
/// Runs the warm-up round trips untimed, then returns the one-way time of each measured round
/// trip (half of it), in nanoseconds.
pub fn drive_ping_pong(
    peer: &mut Peer,
    plan: &Plan,
    mut round_trip: impl FnMut(u64) -> BoxResult<()>,
) -> BoxResult<Vec<f64>> {
    let warm_up = plan.latency_warm_up();
    for seq in 0..warm_up {
        round_trip(seq)?;
    }
    let mut one_way_ns = Vec::with_capacity(plan.messages_per_repetition as usize);
    for seq in warm_up..warm_up + plan.messages_per_repetition {
        let start = Instant::now();
        round_trip(seq)?;
        one_way_ns.push(start.elapsed().as_nanos() as f64 / 2.0);
    }
    peer.expect(DONE)?;
    Ok(one_way_ns)
}

/// Child side of a ping-pong: `echo(seq)` receives and checks ping `seq` and answers it, for
/// every round trip of the warm-up and the measurement.
pub fn serve_ping_pong(plan: &Plan, mut echo: impl FnMut(u64) -> BoxResult<()>) -> BoxResult<()> {
    let before = Usage::now();
    for seq in 0..plan.latency_warm_up() + plan.messages_per_repetition {
        echo(seq)?;
    }
    let usage = Usage::now() - before;
    report(&format!("{DONE} {} {}", monotonic_ns(), usage.to_fields()))
}

/// The end time and the counters of a `done` report.
fn parse_done(fields: &[String]) -> BoxResult<(u64, Usage)> {
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    let bad = || format!("malformed report {fields:?}");
    let (end, usage) = fields.split_first().ok_or_else(bad)?;
    let end_ns = end.parse().map_err(|_| bad())?;
    let usage = Usage::from_fields(usage).ok_or_else(bad)?;
    Ok((end_ns, usage))
}
