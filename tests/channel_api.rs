//! The channel API in one process: bad configurations, names and segments that are not
//! channels, zero-length messages and loans, dropped loans, typed slices, and handles that are
//! `Clone + Send + Sync` and work from many threads.

mod common;

use std::thread;
use std::time::Duration;

use common::channel::*;
use shmq::{ChannelConfig, Error, Receiver, SendError, Sender};

// ----- bad input ---------------------------------------------------------------------------

#[test]
fn bad_configuration_is_invalid_argument() {
    let name = common::unique_name("ch-bad-cfg");
    for cfg in [
        config(0, MIB),
        config((1 << 24) + 1, MIB),
        ChannelConfig::default()
            .with_arena_bytes(MIB)
            .with_max_participants(0),
        ChannelConfig::default()
            .with_arena_bytes(MIB)
            .with_max_participants(100_000),
    ] {
        let err = shmq::channel(&name, cfg.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{cfg:?}: {err:?}"
        );
        assert!(!common::shm_exists(&name), "{cfg:?} left a segment");
    }
    // A zero-byte arena is valid: every payload above 96 bytes goes through overflow.
    let (tx, rx) = shmq::channel(&name, config(1, 0)).expect("create without arena");
    tx.send(&pattern(1, 200)).expect("send");
    assert!(check_pattern(&rx.recv().expect("recv"), 1));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn opening_what_is_not_there_or_not_a_channel() {
    let name = common::unique_name("ch-bad-open");
    assert!(matches!(Sender::open(&name), Err(Error::NotFound { .. })));
    assert!(matches!(Receiver::open(&name), Err(Error::NotFound { .. })));

    let seg = shmq::Segment::create(&name, 4096).expect("raw segment");
    for err in [
        Receiver::open(&name).unwrap_err(),
        Sender::open(&name).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::Incompatible { what: "kind", .. }),
            "opening a raw segment as a channel: {err:?}"
        );
    }
    drop(seg);
    assert_gone(&name);

    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let err = shmq::channel(&name, config(4, MIB)).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let err = shmq::Segment::open(&name).unwrap_err();
    assert!(
        matches!(err, Error::Incompatible { what: "kind", .. }),
        "{err:?}"
    );
    // The first channel is untouched by the failed attempts.
    tx.send(b"still works").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"still works");
    drop(tx);
    drop(rx);
    assert_gone(&name);
    assert!(matches!(Sender::open(&name), Err(Error::NotFound { .. })));
}

#[test]
fn invalid_names() {
    let too_long = "n".repeat(shmq::MAX_NAME_LEN + 1);
    for bad in [
        "",
        "a/b",
        "../x",
        "with space",
        "tab\t",
        "ü",
        "a~1",
        &too_long,
    ] {
        let err = shmq::channel(bad, config(4, MIB)).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
        let err = Sender::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
        let err = Receiver::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
    }
}

