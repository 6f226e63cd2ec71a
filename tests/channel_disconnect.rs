//! Disconnection: the last sender or receiver gone (dropped, exited, or killed with SIGKILL)
//! ends blocked and later calls on the other side with `Disconnected`, after the receiver has
//! drained what was queued.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Receiver, RecvError, SendError, Sender};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "recv_exit" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent("attached");
            thread::sleep(Duration::from_millis(300));
            drop(rx);
        }
        "send_exit" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            common::signal_parent("attached");
            for i in 0..n {
                tx.send(&pattern(i as u64, mixed_len(i))).expect("send");
            }
        }
        "attach_and_sleep" => {
            // Attaches as `args[1]` and waits to be killed.
            let _tx;
            let _rx;
            match args[1].as_str() {
                "sender" => _tx = Sender::open(&args[0]).expect("open sender"),
                _ => _rx = Receiver::open(&args[0]).expect("open receiver"),
            }
            common::signal_parent("attached");
            sleep_until_killed();
        }
        other => panic!("unknown child role {other}"),
    });
}

/// Sizes for the disconnection tests: inline, arena.
fn mixed_len(i: usize) -> usize {
    [0, 1, 96, 97, 4096, 10_000][i % 6]
}

#[test]
fn disconnection_in_one_process() {
    let name = common::unique_name("ch-disc");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    tx.send(b"kept").expect("send");
    tx.send(&[5; 5000]).expect("send");
    drop(tx);
    assert_eq!(&rx.recv().expect("drained first")[..], b"kept");
    assert_eq!(rx.try_recv().expect("drained second").len(), 5000);
    assert!(rx.try_recv().unwrap_err().is_disconnected());
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert!(rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_err()
        .is_disconnected());
    assert_eq!(rx.iter().count(), 0);
    let tx = Sender::open(&name).expect("a new sender reconnects");
    drop(rx);
    assert!(tx.try_send(b"x").unwrap_err().is_disconnected());
    assert!(tx.send(b"x").unwrap_err().is_disconnected());
    assert!(tx.send(&[1; 5000]).unwrap_err().is_disconnected());
    assert!(tx
        .send_timeout(b"x", Duration::from_secs(5))
        .unwrap_err()
        .is_disconnected());
    assert!(tx.loan(10).unwrap_err().is_disconnected());
    drop(tx);
    assert_gone(&name);
}

#[test]
fn receiver_process_exits_while_send_is_blocked() {
    let name = common::unique_name("ch-rx-exit");
    let (tx, rx) = shmq::channel(&name, config(2, MIB)).expect("create");
    tx.send(b"1").expect("send");
    tx.send(b"2").expect("send");
    let mut kid = Kid::spawn("recv_exit", &[&name]);
    kid.expect("attached");
    drop(rx);
    let result = in_thread(move || {
        let r = tx.send(b"3");
        (r, tx)
    });
    kid.finish();
    let ((sent, tx), _) = result.recv_timeout(HANG).expect("send still blocked");
    assert!(
        matches!(sent, Err(SendError::Disconnected(_))),
        "blocked send after the receiver exited: {sent:?}"
    );
    drop(tx);
    assert_gone(&name);
}

#[test]
fn sender_process_exits_receiver_drains_then_disconnects() {
    let name = common::unique_name("ch-tx-exit");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let n = 30; // more than the capacity: the child blocks until the parent receives
    let mut kid = Kid::spawn("send_exit", &[&name, &n.to_string()]);
    kid.expect("attached");
    drop(tx);
    let mut count = 0;
    for (i, msg) in rx.iter().enumerate() {
        assert_eq!(msg.len(), mixed_len(i));
        assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
        count += 1;
    }
    assert_eq!(count, n, "iter ends at Disconnected after draining");
    kid.finish();
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert_eq!(rx.free_arena_bytes(), MIB as u64);
    drop(rx);
    assert_gone(&name);

    // Same, with the parent receiving only after the child has exited.
    let name = common::unique_name("ch-tx-exit2");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    let mut kid = Kid::spawn("send_exit", &[&name, "8"]);
    kid.expect("attached");
    drop(tx);
    kid.finish();
    for i in 0..8 {
        let msg = rx
            .recv()
            .expect("messages of an exited sender are delivered");
        assert!(check_pattern(&msg, i), "message {i} corrupted");
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_sender_wakes_blocked_recv() {
    let name = common::unique_name("ch-kill-tx");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let mut kid = Kid::spawn("attach_and_sleep", &[&name, "sender"]);
    kid.expect("attached");
    drop(tx);
    let result = in_thread(move || {
        let r = rx.recv().map(|m| m.len());
        (r, rx)
    });
    thread::sleep(Duration::from_millis(100)); // let it block
    assert!(
        result.try_recv().is_err(),
        "recv returned while a sender was alive"
    );
    let killed = Instant::now();
    kid.kill();
    let ((got, rx), returned) = result.recv_timeout(HANG).expect("recv still blocked");
    eprintln!(
        "recv noticed the killed sender after {:?}",
        returned.saturating_duration_since(killed)
    );
    assert!(matches!(got, Err(RecvError::Disconnected)), "{got:?}");
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_receiver_wakes_blocked_send() {
    let name = common::unique_name("ch-kill-rx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let mut kid = Kid::spawn("attach_and_sleep", &[&name, "receiver"]);
    kid.expect("attached");
    drop(rx);
    while tx.try_send(&[9; 5000]).is_ok() {}
    assert!(tx.is_full());
    let result = in_thread(move || {
        let r = tx.send(&[3; 5000]);
        (r, tx)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        result.try_recv().is_err(),
        "send returned while the ring was full"
    );
    let killed = Instant::now();
    kid.kill();
    let ((sent, tx), returned) = result.recv_timeout(HANG).expect("send still blocked");
    eprintln!(
        "send noticed the killed receiver after {:?}",
        returned.saturating_duration_since(killed)
    );
    assert!(matches!(sent, Err(SendError::Disconnected(_))), "{sent:?}");
    // The failed send gave its chunk back; the queued ones are still there.
    assert_eq!(tx.free_arena_bytes(), arena as u64 - 4 * 2 * PAGE);
    drop(tx);
    assert_gone(&name);
}
