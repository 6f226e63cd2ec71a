//! Promises that hold against stopped, forking and dying peers (issue 11), each with real
//! processes:
//!
//! - a sender or a receiver stopped (SIGSTOP) anywhere in a step of the lock-free ring never
//!   freezes other senders, nor other receivers: their calls go past its claim;
//! - a process stopped while it holds the allocator or the membership lock never freezes
//!   another process's `try_` and `_timeout` calls or its drops: they return by their deadline
//!   plus the lock grace, with `LockTimeout` naming the holder;
//! - a receive that cannot open an overflow payload for want of descriptors leaves the message
//!   queued, and the next receive gets it;
//! - a child forked without exec that drops the handles it inherited leaves the parent's channel
//!   alone; one that uses them works as a participant of its own; a parent killed while its
//!   forked child lives is seen as gone;
//! - a sender notices a killed last receiver within tens of milliseconds, ring room or not.
//!
//! The stopped-holder tests catch a lock held by stopping a child that churns through the
//! channel at random moments until inspection shows it holding the lock wanted; they do not
//! rely on any hook inside the library.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::channel::{
    assert_gone, check_pattern, config, fill_pattern, lowest_free_descriptor, set_descriptor_limit,
    Kid, KIB, MIB,
};
use common::{child_dispatch, unique_name};
use shmq::{
    channel, Error, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TaskDoneError,
    TryRecvError, TrySendError,
};

/// What a call with a deadline may take beyond it: the lock grace (20 ms) and a generous margin
/// for a loaded machine. A frozen call takes for ever, so this bound still fails it.
const SLACK: Duration = Duration::from_millis(800);
/// Bound for a drop (lock grace, or the 100 ms detach wait, plus margin).
const DROP_BOUND: Duration = Duration::from_millis(1500);
/// Turns a hang into a failure.
const HANG: Duration = Duration::from_secs(20);

#[test]
#[ignore = "entry point of child processes; run by the tests in this file"]
fn child_entry() {
    child_dispatch(|role, args| match role {
        "churn" => churn(&args[0]),
        "send-churn" => send_churn(&args[0]),
        "receive-churn" => receive_churn(&args[0]),
        "churn-membership" => churn_membership(&args[0]),
        "emfile" => emfile_receive(&args[0]),
        "fork-drop" => fork_child_drops_inherited(&args[0]),
        "fork-use" => fork_child_uses_inherited(&args[0]),
        "fork-parent" => fork_parent_then_sleep(&args[0]),
        "fork-shared" => fork_shared_value(&args[0]),
        "fork-while-detaching" => fork_while_a_thread_detaches(&args[0]),
        "fork-while-taking" => fork_while_a_thread_takes(&args[0]),
        "receiver-sleep" => {
            let _rx = Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent("ready");
            common::channel::sleep_until_killed();
        }
        other => panic!("unknown role {other}"),
    });
}

// ----- helpers --------------------------------------------------------------------------------

/// Runs `f` on a thread and returns its result and how long it took; panics after [`HANG`].
fn timed<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(out) => (out, started.elapsed()),
        Err(_) => panic!("{what} did not return within {HANG:?}: frozen by the stopped peer"),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Waits until /proc says process `pid` is stopped.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + HANG;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.trim().chars().next());
        if state == Some('T') || state == Some('t') {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        thread::sleep(Duration::from_micros(200));
    }
}

/// Stops process `pid` at random moments until `holds()` says it holds the lock wanted, and
/// leaves it stopped there. Panics if it never catches it.
fn stop_while(pid: u32, what: &str, holds: impl Fn() -> bool) {
    let mut rng = common::Rng(pid as u64);
    for _ in 0..20_000 {
        signal(pid, libc::SIGSTOP);
        wait_stopped(pid);
        if holds() {
            return;
        }
        signal(pid, libc::SIGCONT);
        thread::sleep(Duration::from_micros(50 + rng.below(500)));
    }
    panic!("never caught process {pid} holding the {what} lock");
}

fn channel_stats(name: &str) -> shmq::ChannelStats {
    shmq::inspect(name)
        .expect("inspect")
        .channel
        .expect("channel stats")
}

