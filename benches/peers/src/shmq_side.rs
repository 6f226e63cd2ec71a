//! shmq's side of every cell: channels sized like iceoryx2's services, the sender writing in
//! place (`loan`) or copying (`send`), the receiver blocking (`recv`) or spinning
//! (`try_recv`); in the runs cells, `send_many` and `recv_many`.

use std::hint::spin_loop;
use std::time::Duration;

use shmq::{ChannelConfig, Message, Receiver, Sender, TryRecvError};

use crate::cell::{Cell, Waiting, Write, RUN};
use crate::cleanup::Names;
use crate::contender::{Measurement, StartChild};
use crate::drive::{self, READY};
use crate::error::{BoxResult, Context};
use crate::pattern;
use crate::plan::Plan;
use crate::process::report;

/// shmq lays payloads above 96 bytes out in 4 KiB pages.
const ARENA_PAGE: usize = 4096;

/// The channel a stream (or a ping) travels on, from parent to child.
fn forward_name(base: &str) -> String {
    format!("{base}-fwd")
}

/// The channel a pong travels on, from child to parent.
fn backward_name(base: &str) -> String {
    format!("{base}-back")
}

/// The channel configuration of a cell, sized as its iceoryx2 service is:
/// - ring capacity = `plan.queue_depth`, iceoryx2's `subscriber_max_buffer_size`;
/// - arena = room for `queue_depth + 2` payloads: the queued ones, the one the receiver holds
///   while checking it and the one the sender is filling, which is what iceoryx2 preallocates
///   with one subscriber, one borrowed sample and one loaned sample;
/// - blocking back-pressure is shmq's only behaviour when full (it never overwrites), as
///   iceoryx2's `RetryUntilDelivered` with safe overflow off.
fn config(cell: Cell, plan: &Plan) -> ChannelConfig {
    let payload_pages = cell.payload().div_ceil(ARENA_PAGE).max(1);
    ChannelConfig::default()
        .with_capacity(plan.queue_depth)
        .with_arena_bytes((plan.queue_depth + 2) * payload_pages * ARENA_PAGE)
}

/// Busy waiting: blocking calls never sleep (shmq spins before it sleeps; `Duration::MAX`
/// spins for ever). Default waiting keeps shmq's default spin.
fn apply_waiting_to_sender(sender: &Sender, waiting: Waiting) {
    if waiting == Waiting::Busy {
        sender.set_spin(Duration::MAX);
    }
}

/// The next message: a blocking `recv`, or a `try_recv` loop when busy.
fn receive(receiver: &Receiver, waiting: Waiting) -> BoxResult<Message> {
    match waiting {
        Waiting::Default => receiver.recv().context("shmq recv"),
        Waiting::Busy => loop {
            match receiver.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Empty) => spin_loop(),
                Err(e) => return Err(format!("shmq try_recv: {e:?}").into()),
            }
        },
    }
}

/// Sends message `seq` of a stream, written as the cell says.
struct StreamSender {
    sender: Sender,
    write: Write,
    len: usize,
    /// The prepared private buffer a copying sender copies from.
    private: Vec<u8>,
}

impl StreamSender {
    fn new(sender: Sender, write: Write, len: usize) -> StreamSender {
        let mut private = vec![0u8; len];
        pattern::fill(&mut private, 0);
        StreamSender {
            sender,
            write,
            len,
            private,
        }
    }

    fn send(&mut self, seq: u64) -> BoxResult<()> {
        match self.write {
            Write::Loan => {
                let mut loan = self.sender.loan(self.len).context("shmq loan")?;
                pattern::fill(&mut loan, seq);
                loan.send().context("shmq loan send")
            }
            Write::CopyIn => {
                pattern::stamp(&mut self.private, seq);
                self.sender.send(&self.private).context("shmq send")
            }
        }
    }
}

/// The next run of messages (at least one, at most [`RUN`]) into `run`: a blocking
/// `recv_many`, or a `try_recv_many` loop when busy.
fn receive_run(receiver: &Receiver, waiting: Waiting, run: &mut Vec<Message>) -> BoxResult<()> {
    match waiting {
        Waiting::Default => receiver
            .recv_many(run, RUN)
            .map(drop)
            .context("shmq recv_many"),
        Waiting::Busy => loop {
            match receiver.try_recv_many(run, RUN) {
                Ok(_) => return Ok(()),
                Err(TryRecvError::Empty) => spin_loop(),
                Err(e) => return Err(format!("shmq try_recv_many: {e:?}").into()),
            }
        },
    }
}

