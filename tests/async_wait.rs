//! The async API across real processes: 64 channels awaited at once on one waiter thread, a
//! killed peer as `Disconnected`, futures dropped mid-wait (every message still arrives exactly
//! once, no registration is left), sends and loans that wait for room, `join_async`, a forked
//! child's own waiter, an executor-free `block_on` (no runtime needed), and a panicking
//! `Waker` that costs no other future its wake-up.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Receiver, RecvError, Role, Sender, TrySendError};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "send_each" => {
            // One message on each of `n` channels, in a shuffled order, with pauses.
            let (base, n) = (&args[0], parse(&args[1]));
            let senders: Vec<Sender> = (0..n)
                .map(|i| Sender::open(&format!("{base}-{i}")).expect("open sender"))
                .collect();
            common::signal_parent("attached");
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = common::Rng(n as u64);
            for i in (1..n).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for i in order {
                thread::sleep(Duration::from_micros(rng.below(3000)));
                senders[i].send(&tagged(i, 0)).expect("send");
            }
            common::signal_parent("sent");
        }
        "stream" => {
            // `count` messages on each of `n` channels, interleaved, with short pauses and a
            // long one every 150 rounds.
            let (base, n, count) = (&args[0], parse(&args[1]), parse(&args[2]));
            let senders: Vec<Sender> = (0..n)
                .map(|i| Sender::open(&format!("{base}-{i}")).expect("open sender"))
                .collect();
            common::signal_parent("attached");
            let mut rng = common::Rng(count as u64);
            for seq in 0..count {
                for (i, tx) in senders.iter().enumerate() {
                    tx.send(&tagged(i, seq)).expect("send");
                }
                if rng.below(4) == 0 {
                    thread::sleep(Duration::from_micros(rng.below(500)));
                }
                // And a long pause now and then, in which the parent drains all four channels
                // and its receives must wait: so that pending futures are dropped however the
                // two processes are scheduled (a loaded machine left the parent always behind,
                // every receive ready, and the test's precondition unmet).
                if seq % 150 == 149 {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            common::signal_parent("sent");
        }
        "drain_slowly" => {
            let (name, count) = (&args[0], parse(&args[1]));
            let rx = Receiver::open(name).expect("open receiver");
            common::signal_parent("attached");
            for seq in 0..count {
                if seq.is_multiple_of(16) {
                    thread::sleep(Duration::from_millis(2));
                }
                let msg = rx.recv_timeout(HANG).expect("recv");
                assert_eq!(&msg[..], &tagged(0, seq)[..], "message {seq}");
            }
            common::signal_parent("drained");
        }
        "hold_sender" => {
            let _tx = Sender::open(&args[0]).expect("open sender");
            common::signal_parent("attached");
            sleep_until_killed();
        }
        "send_on_cue" => {
            // Two cues on the third channel, each naming the channel ("a" or "b") to send it on.
            let a = Sender::open(&args[0]).expect("open sender a");
            let b = Sender::open(&args[1]).expect("open sender b");
            let cues = Receiver::open(&args[2]).expect("open cue receiver");
            common::signal_parent("attached");
            for _ in 0..2 {
                let cue = cues.recv_timeout(HANG).expect("cue");
                let tx = if &cue[..] == b"a" { &a } else { &b };
                tx.send(&cue).expect("send");
            }
            common::signal_parent("sent");
        }
        other => panic!("unknown child role {other}"),
    });
}

fn parse(arg: &str) -> usize {
    arg.parse().expect("number argument")
}

/// Message `seq` of channel `index`: its identity, then a body whose size makes every fifth one
/// travel in the arena rather than in the ring slot.
fn tagged(index: usize, seq: usize) -> Vec<u8> {
    let mut bytes = [(index as u32).to_le_bytes(), (seq as u32).to_le_bytes()].concat();
    if seq.is_multiple_of(5) {
        bytes.resize(5000, seq as u8);
    }
    bytes
}

fn identity(msg: &[u8]) -> (usize, usize) {
    let word = |i: usize| u32::from_le_bytes(msg[i..i + 4].try_into().unwrap()) as usize;
    (word(0), word(4))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// Threads of this process named `shmq-waiter`.
fn waiter_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "shmq-waiter")
        .count()
}

/// `n` channels named `base-0` .. `base-{n-1}`.
fn channels(base: &str, n: usize, capacity: usize) -> Vec<(Sender, Receiver)> {
    (0..n)
        .map(|i| {
            shmq::channel(&format!("{base}-{i}"), config(capacity, 256 * KIB)).expect("create")
        })
        .collect()
}