#[test]
fn longest_name_carries_overflow_payloads() {
    let prefix = common::unique_name("ch-long");
    let name = format!("{prefix}{}", "x".repeat(shmq::MAX_NAME_LEN - prefix.len()));
    assert_eq!(name.len(), shmq::MAX_NAME_LEN);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    tx.send(&pattern(1, MIB)).expect("send overflow");
    assert!(check_pattern(&rx.recv().expect("recv"), 1));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- zero length and loans ------------------------------------------------------------------

#[test]
fn zero_length_messages() {
    let name = common::unique_name("ch-zero");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    tx.send(&[]).expect("send empty");
    let loan = tx.loan(0).expect("loan 0");
    assert!(loan.is_empty());
    loan.send().expect("send empty loan");
    tx.send_slice::<f32>(&[]).expect("send empty slice");
    for _ in 0..3 {
        let msg = rx.try_recv().expect("empty message");
        assert!(msg.is_empty());
        assert!(msg.to_vec().is_empty());
        assert_eq!(msg.as_slice::<u64>().expect("empty slice").len(), 0);
    }
    assert!(rx.try_recv().unwrap_err().is_empty());
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

/// Chunks given back without the lock come back to the allocator: by their hints, or, when more
/// returns came between two allocations than the hints hold (256), by a walk of the arena when
/// an allocation finds no room. Either way the whole arena is one loan's again.
#[test]
fn chunks_given_back_are_reused_even_past_the_return_hints() {
    for messages in [3u64, 300] {
        let name = common::unique_name("ch-returns");
        let page = PAGE as usize;
        let arena = 400 * page;
        let (tx, rx) = shmq::channel(&name, config(512, arena)).expect("create");
        for seq in 0..messages {
            let mut bytes = vec![0u8; page];
            fill_pattern(&mut bytes, seq);
            tx.try_send(&bytes).expect("queue");
        }
        let held: Vec<_> = (0..messages)
            .map(|_| rx.try_recv().expect("receive"))
            .collect();
        assert_eq!(
            rx.free_arena_bytes(),
            (400 - messages) * PAGE,
            "{messages} held"
        );
        drop(held); // every return with no allocation between them
        assert_eq!(rx.free_arena_bytes(), arena as u64, "{messages} returned");
        let mut whole = tx.try_loan(arena).expect("loan the whole arena");
        whole.fill(1);
        assert_eq!(tx.free_arena_bytes(), 0);
        drop(whole);
        assert_eq!(tx.free_arena_bytes(), arena as u64);
        drop((tx, rx));
        assert_gone(&name);
    }
}

#[test]
fn dropped_loan_gives_memory_back() {
    let name = common::unique_name("ch-loan-drop");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let mut loan = tx.loan(10 * KIB).expect("loan");
    loan.fill(1);
    assert_eq!(tx.free_arena_bytes(), (arena - 12 * KIB) as u64);
    drop(loan);
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    let mut whole = tx.try_loan(arena).expect("loan the whole arena");
    whole.fill(2);
    assert_eq!(tx.free_arena_bytes(), 0);
    drop(whole);
    let overflow = tx.loan(arena + 1).expect("overflow loan");
    assert_eq!(overflow_files(&name).len(), 1);
    drop(overflow);
    assert!(
        overflow_files(&name).is_empty(),
        "dropped overflow loan unlinked"
    );
    assert!(
        rx.try_recv().unwrap_err().is_empty(),
        "a dropped loan was delivered"
    );
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    assert_eq!(tx.len(), 0);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn zero_length_loan_without_arena() {
    let name = common::unique_name("ch-zero-arena");
    let (tx, rx) = shmq::channel(&name, config(4, 0)).expect("create");
    tx.send(&[]).expect("empty inline");
    // A zero-length loan needs no arena page: it must not wait for an arena that has none.
    let loan = tx
        .loan_timeout(0, Duration::from_secs(1))
        .expect("a zero-length loan on a channel without arena");
    loan.send().expect("send");
    assert!(rx.recv().expect("recv").is_empty());
    assert!(rx.recv().expect("recv").is_empty());
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

/// A `Pod` type aligned beyond a page cannot be lent: payloads are only 4096-byte aligned.
#[test]
fn loan_slice_refuses_types_aligned_beyond_a_page() {
    #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
    #[repr(C, align(8192))]
    struct Huge([u64; 1024]);
    let name = common::unique_name("overaligned");
    let (tx, rx) =
        shmq::channel(&name, ChannelConfig::default().with_arena_bytes(1 << 20)).unwrap();
    let refused = tx.loan_slice::<Huge>(1);
    assert!(matches!(
        refused,
        Err(SendError::Failed(shmq::Error::InvalidArgument { .. }, _))
    ));
    assert_eq!(tx.free_arena_bytes(), 1 << 20);
    drop((tx, rx));
    assert!(!common::shm_exists(&name));
}

// ----- typed slices and threads -------------------------------------------------------------

#[test]
fn typed_slices_round_trip() {
    let name = common::unique_name("ch-slice");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    let values: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.25 - 7.0).collect();
    tx.send_slice(&values).expect("send_slice");
    let mut loan = tx.loan_slice::<f32>(3).expect("loan_slice");
    loan.copy_from_slice(&[1.5, -2.0, f32::MAX]);
    loan.send().expect("send");
    let mut tiny = tx.loan_slice::<f32>(20).expect("inline-sized loan_slice");
    for (i, x) in tiny.iter_mut().enumerate() {
        *x = i as f32;
    }
    tiny.into_bytes().send().expect("send");
    tx.send_slice(&[1u32, 2, 3]).expect("12 bytes");

    let msg = rx.recv().expect("recv");
    assert_eq!(msg.as_slice::<f32>().expect("f32 view"), &values[..]);
    drop(msg);
    let msg = rx.recv().expect("recv");
    assert_eq!(
        msg.as_slice::<f32>().expect("f32 view"),
        &[1.5, -2.0, f32::MAX]
    );
    drop(msg);
    let msg = rx.recv().expect("recv");
    let expected: Vec<f32> = (0..20).map(|i| i as f32).collect();
    assert_eq!(msg.as_slice::<f32>().expect("f32 view"), &expected[..]);
    drop(msg);
    let msg = rx.recv().expect("recv");
    assert_eq!(msg.len(), 12);
    assert!(msg.as_slice::<u64>().is_err(), "12 bytes are not u64s");
    assert_eq!(msg.as_slice::<u32>().expect("u32 view"), &[1, 2, 3]);
    assert_eq!(msg.to_vec(), bytemuck::cast_slice::<u32, u8>(&[1, 2, 3]));
    assert_eq!(msg.as_ref(), &msg[..]);
    drop(msg);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn handles_are_clone_send_sync_and_work_from_threads() {
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    fn send_sync<T: Send + Sync>() {}
    clone_send_sync::<Sender>();
    clone_send_sync::<Receiver>();
    send_sync::<shmq::Message>();
    send_sync::<shmq::Loan>();

    let name = common::unique_name("ch-threads");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    assert_eq!(tx.name(), name);
    let per_thread = 500u64;
    let senders: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for seq in 0..per_thread {
                    let len = [8, 96, 200, 5000, 20_000][(seq % 5) as usize];
                    let mut payload = pattern(t << 32 | seq, len);
                    payload[..8].copy_from_slice(&(t << 32 | seq).to_le_bytes());
                    if seq % 3 == 0 {
                        let mut loan = tx.loan(len).expect("loan");
                        loan.copy_from_slice(&payload);
                        loan.send().expect("send loan");
                    } else {
                        tx.send(&payload).expect("send");
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for msg in rx.iter() {
                    let id = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
                    let mut expected = pattern(id, msg.len());
                    expected[..8].copy_from_slice(&id.to_le_bytes());
                    assert!(msg[..] == expected[..], "payload {id:#x} corrupted");
                    got.push(id);
                }
                got
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread");
    }
    let mut all: Vec<u64> = receivers
        .into_iter()
        .flat_map(|r| r.join().expect("receiver thread"))
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (0..4u64)
        .flat_map(|t| (0..per_thread).map(move |s| t << 32 | s))
        .collect();
    assert_eq!(all, expected, "every message exactly once");
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(rx);
    assert_gone(&name);
}

// ----- figures from the handles ---------------------------------------------------------------

#[test]
fn stats_from_either_handle_follow_sends_and_receives() {
    let name = common::unique_name("ch-stats");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    assert!(tx.disconnects() && rx.disconnects());
    let fresh = tx.stats();
    assert_eq!(fresh.capacity, 8);
    assert_eq!(fresh.arena_bytes, MIB as u64);
    assert_eq!(fresh.arena_free_bytes, MIB as u64);
    assert_eq!(
        (fresh.queued, fresh.sent_total, fresh.done_total),
        (0, 0, 0)
    );

    tx.send(&[1; 10]).expect("inline");
    tx.send(&[2; 5000]).expect("two pages");
    tx.send(&[3; 5000]).expect("two pages");
    tx.send(&pattern(4, 3 * MIB)).expect("an overflow payload");
    let s = rx.stats();
    assert_eq!(s, tx.stats(), "both handles see the same channel");
    assert_eq!((s.queued, s.sent_total, s.done_total), (4, 4, 0));
    assert_eq!(s.messages_in_flight, 4);
    assert_eq!(s.overflow_payloads, 1);
    assert_eq!(s.arena_free_bytes, MIB as u64 - 4 * PAGE);
    assert_eq!(s.bytes_in_flight, 4 * PAGE + 3 * MIB as u64);

    let inline = rx.recv().expect("recv");
    let arena = rx.recv().expect("recv");
    let s = tx.stats();
    // Received and held: no longer queued, still in flight.
    assert_eq!((s.queued, s.sent_total, s.done_total), (2, 4, 0));
    assert_eq!(s.messages_in_flight, 4);
    assert_eq!(s.arena_free_bytes, MIB as u64 - 4 * PAGE);
    drop(inline);
    drop(arena);
    let s = tx.stats();
    assert_eq!((s.queued, s.done_total, s.messages_in_flight), (2, 2, 2));
    assert_eq!(s.arena_free_bytes, MIB as u64 - 2 * PAGE);
    drop(rx.recv().expect("recv"));
    drop(rx.recv().expect("recv"));
    let s = rx.stats();
    assert_eq!((s.queued, s.sent_total, s.done_total), (0, 4, 4));
    assert_eq!((s.messages_in_flight, s.bytes_in_flight), (0, 0));
    assert_eq!(s.overflow_payloads, 0);
    assert_eq!(s.arena_free_bytes, MIB as u64);
    assert_eq!(s.corrupt_skipped, 0);
    assert_eq!(s.allocator_lock_holder, None);
    drop((tx, rx));
    assert_gone(&name);
}