/// Sends a stream in runs: message `seq` is stamped into the next of [`RUN`] prepared
/// buffers, and the run goes out by `send_many` when it is full or ends a repetition (whose
/// last message the receiver must get before the parent waits for its report).
struct RunSender {
    sender: Sender,
    run: Vec<Vec<u8>>,
    filled: usize,
    per_repetition: u64,
}

impl RunSender {
    fn new(sender: Sender, len: usize, per_repetition: u64) -> RunSender {
        let mut private = vec![0u8; len];
        pattern::fill(&mut private, 0);
        RunSender {
            sender,
            run: vec![private; RUN],
            filled: 0,
            per_repetition,
        }
    }

    fn send(&mut self, seq: u64) -> BoxResult<()> {
        pattern::stamp(&mut self.run[self.filled], seq);
        self.filled += 1;
        if self.filled == RUN || (seq + 1).is_multiple_of(self.per_repetition) {
            let mut rest = &self.run[..self.filled];
            while !rest.is_empty() {
                let sent = self.sender.send_many(rest).context("shmq send_many")?;
                rest = &rest[sent..];
            }
            self.filled = 0;
        }
        Ok(())
    }
}

/// Parent side of `cell` for shmq.
pub fn measure(
    cell: Cell,
    plan: &Plan,
    names: &Names,
    start_child: StartChild<'_>,
) -> BoxResult<Measurement> {
    let base = &names.measurement;
    let waiting = cell.waiting();
    let len = cell.payload();
    let (sender, forward_receiver) =
        shmq::channel(&forward_name(base), config(cell, plan)).context("creating a channel")?;
    apply_waiting_to_sender(&sender, waiting);
    match cell {
        Cell::Rate { runs: true, .. } => {
            let mut peer = start_child()?;
            drop(forward_receiver);
            let mut runs = RunSender::new(sender, len, plan.messages_per_repetition);
            let result = drive::drive_stream(&mut peer, plan, |seq| runs.send(seq))?;
            peer.finish()?;
            Ok(Measurement::of_stream(cell, &result, plan))
        }
        Cell::Throughput { .. } | Cell::Rate { .. } => {
            let mut peer = start_child()?;
            // The child has its own receiver now; ours only kept the channel connected.
            drop(forward_receiver);
            let mut stream = StreamSender::new(sender, cell.write(), len);
            let result = drive::drive_stream(&mut peer, plan, |seq| stream.send(seq))?;
            peer.finish()?;
            Ok(Measurement::of_stream(cell, &result, plan))
        }
        Cell::Latency { .. } => {
            let (backward_sender, receiver) =
                shmq::channel(&backward_name(base), config(cell, plan))
                    .context("creating a channel")?;
            let mut peer = start_child()?;
            drop((forward_receiver, backward_sender));
            let mut ping = vec![0u8; len];
            pattern::fill(&mut ping, 0);
            let one_way = drive::drive_ping_pong(&mut peer, plan, |seq| {
                pattern::stamp(&mut ping, seq);
                sender.send(&ping).context("shmq send")?;
                let pong = receive(&receiver, waiting)?;
                pattern::verify(&pong, seq, len)?;
                Ok(())
            })?;
            peer.finish()?;
            Ok(Measurement::Latency {
                one_way_ns: one_way,
            })
        }
    }
}

/// Child side of `cell` for shmq.
pub fn serve(cell: Cell, plan: &Plan, names: &Names) -> BoxResult<()> {
    let base = &names.measurement;
    let waiting = cell.waiting();
    let len = cell.payload();
    let receiver = Receiver::open(&forward_name(base)).context("opening a channel")?;
    match cell {
        Cell::Rate { runs: true, .. } => {
            report(READY)?;
            let (mut run, mut next) = (Vec::with_capacity(RUN), 0);
            drive::serve_stream(plan, |seq| {
                if next == run.len() {
                    run.clear(); // the messages of the last run are dropped (freed) here
                    next = 0;
                    receive_run(&receiver, waiting, &mut run)?;
                }
                next += 1;
                pattern::verify(&run[next - 1], seq, len)?;
                Ok(())
            })
        }
        Cell::Throughput { .. } | Cell::Rate { .. } => {
            report(READY)?;
            drive::serve_stream(plan, |seq| {
                let message = receive(&receiver, waiting)?;
                pattern::verify(&message, seq, len)?;
                Ok(())
            })
        }
        Cell::Latency { .. } => {
            let sender = Sender::open(&backward_name(base)).context("opening a channel")?;
            apply_waiting_to_sender(&sender, waiting);
            report(READY)?;
            drive::serve_ping_pong(plan, |seq| {
                let ping = receive(&receiver, waiting)?;
                pattern::verify(&ping, seq, len)?;
                sender.send(&ping).context("shmq send")
            })
        }
    }
}