fn assert_lock_timeout(e: &Error, lock: &str, holder: u32) {
    match e {
        Error::LockTimeout {
            lock: found,
            holder_pid,
            ..
        } => {
            assert_eq!(*found, lock, "{e}");
            assert_eq!(*holder_pid, Some(holder), "{e}");
        }
        other => panic!("expected LockTimeout on the {lock} lock, got {other:?}"),
    }
}

// ----- children -------------------------------------------------------------------------------

/// Sends and receives arena payloads as fast as it can: the allocator lock is held a good part
/// of the time. The payloads alternate between one and two pages, so that no send finds a
/// chunk of its length given back to take back without the lock (arena.rs): each allocates
/// under the lock, and frees the chunk given back before.
fn churn(name: &str) {
    let tx = Sender::open(name).expect("open sender");
    let rx = Receiver::open(name).expect("open receiver");
    common::signal_parent("ready");
    let payloads = [vec![7u8; 4 * KIB], vec![7u8; 8 * KIB]];
    for payload in payloads.iter().cycle() {
        let _ = tx.try_send(payload);
        drop(rx.try_recv());
    }
}

/// Attaches and detaches as fast as it can: the membership lock is held most of the time.
fn churn_membership(name: &str) {
    common::signal_parent("ready");
    loop {
        drop(Sender::open(name));
    }
}

// ----- stopped senders and receivers ---------------------------------------------------------

/// Sends small payloads as fast as the ring takes them.
fn send_churn(name: &str) {
    let tx = Sender::open(name).expect("open sender");
    common::signal_parent("ready");
    loop {
        let _ = tx.try_send(&SMALL);
    }
}

/// Receives (and drops) as fast as messages come.
fn receive_churn(name: &str) {
    let rx = Receiver::open(name).expect("open receiver");
    common::signal_parent("ready");
    loop {
        if let Ok(message) = rx.try_recv() {
            assert_eq!(&message[..], &SMALL[..], "a corrupted message");
        }
    }
}

/// The payload of the stopped-peer tests: inline-sized, so that the ring alone is exercised.
const SMALL: [u8; 48] = [0x5a; 48];

/// Times a churning child is stopped at a random instant in the stopped-peer tests.
const STOPS: u32 = 150;

/// Stops the child `pid` at [`STOPS`] random instants, each time running `check` while it is
/// stopped (somewhere inside a ring step, often enough: it does nothing else).
fn at_random_stops(pid: u32, mut check: impl FnMut(u32)) {
    let mut rng = common::Rng(u64::from(pid));
    for stop in 0..STOPS {
        thread::sleep(Duration::from_micros(50 + rng.below(400)));
        signal(pid, libc::SIGSTOP);
        wait_stopped(pid);
        check(stop);
        signal(pid, libc::SIGCONT);
    }
}

/// Takes every message in a thread until `stop`, checking each; returns how many it took.
fn drain_in_background(rx: Receiver, stop: mpsc::Receiver<()>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut taken = 0;
        while stop.try_recv().is_err() {
            if let Ok(message) = rx.recv_timeout(Duration::from_millis(5)) {
                assert_eq!(&message[..], &SMALL[..], "a corrupted message");
                taken += 1;
            }
        }
        taken
    })
}

#[test]
fn a_sender_stopped_anywhere_does_not_freeze_other_senders() {
    let name = unique_name("stop-sender");
    let (tx, rx) = channel(&name, config(64, MIB)).expect("create channel");
    let mut kid = Kid::spawn("send-churn", &[&name]);
    kid.expect("ready");
    let (stop_drain, stop) = mpsc::channel();
    let drain = drain_in_background(rx, stop);
    at_random_stops(kid.pid(), |stop| {
        // The drain takes everything up to the stopped sender's claim, if it holds one: the
        // ring then has room for at least 62 more whatever instant the sender stopped at,
        // and ours must go in, within a second (the drain needs a moment to catch up).
        let t = tx.clone();
        let (sent, took) = timed("try_send", move || {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                match t.try_send(&SMALL) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Full((), _)) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(format!("{e:?}")),
                }
            }
        });
        assert_eq!(
            sent,
            Ok(()),
            "stop {stop}: a send behind the stopped sender"
        );
        assert!(
            took < Duration::from_secs(1) + SLACK,
            "stop {stop}: took {took:?}"
        );
    });
    kid.kill();
    stop_drain.send(()).expect("stop the drain");
    let taken = drain.join().expect("drain thread");
    assert!(taken >= u64::from(STOPS), "took {taken} messages");
    drop(tx);
    assert_gone(&name);
}

