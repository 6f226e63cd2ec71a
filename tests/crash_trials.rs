//! Crash trials: producers, consumers, lock holders and reclaimers are killed with SIGKILL at a
//! random moment, and the survivors must finish with every acknowledged message delivered
//! exactly once and intact, no hang, an arena that returns to empty, and a clean /dev/shm.
//!
//! Consumers call `task_done` for every message they receive, when they stop holding it, so the
//! task counts must balance at the end: every task sent done, none counted twice, a killed
//! consumer's unfinished tasks (those it held, and one it may have taken unlogged) credited by
//! its reclaim, and no survivor's `task_done` refused as one too many.
//!
//! `crash_trials_ci` runs 200 trials (a minute or two). The long run is opt-in:
//!
//! ```text
//! SHMQ_TRIALS=10000 cargo test --release --test crash_trials -- --ignored crash_trials_long --nocapture
//! ```
//!
//! Each trial writes what the victim was doing when it died (its *phase*) into a shared word
//! just before doing it, so the report can say which kill points were covered.
//!
//! One trial in four stops the victim (SIGSTOP) for 20 to 150 ms before the kill, wherever it
//! is, possibly holding a lock: survivors, which use `try_` calls, must then meet
//! `LockTimeout` (and fall back to the blocking call) rather than freeze, and the kill of a
//! stopped process must be reclaimed like any other.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{kill9, spawn_child, unique_name, wait_exit, wait_for_line, Rng};
use shmq::{
    ChannelConfig, Error, LockError, Receiver, Segment, Sender, SharedValue, TaskDoneError,
    TryRecvError, TrySendError,
};

const ARENA: usize = 1 << 20;
const CAPACITY: usize = 16;
const HEADER: usize = 24;
/// Messages each producer sends.
const PER_PRODUCER: u32 = 300;
const MAX_CHILDREN: usize = 8;
/// Entries each consumer's log can hold.
const LOG_ENTRIES: usize = 2 * PER_PRODUCER as usize + 8;
const WATCHDOG: Duration = Duration::from_secs(60);

// What a child is doing, written to its phase word before it does it.
const PHASE_NAMES: [&str; 11] = [
    "starting",
    "sending",
    "blocked in send (ring or arena full)",
    "filling a loan",
    "receiving",
    "blocked in recv (empty)",
    "holding received messages",
    "holding a SharedValue lock",
    "reclaiming dead participants (open)",
    "finished",
    "finishing a task (task_done)",
];
const STARTING: u64 = 0;
const SENDING: u64 = 1;
const BLOCKED_SEND: u64 = 2;
const LOAN_FILL: u64 = 3;
const RECEIVING: u64 = 4;
const BLOCKED_RECV: u64 = 5;
const HOLDING: u64 = 6;
const LOCK_HELD: u64 = 7;
const RECLAIMING: u64 = 8;
const FINISHED: u64 = 9;
const TASK_DONE: u64 = 10;

/// The name of a phase word's value (garbage shows as the last name).
fn phase_name(phase: usize) -> &'static str {
    PHASE_NAMES[phase.min(PHASE_NAMES.len() - 1)]
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Payload size for a message: mostly inline, many in the arena, a few in overflow segments.
/// Half of the arena ones fit one page, so that senders often find a chunk of their length
/// given back and take it back without the allocator lock (src/channel/arena.rs); the others
/// take one to 33 pages, mostly under the lock.
fn message_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=54 => HEADER + rng.below(73) as usize,
        55..=75 => 97 + rng.below(4000) as usize,
        76..=96 => 97 + rng.below(128 << 10) as usize,
        _ => ARENA + 1 + rng.below(512 << 10) as usize,
    }
}

