//! The crossbeam-style surface of the channel API: `_deadline` forms, `try_`/`_timeout` forms
//! of every blocking call, errors that give back what was handed in and say which limit was
//! reached, conversions between error types, and the receiver's iterators.
//!
//! The semantics tested here live in one process's view of the channel; what crosses process
//! boundaries (blocking, waking, killed peers) is tested in the other channel_* files.

mod common;

use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{
    ChannelConfig, Exhausted, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    Sender, TryRecvError, TrySendError,
};

const SHORT: Duration = Duration::from_millis(30);

#[test]
fn config_getters_read_back_the_builder() {
    let config = ChannelConfig::default()
        .with_capacity(7)
        .with_arena_bytes(3 * MIB)
        .with_max_participants(9);
    assert_eq!(config.capacity(), 7);
    assert_eq!(config.arena_bytes(), 3 * MIB);
    assert_eq!(config.max_participants(), 9);
}

#[test]
fn deadline_forms_return_by_their_deadline() {
    let name = common::unique_name("forms-deadline");
    let (tx, rx) = shmq::channel(&name, config(1, 64 * KIB)).expect("create");
    // Empty: recv_deadline waits until the deadline, not past it by much.
    let deadline = Instant::now() + SHORT;
    let err = rx.recv_deadline(deadline).unwrap_err();
    assert_eq!(err, RecvTimeoutError::Timeout);
    assert!(Instant::now() >= deadline && Instant::now() < deadline + HANG);
    // A deadline already past is one attempt.
    tx.send_deadline(b"one", Instant::now())
        .expect("room for one");
    let err = tx.send_deadline(b"two", Instant::now()).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let deadline = Instant::now() + SHORT;
    assert!(tx.send_deadline(b"two", deadline).unwrap_err().is_timeout());
    assert!(Instant::now() >= deadline);
    assert_eq!(
        &rx.recv_deadline(Instant::now()).expect("queued")[..],
        b"one"
    );
}

#[test]
fn full_says_which_limit_was_reached() {
    let name = common::unique_name("forms-full");
    // Ring of 2, arena of 2 pages, payloads above 8 KiB go to overflow segments.
    let (tx, rx) = shmq::channel(&name, config(2, 2 * PAGE as usize)).expect("create");

    // The arena: a held loan takes both pages.
    let loan = tx.try_loan(2 * PAGE as usize).expect("arena has room");
    let err = tx.try_send(&pattern(1, 200)).unwrap_err();
    assert_eq!(err, TrySendError::Full((), Exhausted::Arena));
    assert_eq!(err.exhausted(), Some(Exhausted::Arena));
    let err = tx.try_loan_slice::<u64>(10).unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Arena));
    drop(loan);

    // The ring: two inline messages fill it.
    tx.try_send(b"a").expect("slot 1");
    tx.try_send_slice(&[1u32]).expect("slot 2");
    let err = tx.try_send(b"c").unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Ring));
    assert!(err.is_full());
    assert!(matches!(err, TrySendError::Full(..)));
    drop(rx.try_recv().expect("a"));
    drop(rx.try_recv().expect("slot 2"));

    // The overflow table: 64 loans larger than the arena are in flight at most.
    let big = 4 * PAGE as usize;
    let loans: Vec<_> = (0..64)
        .map(|i| {
            tx.try_loan(big)
                .unwrap_or_else(|e| panic!("overflow loan {i}: {e}"))
        })
        .collect();
    let err = tx.try_loan(big).unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::OverflowTable));
    assert!(err.to_string().contains("overflow table"), "{err}");
    drop(loans);
    assert!(
        overflow_files(&name).is_empty(),
        "dropped loans unlink their segments"
    );
}