#[test]
fn a_receiver_stopped_anywhere_does_not_freeze_other_receivers() {
    let name = unique_name("stop-receiver");
    let (tx, rx) = channel(&name, config(64, MIB)).expect("create channel");
    let mut kid = Kid::spawn("receive-churn", &[&name]);
    kid.expect("ready");
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (tx, feeding) = (tx.clone(), std::sync::Arc::clone(&feeding));
        thread::spawn(move || {
            while feeding.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tx.send_timeout(&SMALL, Duration::from_millis(5));
            }
        })
    };
    at_random_stops(kid.pid(), |stop| {
        // The feeder keeps the ring stocked; a message must reach us past the stopped
        // receiver's claim.
        let r = rx.clone();
        let (got, took) = timed("recv_timeout", move || {
            r.recv_timeout(Duration::from_secs(1)).map(|m| m.to_vec())
        });
        match got {
            Ok(bytes) => assert_eq!(&bytes[..], &SMALL[..], "stop {stop}: corrupted"),
            Err(e) => panic!("stop {stop}: no message past the stopped receiver: {e:?}"),
        }
        assert!(
            took < Duration::from_secs(1) + SLACK,
            "stop {stop}: took {took:?}"
        );
    });
    kid.kill();
    feeding.store(false, std::sync::atomic::Ordering::Relaxed);
    feeder.join().expect("feeder thread");
    // What the killed receiver held is reclaimed: every message is done or still queued.
    while rx.try_recv().is_ok() {}
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_stopped_allocator_lock_holder_does_not_freeze_senders_or_message_drops() {
    let name = unique_name("stop-allocator");
    let (tx, rx) = channel(&name, config(64, MIB)).expect("create channel");
    // A message the parent holds, to drop while the allocator lock is held.
    let mut held = Vec::new();
    for seed in 0..4 {
        let mut loan = tx.loan(8 * KIB).expect("loan");
        fill_pattern(&mut loan, seed);
        loan.send().expect("send");
    }
    for _ in 0..4 {
        held.push(rx.recv().expect("recv"));
    }
    let mut kid = Kid::spawn("churn", &[&name]);
    kid.expect("ready");
    let pid = kid.pid();
    stop_while(pid, "allocator", || {
        channel_stats(&name).allocator_lock_holder == Some(pid)
    });

    // Three pages: a length no chunk given back has (the child's are one and two pages, the
    // held messages' two), so the send needs the lock instead of taking a chunk back.
    let t = tx.clone();
    let (r, took) = timed("try_send", move || t.try_send(&[1u8; 12 * KIB]));
    match r {
        Err(TrySendError::Failed(e, ())) => assert_lock_timeout(&e, "allocator", pid),
        other => panic!("try_send of an arena payload: {other:?}"),
    }
    assert!(took < SLACK, "try_send took {took:?}");
    let t = tx.clone();
    let (r, took) = timed("loan_timeout", move || {
        t.loan_timeout(12 * KIB, Duration::from_millis(100))
            .map(drop)
    });
    match r {
        Err(SendTimeoutError::Failed(e, ())) => assert_lock_timeout(&e, "allocator", pid),
        other => panic!("loan_timeout: {other:?}"),
    }
    assert!(took < Duration::from_millis(100) + SLACK, "took {took:?}");
    // Dropping messages cannot free their pages now: bounded, and given back later.
    let first = held.remove(0);
    assert!(check_pattern(&first, 0));
    let ((), took) = timed("drop(Message)", move || drop(first));
    assert!(took < DROP_BOUND, "drop(Message) took {took:?}");
    // Task counts move only under the allocator lock: try_task_done waits the grace at most,
    // counting nothing, and try_join_tasks reads without the lock.
    let unfinished = tx.unfinished_tasks();
    let t = tx.clone();
    let (r, took) = timed("try_task_done", move || t.try_task_done());
    match r {
        Err(TaskDoneError::Failed(e)) => assert_lock_timeout(&e, "allocator", pid),
        other => panic!("try_task_done: {other:?}"),
    }
    assert!(took < SLACK, "try_task_done took {took:?}");
    assert_eq!(tx.unfinished_tasks(), unfinished, "nothing counted");
    let t = tx.clone();
    let (r, took) = timed("try_join_tasks", move || t.try_join_tasks());
    assert!(r.unwrap_err().is_timeout());
    assert!(took < SLACK, "try_join_tasks took {took:?}");

    signal(pid, libc::SIGCONT);
    kid.kill();
    // The lock is free again: the next release gives back the deferred one too.
    for (seed, message) in held.drain(..).enumerate() {
        assert!(check_pattern(&message, seed as u64 + 1));
        drop(message);
    }
    // The killed child's own messages and chunks are reclaimed by the next liveness check.
    let deadline = Instant::now() + HANG;
    while tx.free_arena_bytes() != MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "arena not back to empty: {} of {MIB} bytes free",
            tx.free_arena_bytes()
        );
        let _ = tx.try_send(b"poke"); // runs the liveness check that reclaims the dead
        while let Ok(m) = rx.try_recv() {
            drop(m);
        }
        thread::sleep(Duration::from_millis(30));
    }
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn pages_a_drop_deferred_are_given_back_while_their_receiver_waits() {
    // The receiver's drop finds the allocator lock held by a stopped process and defers its
    // pages; once the lock is free, the receiver waits for a message that its sender cannot
    // send until those very pages are back: the receiver's wait must give them back.
    let name = unique_name("deferred-wait");
    let arena = 64 * KIB;
    let (tx, rx) = channel(&name, config(16, arena)).expect("create channel");
    let big = 40 * KIB;
    tx.send(&vec![3u8; big]).expect("send");
    let held = rx.recv().expect("recv");
    let mut kid = Kid::spawn("churn", &[&name]);
    kid.expect("ready");
    let pid = kid.pid();
    stop_while(pid, "allocator", || {
        channel_stats(&name).allocator_lock_holder == Some(pid)
    });
    let ((), took) = timed("drop(Message)", move || drop(held));
    assert!(took < DROP_BOUND, "drop took {took:?}");
    signal(pid, libc::SIGCONT);
    kid.kill();
    // Only the deferred pages make room for this one.
    let sender = tx.clone();
    let sent = thread::spawn(move || sender.send_timeout(&vec![4u8; big], Duration::from_secs(10)));
    // The churning child may have left one of its own 4 KiB messages queued when it was
    // killed: skip it (the next receive then waits, which is the wait under test).
    let got = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) if m.len() != big => drop(m),
            other => break other,
        }
    };
    let sent = sent.join().expect("sender thread");
    assert!(
        sent.is_ok(),
        "the send never found the deferred pages: {sent:?}"
    );
    let message = got.expect("the receiver got the message");
    assert_eq!(message.len(), big);
    drop(message);
    while let Ok(m) = rx.try_recv() {
        drop(m);
    }
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_stopped_membership_lock_holder_does_not_freeze_timeouts_opens_or_drops() {
    let name = unique_name("stop-membership");
    let (tx, rx) = channel(&name, config(16, MIB)).expect("create channel");
    let extra = Receiver::open(&name).expect("open a receiver to drop later");
    let mut kid = Kid::spawn("churn-membership", &[&name]);
    kid.expect("ready");
    let pid = kid.pid();
    stop_while(pid, "membership", || {
        shmq::inspect(&name).expect("inspect").membership_holder == Some(pid)
    });

    // A receive with a timeout runs a liveness check that reclaims the dead under the
    // membership lock: it must skip that rather than wait 10 s for it.
    let r = rx.clone();
    let (got, took) = timed("recv_timeout", move || {
        r.recv_timeout(Duration::from_millis(100)).map(drop)
    });
    assert!(matches!(got, Err(RecvTimeoutError::Timeout)), "{got:?}");
    assert!(took < Duration::from_millis(100) + SLACK, "took {took:?}");
    // An open waits for the membership lock (2 s) and says who holds it.
    let n = name.clone();
    let (opened, took) = timed("Sender::open", move || Sender::open(&n).map(drop));
    match opened {
        Err(e) => assert_lock_timeout(&e, "membership", pid),
        Ok(()) => panic!("open succeeded while the membership lock was held"),
    }
    assert!(took < Duration::from_secs(2) + SLACK, "open took {took:?}");
    // A drop cannot detach now: it lets go, leaving its slot for the next attach or gc.
    let ((), took) = timed("drop(Receiver)", move || drop(extra));
    assert!(took < DROP_BOUND, "drop took {took:?}");
    // The channel still works meanwhile.
    tx.send(b"still working").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"still working");

    signal(pid, libc::SIGCONT);
    kid.kill();
    // Once the lock is free, opens work again and the abandoned slot is reclaimed.
    let again = Sender::open(&name).expect("open after SIGCONT");
    drop(again);
    drop((tx, rx));
    assert_gone(&name);
}

