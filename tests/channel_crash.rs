//! Peers killed with SIGKILL: their messages outlive them, the arena chunks, overflow payloads,
//! taken messages and participant slots they held are reclaimed, and a channel re-created after
//! a crash works.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Error, Receiver, Sender};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "send_and_linger" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                let len = linger_len(i);
                if i % 2 == 0 {
                    tx.send(&pattern(i as u64, len)).expect("send");
                } else {
                    let mut loan = tx.loan(len).expect("loan");
                    fill_pattern(&mut loan, i as u64);
                    loan.send().expect("send loan");
                }
            }
            common::signal_parent("sent");
            sleep_until_killed();
        }
        "recv_and_hold" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            let n: usize = args[1].parse().expect("n");
            let held: Vec<_> = (0..n).map(|_| rx.recv().expect("recv")).collect();
            for (i, msg) in held.iter().enumerate() {
                assert!(check_pattern(msg, i as u64), "payload {i} corrupted");
            }
            common::signal_parent("holding");
            sleep_until_killed();
        }
        "loan_and_linger" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let small: usize = args[1].parse().expect("arena loan");
            let big: usize = args[2].parse().expect("overflow loan");
            let mut a = tx.loan(small).expect("arena loan");
            fill_pattern(&mut a, 1);
            let mut b = tx.loan(big).expect("overflow loan");
            fill_pattern(&mut b, 2);
            common::signal_parent("loaned");
            sleep_until_killed();
        }
        "send_arena" => {
            // Sends arena payloads, announcing each before it starts.
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                common::signal_parent(&format!("sending {i}"));
                tx.send(&pattern(i as u64, 5000)).expect("send");
            }
            sleep_until_killed();
        }
        "create_send_die" => {
            // Creates the channel itself, queues an overflow payload and waits to be killed,
            // leaving the channel and its overflow segment behind.
            let arena: usize = args[1].parse().expect("arena");
            let (tx, _rx) = shmq::channel(&args[0], config(4, arena)).expect("create");
            tx.send(&pattern(1, 2 * arena)).expect("send overflow");
            common::signal_parent("sent");
            sleep_until_killed();
        }
        other => panic!("unknown child role {other}"),
    });
}

/// Sizes for `send_and_linger` (arena 1 MiB): inline, arena and overflow.
fn linger_len(i: usize) -> usize {
    [0, 10, 96, 97, 5000, 70_000, 2 * MIB][i % 7]
}

// ----- messages survive their sender --------------------------------------------------------