/// Waits until no async wait is registered (the waiter drops what it held within a moment).
fn assert_no_registration_left() {
    let deadline = Instant::now() + HANG;
    while shmq::pending_async_waits() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} registrations left behind",
            shmq::pending_async_waits()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sixty_four_channels_awaited_at_once_on_one_waiter_thread() {
    let base = common::unique_name("aw-64");
    let n = 64;
    let chans = channels(&base, n, 4);
    let receivers: Vec<Receiver> = chans.iter().map(|(_, rx)| rx.clone()).collect();
    let mut kid = Kid::spawn("send_each", &[&base, &n.to_string()]);
    kid.expect("attached");
    let got = runtime().block_on(async {
        let tasks: Vec<_> = receivers
            .into_iter()
            .map(|rx| tokio::spawn(async move { rx.recv_async().await.map(|m| identity(&m)) }))
            .collect();
        // Every future is pending before the first message comes (the child pauses first).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut got = Vec::new();
        for task in tasks {
            got.push(
                tokio::time::timeout(HANG, task)
                    .await
                    .expect("woken")
                    .expect("task"),
            );
        }
        got
    });
    for (i, result) in got.into_iter().enumerate() {
        assert_eq!(result.expect("recv_async"), (i, 0));
    }
    assert_eq!(waiter_threads(), 1, "one waiter thread for all 64 channels");
    kid.expect("sent");
    kid.finish();
    assert_no_registration_left();
}

#[test]
fn a_killed_sender_ends_a_pending_recv_with_disconnected() {
    let name = common::unique_name("aw-kill");
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    let mut kid = Kid::spawn("hold_sender", &[&name]);
    kid.expect("attached");
    drop(tx);
    let rt = runtime();
    let pending = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), rx.recv_async()).await
    });
    assert!(
        pending.is_err(),
        "nothing to receive while the sender lives"
    );
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        kid.kill();
    });
    let result = rt
        .block_on(async { tokio::time::timeout(HANG, rx.recv_async()).await })
        .expect("the death seen within HANG");
    assert_eq!(result.unwrap_err(), RecvError::Disconnected);
    killer.join().expect("killer");
    assert_no_registration_left();
}

#[test]
fn futures_dropped_mid_wait_lose_no_message_and_leave_no_registration() {
    let base = common::unique_name("aw-drop");
    let (n, count) = (4, 1500);
    let chans = channels(&base, n, 16);
    let receivers: Vec<Receiver> = chans.iter().map(|(_, rx)| rx.clone()).collect();
    let mut kid = Kid::spawn("stream", &[&base, &n.to_string(), &count.to_string()]);
    kid.expect("attached");
    let (next, all_pending) = runtime().block_on(async {
        let mut next = vec![0usize; n];
        // Rounds the timer won: four receives dropped, each polled and pending.
        let mut all_pending = 0u64;
        while next.iter().any(|&seq| seq < count) {
            // Each round races the four receives and a very short timer: the losers are
            // dropped, pending or not, every round.
            let received = tokio::select! {
                m = receivers[0].recv_async() => Some(m),
                m = receivers[1].recv_async() => Some(m),
                m = receivers[2].recv_async() => Some(m),
                m = receivers[3].recv_async() => Some(m),
                _ = tokio::time::sleep(Duration::from_micros(50)) => None,
            };
            let Some(msg) = received else {
                all_pending += 1;
                continue;
            };
            let (index, seq) = identity(&msg.expect("recv_async"));
            assert_eq!(seq, next[index], "channel {index}: out of order or lost");
            next[index] += 1;
        }
        (next, all_pending)
    });
    assert_eq!(next, vec![count; n]);
    for rx in &receivers {
        assert!(
            rx.try_recv().is_err(),
            "a message was received twice or left"
        );
    }
    // The test means something only if pending futures were in fact dropped, many times.
    assert!(
        all_pending >= 10,
        "only {all_pending} rounds dropped pending futures"
    );
    eprintln!("{all_pending} rounds dropped four pending futures");
    kid.expect("sent");
    kid.finish();
    assert_no_registration_left();
}