fn fill_message(buf: &mut [u8], producer: u32, seq: u32) {
    let mut rng = Rng((producer as u64) << 32 | seq as u64);
    for chunk in buf[HEADER..].chunks_mut(8) {
        let word = rng.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let sum = fnv(&buf[HEADER..]);
    buf[0..4].copy_from_slice(&producer.to_le_bytes());
    buf[4..8].copy_from_slice(&seq.to_le_bytes());
    let len = buf.len() as u64;
    buf[8..16].copy_from_slice(&len.to_le_bytes());
    buf[16..24].copy_from_slice(&sum.to_le_bytes());
}

/// (producer, seq) if the message is intact.
fn check_message(msg: &[u8]) -> Option<(u32, u32)> {
    if msg.len() < HEADER {
        return None;
    }
    let producer = u32::from_le_bytes(msg[0..4].try_into().ok()?);
    let seq = u32::from_le_bytes(msg[4..8].try_into().ok()?);
    let len = u64::from_le_bytes(msg[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(msg[16..24].try_into().ok()?);
    (len == msg.len() as u64 && sum == fnv(&msg[HEADER..])).then_some((producer, seq))
}

/// The trial's bookkeeping segment: acknowledged sends, phases and consumer logs, in words.
///
/// word 0..8: per producer, 1 + highest seq whose `send` returned Ok (0: none)
/// word 8..16: per child, its phase
/// word 16..19: per consumer, corrupted messages seen (lock trials: per locker, `OwnerDied` seen)
/// word 20..22: per consumer, the most messages its take in progress may leave unlogged
/// word 23: `LockTimeout`s the survivors met (a stopped victim held a lock)
/// then per consumer: count word + LOG_ENTRIES entries of (producer << 32 | seq)
struct Book {
    seg: Segment,
}

impl Book {
    const WORDS: usize = 24 + MAX_CHILDREN * (1 + LOG_ENTRIES);

    fn create(name: &str) -> Book {
        Book {
            seg: Segment::create(name, Self::WORDS * 8).expect("create book"),
        }
    }

    fn open(name: &str) -> Book {
        Book {
            seg: Segment::open(name).expect("open book"),
        }
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < Self::WORDS);
        // SAFETY: the segment holds WORDS 8-byte words (checked above), page aligned, mapped
        // while self lives; every access to them is atomic.
        unsafe { &*self.seg.as_ptr().cast::<AtomicU64>().add(index) }
    }

    fn ack(&self, producer: usize) -> &AtomicU64 {
        self.word(producer)
    }

    fn phase(&self, child: usize) -> &AtomicU64 {
        self.word(8 + child)
    }

    fn corrupted(&self, consumer: usize) -> &AtomicU64 {
        self.word(16 + consumer)
    }

    /// Lock trials have no consumers: the same words count `OwnerDied` seen by each locker.
    fn owner_died(&self, locker: usize) -> &AtomicU64 {
        self.word(16 + locker)
    }

    fn lock_timeouts(&self) -> &AtomicU64 {
        self.word(23)
    }

    /// The most messages `consumer`'s take in progress may take before it logs them: 1 for
    /// a single take (0 until the first run), the run's maximum during a `try_recv_many`.
    fn unlogged(&self, consumer: usize) -> &AtomicU64 {
        self.word(20 + consumer)
    }

    fn log(&self, consumer: usize, entry: (u32, u32)) {
        let base = 24 + consumer * (1 + LOG_ENTRIES);
        let n = self.word(base).load(Ordering::Relaxed) as usize;
        if n < LOG_ENTRIES {
            self.word(base + 1 + n)
                .store((entry.0 as u64) << 32 | entry.1 as u64, Ordering::Relaxed);
            self.word(base).store(n as u64 + 1, Ordering::Release);
        }
    }

    fn entries(&self, consumer: usize) -> Vec<(u32, u32)> {
        let base = 24 + consumer * (1 + LOG_ENTRIES);
        let n = (self.word(base).load(Ordering::Acquire) as usize).min(LOG_ENTRIES);
        (0..n)
            .map(|i| {
                let w = self.word(base + 1 + i).load(Ordering::Relaxed);
                ((w >> 32) as u32, w as u32)
            })
            .collect()
    }
}

// ----- children ------------------------------------------------------------------------------

fn producer_child(args: &[String]) {
    let (chan, book, index, seed, use_loans) = (
        &args[0],
        Book::open(&args[1]),
        args[2].parse::<usize>().unwrap(),
        args[3].parse::<u64>().unwrap(),
        args[4] == "loan",
    );
    let tx = Sender::open(chan).expect("open sender");
    let mut rng = Rng(seed);
    common::signal_parent("ready");
    let phase = book.phase(index);
    let mut scratch = Vec::new();
    let mut run: Vec<Vec<u8>> = Vec::new();
    let mut seq = 0;
    while seq < PER_PRODUCER {
        let len = message_len(&mut rng);
        if use_loans && rng.below(2) == 0 {
            phase.store(BLOCKED_SEND, Ordering::Relaxed);
            let mut loan = tx.loan(len).expect("loan");
            phase.store(LOAN_FILL, Ordering::Relaxed);
            fill_message(&mut loan, index as u32, seq);
            phase.store(SENDING, Ordering::Relaxed);
            loan.send().expect("send loan");
            seq += 1;
        } else if rng.below(4) == 0 {
            // A run of up to 8 messages in one call (most small, so most go in one pass over
            // the ring): the call may send fewer, and the rest go in the next calls.
            let count = (1 + rng.below(8) as u32).min(PER_PRODUCER - seq);
            run.clear();
            for k in 0..count {
                let mut message = vec![0; message_len(&mut rng).min(64 + 32 * k as usize)];
                fill_message(&mut message, index as u32, seq + k);
                run.push(message);
            }
            let mut rest = &run[..];
            while !rest.is_empty() {
                phase.store(SENDING, Ordering::Relaxed);
                let sent = match tx.try_send_many(rest) {
                    Ok(sent) => sent,
                    Err(TrySendError::Failed(Error::LockTimeout { .. }, ())) => {
                        book.lock_timeouts().fetch_add(1, Ordering::Relaxed);
                        phase.store(BLOCKED_SEND, Ordering::Relaxed);
                        tx.send_many(rest).expect("send_many")
                    }
                    Err(e) if e.is_full() => {
                        phase.store(BLOCKED_SEND, Ordering::Relaxed);
                        tx.send_many(rest).expect("send_many")
                    }
                    Err(e) => panic!("try_send_many: {e}"),
                };
                rest = &rest[sent..];
                seq += sent as u32;
                book.ack(index).store(seq as u64, Ordering::Release);
            }
            continue;
        } else {
            scratch.resize(len, 0);
            fill_message(&mut scratch, index as u32, seq);
            phase.store(SENDING, Ordering::Relaxed);
            match tx.try_send(&scratch) {
                Ok(()) => {}
                Err(e) if e.is_full() => {
                    phase.store(BLOCKED_SEND, Ordering::Relaxed);
                    tx.send(&scratch).expect("send");
                }
                // A stopped victim holds a lock: wait for it, as a blocking call does.
                Err(TrySendError::Failed(Error::LockTimeout { .. }, ())) => {
                    book.lock_timeouts().fetch_add(1, Ordering::Relaxed);
                    phase.store(BLOCKED_SEND, Ordering::Relaxed);
                    tx.send(&scratch).expect("send");
                }
                Err(e) => panic!("try_send: {e}"),
            }
            seq += 1;
        }
        book.ack(index).store(seq as u64, Ordering::Release);
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(500)));
        }
    }
    phase.store(FINISHED, Ordering::Relaxed);
}

