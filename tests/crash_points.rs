//! Deaths at every step of the lock-free ring: a sender or a receiver kills itself (SIGKILL,
//! through the `crash-points` feature and `SHMQ_CRASH_AT`) right after each step of a send or a
//! take, for each kind of payload (inline, arena chunk, overflow segment), and the survivor
//! checks what the tables of src/channel/ring.rs promise:
//!
//! - a sender that dies before marking its slot written loses that message; one that dies
//!   after delivers it; every message before it arrives once, intact and in order;
//! - a receiver that dies mid-take loses that message alone; the next receiver gets the rest;
//! - afterwards the ring keeps working for several laps past the slot, the arena is whole
//!   again, nothing counts as in flight, and nothing is left in /dev/shm.
//!
//! Run with `cargo test --features crash-points --test crash_points` (./run-tests does).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::channel::{
    assert_gone, check_pattern, fill_pattern, lowest_free_descriptor, set_descriptor_limit, KIB,
};
use common::{child_dispatch, spawn_child_with_env, unique_name, wait_exit};
use shmq::{channel, ChannelConfig, Receiver, RecvTimeoutError, Sender};

/// Ring capacity of the trials' channels: room for every message a trial sends.
const CAPACITY: usize = 32;
/// Arena of the trials' channels; overflow payloads are larger.
const ARENA: usize = 256 * KIB;
/// Bound for the send of a message as long as the arena after a death: all the room is free
/// by then, or the send times out.
const WHOLE_ARENA_BOUND: Duration = Duration::from_secs(5);
/// Messages a receiver trial queues before its receiver starts.
const QUEUED: u64 = 12;
/// Bound for one wait of a trial (a death, a message): turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(30);

/// The steps of a send, in order, whether a death there still delivers the message, and
/// whether inline payloads pass there (they are never marked written: no room to hand over).
const SEND_POINTS: [(&str, bool, bool); 4] = [
    ("send-claimed", false, true),
    ("send-described", false, true),
    ("send-written", true, false),
    ("send-handed", true, false),
];
/// The steps of a take, in order (the message being taken is lost with its receiver).
const TAKE_POINTS: [&str; 3] = ["take-claimed", "take-owned", "take-counted"];

/// Payload kinds: inline in the slot, an arena chunk, an overflow segment.
const SIZES: [(&str, usize); 3] = [("inline", 64), ("arena", 8 * KIB), ("overflow", 320 * KIB)];

