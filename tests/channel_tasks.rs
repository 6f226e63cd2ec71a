//! Task counting, `multiprocessing.JoinableQueue`'s way: every message sent is a task,
//! `task_done` (on any handle, in any process) finishes one and refuses to finish more than
//! were sent, and `join_tasks` waits until none is unfinished, re-evaluated as messages are
//! sent. A worker killed with tasks unfinished has them counted done once it is reclaimed; one
//! that drops its handles leaves them unfinished. The message count of `Sender::join`
//! (received and dropped) is untouched by all of it.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::channel::{assert_gone, config, monotonic_ns, overflow_files, Kid, HANG, KIB};
use common::{unique_name, Cleanup};
use shmq::{JoinTasksTimeoutError, Receiver, Sender, TaskDoneError};

/// Long enough for a wait that must not end to have ended, were it going to.
const SETTLE: Duration = Duration::from_millis(200);

// ----- child processes ------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "finish_on_go" => finish_on_go(&args[0], &args[1], args[2].parse().expect("n")),
        "racer" => racer(&args[0], &args[1], &args[2]),
        "take_and_stay" => {
            // Takes `n` messages, finishes `k` of them, and waits (holding them) to be killed.
            let (rx, held) = take_and_finish(&args[0], &args[1], &args[2]);
            common::signal_parent("holding");
            let _keep = (rx, held);
            common::channel::sleep_until_killed();
        }
        "take_and_leave" => {
            let (rx, held) = take_and_finish(&args[0], &args[1], &args[2]);
            drop(held);
            drop(rx); // a normal detach
            common::signal_parent("left");
        }
        "take_and_exit" => {
            let (rx, held) = take_and_finish(&args[0], &args[1], &args[2]);
            common::signal_parent("exiting");
            // Exits without dropping anything: to the channel, a death.
            std::mem::forget((rx, held));
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    });
}

/// Receives `n` messages and drops them (so `Sender::join` is done), then waits for a message
/// on `ctl` and finishes the `n` tasks one by one, printing the time before the last.
fn finish_on_go(jobs: &str, ctl: &str, n: usize) {
    let rx = Receiver::open(jobs).expect("open receiver");
    let go = Receiver::open(ctl).expect("open control receiver");
    common::signal_parent("ready");
    for _ in 0..n {
        drop(rx.recv_timeout(HANG).expect("recv"));
    }
    common::signal_parent("received");
    drop(go.recv_timeout(HANG).expect("go"));
    for i in 0..n {
        thread::sleep(Duration::from_millis(20));
        if i == n - 1 {
            // Printed before the call: the parent's join_tasks must return after this instant.
            common::signal_parent(&format!("last {}", monotonic_ns()));
        }
        rx.task_done().expect("task_done");
    }
}

/// Calls `task_done` on a `side` handle of `jobs` as fast as it can, counting its successes,
/// until a message on `ctl` says stop (looked at after every 256th refusal, so that the racers
/// spend their time in `task_done`).
fn racer(jobs: &str, ctl: &str, side: &str) {
    let finish: Box<dyn Fn() -> Result<(), TaskDoneError>> = match side {
        "sender" => {
            let tx = Sender::open(jobs).expect("open sender");
            Box::new(move || tx.task_done())
        }
        _ => {
            let rx = Receiver::open(jobs).expect("open receiver");
            Box::new(move || rx.task_done())
        }
    };
    let stop = Receiver::open(ctl).expect("open control receiver");
    common::signal_parent("ready");
    let (mut successes, mut refusals) = (0u64, 0u64);
    loop {
        match finish() {
            Ok(()) => successes += 1,
            Err(TaskDoneError::TooMany) => {
                refusals += 1;
                if refusals.is_multiple_of(256) && stop.try_recv().is_ok() {
                    break;
                }
            }
            Err(e) => panic!("task_done: {e}"),
        }
    }
    common::signal_parent(&format!("successes {successes}"));
}

/// Opens a receiver on `jobs`, takes `n` messages and calls `task_done` `k` times.
fn take_and_finish(jobs: &str, n: &str, k: &str) -> (Receiver, Vec<shmq::Message>) {
    let rx = Receiver::open(jobs).expect("open receiver");
    let n: usize = n.parse().expect("n");
    let k: usize = k.parse().expect("k");
    let held: Vec<_> = (0..n)
        .map(|_| rx.recv_timeout(HANG).expect("recv"))
        .collect();
    for _ in 0..k {
        rx.task_done().expect("task_done");
    }
    (rx, held)
}

fn tasks_stats(name: &str) -> shmq::ChannelStats {
    shmq::inspect(name)
        .expect("inspect")
        .channel
        .expect("channel stats")
}