#[test]
fn messages_survive_a_killed_sender() {
    let name = common::unique_name("ch-survive");
    let arena = MIB;
    let n = 14;
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    drop(tx);
    let mut kid = Kid::spawn("send_and_linger", &[&name, &n.to_string()]);
    kid.expect("sent");
    kid.kill();
    for i in 0..n {
        let msg = rx
            .recv_timeout(HANG)
            .unwrap_or_else(|e| panic!("message {i} lost: {e}"));
        assert_eq!(msg.len(), linger_len(i), "message {i} length");
        assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    assert!(overflow_files(&name).is_empty());
    drop(rx);
    assert_gone(&name);
}

// ----- memory of killed peers is reclaimed --------------------------------------------------

#[test]
fn killed_receiver_holding_messages_gives_memory_back() {
    let name = common::unique_name("ch-reclaim-rx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    let sizes = [100 * KIB, 100 * KIB, 2 * MIB, 50];
    for (i, &len) in sizes.iter().enumerate() {
        tx.send(&pattern(i as u64, len)).expect("send");
    }
    let mut kid = Kid::spawn("recv_and_hold", &[&name, &sizes.len().to_string()]);
    kid.expect("holding");
    assert!(rx.is_empty());
    assert_eq!(tx.free_arena_bytes(), (arena - 200 * KIB) as u64);
    assert_eq!(overflow_files(&name).len(), 1);
    kid.kill();

    // A payload that needs the whole arena can only go once the dead child's chunks are back;
    // the blocked send reclaims dead participants while it waits.
    let started = Instant::now();
    tx.send_timeout(&pattern(9, arena), HANG)
        .expect("arena reclaimed from the killed receiver");
    eprintln!(
        "arena reclaimed from a killed receiver after {:?}",
        started.elapsed()
    );
    assert!(
        overflow_files(&name).is_empty(),
        "overflow payload of the dead receiver"
    );
    let msg = rx.recv().expect("recv");
    assert!(check_pattern(&msg, 9));
    drop(msg);
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    // Messages taken by a receiver that died count as done.
    tx.join_timeout(HANG)
        .expect("join after the dead receiver's messages");
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_sender_holding_loans_gives_memory_back() {
    let name = common::unique_name("ch-reclaim-tx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    let mut kid = Kid::spawn(
        "loan_and_linger",
        &[&name, &(200 * KIB).to_string(), &(2 * MIB).to_string()],
    );
    kid.expect("loaned");
    assert_eq!(tx.free_arena_bytes(), (arena - 200 * KIB) as u64);
    assert_eq!(overflow_files(&name).len(), 1);
    kid.kill();
    tx.send_timeout(&pattern(4, arena), HANG)
        .expect("arena reclaimed from the killed sender");
    assert!(
        overflow_files(&name).is_empty(),
        "overflow loan of the dead sender"
    );
    let msg = rx.try_recv().expect("the parent's message");
    assert!(check_pattern(&msg, 4));
    drop(msg);
    assert!(
        rx.try_recv().unwrap_err().is_empty(),
        "an unsent loan was delivered"
    );
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn polling_try_send_recovers_arena_of_a_killed_receiver() {
    let name = common::unique_name("ch-poll");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    tx.send(&pattern(0, arena)).expect("send the whole arena");
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "1"]);
    kid.expect("holding");
    kid.kill();
    // A producer that polls with try_send (never blocking) while the parent's own receiver
    // stays alive but idle.
    let started = Instant::now();
    let mut sent = false;
    while started.elapsed() < Duration::from_secs(2) {
        if tx.try_send(&pattern(1, arena)).is_ok() {
            sent = true;
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "polling try_send: sent={sent} after {:?}",
        started.elapsed()
    );
    // Guards against reclaiming dead participants only in calls that sleep: a producer that
    // polls with try_send never sleeps, and must still get the dead receiver's chunk back.
    assert!(
        sent,
        "arena of the killed receiver never reclaimed by polling try_send"
    );
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn sender_killed_while_blocked_gives_its_chunk_back() {
    let name = common::unique_name("ch-kill-blocked");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(2, arena)).expect("create");
    drop(tx);
    // 3 messages into a ring of 2: the child blocks in its third send, holding its chunk.
    let mut kid = Kid::spawn("send_arena", &[&name, "3"]);
    kid.expect("sending 2");
    while rx.len() < 2 || rx.free_arena_bytes() > arena as u64 - 6 * PAGE {
        thread::sleep(Duration::from_millis(10));
    }
    kid.kill();
    for i in 0..2 {
        assert!(check_pattern(&rx.recv().expect("recv"), i));
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    // Finding the sender dead reclaims it: its chunk is free as soon as recv says Disconnected.
    assert_eq!(
        rx.free_arena_bytes(),
        arena as u64,
        "chunk of the killed sender after Disconnected"
    );
    drop(rx);
    assert_gone(&name);
}

// ----- bookkeeping of killed peers ------------------------------------------------------------

#[test]
fn join_counts_messages_of_a_killed_receiver_as_done() {
    let name = common::unique_name("ch-join-dead");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    for i in 0..3 {
        tx.send(&pattern(i, 10 * KIB)).expect("send");
    }
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "3"]);
    kid.expect("holding");
    drop(rx); // the child is the only receiver, and it took every message
    kid.kill();
    // Guards against join giving up with Disconnected when no receiver is alive before the
    // dead receiver is reclaimed: reclaiming counts its taken messages as done, so join is Ok.
    let result = tx.join_timeout(HANG);
    assert!(
        result.is_ok(),
        "join with every message taken by a dead receiver: {result:?}"
    );
    drop(tx);
    assert_gone(&name);
}

#[test]
fn new_receiver_reuses_the_slot_of_a_killed_one() {
    let name = common::unique_name("ch-slot");
    let arena = MIB;
    let cfg = config(8, arena).with_max_participants(3);
    let (tx, rx) = shmq::channel(&name, cfg).expect("create");
    tx.send(&pattern(0, 100 * KIB)).expect("send");
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "1"]);
    kid.expect("holding");
    assert!(matches!(
        Receiver::open(&name),
        Err(Error::TooManyParticipants { .. })
    ));
    kid.kill();
    // The only free slot is the dead child's: attaching reclaims what it held.
    let rx2 = Receiver::open(&name).expect("open reuses the dead slot");
    assert_eq!(tx.free_arena_bytes(), arena as u64, "reclaimed on attach");
    drop(rx2);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn recreated_channel_after_a_crash_sends_overflow_payloads() {
    let name = common::unique_name("ch-recreate");
    let arena = 64 * KIB;
    let mut kid = Kid::spawn("create_send_die", &[&name, &arena.to_string()]);
    kid.expect("sent");
    kid.kill();
    // Everything of the crashed incarnation is still there: the channel and its queued
    // overflow payload. Remove the channel by name (as an operator would) and start afresh.
    assert!(common::shm_exists(&name));
    let leftovers = overflow_files(&name);
    assert_eq!(leftovers.len(), 1);
    shmq::Segment::remove(&name).expect("remove the dead channel");
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("re-create");
    // Overflow names carry the channel's creation time, so the new incarnation's payloads
    // never collide with the leftovers of the crashed one.
    let sent = tx.send(&pattern(2, 2 * arena));
    for f in &leftovers {
        let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
    }
    sent.expect("overflow send on a re-created channel");
    assert!(check_pattern(&rx.recv().expect("recv"), 2));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}