#[test]
fn sends_and_loans_wait_for_room_and_join_waits_for_the_receiver() {
    let name = common::unique_name("aw-send");
    let count = 400;
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    let mut kid = Kid::spawn("drain_slowly", &[&name, &count.to_string()]);
    kid.expect("attached");
    drop(rx);
    runtime().block_on(async {
        for seq in 0..count {
            let bytes = tagged(0, seq);
            if seq % 3 == 0 {
                // A loan, filled in place: waits for arena room, then for a ring slot.
                let mut loan = tx.loan_async(bytes.len()).await.expect("loan_async");
                loan.copy_from_slice(&bytes);
                loan.send_async().await.expect("Loan::send_async");
            } else {
                tx.send_async(&bytes).await.expect("send_async");
            }
        }
        tokio::time::timeout(HANG, tx.join_async())
            .await
            .expect("join within HANG")
            .expect("join_async");
    });
    assert_eq!(tx.len(), 0);
    kid.expect("drained");
    kid.finish();
    assert_no_registration_left();
}

#[test]
fn a_send_dropped_while_waiting_for_room_sends_nothing() {
    let name = common::unique_name("aw-cancel-send");
    let (tx, rx) = shmq::channel(&name, config(2, 64 * KIB)).expect("create");
    tx.send(b"first").expect("send");
    tx.send(&[7u8; 3000]).expect("send");
    let free = tx.free_arena_bytes();
    let rt = runtime();
    // A ring slot never frees: both sends must be dropped pending.
    let wait = Duration::from_millis(30);
    let small = rt.block_on(async { tokio::time::timeout(wait, tx.send_async(b"x")).await });
    let large =
        rt.block_on(async { tokio::time::timeout(wait, tx.send_async(&[9u8; 9000])).await });
    assert!(small.is_err() && large.is_err(), "the ring is full");
    assert_eq!(
        tx.free_arena_bytes(),
        free,
        "the dropped send gave its room back"
    );
    assert_eq!(&rx.recv().expect("recv")[..], b"first");
    assert_eq!(&rx.recv().expect("recv")[..], &[7u8; 3000][..]);
    assert!(rx.try_recv().is_err(), "a dropped send sent something");
    assert_no_registration_left();
}

/// The smallest executor: polls on this thread, parks between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

#[test]
fn the_futures_need_no_runtime_and_a_forked_child_gets_its_own_waiter() {
    let name = common::unique_name("aw-fork");
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    // Start this process's waiter with a wait that a thread ends.
    let sender = tx.clone();
    let later = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        sender.send(b"before fork").expect("send");
    });
    assert_eq!(
        &block_on(rx.recv_async()).expect("recv")[..],
        b"before fork"
    );
    later.join().expect("sender thread");
    assert_eq!(waiter_threads(), 1);

    let (ack_tx, ack_rx) =
        shmq::channel(&common::unique_name("aw-fork-ack"), config(4, 64 * KIB)).expect("ack");
    // SAFETY: the child runs only the code below (shmq calls, then _exit), none of which needs
    // a lock another thread of the parent may have held at the fork (the test harness's
    // threads do not touch shmq's locks).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The parent's waiter thread is not here: the child's first pending future starts one.
        let outcome = std::panic::catch_unwind(|| {
            let msg = block_on(rx.recv_async()).expect("child recv_async");
            ack_tx.send(&msg).expect("child ack");
        });
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(if outcome.is_ok() { 0 } else { 1 }) };
    }
    thread::sleep(Duration::from_millis(30)); // the child's future is pending by now
    tx.send(b"after fork").expect("send");
    let ack = ack_rx.recv_timeout(HANG).expect("the child was woken");
    assert_eq!(&ack[..], b"after fork");
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid pointer for its status.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed"
    );
    assert_no_registration_left();
}

/// A waker whose `wake` panics, as a buggy executor's might; it counts its wakes first.
struct PanickingWaker(AtomicUsize);

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("this waker panics on purpose (tests/async_wait.rs)");
    }
}

/// A waker that only records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn poll_with<F: Future>(future: &mut Pin<Box<F>>, waker: &Waker) -> Poll<F::Output> {
    future.as_mut().poll(&mut Context::from_waker(waker))
}