// ----- the count --------------------------------------------------------------------------------

#[test]
fn task_done_before_any_send_is_too_many() {
    let name = unique_name("tasks-none");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    assert_eq!(tx.task_done(), Err(TaskDoneError::TooMany));
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    assert_eq!(tx.try_task_done(), Err(TaskDoneError::TooMany));
    assert_eq!(
        rx.task_done().unwrap_err().to_string(),
        "task_done() called too many times"
    );
    assert_eq!((tx.unfinished_tasks(), rx.unfinished_tasks()), (0, 0));
    tx.try_join_tasks()
        .expect("nothing sent: no task unfinished");
    rx.try_join_tasks()
        .expect("nothing sent: no task unfinished");
    tx.join_tasks().expect("blocking form: returns at once");
    let stats = tasks_stats(&name);
    assert_eq!((stats.tasks_done_total, stats.unfinished_tasks), (0, 0));
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn three_sends_three_task_dones_and_a_fourth_is_too_many() {
    let name = unique_name("tasks-three");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    for i in 0..3u8 {
        tx.send(&[i; 10]).expect("send");
    }
    assert_eq!(tx.unfinished_tasks(), 3);
    let held: Vec<_> = (0..3).map(|_| rx.recv().expect("recv")).collect();
    // Any handle may finish a task.
    rx.task_done().expect("first");
    assert_eq!(rx.unfinished_tasks(), 2);
    tx.task_done().expect("second");
    rx.try_task_done().expect("third");
    assert_eq!((tx.unfinished_tasks(), rx.unfinished_tasks()), (0, 0));
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    assert_eq!(tx.task_done(), Err(TaskDoneError::TooMany));
    let stats = tasks_stats(&name);
    assert_eq!(
        (
            stats.sent_total,
            stats.tasks_done_total,
            stats.unfinished_tasks
        ),
        (3, 3, 0)
    );
    // The messages are still held: Sender::join is not done, join_tasks is.
    assert!(tx.try_join().unwrap_err().is_timeout());
    tx.try_join_tasks().expect("every task done");
    drop(held);
    tx.try_join().expect("every message dropped");
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn task_done_may_precede_recv_and_is_apart_from_join() {
    let name = unique_name("tasks-early");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    tx.send(b"one").expect("send");
    tx.send(b"two").expect("send");
    // Python counts puts, not gets: a task may be finished before it is received.
    rx.task_done().expect("before any recv");
    tx.task_done().expect("before any recv");
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    rx.try_join_tasks().expect("every task done");
    // Nothing was received: the message count is untouched.
    assert!(tx.try_join().unwrap_err().is_timeout());
    assert_eq!(&rx.recv().expect("recv")[..], b"one");
    assert_eq!(&rx.recv().expect("recv")[..], b"two");
    tx.try_join().expect("both received and dropped");
    assert_eq!(tx.unfinished_tasks(), 0);
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_lost_overflow_payload_counts_as_a_task_done() {
    let name = unique_name("tasks-lost");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    tx.send(&vec![5u8; 200 * KIB]).expect("overflow send");
    let files = overflow_files(&name);
    assert_eq!(files.len(), 1);
    std::fs::remove_file(format!("/dev/shm/{}", files[0])).expect("remove the payload");
    assert!(rx.try_recv().is_err(), "a removed payload is reported");
    // No receiver can ever have it, so nobody would finish its task.
    assert_eq!(tx.unfinished_tasks(), 0);
    tx.try_join_tasks()
        .expect("the lost message's task is done");
    tx.try_join().expect("and the message itself");
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    drop((tx, rx));
    assert_gone(&name);
}

// ----- join_tasks -------------------------------------------------------------------------------

#[test]
fn join_tasks_waits_for_another_process_to_finish_every_task() {
    let name = unique_name("tasks-join");
    let ctl = format!("{name}.ctl");
    let _cleanup = Cleanup::new(&[&name, &ctl]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    let (go, _go_rx) = shmq::channel(&ctl, config(2, 64 * KIB)).expect("create control");
    let n = 5;
    let mut kid = Kid::spawn("finish_on_go", &[&name, &ctl, &n.to_string()]);
    kid.expect("ready");
    drop(rx); // the child is the only receiver of jobs
    for i in 0..n as u8 {
        tx.send(&[i; 8]).expect("send");
    }
    kid.expect("received");
    // Every message is received and dropped, and no task is done.
    tx.join_timeout(HANG).expect("messages dropped");
    assert_eq!(tx.unfinished_tasks(), n as u64);
    assert!(tx.try_join_tasks().unwrap_err().is_timeout());
    assert!(tx.join_tasks_timeout(SETTLE).unwrap_err().is_timeout());
    go.send(b"go").expect("go");
    tx.join_tasks_timeout(HANG).expect("every task done");
    let joined_ns = monotonic_ns();
    let last: u64 = kid.expect_prefix("last ", false)[5..]
        .parse()
        .expect("timestamp");
    assert!(
        last < joined_ns,
        "join_tasks returned {} ms before the child finished its last task",
        (last - joined_ns) / 1_000_000
    );
    assert_eq!(tx.unfinished_tasks(), 0);
    kid.finish();
    assert_eq!(tx.task_done(), Err(TaskDoneError::TooMany));
    drop((tx, go, _go_rx));
    assert_gone(&name);
    assert_gone(&ctl);
}

#[test]
fn join_tasks_waits_again_for_tasks_sent_while_it_waits() {
    let name = unique_name("tasks-again");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    tx.send(b"first").expect("send");
    let joiner = tx.clone();
    let joined = common::channel::in_thread(move || joiner.join_tasks_timeout(HANG));
    thread::sleep(SETTLE);
    // Sent while join_tasks waits: it waits for this one too (Sender::join would not).
    tx.send(b"second").expect("send");
    rx.task_done().expect("one task done");
    assert!(
        joined.recv_timeout(SETTLE).is_err(),
        "join_tasks returned with a task unfinished"
    );
    rx.task_done().expect("the other");
    let (result, _) = joined.recv_timeout(HANG).expect("join_tasks returns");
    result.expect("every task done");
    // Done is not for good: one more send, one more task.
    tx.send(b"third").expect("send");
    assert!(rx.try_join_tasks().unwrap_err().is_timeout());
    rx.task_done().expect("third task");
    rx.try_join_tasks().expect("done again");
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn join_tasks_has_try_timeout_and_deadline_forms_on_both_handles() {
    let name = unique_name("tasks-forms");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    tx.send(b"task").expect("send");
    let short = Duration::from_millis(30);
    assert_eq!(tx.try_join_tasks(), Err(JoinTasksTimeoutError::Timeout));
    assert_eq!(rx.try_join_tasks(), Err(JoinTasksTimeoutError::Timeout));
    assert!(tx.join_tasks_timeout(short).unwrap_err().is_timeout());
    assert!(rx.join_tasks_timeout(short).unwrap_err().is_timeout());
    let e = rx.join_tasks_deadline(Instant::now() + short).unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(e.to_string(), "timed out waiting for unfinished tasks");
    assert!(tx
        .join_tasks_deadline(Instant::now() + short)
        .unwrap_err()
        .is_timeout());
    tx.try_task_done().expect("try form");
    tx.try_join_tasks().expect("done");
    rx.try_join_tasks().expect("done");
    tx.join_tasks_timeout(Duration::MAX)
        .expect("no deadline at all");
    rx.join_tasks_deadline(Instant::now()).expect("done");
    rx.join_tasks().expect("done");
    drop((tx, rx));
    assert_gone(&name);
}

// ----- races between processes ------------------------------------------------------------------

#[test]
fn racing_task_dones_of_two_processes_count_each_task_once() {
    let name = unique_name("tasks-race");
    let ctl = format!("{name}.ctl");
    let _cleanup = Cleanup::new(&[&name, &ctl]);
    let rounds: u64 = 1000;
    let (tx, rx) = shmq::channel(&name, config(1024, 64 * KIB)).expect("create");
    let (stop, _stop_rx) = shmq::channel(&ctl, config(2, 64 * KIB)).expect("create control");
    let mut kids: Vec<Kid> = ["sender", "receiver"]
        .iter()
        .map(|side| Kid::spawn("racer", &[&name, &ctl, side]))
        .collect();
    for kid in &mut kids {
        kid.expect("ready");
    }
    // One task at a time, so that both racers meet at every boundary.
    for round in 0..rounds {
        tx.send(b"t").expect("send");
        tx.join_tasks_timeout(HANG)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let stats = tasks_stats(&name);
        assert!(
            stats.tasks_done_total <= stats.sent_total,
            "round {round}: {} tasks done of {} sent",
            stats.tasks_done_total,
            stats.sent_total
        );
    }
    for _ in &kids {
        stop.send(b"stop").expect("stop");
    }
    let mut total = 0;
    for kid in &mut kids {
        let line = kid.expect_prefix("successes ", false);
        total += line[10..].parse::<u64>().expect("count");
    }
    for kid in kids {
        kid.finish();
    }
    assert_eq!(total, rounds, "successful task_done calls");
    let stats = tasks_stats(&name);
    assert_eq!(
        (
            stats.sent_total,
            stats.tasks_done_total,
            stats.unfinished_tasks
        ),
        (rounds, rounds, 0)
    );
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    drop((tx, rx, stop, _stop_rx));
    assert_gone(&name);
    assert_gone(&ctl);
}

// ----- workers that go ------------------------------------------------------------------------

#[test]
fn a_worker_killed_between_recv_and_task_done_counts_its_tasks_done() {
    let name = unique_name("tasks-killed");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    for i in 0..3u8 {
        tx.send(&[i; 16]).expect("send");
    }
    // Takes all three, finishes one, and is killed holding the other two.
    let mut kid = Kid::spawn("take_and_stay", &[&name, "3", "1"]);
    kid.expect("holding");
    assert_eq!(tx.unfinished_tasks(), 2);
    assert!(tx.try_join_tasks().unwrap_err().is_timeout());
    let joiner = tx.clone();
    let joined = common::channel::in_thread(move || joiner.join_tasks_timeout(HANG));
    kid.kill();
    // The waiting join_tasks reclaims the dead worker itself, which counts its two done.
    let (result, _) = joined
        .recv_timeout(HANG + HANG)
        .expect("join_tasks returns");
    result.expect("the dead worker's tasks count as done");
    let stats = tasks_stats(&name);
    assert_eq!(
        (
            stats.sent_total,
            stats.tasks_done_total,
            stats.unfinished_tasks
        ),
        (3, 3, 0)
    );
    // The messages it held count as done for Sender::join too, as before.
    tx.join_timeout(HANG).expect("join");
    // Sane afterwards: a new task is one unfinished task.
    tx.send(b"four").expect("send");
    assert_eq!(tx.unfinished_tasks(), 1);
    assert!(tx.try_join_tasks().unwrap_err().is_timeout());
    drop(rx.recv().expect("recv"));
    rx.task_done().expect("the fourth task");
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    tx.try_join_tasks().expect("done");
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_dead_workers_credit_never_exceeds_the_unfinished_tasks() {
    let name = unique_name("tasks-cap");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    tx.send(b"a").expect("send");
    tx.send(b"b").expect("send");
    // The worker takes both and finishes none; the parent finishes both on its behalf.
    let mut kid = Kid::spawn("take_and_stay", &[&name, "2", "0"]);
    kid.expect("holding");
    tx.task_done().expect("on the worker's behalf");
    rx.task_done().expect("on the worker's behalf");
    kid.kill();
    // Reclaim it (an attach reclaims the dead first).
    drop(Receiver::open(&name).expect("open"));
    let stats = tasks_stats(&name);
    assert_eq!(
        (
            stats.sent_total,
            stats.tasks_done_total,
            stats.unfinished_tasks
        ),
        (2, 2, 0),
        "the dead worker's two taken tasks were finished already: nothing more to credit"
    );
    // Counting the dead's two again would make this new task look done.
    tx.send(b"c").expect("send");
    assert_eq!(tx.unfinished_tasks(), 1);
    assert!(tx.try_join_tasks().unwrap_err().is_timeout());
    rx.task_done().expect("the new task");
    assert_eq!(rx.task_done(), Err(TaskDoneError::TooMany));
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_worker_that_drops_its_receiver_leaves_its_tasks_unfinished() {
    let name = unique_name("tasks-leave");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    for i in 0..3u8 {
        tx.send(&[i; 4]).expect("send");
    }
    // Takes three, finishes one, drops its handles and exits normally.
    let mut kid = Kid::spawn("take_and_leave", &[&name, "3", "1"]);
    kid.expect("left");
    kid.finish();
    drop(Receiver::open(&name).expect("open")); // nothing dead to reclaim, but try
    assert_eq!(tx.unfinished_tasks(), 2, "a detach finishes no task");
    assert!(tx.join_tasks_timeout(SETTLE).unwrap_err().is_timeout());
    // Anyone may finish them (Python's count is anonymous).
    rx.task_done().expect("second");
    tx.task_done().expect("third");
    tx.try_join_tasks().expect("done");
    tx.try_join().expect("its messages were dropped");
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_worker_that_exits_without_dropping_its_receiver_counts_as_dead() {
    let name = unique_name("tasks-exit");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(8, 64 * KIB)).expect("create");
    for i in 0..3u8 {
        tx.send(&[i; 4]).expect("send");
    }
    let mut kid = Kid::spawn("take_and_exit", &[&name, "3", "1"]);
    kid.expect("exiting");
    kid.finish();
    // Its liveness went with the process: reclaimed as dead, its two unfinished tasks done.
    tx.join_tasks_timeout(HANG)
        .expect("the exited worker's tasks count as done");
    let stats = tasks_stats(&name);
    assert_eq!((stats.tasks_done_total, stats.unfinished_tasks), (3, 0));
    drop((tx, rx));
    assert_gone(&name);
}
