//! Waiting: full and empty rings, a full arena and a full overflow table as backpressure (in one
//! process and across processes), timeouts (also while spinning), and `join` waiting for
//! another process to drop every message, and a spin that stops paying being cut.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{Receiver, RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "recv_one_later" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent("attached");
            thread::sleep(Duration::from_millis(300));
            let msg = rx.recv().expect("recv");
            common::signal_parent(&format!("got {}", String::from_utf8_lossy(&msg)));
        }
        "hold_then_drop" => {
            // Holds the first message (an arena chunk) for a while, then frees it and takes the
            // second, which the parent could only send once the first was freed.
            let rx = Receiver::open(&args[0]).expect("open receiver");
            let first = rx.recv().expect("recv first");
            assert!(check_pattern(&first, 1), "first payload corrupted");
            common::signal_parent("holding");
            thread::sleep(Duration::from_millis(300));
            common::signal_parent("dropping");
            drop(first);
            let second = rx.recv_timeout(CHILD_TIMEOUT).expect("recv second");
            assert!(check_pattern(&second, 2), "second payload corrupted");
            common::signal_parent(&format!("second {}", second.len()));
        }
        "recv_slowly" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            let n: usize = args[1].parse().expect("n");
            common::signal_parent("attached");
            for i in 0..n {
                let msg = rx.recv().expect("recv");
                assert!(check_pattern(&msg, i as u64), "payload {i} corrupted");
                thread::sleep(Duration::from_millis(100));
                // Printed before the drop: the parent's join must return after this instant.
                common::signal_parent(&format!("dropping {i} {}", monotonic_ns()));
                drop(msg);
            }
            common::signal_parent("all dropped");
            thread::sleep(Duration::from_millis(200));
        }
        "send_slowly" => {
            let tx = shmq::Sender::open(&args[0]).expect("open sender");
            let n: u64 = args[1].parse().expect("n");
            let gap = Duration::from_millis(args[2].parse().expect("gap"));
            common::signal_parent("attached");
            for i in 0..n {
                thread::sleep(gap);
                tx.send(&i.to_le_bytes()).expect("send");
            }
        }
        other => panic!("unknown child role {other}"),
    });
}

// ----- full and empty -----------------------------------------------------------------------

