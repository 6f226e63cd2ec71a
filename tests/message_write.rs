//! Writable received messages: `DerefMut for Message` and `Message::as_mut_slice`, for every
//! placement of a payload (inline, arena, overflow), writing in place and nothing else; and a
//! forked child that inherited a message in shared memory is refused the write.

mod common;

use common::channel::*;
use shmq::Error;

/// Sizes of each placement with an 8 KiB arena: inline (copied into the Message), arena (one
/// 4 KiB page), overflow (larger than the arena).
const INLINE: usize = 96;
const ARENA: usize = 4000;
const OVERFLOW: usize = 3 * 8 * KIB + 5;

#[test]
fn writes_through_each_placement_change_that_message_only() {
    let name = common::unique_name("msg-write");
    let (tx, rx) = shmq::channel(&name, config(8, 8 * KIB)).expect("create");
    // Two messages of each placement: the first of each pair is written, the second must not
    // change.
    let lens = [INLINE, ARENA, OVERFLOW];
    for (i, &len) in lens.iter().chain(lens.iter()).enumerate() {
        tx.send(&pattern(i as u64, len)).expect("send");
    }
    let mut written = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let mut msg = rx.recv_timeout(HANG).expect("recv");
        assert_eq!(msg.len(), len);
        assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
        let before = msg.as_ptr();
        // Through DerefMut: a new pattern over the whole payload.
        fill_pattern(&mut msg, 100 + i as u64);
        assert_eq!(
            msg.as_ptr(),
            before,
            "deref_mut gave other bytes than deref"
        );
        assert!(
            check_pattern(&msg, 100 + i as u64),
            "message {i} does not read back what was written"
        );
        written.push(msg);
    }
    // The other messages, queued all along, are as they were sent.
    for (i, &len) in lens.iter().enumerate() {
        let seed = (lens.len() + i) as u64;
        let msg = rx.recv_timeout(HANG).expect("recv");
        assert_eq!(msg.len(), len);
        assert!(
            check_pattern(&msg, seed),
            "unwritten message {seed} changed"
        );
    }
    // And the written ones still hold what was written.
    for (i, msg) in written.iter().enumerate() {
        assert!(
            check_pattern(msg, 100 + i as u64),
            "written message {i} changed"
        );
    }
    drop(written);
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_write_lands_in_the_shared_pages_in_place() {
    // An arena of one 8 KiB chunk: the loan after the message's drop gets the very pages the
    // message had, and a loan's bytes "start zeroed or hold old payloads".
    let name = common::unique_name("msg-write-in-place");
    let (tx, rx) = shmq::channel(&name, config(2, 8 * KIB)).expect("create");
    tx.send(&pattern(1, 8 * KIB)).expect("send");
    let mut msg = rx.recv_timeout(HANG).expect("recv");
    msg.fill(0xA5);
    drop(msg);
    let loan = tx.try_loan(8 * KIB).expect("the whole arena is free again");
    assert!(
        loan.iter().all(|&b| b == 0xA5),
        "the message's write did not reach its shared pages"
    );
    drop(loan);
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn as_mut_slice_writes_typed_values_and_checks_the_length() {
    let name = common::unique_name("msg-write-typed");
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    for n in [4usize, 1000, 20_000] {
        // 32 bytes inline, 8000 in the arena, 160000 in an overflow segment.
        let values: Vec<u64> = (0..n as u64).collect();
        tx.send_slice(&values).expect("send");
        tx.send_slice(&values).expect("send");
        let mut msg = rx.recv_timeout(HANG).expect("recv");
        for v in msg.as_mut_slice::<u64>().expect("u64 view") {
            *v = v.wrapping_mul(3) + 1;
        }
        let expected: Vec<u64> = values.iter().map(|v| v * 3 + 1).collect();
        assert_eq!(msg.as_slice::<u64>().expect("read back"), &expected[..]);
        let other = rx.recv_timeout(HANG).expect("recv");
        assert_eq!(other.as_slice::<u64>().expect("u64 view"), &values[..]);
    }
    // A length that is not a whole number of T is refused, as for as_slice.
    tx.send(&[1u8; 7]).expect("send");
    let mut msg = rx.recv_timeout(HANG).expect("recv");
    assert!(matches!(
        msg.as_mut_slice::<u32>(),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(&msg[..], &[1u8; 7]);
    drop(msg);
    drop((tx, rx));
    assert_gone(&name);
}

// ----- fork -----------------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "fork-write" => fork_child_writes_inherited(&args[0]),
        other => panic!("unknown child role {other}"),
    });
}

/// In a forked child, an inherited message in shared memory is the parent's: writing it is
/// refused (as_mut_slice fails, deref_mut panics), while an inherited inline one is the child's
/// own copy and may be written. The parent's bytes stay as they were. Runs in a process of its
/// own (single-threaded harness), since it forks.
fn fork_child_writes_inherited(name: &str) {
    let (tx, rx) = shmq::channel(name, config(4, 64 * KIB)).expect("create");
    tx.send(&pattern(1, ARENA)).expect("send");
    tx.send(&pattern(2, INLINE)).expect("send");
    let mut shared = rx.recv_timeout(HANG).expect("recv");
    let mut inline = rx.recv_timeout(HANG).expect("recv");

    // SAFETY: this process runs one test thread; the child only touches the messages and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(
            shared.as_mut_slice::<u8>(),
            Err(Error::InvalidArgument { .. })
        );
        std::panic::set_hook(Box::new(|_| {})); // the expected panic prints nothing
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared[0] = 0;
        }))
        .is_err();
        inline.fill(0); // the child's own copy
        let inline_written = inline.iter().all(|&b| b == 0);
        let code =
            i32::from(!refused) | i32::from(!panicked) << 1 | i32::from(!inline_written) << 2;
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child with a status word on our stack.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status),
        "the forked child did not exit normally"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "bit 0: as_mut_slice not refused, 1: deref_mut did not panic, 2: inline not written"
    );
    // The parent's messages are untouched, and the parent may write its own.
    assert!(
        check_pattern(&shared, 1),
        "the child wrote the parent's message"
    );
    assert!(
        check_pattern(&inline, 2),
        "the child's write reached the parent's copy"
    );
    shared
        .as_mut_slice::<u8>()
        .expect("the parent's own message")[0] ^= 0xFF;
    inline[0] ^= 0xFF;
    drop((shared, inline));
    drop((tx, rx));
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_forked_child_cannot_write_an_inherited_shared_message() {
    let name = common::unique_name("msg-write-fork");
    let lines = Kid::spawn("fork-write", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}