/// Logs a message as taken by `consumer`, or counts it corrupted.
fn log_message(book: &Book, consumer: usize, msg: &[u8]) {
    match check_message(msg) {
        Some(entry) => book.log(consumer, entry),
        None => {
            book.corrupted(consumer).fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn is_lock_timeout(e: &TryRecvError) -> bool {
    matches!(e, TryRecvError::Failed(Error::LockTimeout { .. }))
}

fn consumer_child(args: &[String]) {
    let (chan, book, index, consumer, seed) = (
        &args[0],
        Book::open(&args[1]),
        args[2].parse::<usize>().unwrap(),
        args[3].parse::<usize>().unwrap(),
        args[4].parse::<u64>().unwrap(),
    );
    let rx = Receiver::open(chan).expect("open receiver");
    let mut rng = Rng(seed);
    common::signal_parent("ready");
    let phase = book.phase(index);
    let mut held = std::collections::VecDeque::new();
    let mut batch = Vec::new();
    loop {
        phase.store(RECEIVING, Ordering::Relaxed);
        // A third of the takes in runs of up to 8, each logged at once.
        let taken = if rng.below(3) == 0 {
            let max = 1 + rng.below(8) as usize;
            book.unlogged(consumer).store(max as u64, Ordering::Relaxed);
            let taken = rx.try_recv_many(&mut batch, max);
            for msg in batch.drain(..) {
                log_message(&book, consumer, &msg);
                held.push_back(msg);
            }
            book.unlogged(consumer).store(1, Ordering::Relaxed);
            match taken {
                Ok(_) => {
                    while held.len() > rng.below(6) as usize {
                        if let Some(msg) = held.pop_front() {
                            finish_task(&rx, &book, phase, msg);
                        }
                    }
                    continue;
                }
                Err(e) => Err(e),
            }
        } else {
            rx.try_recv()
        };
        let msg = match taken {
            Ok(msg) => msg,
            Err(e) if e.is_empty() || is_lock_timeout(&e) => {
                if is_lock_timeout(&e) {
                    book.lock_timeouts().fetch_add(1, Ordering::Relaxed);
                }
                // Held messages count against the arena: a consumer that kept them while it
                // waits for more could starve the producers it waits for.
                while let Some(msg) = held.pop_front() {
                    finish_task(&rx, &book, phase, msg);
                }
                phase.store(BLOCKED_RECV, Ordering::Relaxed);
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
            Err(_) => break,
        };
        log_message(&book, consumer, &msg);
        held.push_back(msg);
        if held.len() > rng.below(6) as usize {
            if let Some(msg) = held.pop_front() {
                finish_task(&rx, &book, phase, msg);
            }
        }
        if rng.below(10) == 0 {
            phase.store(HOLDING, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
        }
    }
    while let Some(msg) = held.pop_front() {
        finish_task(&rx, &book, phase, msg);
    }
    phase.store(FINISHED, Ordering::Relaxed);
}

/// Ends the processing of a held message: drops it, then calls `task_done` for it. So a killed
/// consumer usually leaves unfinished tasks (those it held), which its reclaim must credit.
fn finish_task(rx: &Receiver, book: &Book, phase: &AtomicU64, msg: shmq::Message) {
    drop(msg);
    phase.store(TASK_DONE, Ordering::Relaxed);
    match rx.try_task_done() {
        Ok(()) => {}
        // A stopped victim holds the allocator lock: wait for it, as a blocking call does.
        Err(TaskDoneError::Failed(Error::LockTimeout { .. })) => {
            book.lock_timeouts().fetch_add(1, Ordering::Relaxed);
            rx.task_done().expect("task_done");
        }
        Err(e) => panic!("task_done: {e}"),
    }
}

fn reopener_child(args: &[String]) {
    let (chan, book, index) = (
        &args[0],
        Book::open(&args[1]),
        args[2].parse::<usize>().unwrap(),
    );
    common::signal_parent("ready");
    let phase = book.phase(index);
    for _ in 0..200 {
        phase.store(RECLAIMING, Ordering::Relaxed);
        match Receiver::open(chan) {
            Ok(rx) => drop(rx),
            Err(_) => break,
        }
        phase.store(STARTING, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(200));
    }
    phase.store(FINISHED, Ordering::Relaxed);
}

fn locker_child(args: &[String]) {
    let (value, book, index, rounds) = (
        &args[0],
        Book::open(&args[1]),
        args[2].parse::<usize>().unwrap(),
        args[3].parse::<u64>().unwrap(),
    );
    let counter = SharedValue::<[u64; 2]>::open(value).expect("open value");
    common::signal_parent("ready");
    let phase = book.phase(index);
    for _ in 0..rounds {
        let mut guard = match counter.lock() {
            Ok(guard) => guard,
            Err(LockError::OwnerDied(died)) => {
                // The pair must be equal; a holder that died between the two writes left them
                // apart. Repair: the second word is written last, so the first is the truth.
                book.owner_died(index).fetch_add(1, Ordering::Relaxed);
                let mut guard = died.into_inner();
                guard[1] = guard[0];
                guard.mark_consistent();
                guard
            }
            Err(e) => panic!("lock: {e}"),
        };
        phase.store(LOCK_HELD, Ordering::Relaxed);
        guard[0] += 1;
        // Hold the lock for about a microsecond between the two writes, so that a random kill
        // often finds the victim inside.
        for _ in 0..40 {
            std::hint::spin_loop();
        }
        std::hint::black_box(&guard);
        guard[1] += 1;
        drop(guard);
        phase.store(STARTING, Ordering::Relaxed);
    }
    phase.store(FINISHED, Ordering::Relaxed);
}

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "producer" => producer_child(args),
        "consumer" => consumer_child(args),
        "reopener" => reopener_child(args),
        "locker" => locker_child(args),
        other => panic!("unknown role {other}"),
    });
}

// ----- trials --------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Totals {
    trials: u64,
    kills: u64,
    kill_phases: BTreeMap<&'static str, u64>,
    acknowledged: u64,
    delivered: u64,
    lost: u64,
    taken_by_killed: u64,
    duplicated: u64,
    corrupted: u64,
    hangs: u64,
    leaked_arena_bytes: u64,
    leaked_segments: u64,
    /// Victims stopped (SIGSTOP) for a while before the kill.
    stopped_first: u64,
    /// Of those, victims caught holding one of the channel's locks.
    stopped_holding_lock: u64,
    /// `LockTimeout`s survivors met meanwhile (each fell back to a blocking call).
    lock_timeouts: u64,
    lock_trials: u64,
    lock_repairs_ok: u64,
    /// Lock trials whose victim died holding the lock (a survivor saw `OwnerDied`).
    lock_holder_killed: u64,
    /// Channel trials whose task counts balanced at the end (every task sent done, once).
    tasks_balanced: u64,
    failures: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
/// Who is killed in a channel trial.
enum Scenario {
    /// A producer is killed.
    Producer,
    /// A consumer is killed.
    Consumer,
    /// A process that keeps opening handles (and so reclaiming the dead) is killed.
    Reclaimer,
}

fn spawn_ready(role: &str, args: &[&str]) -> Child {
    let mut child = spawn_child(role, args);
    wait_for_line(&mut child, "ready", Duration::from_secs(30));
    child
}

fn leftovers(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn channel_trial(scenario: Scenario, seed: u64, totals: &mut Totals) {
    let mut rng = Rng(seed);
    let chan = unique_name("crash");
    let book_name = format!("{chan}.book");
    let book = Book::create(&book_name);
    let (tx, rx) = shmq::channel(
        &chan,
        ChannelConfig::default()
            .with_capacity(CAPACITY)
            .with_arena_bytes(ARENA),
    )
    .expect("create channel");
    let seed_arg = |rng: &mut Rng| rng.next().to_string();
    // Children 0, 1: producers; 2, 3: consumers; 4: reclaimer.
    let mode = if rng.below(2) == 0 { "loan" } else { "send" };
    let mut children: Vec<(usize, Child)> = Vec::new();
    for p in 0..2 {
        let s = seed_arg(&mut rng);
        children.push((
            p,
            spawn_ready("producer", &[&chan, &book_name, &p.to_string(), &s, mode]),
        ));
    }
    for c in 0..2 {
        let s = seed_arg(&mut rng);
        let index = (2 + c).to_string();
        children.push((
            2 + c,
            spawn_ready("consumer", &[&chan, &book_name, &index, &c.to_string(), &s]),
        ));
    }
    let victim = match scenario {
        Scenario::Producer => rng.below(2) as usize,
        Scenario::Consumer => 2 + rng.below(2) as usize,
        _ => {
            children.push((4, spawn_ready("reopener", &[&chan, &book_name, "4"])));
            4
        }
    };
    // From here on the children are the channel's only senders and receivers, but for the
    // receiver kept to drain and audit the arena at the end.
    drop(tx);
    std::thread::sleep(Duration::from_micros(rng.below(60_000)));
    let position = children
        .iter()
        .position(|(i, _)| *i == victim)
        .expect("victim");
    let (_, mut victim_child) = children.remove(position);
    stop_first(&mut rng, victim_child.id(), Some(&chan), totals);
    let phase = book.phase(victim).load(Ordering::Relaxed) as usize;
    kill9(&mut victim_child);
    totals.kills += 1;
    *totals.kill_phases.entry(phase_name(phase)).or_default() += 1;

    let started = Instant::now();
    for (index, mut child) in children {
        let left = WATCHDOG.saturating_sub(started.elapsed());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_exit(&mut child, left)))
        {
            Ok(status) if status.success() => {}
            Ok(status) => totals
                .failures
                .push(format!("seed {seed}: child {index} exited {status}")),
            Err(_) => {
                totals.hangs += 1;
                totals
                    .failures
                    .push(format!("seed {seed}: child {index} hung ({scenario:?})"));
            }
        }
    }

    // Drain what nobody took (a killed consumer's survivors may have stopped early), finishing
    // each task as a consumer would.
    let mut drained = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        match check_message(&msg) {
            Some(entry) => drained.push(entry),
            None => totals.corrupted += 1,
        }
        if let Err(e) = rx.task_done() {
            totals
                .failures
                .push(format!("seed {seed}: task_done of a drained message: {e}"));
        }
    }
    // Audit: each acknowledged message exactly once, intact.
    let mut seen = HashSet::new();
    let killed_consumer = (2..4).contains(&victim).then(|| victim - 2);
    let mut survivors_and_drain = drained;
    for c in 0..2 {
        totals.corrupted += book.corrupted(c).load(Ordering::Relaxed);
        let entries = book.entries(c);
        if Some(c) != killed_consumer {
            survivors_and_drain.extend(entries);
        } else {
            // What the killed consumer logged it had taken counts as delivered to it.
            for e in entries {
                if !seen.insert(e) {
                    totals.duplicated += 1;
                }
                totals.taken_by_killed += 1;
            }
        }
    }
    for e in survivors_and_drain {
        if seen.insert(e) {
            totals.delivered += 1;
        } else {
            totals.duplicated += 1;
        }
    }
    let mut missing_total = 0;
    for p in 0..2u32 {
        let acked = book.ack(p as usize).load(Ordering::Acquire) as u32;
        totals.acknowledged += acked as u64;
        missing_total += (0..acked).filter(|s| !seen.contains(&(p, *s))).count() as u64;
    }
    // A killed consumer may have taken messages it had no time to log: one, or those of the
    // run it was taking.
    let allowance = killed_consumer.map_or(0, |c| book.unlogged(c).load(Ordering::Acquire).max(1));
    if missing_total > allowance {
        totals.lost += missing_total - allowance;
        totals.failures.push(format!(
            "seed {seed}: {missing_total} acknowledged messages missing ({scenario:?})"
        ));
    } else {
        totals.taken_by_killed += missing_total;
    }
    // Every participant but us is gone: opening reclaims the dead, then the arena must be empty.
    drop(Receiver::open(&chan).expect("reopen"));
    // Every task sent is done, none twice: the survivors' and ours by task_done, the killed
    // consumer's unfinished ones by its reclaim.
    let stats = shmq::inspect(&chan).ok().and_then(|info| info.channel);
    match stats {
        Some(s) if s.tasks_done_total == s.sent_total && rx.try_join_tasks().is_ok() => {
            totals.tasks_balanced += 1;
        }
        Some(s) => totals.failures.push(format!(
            "seed {seed}: {} tasks done of {} sent after the trial ({scenario:?})",
            s.tasks_done_total, s.sent_total
        )),
        None => totals
            .failures
            .push(format!("seed {seed}: no channel figures after the trial")),
    }
    let free = rx.free_arena_bytes();
    if free != ARENA as u64 {
        totals.leaked_arena_bytes += ARENA as u64 - free;
        totals.failures.push(format!(
            "seed {seed}: arena not empty after the trial: {free} of {ARENA} free ({scenario:?})"
        ));
    }
    totals.lock_timeouts += book.lock_timeouts().load(Ordering::Relaxed);
    drop(rx);
    drop(book);
    let _ = shmq::gc();
    let left = leftovers(&format!("shmq.{chan}"));
    if !left.is_empty() {
        totals.leaked_segments += left.len() as u64;
        totals
            .failures
            .push(format!("seed {seed}: left in /dev/shm: {left:?}"));
        for name in left {
            let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        }
    }
}

