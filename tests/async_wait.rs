//! The async API across real processes: 64 channels awaited at once on one waiter thread, a
//! killed peer as `Disconnected`, futures dropped mid-wait (every message still arrives exactly
//! once, no registration is left), sends and loans that wait for room, `join_async`, a forked
//! child's own waiter, and an executor-free `block_on` (no runtime needed).

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Receiver, RecvError, Sender};

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
            // `count` messages on each of `n` channels, interleaved, with short pauses.
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