#[test]
fn a_failed_loan_send_gives_the_loan_back_to_send_again() {
    let name = common::unique_name("forms-loan-back");
    let (tx, rx) = shmq::channel(&name, config(1, MIB)).expect("create");
    tx.send(b"fills the ring").expect("send");

    let mut loan = tx.loan(1000).expect("loan");
    fill_pattern(&mut loan, 7);
    let err = loan.try_send().unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Ring), "{err:?}");
    let loan = err.into_inner();
    assert!(
        check_pattern(&loan, 7),
        "the loan comes back as it was filled"
    );
    let err = loan.send_timeout(SHORT).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let loan = err.into_inner();
    let err = loan.send_deadline(Instant::now()).unwrap_err();
    let loan = err.into_inner();

    drop(rx.recv().expect("the first message"));
    loan.send().expect("room now");
    assert!(check_pattern(&rx.recv().expect("the loan's message"), 7));

    // The same for a typed loan.
    tx.send(b"fills the ring").expect("send");
    let mut slice = tx.loan_slice_timeout::<u32>(4, SHORT).expect("loan_slice");
    slice.copy_from_slice(&[1, 2, 3, 4]);
    let slice = slice.try_send().unwrap_err().into_inner();
    let slice = slice.send_timeout(SHORT).unwrap_err().into_inner();
    assert_eq!(&slice[..], &[1, 2, 3, 4]);
    drop(rx.recv().expect("the filler"));
    slice
        .send_deadline(Instant::now() + HANG)
        .expect("room now");
    let msg = rx.recv().expect("the typed loan");
    assert_eq!(msg.as_slice::<u32>().expect("u32s"), &[1, 2, 3, 4]);

    // Disconnected gives the loan back too (the ring is full, and nobody can empty it).
    let loan = tx
        .loan_slice_deadline::<u8>(8, Instant::now())
        .expect("loan");
    drop(msg);
    tx.send(b"fills the ring").expect("send");
    drop(rx);
    let err = loan.send().unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert_eq!(err.into_inner().len(), 8);
}

#[test]
fn join_has_try_timeout_and_deadline_forms() {
    let name = common::unique_name("forms-join");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    tx.try_join().expect("nothing sent: done");
    tx.send_slice_timeout(&[1u64, 2], SHORT).expect("send");
    tx.send_slice_deadline(&[3u64], Instant::now())
        .expect("send");
    assert!(tx.try_join().unwrap_err().is_timeout());
    assert!(tx.join_timeout(SHORT).unwrap_err().is_timeout());
    let held = rx.recv().expect("first");
    assert!(tx
        .join_deadline(Instant::now() + SHORT)
        .unwrap_err()
        .is_timeout());
    drop(held);
    drop(rx.recv().expect("second"));
    tx.join_deadline(Instant::now() + HANG)
        .expect("every message done");
    tx.try_join().expect("still done");
}

#[test]
fn owned_iterator_ends_for_good() {
    let name = common::unique_name("forms-iter");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    for i in 0..3u8 {
        tx.send(&[i; 200]).expect("send");
    }
    drop(tx);
    let keep = rx.clone(); // keeps the channel alive after the iterator ends
    let mut iter = rx.into_iter();
    let got: Vec<u8> = iter.by_ref().map(|m| m[0]).collect();
    assert_eq!(got, [0, 1, 2]);
    // A new sender can attach by name; the ended iterator stays ended (FusedIterator).
    let late = Sender::open(&name).expect("attach a sender");
    late.send(b"late").expect("send");
    assert!(
        iter.next().is_none(),
        "a fused iterator does not start again"
    );
    assert_eq!(&keep.try_recv().expect("the late message")[..], b"late");
    let mut borrowed = keep.iter();
    drop(late);
    assert!(borrowed.next().is_none());
    assert!(borrowed.next().is_none());
}

#[test]
fn errors_convert_compare_and_clone_as_crossbeams_do() {
    let e: TrySendError<u8> = SendError::Disconnected(1).into();
    assert_eq!(e, TrySendError::Disconnected(1));
    let e: SendTimeoutError<u8> = SendError::Disconnected(2).into();
    assert_eq!(e.clone(), SendTimeoutError::Disconnected(2));
    assert_eq!(e.into_inner(), 2);
    let e: TryRecvError = RecvError::Disconnected.into();
    assert_eq!(e, TryRecvError::Disconnected);
    let e: RecvTimeoutError = RecvError::Disconnected.into();
    assert!(e.is_disconnected());

    // OS failures compare by segment, operation and error, and survive a clone.
    let name = common::unique_name("forms-errors");
    let missing = Receiver::open(&name).unwrap_err();
    let failed = RecvError::Failed(missing.clone());
    assert_eq!(failed.clone(), RecvError::Failed(missing));
    assert_ne!(failed, RecvError::Disconnected);
    // `?` into Box<dyn Error> works for errors that carry a loan.
    fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(SendError::Disconnected(0u32))?
    }
    assert_eq!(
        boxed().unwrap_err().to_string(),
        "sending on a disconnected channel"
    );
}
