//! Runs of messages: `Sender::send_many` and `Receiver::recv_many` with their `try_`,
//! `_timeout` and `_deadline` forms. A stream between two real processes checks order and
//! every byte across small (in the ring) and larger (in the arena) messages; the edges (empty
//! input, a run cut short by a full ring or by a larger message, disconnection, an appended
//! buffer) are in one process's view of the channel, as in channel_forms.rs. Deaths inside a
//! run are in crash_points.rs.

mod common;

use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError};

/// Messages of the cross-process stream.
const STREAM: u64 = 20_000;
/// Ring capacity of the stream's channel.
const STREAM_RING: usize = 16;
const SHORT: Duration = Duration::from_millis(30);

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "run_sender" => child_run_sender(&args[0]),
        other => panic!("unknown child role {other}"),
    });
}

/// Length of stream message `seq`: mostly small enough for the ring's slots (up to 96
/// bytes), every seventh one in the arena.
fn stream_len(seq: u64) -> usize {
    if seq % 7 == 3 {
        97 + (seq as usize * 37) % 8000
    } else {
        (seq % 97) as usize
    }
}

fn stream_message(seq: u64) -> Vec<u8> {
    pattern(seq, stream_len(seq))
}

/// Fills the ring with the first `STREAM_RING` messages (try_send_many, so none waits),
/// says so, then sends the rest in runs of 1 to 40 with the blocking form.
fn child_run_sender(name: &str) {
    let tx = Sender::open(name).expect("open sender");
    let messages: Vec<Vec<u8>> = (0..STREAM).map(stream_message).collect();
    let mut rest = &messages[..STREAM_RING];
    while !rest.is_empty() {
        match tx.try_send_many(rest) {
            Ok(sent) => rest = &rest[sent..],
            Err(e) => panic!("the ring has room for the first {STREAM_RING}: {e:?}"),
        }
    }
    common::signal_parent("filled");
    let mut next = STREAM_RING;
    let mut run = 1;
    while next < messages.len() {
        let end = (next + run).min(messages.len());
        let sent = tx.send_many(&messages[next..end]).expect("send_many");
        assert!(
            sent >= 1 && sent <= end - next,
            "sent {sent} of {}",
            end - next
        );
        next += sent;
        run = run % 40 + 1;
    }
}

#[test]
fn runs_cross_processes_in_order_and_byte_exact() {
    let name = common::unique_name("batch-stream");
    let (tx, rx) = shmq::channel(&name, config(STREAM_RING, 256 * KIB)).expect("create");
    drop(tx);
    let mut kid = Kid::spawn("run_sender", &[&name]);
    kid.expect("filled");
    let mut buf = Vec::new();
    // The ring is full: one run takes all of it (and whatever the sender adds meanwhile).
    let first = rx.recv_many(&mut buf, 64).expect("first run");
    assert!(first >= STREAM_RING, "one run took {first} of a full ring");
    let mut seq = 0;
    let mut max = 1;
    loop {
        for message in buf.drain(..) {
            assert_eq!(message.len(), stream_len(seq), "message {seq}: length");
            assert!(check_pattern(&message, seq), "message {seq}: bytes");
            seq += 1;
        }
        match rx.recv_many(&mut buf, max) {
            Ok(n) => assert!(n >= 1 && n <= max && n == buf.len(), "{n} of at most {max}"),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv_many after {seq}: {e}"),
        }
        max = max % 50 + 1;
    }
    assert_eq!(seq, STREAM, "messages received before the sender's end");
    kid.finish();
    drop(rx);
    assert_gone(&name);
}

#[test]
fn a_run_stops_where_the_ring_is_full_or_a_larger_message_begins() {
    let name = common::unique_name("batch-edges");
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    let small: Vec<Vec<u8>> = (0..6).map(|seq| pattern(seq, 40)).collect();
    assert_eq!(tx.send_many::<Vec<u8>>(&[]).expect("nothing"), 0);
    assert_eq!(tx.try_send_many(&small).expect("room for 4"), 4);
    let full = tx.try_send_many(&small[4..]).unwrap_err();
    assert!(full.is_full(), "{full:?}");
    let err = tx.send_many_timeout(&small[4..], SHORT).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // max 0 takes nothing; a buffer's earlier contents stay in front.
    let mut buf = vec![rx.recv().expect("first")];
    assert_eq!(rx.recv_many(&mut buf, 0).expect("nothing asked"), 0);
    assert_eq!(rx.try_recv_many(&mut buf, 2).expect("two"), 2);
    assert_eq!(buf.len(), 3);
    assert_eq!(
        rx.recv_many_deadline(&mut buf, 9, Instant::now())
            .expect("one"),
        1
    );
    for (seq, message) in buf.iter().enumerate() {
        assert!(check_pattern(message, seq as u64), "message {seq}");
    }
    buf.clear();
    assert_eq!(rx.try_recv_many(&mut buf, 9), Err(TryRecvError::Empty));
    let began = Instant::now();
    assert_eq!(
        rx.recv_many_timeout(&mut buf, 9, SHORT),
        Err(RecvTimeoutError::Timeout)
    );
    assert!(began.elapsed() >= SHORT);

    // A larger message goes alone, and ends a run of small ones before it.
    let large = pattern(100, 4 * KIB);
    let mixed = [small[0].clone(), large.clone(), small[1].clone()];
    assert_eq!(tx.send_many(&mixed).expect("the small one"), 1);
    assert_eq!(tx.send_many(&mixed[1..]).expect("the large one"), 1);
    assert_eq!(tx.send_many(&mixed[2..]).expect("the last"), 1);
    assert_eq!(rx.recv_many(&mut buf, 9).expect("three"), 3);
    assert_eq!(&buf[1][..], &large[..]);
    assert!(check_pattern(&buf[2], 1));
    buf.clear();

    // Once every sender is gone, what is queued is still delivered, then Disconnected.
    tx.send_many(&small[..2]).expect("two");
    drop(tx);
    assert_eq!(rx.recv_many(&mut buf, 9).expect("queued"), 2);
    assert_eq!(rx.recv_many(&mut buf, 9), Err(RecvError::Disconnected));
    assert_eq!(
        rx.try_recv_many(&mut buf, 9),
        Err(TryRecvError::Disconnected)
    );
    drop(buf);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn a_run_to_a_receiver_gone_is_refused() {
    let name = common::unique_name("batch-gone");
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    drop(rx);
    let err = tx.send_many(&[b"x".as_slice()]).unwrap_err();
    assert!(matches!(err, shmq::SendError::Disconnected(())), "{err:?}");
    drop(tx);
    assert_gone(&name);
    let _ = Receiver::open(&name).unwrap_err();
}