// ----- a transient receive failure ------------------------------------------------------------

/// In a process of its own (it lowers its descriptor limit).
fn emfile_receive(name: &str) {
    let (tx, rx) = channel(name, config(16, 64 * KIB)).expect("create channel");
    let len = MIB; // larger than the arena: travels in an overflow segment
    let mut loan = tx.loan(len).expect("loan");
    fill_pattern(&mut loan, 42);
    loan.send().expect("send");

    // No descriptor left for opening the payload: the limit is the lowest free number.
    let old = set_descriptor_limit(lowest_free_descriptor());
    let first = rx.try_recv().map(drop);
    set_descriptor_limit(old);
    match first {
        Err(TryRecvError::Failed(Error::Io { .. })) => {}
        other => panic!("receive without descriptors: {other:?}"),
    }
    assert_eq!(rx.len(), 1, "the message must stay queued");
    assert!(
        matches!(
            tx.join_timeout(Duration::from_millis(50)),
            Err(SendTimeoutError::Timeout(()))
        ),
        "the message must not count as done"
    );
    let message = rx.try_recv().expect("the second receive gets the message");
    assert_eq!(message.len(), len);
    assert!(check_pattern(&message, 42), "payload intact");
    drop(message);
    tx.join_timeout(Duration::from_secs(5))
        .expect("done once received");
    drop((tx, rx));
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_receive_out_of_descriptors_leaves_the_message_queued() {
    let name = unique_name("emfile");
    let kid = Kid::spawn("emfile", &[&name]);
    let lines = kid.finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}

// ----- fork -----------------------------------------------------------------------------------

fn fork() -> libc::pid_t {
    // SAFETY: the child only runs Rust code of this single-threaded test role (the harness runs
    // it with one test thread) and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    pid
}

fn wait_pid(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a status word on our stack.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status),
        "forked child did not exit normally"
    );
    libc::WEXITSTATUS(status)
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// Forks a child that drops every handle it inherited (and a held message) and exits; the
/// parent's channel, handles and message must be untouched.
fn fork_child_drops_inherited(name: &str) {
    let (tx, rx) = channel(name, config(16, MIB)).expect("create channel");
    let mut loan = tx.loan(64 * KIB).expect("loan");
    fill_pattern(&mut loan, 7);
    loan.send().expect("send");
    let held = rx.recv().expect("recv");
    let free_before = tx.free_arena_bytes();

    let child = fork();
    if child == 0 {
        drop(held);
        drop(tx);
        drop(rx);
        exit_now(0);
    }
    assert_eq!(wait_pid(child), 0);

    assert!(
        common::shm_exists(name),
        "the child's drops unlinked the channel"
    );
    let third = Sender::open(name).expect("a third party can still open the channel");
    third.send(b"from a third party").expect("third-party send");
    assert_eq!(&rx.recv().expect("recv")[..], b"from a third party");
    tx.send(b"from the parent").expect("parent send");
    assert_eq!(&rx.recv().expect("recv")[..], b"from the parent");
    assert!(check_pattern(&held, 7), "the held message was overwritten");
    assert_eq!(
        tx.free_arena_bytes(),
        free_before,
        "the child's drop freed the parent's pages"
    );
    drop(held);
    assert_eq!(tx.free_arena_bytes(), MIB as u64);
    drop((third, tx, rx));
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_forked_child_dropping_inherited_handles_leaves_the_parent_alone() {
    let name = unique_name("fork-drop");
    let lines = Kid::spawn("fork-drop", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}

/// Forks a child that sends and receives through the handles it inherited.
fn fork_child_uses_inherited(name: &str) {
    const EACH: u64 = 200;
    let (tx, rx) = channel(name, config(16, MIB)).expect("create channel");
    let child = fork();
    if child == 0 {
        // The child's sender and receiver register as participants of its own on first use.
        for seed in 0..EACH {
            let mut loan = tx.loan(4 * KIB).expect("child loan");
            fill_pattern(&mut loan, seed);
            loan.send().expect("child send");
        }
        tx.join().expect("the parent received the child's messages");
        for seed in 0..EACH {
            let m = rx.recv().expect("child recv");
            if !check_pattern(&m, 1000 + seed) {
                exit_now(2);
            }
        }
        drop((tx, rx));
        exit_now(0);
    }
    for seed in 0..EACH {
        let m = rx.recv().expect("parent recv");
        assert!(check_pattern(&m, seed), "message {seed} from the child");
    }
    for seed in 0..EACH {
        let mut loan = tx.loan(4 * KIB).expect("parent loan");
        fill_pattern(&mut loan, 1000 + seed);
        loan.send().expect("parent send");
    }
    assert_eq!(wait_pid(child), 0, "the forked child failed");
    // The parent's handles still work once the child is gone.
    tx.send(b"after the child").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"after the child");
    assert_eq!(tx.free_arena_bytes(), MIB as u64);
    drop((tx, rx));
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_forked_child_uses_inherited_handles_as_its_own_participant() {
    let name = unique_name("fork-use");
    let lines = Kid::spawn("fork-use", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}

/// Opens a sender, forks a child that sleeps with the inherited handle, and sleeps.
fn fork_parent_then_sleep(name: &str) {
    let tx = Sender::open(name).expect("open sender");
    tx.send(b"hello").expect("send");
    let child = fork();
    if child == 0 {
        thread::sleep(Duration::from_secs(60));
        exit_now(0);
    }
    common::signal_parent(&format!("grandchild {child}"));
    common::channel::sleep_until_killed();
}

#[test]
fn a_killed_parent_is_seen_gone_while_its_forked_child_lives() {
    let name = unique_name("fork-parent");
    let (tx, rx) = channel(&name, config(16, MIB)).expect("create channel");
    drop(tx);
    let mut kid = Kid::spawn("fork-parent", &[&name]);
    let line = kid.expect_prefix("grandchild ", false);
    let grandchild: u32 = line["grandchild ".len()..].parse().expect("pid");
    assert_eq!(&rx.recv().expect("recv")[..], b"hello");
    kid.kill();
    let got = rx.recv_timeout(Duration::from_secs(5)).map(drop);
    let grandchild_alive = std::path::Path::new(&format!("/proc/{grandchild}")).exists();
    signal(grandchild, libc::SIGKILL);
    assert!(grandchild_alive, "the forked grandchild should still live");
    assert!(
        matches!(got, Err(RecvTimeoutError::Disconnected)),
        "the dead parent's sender was kept alive by its forked child: {got:?}"
    );
    drop(rx);
    assert_gone(&name);
}

/// A SharedValue inherited through fork: dropping it in the child leaves the parent's segment;
/// using it there registers the child as a participant of its own.
fn fork_shared_value(name: &str) {
    let value = shmq::SharedValue::<u64>::create(name, 1).expect("create value");
    let child = fork();
    if child == 0 {
        drop(value);
        exit_now(0);
    }
    assert_eq!(wait_pid(child), 0);
    assert!(
        common::shm_exists(name),
        "the child's drop unlinked the value"
    );
    assert_eq!(value.load().expect("load"), 1);

    let child = fork();
    if child == 0 {
        if value.store(41).is_err() {
            exit_now(2);
        }
        // The parent's participant and the child's own.
        let alive = shmq::inspect(name).map(|info| info.alive()).unwrap_or(0);
        exit_now(if alive == 2 { 0 } else { 3 });
    }
    assert_eq!(
        wait_pid(child),
        0,
        "the forked child's use of the value failed"
    );
    assert_eq!(value.load().expect("load"), 41);
    drop(value);
    assert!(
        !common::shm_exists(name),
        "the value's segment was left behind"
    );
    common::signal_parent("ok");
}

#[test]
fn a_forked_child_drops_or_uses_an_inherited_shared_value() {
    let name = unique_name("fork-shared");
    let lines = Kid::spawn("fork-shared", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert!(!common::shm_exists(&name));
}

/// Forks while another thread of the process holds the region's membership lock (a detach that
/// waits for a stopped holder of the OFD lock): the child's first use of an inherited handle
/// must not find that lock held for ever by a thread that does not exist in the child.
fn fork_while_a_thread_detaches(name: &str) {
    let (tx, rx) = channel(name, config(16, MIB)).expect("create channel");
    let mut churner = Kid::spawn("churn-membership", &[name]);
    churner.expect("ready");
    let pid = churner.pid();
    stop_while(pid, "membership", || {
        shmq::inspect(name).expect("inspect").membership_holder == Some(pid)
    });
    // The detach waits up to 100 ms for the membership lock, holding this process's own.
    let detaching = thread::spawn(move || drop(tx));
    thread::sleep(Duration::from_millis(30));
    let child = fork();
    if child == 0 {
        thread::sleep(Duration::from_millis(300)); // the parent resumes the churner meanwhile
        match rx.try_recv() {
            Err(TryRecvError::Failed(e)) => {
                eprintln!("the forked child's first receive failed: {e}");
                exit_now(2)
            }
            _ => exit_now(0),
        }
    }
    signal(pid, libc::SIGCONT);
    churner.kill();
    detaching.join().expect("detach");
    assert_eq!(
        wait_pid(child),
        0,
        "the child found the membership lock held for ever"
    );
    drop(rx);
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_fork_while_a_thread_holds_the_membership_lock_leaves_the_child_usable() {
    let name = unique_name("fork-detaching");
    let lines = Kid::spawn("fork-while-detaching", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}

/// Forks, 200 times, while another thread of the process polls `try_recv` on an empty channel,
/// so that many forks happen inside a take (the receiver family's process-local take lock
/// held by that thread). In each child, the first receives must take that lock over, not wait
/// for a thread that does not exist in the child: a child that hangs for 5 s fails the test.
fn fork_while_a_thread_takes(name: &str) {
    const FORKS: usize = 200;
    let (tx, rx) = channel(name, config(16, MIB)).expect("create channel");
    let stop = Arc::new(AtomicBool::new(false));
    let polling = {
        let (rx, stop) = (rx.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = rx.try_recv();
            }
        })
    };
    for round in 0..FORKS {
        let child = fork();
        if child == 0 {
            for _ in 0..4 {
                if let Err(TryRecvError::Failed(e)) = rx.try_recv() {
                    eprintln!("the forked child's receive failed: {e}");
                    exit_now(2)
                }
            }
            exit_now(0)
        }
        let waited = Instant::now();
        let status = loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a status word on our stack.
            let done = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if done == child {
                break Some(status);
            }
            if waited.elapsed() > Duration::from_secs(5) {
                break None;
            }
            thread::sleep(Duration::from_millis(1));
        };
        let Some(status) = status else {
            signal(child as u32, libc::SIGKILL);
            // SAFETY: as above, reaping the child just killed.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            panic!("fork {round}: the child's receive waited 5 s for a take lock it inherited");
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "fork {round}: the child ended with status {status:#x}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    polling.join().expect("polling thread");
    drop((tx, rx));
    assert_gone(name);
    common::signal_parent("ok");
}

#[test]
fn a_fork_inside_another_threads_take_leaves_the_child_able_to_receive() {
    let name = unique_name("fork-taking");
    let lines = Kid::spawn("fork-while-taking", &[&name]).finish();
    assert!(lines.iter().any(|l| l == "ok"), "{lines:?}");
    assert_gone(&name);
}

// ----- a killed last receiver -----------------------------------------------------------------

#[test]
fn try_send_sees_a_killed_last_receiver_while_the_ring_has_room() {
    let name = unique_name("dead-receiver");
    let (tx, rx) = channel(&name, config(64, MIB)).expect("create channel");
    let mut kid = Kid::spawn("receiver-sleep", &[&name]);
    kid.expect("ready");
    drop(rx);
    tx.try_send(b"while the receiver lives")
        .expect("send to a live receiver");
    kid.kill();
    // Longer than the 25 ms liveness recheck: the next send must know.
    thread::sleep(Duration::from_millis(60));
    assert!(tx.len() < tx.capacity(), "the ring has room");
    match tx.try_send(b"to nobody") {
        Err(TrySendError::Disconnected(())) => {}
        other => panic!("try_send after the last receiver died: {other:?}"),
    }
    match tx.try_send(&[0u8; 4 * KIB]) {
        Err(TrySendError::Disconnected(())) => {}
        other => panic!("try_send of an arena payload: {other:?}"),
    }
    drop(tx);
    assert_gone(&name);
}