#[test]
#[ignore = "entry point of child processes; run by the tests in this file"]
fn child_entry() {
    child_dispatch(|role, args| {
        let (name, size) = (&args[0], args[1].parse::<usize>().expect("size"));
        match role {
            "sender" => {
                let tx = Sender::open(name).expect("open sender");
                common::signal_parent("ready");
                for seq in 0..CAPACITY as u64 {
                    let mut bytes = vec![0; size];
                    fill_pattern(&mut bytes, seq);
                    tx.send(&bytes).expect("send");
                }
            }
            "receiver" => {
                let rx = Receiver::open(name).expect("open receiver");
                for seq in 0..QUEUED {
                    let message = rx.recv_timeout(BOUND).expect("recv");
                    assert!(check_pattern(&message, seq), "message {seq} corrupted");
                }
            }
            "run_sender" => {
                // Runs of 5 (send_many goes on with what is left when a run is cut short).
                let tx = Sender::open(name).expect("open sender");
                common::signal_parent("ready");
                let messages: Vec<Vec<u8>> = (0..CAPACITY as u64)
                    .map(|seq| {
                        let mut bytes = vec![0; size];
                        fill_pattern(&mut bytes, seq);
                        bytes
                    })
                    .collect();
                for run in messages.chunks(5) {
                    let mut rest = run;
                    while !rest.is_empty() {
                        rest = &rest[tx.send_many(rest).expect("send_many")..];
                    }
                }
            }
            "put_back_receiver" => {
                // No descriptor left for opening the first (overflow) payload: the take is put
                // back, and the crash point kills the receiver right after that.
                let rx = Receiver::open(name).expect("open receiver");
                set_descriptor_limit(lowest_free_descriptor());
                let _ = rx.try_recv();
            }
            "run_receiver" => {
                // One run takes every queued message, and holds them all while it does.
                let rx = Receiver::open(name).expect("open receiver");
                let mut run = Vec::new();
                while run.len() < QUEUED as usize {
                    rx.recv_many_timeout(&mut run, QUEUED as usize, BOUND)
                        .expect("recv_many");
                }
                for (seq, message) in run.iter().enumerate() {
                    assert!(
                        check_pattern(message, seq as u64),
                        "message {seq} corrupted"
                    );
                }
            }
            "take_back_sender" => {
                // Sends to its own receiver and drops each message before the next send, so
                // that every send after the first takes back the chunk the drop gave back.
                let tx = Sender::open(name).expect("open sender");
                let rx = tx.open_receiver().expect("open receiver");
                for seq in 0..CAPACITY as u64 {
                    let mut bytes = vec![0; size];
                    fill_pattern(&mut bytes, seq);
                    tx.send(&bytes).expect("send");
                    let message = rx.recv_timeout(BOUND).expect("recv");
                    assert!(check_pattern(&message, seq), "message {seq} corrupted");
                }
            }
            "freeing_sender" => {
                // Gives back a chunk of `size` bytes, then sends a page more: no returned chunk
                // has that length, so the allocation takes the lock and frees the returned
                // one first (where the crash point kills it, holding the lock).
                let tx = Sender::open(name).expect("open sender");
                let rx = tx.open_receiver().expect("open receiver");
                let mut bytes = vec![0; size];
                fill_pattern(&mut bytes, 0);
                tx.send(&bytes).expect("send");
                drop(rx.recv_timeout(BOUND).expect("recv"));
                let mut longer = vec![0; size + 4 * KIB];
                fill_pattern(&mut longer, 1);
                tx.send(&longer).expect("send a longer message");
            }
            other => panic!("unknown role {other}"),
        }
        // Reaching here means the crash point was never passed: the parent fails the trial.
    });
}

fn config() -> ChannelConfig {
    ChannelConfig::default()
        .with_capacity(CAPACITY)
        .with_arena_bytes(ARENA)
}

/// Runs the child `role` on channel `name` with its death armed at pass `pass` of `point`,
/// and waits for it to die of it.
fn run_until_death(role: &str, name: &str, size: usize, point: &str, pass: u64) {
    let armed = format!("{point}#{pass}");
    let mut child = spawn_child_with_env(
        role,
        &[name, &size.to_string()],
        &[("SHMQ_CRASH_AT", &armed)],
    );
    let status = wait_exit(&mut child, BOUND);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{role} armed at {armed} was not killed there: {status}"
    );
}

/// Receives until the channel reports no sender (or `BOUND` passes, a failure), checking each
/// message; returns the sequence numbers in the order received.
fn receive_all(rx: &Receiver, size: usize, first: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(BOUND) {
            Ok(message) => {
                let seq = first + got.len() as u64;
                assert_eq!(message.len(), size, "message {seq}: length");
                assert!(
                    check_pattern(&message, seq),
                    "message {seq}: corrupted or out of order"
                );
                got.push(seq);
            }
            Err(RecvTimeoutError::Disconnected) => return got,
            Err(e) => panic!("receive after {} messages: {e:?}", got.len()),
        }
    }
}

/// The ring still works for three laps past wherever the death left it, and then nothing is
/// in flight and the arena is whole.
fn check_ring_recovered(name: &str, rx: &Receiver, size: usize, what: &str) {
    let tx = Sender::open(name).expect("open a fresh sender");
    for seq in 0..3 * CAPACITY as u64 {
        let mut bytes = vec![0; size];
        fill_pattern(&mut bytes, 1000 + seq);
        tx.send_timeout(&bytes, BOUND)
            .unwrap_or_else(|e| panic!("{what}: send {seq} after the death: {e:?}"));
        let message = rx
            .recv_timeout(BOUND)
            .unwrap_or_else(|e| panic!("{what}: receive {seq} after the death: {e:?}"));
        assert!(
            check_pattern(&message, 1000 + seq),
            "{what}: message {seq} corrupted"
        );
    }
    // One message as long as the arena needs every page of it free and in one run: room
    // counted as free but never freed (a returned chunk nobody frees) fails here.
    let mut whole = vec![0; ARENA];
    fill_pattern(&mut whole, 7);
    tx.send_timeout(&whole, WHOLE_ARENA_BOUND)
        .unwrap_or_else(|e| panic!("{what}: an arena-long send after the death: {e:?}"));
    let message = rx
        .recv_timeout(BOUND)
        .unwrap_or_else(|e| panic!("{what}: the arena-long receive: {e:?}"));
    assert!(check_pattern(&message, 7), "{what}: arena-long message");
    drop(message);
    let stats = rx.stats();
    assert_eq!(stats.messages_in_flight, 0, "{what}: {stats:?}");
    assert_eq!(stats.queued, 0, "{what}: {stats:?}");
    assert_eq!(
        stats.arena_free_bytes, stats.arena_bytes,
        "{what}: {stats:?}"
    );
    assert_eq!(stats.overflow_payloads, 0, "{what}: {stats:?}");
    assert_eq!(stats.corrupt_skipped, 0, "{what}: {stats:?}");
}