#[test]
fn full_and_empty_ring() {
    let name = common::unique_name("ch-full");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    assert_eq!(tx.capacity(), 4);
    assert!(rx.is_empty() && !rx.is_full());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    for i in 0..4u8 {
        tx.try_send(&[i; 3]).expect("room in the ring");
    }
    assert!(tx.is_full() && rx.is_full());
    assert_eq!(tx.len(), 4);
    assert!(matches!(tx.try_send(b"y"), Err(TrySendError::Full(..))));
    for len in [0, 5, 5000, 3 * MIB] {
        // Inline, arena and overflow payloads all meet the full ring; nothing leaks.
        let err = tx.try_send(&vec![1; len]).unwrap_err();
        assert!(err.is_full(), "{len}-byte try_send on a full ring: {err:?}");
        assert_eq!(
            tx.free_arena_bytes(),
            arena as u64,
            "arena leaked by a failed try_send"
        );
        assert!(
            overflow_files(&name).is_empty(),
            "overflow leaked by a failed try_send"
        );
    }
    assert_eq!(tx.len(), 4);
    for i in 0..4u8 {
        assert_eq!(&rx.try_recv().expect("message")[..], &[i; 3]);
    }
    assert!(rx.try_recv().unwrap_err().is_empty());
    assert!(rx.is_empty());
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn capacity_that_is_not_a_power_of_two() {
    let name = common::unique_name("ch-cap3");
    let (tx, rx) = shmq::channel(&name, config(3, MIB)).expect("create");
    for round in 0..5u8 {
        for i in 0..3u8 {
            tx.try_send(&[round, i]).expect("room");
        }
        assert!(tx.is_full());
        assert!(tx.try_send(b"x").unwrap_err().is_full());
        for i in 0..3u8 {
            assert_eq!(&rx.try_recv().expect("message")[..], &[round, i]);
        }
    }
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn blocked_send_completes_when_another_process_receives() {
    let name = common::unique_name("ch-unblock");
    let (tx, rx) = shmq::channel(&name, config(2, MIB)).expect("create");
    tx.send(b"first").expect("send");
    tx.send(b"second").expect("send");
    assert!(tx.try_send(b"third").unwrap_err().is_full());
    let mut kid = Kid::spawn("recv_one_later", &[&name]);
    kid.expect("attached");
    // The child receives one message 300 ms from now; until then this blocks.
    let started = Instant::now();
    tx.send_timeout(b"third", CHILD_TIMEOUT)
        .expect("send completes once the child receives");
    eprintln!("send blocked for {:?}", started.elapsed());
    let got = kid.expect_prefix("got ", false);
    assert_eq!(got, "got first");
    kid.finish();
    assert_eq!(&rx.recv().expect("recv")[..], b"second");
    assert_eq!(&rx.recv().expect("recv")[..], b"third");
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- backpressure --------------------------------------------------------------------------

#[test]
fn arena_full_backpressure_in_one_process() {
    let name = common::unique_name("ch-arena");
    let arena = 64 * KIB; // 16 pages
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    tx.send(&pattern(1, 40 * KIB)).expect("send 10 pages");
    let held = rx.recv().expect("recv");
    assert_eq!(tx.free_arena_bytes(), (arena - 40 * KIB) as u64);
    // 8 pages do not fit the 6 left, although the ring is empty.
    let big = pattern(2, 30 * KIB);
    assert!(rx.is_empty());
    assert!(tx.try_send(&big).unwrap_err().is_full());
    assert!(tx.try_loan(big.len()).unwrap_err().is_full());
    let err = tx
        .send_timeout(&big, Duration::from_millis(50))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // Small payloads still go: inline ones need no arena, 6 pages still fit.
    tx.try_send(b"inline")
        .expect("inline payload needs no arena");
    tx.try_send(&pattern(3, 6 * PAGE as usize))
        .expect("6 pages fit");
    assert_eq!(tx.free_arena_bytes(), 0);
    assert!(tx.try_send(&[0; 97]).unwrap_err().is_full());
    assert_eq!(&rx.recv().expect("recv")[..], b"inline");
    drop(rx.recv().expect("recv"));
    drop(held);
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    tx.try_send(&big)
        .expect("fits once the held message is dropped");
    assert!(check_pattern(&rx.recv().expect("recv"), 2));
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn arena_full_backpressure_across_processes() {
    let name = common::unique_name("ch-arena-x");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    tx.send(&pattern(1, 40 * KIB)).expect("send");
    let mut kid = Kid::spawn("hold_then_drop", &[&name]);
    kid.expect("holding");
    let second = pattern(2, 30 * KIB);
    assert!(
        tx.try_send(&second).unwrap_err().is_full(),
        "no room while the child holds"
    );
    // Blocks until the child drops its message, 300 ms from its "holding".
    tx.send_timeout(&second, CHILD_TIMEOUT)
        .expect("send completes once the child frees its chunk");
    let lines = kid.finish();
    assert!(lines.contains(&format!("second {}", 30 * KIB)), "{lines:?}");
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn overflow_table_full_is_backpressure() {
    // 64 overflow payloads may be in flight; the 65th waits for one to be dropped.
    let name = common::unique_name("ch-ovf-table");
    let arena = 4 * KIB;
    let (tx, rx) = shmq::channel(&name, config(128, arena)).expect("create");
    for i in 0..64 {
        tx.try_send(&pattern(i, 2 * arena))
            .expect("overflow payload");
    }
    assert_eq!(overflow_files(&name).len(), 64);
    let err = tx.try_send(&pattern(64, 2 * arena)).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert_eq!(overflow_files(&name).len(), 64);
    let first = rx.recv().expect("recv");
    assert!(check_pattern(&first, 0));
    drop(first);
    tx.try_send(&pattern(64, 2 * arena))
        .expect("room after a drop");
    for i in 1..=64 {
        assert!(check_pattern(&rx.recv().expect("recv"), i));
    }
    assert!(overflow_files(&name).is_empty());
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- timeouts -----------------------------------------------------------------------------

#[test]
fn timeouts_on_empty_and_full() {
    let name = common::unique_name("ch-timeout");
    let arena = 16 * KIB;
    let (tx, rx) = shmq::channel(&name, config(2, arena)).expect("create");
    let timeout = Duration::from_millis(200);

    let started = Instant::now();
    let err = rx.recv_timeout(timeout).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, RecvTimeoutError::Timeout), "{err:?}");
    assert!(
        elapsed >= timeout && elapsed < HANG,
        "recv_timeout took {elapsed:?}"
    );

    tx.send(b"a").expect("send");
    tx.send(b"b").expect("send");
    for payload in [&b"c"[..], &[7; 5000][..]] {
        let started = Instant::now();
        let err = tx.send_timeout(payload, timeout).unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(err, SendTimeoutError::Timeout(_)), "{err:?}");
        assert!(
            elapsed >= timeout && elapsed < HANG,
            "send_timeout took {elapsed:?}"
        );
        assert_eq!(tx.free_arena_bytes(), arena as u64);
    }

    // A loan waits for the arena, not for the ring; its send waits for the ring.
    let loan = tx.loan_timeout(5000, timeout).expect("arena has room");
    let started = Instant::now();
    let err = loan.send_timeout(timeout).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= timeout);
    // The error gives the loan back, still holding its pages; dropping it frees them.
    let loan = err.into_inner();
    assert_eq!(loan.len(), 5000, "the loan comes back whole");
    assert!(
        tx.free_arena_bytes() < arena as u64,
        "its pages are still lent"
    );
    drop(loan);
    assert_eq!(
        tx.free_arena_bytes(),
        arena as u64,
        "a dropped loan gives memory back"
    );

    let whole = tx.loan(arena).expect("loan the whole arena");
    let started = Instant::now();
    let err = tx.loan_timeout(1, timeout).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= timeout);
    drop(whole);
    assert_eq!(tx.free_arena_bytes(), arena as u64);

    assert_eq!(rx.try_iter().count(), 2);
    let started = Instant::now();
    let err = rx.recv_timeout(timeout).unwrap_err();
    assert!(err.is_timeout() && started.elapsed() >= timeout);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn timeouts_are_kept_while_spinning() {
    let name = common::unique_name("ch-spin");
    let (tx, rx) = shmq::channel(&name, config(1, MIB)).expect("create");
    let spin = Duration::from_secs(8);
    let soon = Duration::from_secs(4); // for calls whose deadline is 50 ms away
    rx.set_spin(spin);
    tx.set_spin(spin);
    tx.send(b"fills the ring").expect("send");
    // The calls run on a thread and are waited for (up to the spin and more), so that a failure
    // still gets the handles back and cleans up.
    let started = Instant::now();
    let result = in_thread(move || {
        let full = tx.try_send(b"x").map_err(|e| e.is_full());
        let timed = tx
            .send_timeout(b"x", Duration::from_millis(50))
            .map_err(|e| e.is_timeout());
        (full, timed, tx)
    });
    let ((full, timed, tx), returned) = result.recv_timeout(CHILD_TIMEOUT).expect("hung");
    let send_took = returned.saturating_duration_since(started);
    assert_eq!((full, timed), (Err(true), Err(true)));
    drop(rx.recv().expect("recv"));
    let started = Instant::now();
    let result = in_thread(move || {
        let empty = rx.try_recv().map(drop).map_err(|e| e.is_empty());
        let timed = rx
            .recv_timeout(Duration::from_millis(50))
            .map(drop)
            .map_err(|e| e.is_timeout());
        (empty, timed, rx)
    });
    let ((empty, timed, rx), returned) = result.recv_timeout(CHILD_TIMEOUT).expect("hung");
    let recv_took = returned.saturating_duration_since(started);
    assert_eq!((empty, timed), (Err(true), Err(true)));
    drop(tx);
    drop(rx);
    assert_gone(&name);
    eprintln!("with spin {spin:?}: try_send + send_timeout(50 ms) took {send_took:?}, try_recv + recv_timeout(50 ms) took {recv_took:?}");
    // Spinning stops at the deadline: a timeout shorter than the spin time does not take the
    // whole spin.
    assert!(
        send_took < soon && recv_took < soon,
        "calls with a 50 ms deadline took {send_took:?} and {recv_took:?} (spin {spin:?})"
    );
}

// ----- join ---------------------------------------------------------------------------------

#[test]
fn join_waits_for_another_process_to_drop_every_message() {
    let name = common::unique_name("ch-join");
    let n = 5;
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    for i in 0..n {
        tx.send(&pattern(i, 10 * KIB)).expect("send");
    }
    let mut kid = Kid::spawn("recv_slowly", &[&name, &n.to_string()]);
    kid.expect("attached");
    let started = Instant::now();
    tx.join_timeout(CHILD_TIMEOUT)
        .expect("join returns once all are dropped");
    let joined_ns = monotonic_ns();
    eprintln!("join waited {:?}", started.elapsed());
    let lines = kid.finish();
    let drops: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("dropping "))
        .map(|l| l.split(' ').nth(1).expect("timestamp").parse().expect("ns"))
        .collect();
    assert_eq!(drops.len(), n as usize, "{lines:?}");
    let last = *drops.iter().max().expect("drops");
    assert!(
        last < joined_ns,
        "join returned {} ms before the child dropped its last message",
        (last - joined_ns) / 1_000_000
    );
    assert_eq!(tx.free_arena_bytes(), MIB as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn join_timeout_while_a_message_is_held() {
    let name = common::unique_name("ch-join-to");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    tx.join_timeout(Duration::ZERO)
        .expect("nothing sent: join returns at once");
    tx.send(b"small").expect("send");
    tx.send(&[1; 5000]).expect("send");
    let a = rx.recv().expect("recv");
    let started = Instant::now();
    let err = tx.join_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    let b = rx.recv().expect("recv");
    drop(a);
    assert!(tx
        .join_timeout(Duration::from_millis(50))
        .unwrap_err()
        .is_timeout());
    drop(b);
    tx.join_timeout(HANG).expect("all dropped");
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- adaptive spinning -----------------------------------------------------------------------

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which points to
    // one; RUSAGE_THREAD is Linux's.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: initialized by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Receives `n` messages from a child that sends one every 8 ms, and returns the CPU time
/// this thread spent on it.
fn cpu_to_receive_slow_messages(rx: &Receiver, name: &str, n: u64) -> Duration {
    let mut kid = Kid::spawn("send_slowly", &[name, &n.to_string(), "8"]);
    kid.expect("attached");
    let before = thread_cpu_time();
    for i in 0..n {
        let msg = rx.recv_timeout(CHILD_TIMEOUT).expect("recv");
        assert_eq!(&msg[..], &i.to_le_bytes(), "message {i}");
    }
    let spent = thread_cpu_time() - before;
    kid.finish();
    spent
}

#[test]
fn a_spin_that_keeps_running_out_is_cut() {
    // A receiver whose sender (another process) sends one message every 8 ms, with a 4 ms
    // spin: every wait outlasts the spin. Spinning the full 4 ms each time costs about 4 ms
    // of CPU per message; cut, a wait spins 1 µs, and one in 16 the full 4 ms.
    let name = common::unique_name("ch-adapt");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    rx.set_spin(Duration::from_millis(4));
    let n = 40;
    let adaptive = cpu_to_receive_slow_messages(&rx, &name, n);
    rx.set_adaptive_spin(false);
    let fixed = cpu_to_receive_slow_messages(&rx, &name, n);
    eprintln!("CPU for {n} slow messages: adaptive {adaptive:?}, fixed {fixed:?}");
    // The fixed spin burns at least 40 x 4 ms of wall time spinning, most of it on a core
    // (less if the thread is preempted); the adaptive one about 4 full spins.
    assert!(
        fixed > Duration::from_millis(40),
        "the fixed spin did not spin: {fixed:?}"
    );
    assert!(
        adaptive * 2 < fixed,
        "the spin was not cut: adaptive {adaptive:?}, fixed {fixed:?}"
    );
    drop(tx);
    drop(rx);
    assert_gone(&name);
}