fn lock_trial(seed: u64, totals: &mut Totals) {
    let mut rng = Rng(seed);
    let name = unique_name("crash-lock");
    let book_name = format!("{name}.book");
    let book = Book::create(&book_name);
    let value = SharedValue::<[u64; 2]>::create(&name, [0, 0]).expect("create value");
    let rounds = "20000";
    let mut children: Vec<Child> = (0..3)
        .map(|i| spawn_ready("locker", &[&name, &book_name, &i.to_string(), rounds]))
        .collect();
    std::thread::sleep(Duration::from_micros(rng.below(30_000)));
    let victim = rng.below(3) as usize;
    let phase = book.phase(victim).load(Ordering::Relaxed) as usize;
    stop_first(&mut rng, children[victim].id(), None, totals);
    kill9(&mut children[victim]);
    totals.kills += 1;
    totals.lock_trials += 1;
    *totals.kill_phases.entry(phase_name(phase)).or_default() += 1;
    for (i, child) in children.iter_mut().enumerate() {
        if i == victim {
            continue;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_exit(child, WATCHDOG)))
        {
            Ok(status) if status.success() => {}
            Ok(status) => totals
                .failures
                .push(format!("lock seed {seed}: child {i} exited {status}")),
            Err(_) => {
                totals.hangs += 1;
                totals
                    .failures
                    .push(format!("lock seed {seed}: child {i} hung"));
            }
        }
    }
    // The survivors finished their rounds: the pair is consistent and counts at least theirs.
    let mut owner_died: u64 = (0..3)
        .map(|i| book.owner_died(i).load(Ordering::Relaxed))
        .sum();
    let pair = match value.lock() {
        Ok(guard) => *guard,
        Err(LockError::OwnerDied(died)) => {
            owner_died += 1;
            let mut guard = died.into_inner();
            guard[1] = guard[0];
            guard.mark_consistent();
            *guard
        }
        Err(e) => panic!("lock after trial: {e}"),
    };
    if owner_died > 0 {
        totals.lock_holder_killed += 1;
    }
    if pair[0] == pair[1] && pair[0] >= 2 * 20_000 {
        totals.lock_repairs_ok += 1;
    } else {
        totals
            .failures
            .push(format!("lock seed {seed}: counter pair {pair:?}"));
    }
    drop(value);
    drop(book);
    let left = leftovers(&format!("shmq.{name}"));
    if !left.is_empty() {
        totals.leaked_segments += left.len() as u64;
        totals
            .failures
            .push(format!("lock seed {seed}: left in /dev/shm: {left:?}"));
    }
}