#[test]
fn a_panicking_waker_costs_no_other_future_its_wake_up() {
    let (a, b, cues) = (
        common::unique_name("aw-panic-a"),
        common::unique_name("aw-panic-b"),
        common::unique_name("aw-panic-cue"),
    );
    let (_tx_a, rx_a) = shmq::channel(&a, config(4, 64 * KIB)).expect("create a");
    let (_tx_b, rx_b) = shmq::channel(&b, config(4, 64 * KIB)).expect("create b");
    let (cue_tx, _cue_rx) = shmq::channel(&cues, config(4, 64 * KIB)).expect("create cues");
    let mut kid = Kid::spawn("send_on_cue", &[&a, &b, &cues]);
    kid.expect("attached");

    let panicking = Arc::new(PanickingWaker(AtomicUsize::new(0)));
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let flag_waker = Waker::from(Arc::clone(&flag));
    let mut on_a = Box::pin(rx_a.recv_async());
    let mut on_b = Box::pin(rx_b.recv_async());
    assert!(poll_with(&mut on_a, &Waker::from(Arc::clone(&panicking))).is_pending());
    assert!(poll_with(&mut on_b, &flag_waker).is_pending());

    // The child's message on channel a makes the waiter thread call the panicking waker.
    cue_tx.send(b"a").expect("cue a");
    let deadline = Instant::now() + HANG;
    while panicking.0.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the panicking waker was not woken"
        );
        thread::sleep(Duration::from_millis(1));
    }

    // From here only the waiter thread can wake `on_b`: it is polled only when its waker was
    // called, so if the thread died with the panic, nothing ever calls it and the loop below
    // fails at HANG. (The flag is cleared before each poll, so no wake-up goes unseen.)
    flag.0.store(false, Ordering::SeqCst);
    assert!(
        poll_with(&mut on_b, &flag_waker).is_pending(),
        "b has no message yet"
    );
    cue_tx.send(b"b").expect("cue b");
    let deadline = Instant::now() + HANG;
    let msg = loop {
        while !flag.0.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the future on channel b was never woken after the other waker panicked"
            );
            thread::sleep(Duration::from_millis(1));
        }
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(msg) = poll_with(&mut on_b, &flag_waker) {
            break msg.expect("recv_async on b");
        }
    };
    assert_eq!(&msg[..], b"b");
    assert_eq!(waiter_threads(), 1, "the waiter thread survived the panic");
    assert_eq!(
        panicking.0.load(Ordering::SeqCst),
        1,
        "woken once, then dropped"
    );
    kid.expect("sent");
    kid.finish();
    drop(on_a);
    assert_no_registration_left();
}

#[test]
fn a_receiver_dropped_after_its_cancelled_future_detaches_at_once() {
    let name = common::unique_name("aw-detach");
    let (tx, first_rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    drop(first_rx);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&flag));
    // Several rounds, so that the waiter thread is asleep on the word (it then held the
    // endpoint, before this mend) in at least one of them however it is scheduled.
    for round in 0..20 {
        let rx = Receiver::open(&name).expect("open receiver");
        let mut pending = Box::pin(rx.recv_async());
        assert!(
            poll_with(&mut pending, &waker).is_pending(),
            "round {round}"
        );
        thread::sleep(Duration::from_millis(10)); // the waiter sleeps on the word by now
        drop(pending);
        drop(rx);
        // The receiver's drop detached it, on this thread, before it returned: its sender
        // sees no receiver left at once, not when the waiter thread wakes and lets go.
        assert!(
            matches!(tx.try_send(b"x"), Err(TrySendError::Disconnected(()))),
            "round {round}: the dropped receiver is still attached"
        );
    }
    assert_no_registration_left();
}

#[test]
fn join_async_in_a_forked_child_registers_the_child_as_a_sender_of_its_own() {
    let name = common::unique_name("aw-fork-join");
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    tx.send(b"x").expect("send");
    drop(rx.recv().expect("recv")); // done: a join has nothing to wait for
                                    // SAFETY: the child runs only the code below (shmq calls, then _exit), none of which needs
                                    // a lock another thread of the parent may have held at the fork (the test harness's
                                    // threads do not touch shmq's locks).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // As a blocking `join` does, the inherited sender registers the child's own
        // participant, which the segment's table then shows with the child's pid.
        let outcome = std::panic::catch_unwind(|| {
            let joined = block_on(tx.join_async()).is_ok();
            let me = std::process::id();
            let registered = shmq::inspect(&name)
                .expect("inspect")
                .participants
                .iter()
                .any(|p| p.pid == me && p.alive && p.role == Some(Role::Sender));
            (joined, registered)
        });
        let code = match outcome {
            Ok((true, true)) => 0,
            Ok((false, _)) => 2,
            Ok((true, false)) => 3,
            Err(_) => 1,
        };
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid pointer for its status.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(libc::WIFEXITED(status), "child did not exit");
    match libc::WEXITSTATUS(status) {
        0 => {}
        2 => panic!("join_async failed in the child"),
        3 => panic!("join_async did not register the child as a participant of its own"),
        code => panic!("child failed ({code})"),
    }
    assert_no_registration_left();
}