/// Queues `QUEUED` messages of `size` bytes, runs a receiver armed to die at pass `pass` of
/// `point`, and checks that another receiver then gets messages `pass..QUEUED` (the dead one
/// had `pass` of them, the last lost or delivered with it) and that the ring recovers.
fn kill_a_receiver_of_queued_messages(
    role: &str,
    prefix: &str,
    size: usize,
    point: &str,
    pass: u64,
    what: &str,
) {
    let name = unique_name(prefix);
    let (tx, rx) = channel(&name, config()).expect("create channel");
    for seq in 0..QUEUED {
        let mut bytes = vec![0; size];
        fill_pattern(&mut bytes, seq);
        tx.send(&bytes).expect("queue");
    }
    run_until_death(role, &name, size, point, pass);
    drop(tx);
    let got = receive_all(&rx, size, pass);
    assert_eq!(
        got,
        (pass..QUEUED).collect::<Vec<_>>(),
        "{what}: received {got:?}"
    );
    check_ring_recovered(&name, &rx, size, what);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn a_sender_killed_at_each_step_loses_at_most_its_message() {
    for (point, delivered, inline_passes) in SEND_POINTS {
        for (kind, size) in SIZES {
            if kind == "inline" && !inline_passes {
                continue;
            }
            for pass in [1, 3] {
                let what = format!("sender killed at {point}#{pass}, {kind} payloads");
                kill_a_sender("sender", size, point, pass, delivered, &what);
            }
        }
    }
}

#[test]
fn a_sender_killed_inside_a_run_of_sends_loses_at_most_its_message() {
    // send_many puts small messages in one pass over the ring; its steps are the inline ones.
    for (point, delivered, inline_passes) in SEND_POINTS {
        if !inline_passes {
            continue;
        }
        for pass in [1, 3, 5, 7] {
            let what = format!("sender killed at {point}#{pass} inside send_many");
            kill_a_sender("run_sender", 64, point, pass, delivered, &what);
        }
    }
}

#[test]
fn a_receiver_killed_inside_a_run_of_takes_loses_only_what_it_took() {
    // The dead one held the `pass - 1` messages its run took before (lost with it; their
    // rooms are reclaimed) and lost the one it was taking; the rest stay queued.
    for point in TAKE_POINTS {
        for (kind, size) in SIZES {
            for pass in [1, 4] {
                let what = format!("receiver killed at {point}#{pass} inside recv_many, {kind}");
                kill_a_receiver_of_queued_messages(
                    "run_receiver",
                    "cp-run",
                    size,
                    point,
                    pass,
                    &what,
                );
            }
        }
    }
}

#[test]
fn a_receiver_killed_putting_a_take_back_leaves_the_message_queued() {
    // A take whose overflow payload cannot be opened now (no descriptor left) is put back
    // in the ring; the receiver dies right after. The next receiver gets every message, in
    // order, the put-back one first.
    let size = 320 * KIB;
    let name = unique_name("cp-put-back");
    let (tx, rx) = channel(&name, config()).expect("create channel");
    for seq in 0..3 {
        let mut bytes = vec![0; size];
        fill_pattern(&mut bytes, seq);
        tx.send(&bytes).expect("queue");
    }
    run_until_death("put_back_receiver", &name, size, "take-put-back", 1);
    drop(tx);
    let got = receive_all(&rx, size, 0);
    assert_eq!(got, vec![0, 1, 2], "received {got:?}");
    check_ring_recovered(&name, &rx, size, "receiver killed at take-put-back#1");
    drop(rx);
    assert_gone(&name);
}

/// Runs the sender child `role` (the only sender) armed to die at pass `pass` of `point`, and
/// checks that the `pass - 1` messages before are delivered, the armed one only if
/// `delivered` (where the tables of ring.rs say), and that the ring recovers.
fn kill_a_sender(role: &str, size: usize, point: &str, pass: u64, delivered: bool, what: &str) {
    let name = unique_name("cp-send");
    let (tx, rx) = channel(&name, config()).expect("create channel");
    drop(tx); // the child is the only sender: its death disconnects
    run_until_death(role, &name, size, point, pass);
    let got = receive_all(&rx, size, 0);
    let expected = pass - 1 + u64::from(delivered);
    assert_eq!(got.len() as u64, expected, "{what}: received {got:?}");
    check_ring_recovered(&name, &rx, size, what);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn a_receiver_killed_at_each_step_loses_only_the_message_it_was_taking() {
    for point in TAKE_POINTS {
        for (kind, size) in SIZES {
            for pass in [1, 4] {
                // The dead one finished `pass - 1` messages and lost the one it was taking.
                let what = format!("receiver killed at {point}#{pass}, {kind} payloads");
                kill_a_receiver_of_queued_messages("receiver", "cp-take", size, point, pass, &what);
            }
        }
    }
}

/// A receiver killed while giving back an arena chunk without the lock (after marking it
/// returned, before counting the return): every message it received was delivered whole, the
/// next receiver gets the rest, and the chunk is freed (by the sweep of the dead receiver, or
/// by the allocator that next runs out of room), so the arena is whole again.
#[test]
fn a_receiver_killed_giving_back_a_chunk_leaves_the_arena_whole() {
    let (_, size) = SIZES[1];
    for pass in [1, 4] {
        // The dead one checked `pass` messages and died giving back the last one's chunk.
        let what = format!("receiver killed at return-marked#{pass}");
        kill_a_receiver_of_queued_messages(
            "receiver",
            "cp-return",
            size,
            "return-marked",
            pass,
            &what,
        );
    }
}

/// A sender killed right after taking back, without the allocator lock, a chunk a receiver
/// gave back (its owner word CASed from returned to the sender): the chunk is the dead
/// sender's, and its reclaim frees it. Every message before was delivered whole, and the arena
/// is whole again.
#[test]
fn a_sender_killed_taking_back_a_chunk_leaves_the_arena_whole() {
    let (_, size) = SIZES[1];
    for pass in [1, 3] {
        let what = format!("sender killed at take-back-claimed#{pass}");
        let name = unique_name("cp-take-back");
        let (tx, rx) = channel(&name, config()).expect("create channel");
        drop(tx); // the child is the only sender: its death disconnects
        run_until_death("take_back_sender", &name, size, "take-back-claimed", pass);
        // The child received what it sent; the message it was sending never went out.
        let got = receive_all(&rx, size, 0);
        assert!(got.is_empty(), "{what}: received {got:?}");
        check_ring_recovered(&name, &rx, size, &what);
        drop(rx);
        assert_gone(&name);
    }
}

/// The allocator lock's holder killed after marking a returned chunk `FREEING`, before its
/// free committed: the next holder gets the lock with its owner dead, and the chunk is freed
/// again (by the dead participant's sweep, which walks every chunk), so the arena is whole.
#[test]
fn a_lock_holder_killed_freeing_a_returned_chunk_leaves_the_arena_whole() {
    let (_, size) = SIZES[1];
    let what = "sender killed at return-freeing#1";
    let name = unique_name("cp-freeing");
    let (tx, rx) = channel(&name, config()).expect("create channel");
    drop(tx);
    run_until_death("freeing_sender", &name, size, "return-freeing", 1);
    let got = receive_all(&rx, size, 0);
    assert!(got.is_empty(), "{what}: received {got:?}");
    check_ring_recovered(&name, &rx, size, what);
    drop(rx);
    assert_gone(&name);
}