/// In one trial of four, stops the victim for 20 to 150 ms before it is killed. In a channel
/// trial it first tries (up to 200 stops at random instants) to catch the victim holding the
/// membership or the allocator lock, as `shmq::inspect` shows them, so that survivors meet a
/// stopped holder. (Stops anywhere else, in the middle of a lock-free ring step included, come
/// from the random instants.)
fn stop_first(rng: &mut Rng, pid: u32, chan: Option<&str>, totals: &mut Totals) {
    if rng.below(4) != 0 {
        return;
    }
    let stop = |sig| {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    };
    stop(libc::SIGSTOP);
    if let Some(chan) = chan {
        for _ in 0..200 {
            wait_stopped(pid);
            let Ok(info) = shmq::inspect(chan) else { break };
            let holds = info.membership_holder == Some(pid)
                || info
                    .channel
                    .is_some_and(|c| c.allocator_lock_holder == Some(pid));
            if holds {
                totals.stopped_holding_lock += 1;
                break;
            }
            stop(libc::SIGCONT);
            std::thread::sleep(Duration::from_micros(rng.below(300)));
            stop(libc::SIGSTOP);
        }
    }
    std::thread::sleep(Duration::from_millis(20 + rng.below(131)));
    totals.stopped_first += 1;
}

/// Waits (at most a second) until /proc says `pid` is stopped, or gone.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return;
        };
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.trim().chars().next());
        if matches!(state, Some('T' | 't' | 'Z' | 'X')) {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn run_trials(trials: u64, base_seed: u64) -> Totals {
    let mut totals = Totals::default();
    for t in 0..trials {
        let seed = base_seed.wrapping_add(t.wrapping_mul(0x2545_f491_4f6c_dd1d));
        match t % 8 {
            0..=2 => channel_trial(Scenario::Producer, seed, &mut totals),
            3..=5 => channel_trial(Scenario::Consumer, seed, &mut totals),
            6 => channel_trial(Scenario::Reclaimer, seed, &mut totals),
            _ => lock_trial(seed, &mut totals),
        }
        totals.trials += 1;
    }
    totals
}

fn report(totals: &Totals, elapsed: Duration) {
    println!("crash trials: {} in {:.1?}", totals.trials, elapsed);
    println!("  kills: {}", totals.kills);
    println!(
        "    of which stopped for 20-150 ms first: {} (holding a channel lock: {}; lock timeouts met by survivors meanwhile: {})",
        totals.stopped_first, totals.stopped_holding_lock, totals.lock_timeouts
    );
    for (phase, n) in &totals.kill_phases {
        println!("    killed while {phase}: {n}");
    }
    println!("  messages acknowledged by send: {}", totals.acknowledged);
    println!(
        "  delivered to survivors exactly once: {}",
        totals.delivered
    );
    println!("  taken by killed consumers: {}", totals.taken_by_killed);
    println!("  lost: {}", totals.lost);
    println!("  duplicated: {}", totals.duplicated);
    println!("  corrupted: {}", totals.corrupted);
    println!("  hangs: {}", totals.hangs);
    println!("  leaked arena bytes: {}", totals.leaked_arena_bytes);
    println!("  leaked segments: {}", totals.leaked_segments);
    println!(
        "  channel trials whose task counts balanced (every task sent done, once): {}",
        totals.tasks_balanced
    );
    println!(
        "  lock trials: {} (victim died holding the lock: {}; pair consistent afterwards: {})",
        totals.lock_trials, totals.lock_holder_killed, totals.lock_repairs_ok
    );
    for f in totals.failures.iter().take(20) {
        println!("  FAILURE {f}");
    }
}

fn assert_clean(totals: &Totals) {
    assert!(
        totals.failures.is_empty(),
        "{} failures: {:#?}",
        totals.failures.len(),
        &totals.failures[..totals.failures.len().min(20)]
    );
    assert_eq!(
        totals.lost + totals.duplicated + totals.corrupted + totals.hangs,
        0
    );
    assert_eq!(totals.leaked_arena_bytes + totals.leaked_segments, 0);
}

fn trials_from_env(default: u64) -> u64 {
    std::env::var("SHMQ_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn crash_trials_ci() {
    let started = Instant::now();
    let totals = run_trials(trials_from_env(200), 0x5eed);
    report(&totals, started.elapsed());
    assert_clean(&totals);
}

/// Replays one channel trial of a failing run: `SHMQ_REPLAY=<seed>,<producer|consumer|reclaimer>`
/// runs that trial `SHMQ_TRIALS` times (default 20). Kill timing is the machine's, so a replay
/// makes a rare failure likelier rather than certain.
#[test]
#[ignore = "replay: SHMQ_REPLAY=<seed>,<scenario> cargo test --release --test crash_trials -- --ignored crash_trial_replay --nocapture"]
fn crash_trial_replay() {
    let spec = std::env::var("SHMQ_REPLAY").expect("SHMQ_REPLAY=<seed>,<scenario>");
    let (seed, scenario) = spec.split_once(',').expect("SHMQ_REPLAY=<seed>,<scenario>");
    let seed: u64 = seed.parse().expect("seed");
    let scenario = match scenario {
        "producer" => Scenario::Producer,
        "consumer" => Scenario::Consumer,
        "reclaimer" => Scenario::Reclaimer,
        other => panic!("unknown scenario {other}"),
    };
    let started = Instant::now();
    let mut totals = Totals::default();
    for _ in 0..trials_from_env(20) {
        channel_trial(scenario, seed, &mut totals);
        totals.trials += 1;
    }
    report(&totals, started.elapsed());
    assert_clean(&totals);
}

#[test]
#[ignore = "long run: SHMQ_TRIALS=10000 cargo test --release --test crash_trials -- --ignored crash_trials_long --nocapture"]
fn crash_trials_long() {
    let started = Instant::now();
    let seed = std::env::var("SHMQ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xc0ffee);
    let totals = run_trials(trials_from_env(10_000), seed);
    report(&totals, started.elapsed());
    assert_clean(&totals);
}
