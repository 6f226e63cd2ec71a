//! `Select` across real processes: a message on any of N channels wakes the selecting process,
//! with `futex_waitv` and with its fallback; a send becomes ready when a receiver in another
//! process makes room; a killed peer shows up as its own channel's disconnection; and
//! crossbeam-channel's rules (one operation completes, fairness, `try_`/timeout forms, panics on
//! misuse).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use common::Rng;
use shmq::{Receiver, RecvError, Select, SendTimeoutError, Sender};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "select_server" => {
            // Receives `rounds` messages through one Select over `n` channels, acknowledging
            // each with the index the select chose.
            let (base, n, rounds) = (&args[0], parse(&args[1]), parse(&args[2]));
            let receivers: Vec<Receiver> = (0..n)
                .map(|i| Receiver::open(&format!("{base}-{i}")).expect("open receiver"))
                .collect();
            let ack = Sender::open(&format!("{base}-ack")).expect("open ack sender");
            let mut sel = Select::new();
            for rx in &receivers {
                sel.recv(rx);
            }
            common::signal_parent("ready");
            for round in 0..rounds {
                let oper = sel.select();
                let index = oper.index();
                let msg = oper.recv(&receivers[index]).expect("selected receive");
                assert_eq!(&msg[..], &payload(index, round)[..], "round {round}");
                ack.send(&(index as u32).to_le_bytes()).expect("ack");
            }
            common::signal_parent("done");
        }
        "drain_later" => {
            // Waits, then takes one message of a full channel: room for a selected send.
            let rx = Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent("attached");
            thread::sleep(Duration::from_millis(50));
            let msg = rx.recv().expect("recv");
            assert_eq!(&msg[..], b"filler");
            let second = rx.recv_timeout(HANG).expect("the selected send");
            assert_eq!(&second[..], b"selected");
            common::signal_parent("drained");
        }
        "send_later" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            common::signal_parent("attached");
            thread::sleep(Duration::from_millis(50));
            tx.send(b"from the live peer").expect("send");
            common::signal_parent("sent");
        }
        "send_filler" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            tx.send(b"filler").expect("send");
            common::signal_parent("sent");
        }
        "hold_sender" => {
            let _tx = Sender::open(&args[0]).expect("open sender");
            common::signal_parent("attached");
            sleep_until_killed();
        }
        other => panic!("unknown child role {other}"),
    });
}

fn parse(arg: &str) -> usize {
    arg.parse().expect("number argument")
}

/// What the sender puts on channel `index` in round `round`.
fn payload(index: usize, round: usize) -> Vec<u8> {
    let mut bytes = (index as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&(round as u32).to_le_bytes());
    // Every third message large enough to travel in the arena rather than the ring slot.
    if round.is_multiple_of(3) {
        bytes.resize(8192, index as u8);
    }
    bytes
}

/// Sends `rounds` messages, each on a random one of `n` channels after a random pause (so the
/// selecting child is sometimes spinning and sometimes asleep), and checks that the child's
/// select chose that channel each time.
fn serve_rounds(n: usize, rounds: usize, child_env: &[(&str, &str)]) {
    let base = common::unique_name("sel");
    let channels: Vec<(Sender, Receiver)> = (0..n)
        .map(|i| shmq::channel(&format!("{base}-{i}"), config(8, 64 * KIB)).expect("create"))
        .collect();
    let (_ack_tx, ack_rx) =
        shmq::channel(&format!("{base}-ack"), config(8, 64 * KIB)).expect("ack");
    let args = [base.as_str(), &n.to_string(), &rounds.to_string()];
    let mut child = common::spawn_child_with_env("select_server", &args, child_env);
    common::wait_for_line(&mut child, "ready", CHILD_TIMEOUT);
    let mut rng = Rng(n as u64 * 7919 + rounds as u64);
    for round in 0..rounds {
        let index = rng.below(n as u64) as usize;
        thread::sleep(Duration::from_micros(rng.below(2000)));
        channels[index]
            .0
            .send(&payload(index, round))
            .expect("send");
        let ack = ack_rx.recv_timeout(HANG).expect("ack within HANG");
        assert_eq!(
            u32::from_le_bytes(ack[..4].try_into().unwrap()) as usize,
            index,
            "round {round}: the select chose another channel"
        );
    }
    let status = common::wait_exit(&mut child, CHILD_TIMEOUT);
    assert!(status.success(), "select child failed: {status}");
}

#[test]
fn a_message_on_any_of_eight_channels_wakes_a_select_in_another_process() {
    serve_rounds(8, 300, &[]);
}

#[test]
fn without_futex_waitv_the_select_still_wakes_for_every_channel() {
    serve_rounds(8, 150, &[("SHMQ_NO_FUTEX_WAITV", "1")]);
}

#[test]
fn a_select_over_more_channels_than_futex_waitv_takes_still_wakes() {
    serve_rounds(130, 130, &[]);
}

#[test]
fn a_send_becomes_ready_when_a_receiver_in_another_process_makes_room() {
    let name = common::unique_name("sel-send");
    let (tx, rx) = shmq::channel(&name, config(1, 64 * KIB)).expect("create");
    let (_idle_tx, idle_rx) =
        shmq::channel(&common::unique_name("sel-idle"), config(1, 64 * KIB)).expect("create");
    tx.send(b"filler").expect("fill the ring");
    let mut kid = Kid::spawn("drain_later", &[&name]);
    kid.expect("attached");
    drop(rx);
    let mut sel = Select::new();
    let never = sel.recv(&idle_rx);
    let send = sel.send(&tx);
    assert!(sel.try_select().is_err(), "the ring is full: nothing ready");
    let oper = sel.select_timeout(HANG).expect("room within HANG");
    assert_eq!(oper.index(), send, "not the idle receive {never}");
    oper.send(&tx, b"selected").expect("send");
    kid.expect("drained");
    kid.finish();
}

#[test]
fn a_selected_send_whose_slot_another_process_took_keeps_the_selects_deadline() {
    let name = common::unique_name("sel-send-deadline");
    let (tx, rx) = shmq::channel(&name, config(1, 64 * KIB)).expect("create");
    let mut sel = Select::new();
    let send = sel.send(&tx);
    let deadline = Instant::now() + Duration::from_millis(200);
    let oper = sel.select_deadline(deadline).expect("a free slot: ready");
    assert_eq!(oper.index(), send);
    // A sender in another process takes the one slot before this send is completed.
    let mut kid = Kid::spawn("send_filler", &[&name]);
    kid.expect("sent");
    kid.finish();
    // Nobody drains the channel: a send that ignored the deadline would wait for ever. The
    // rescuer then takes the filler after HANG, so that such a send returns, and fails the
    // assertion below, rather than hang the test.
    let (done, rescue) = std::sync::mpsc::channel::<()>();
    let rescuer = thread::spawn(move || {
        if rescue.recv_timeout(HANG).is_err() {
            let _ = rx.recv();
        }
        rx
    });
    let sent = oper.send(&tx, b"late");
    let _ = done.send(());
    let rx = rescuer.join().expect("rescuer");
    assert!(
        matches!(sent, Err(SendTimeoutError::Timeout(()))),
        "the selected send waited past the select's deadline: {sent:?}"
    );
    assert!(Instant::now() >= deadline, "it gave up before the deadline");
    assert_eq!(&rx.recv_timeout(HANG).expect("filler")[..], b"filler");
    assert!(rx.try_recv().is_err(), "the timed-out send sent something");
}

#[test]
fn a_killed_sender_shows_up_as_its_own_channels_disconnection() {
    let (a, b) = (common::unique_name("sel-a"), common::unique_name("sel-b"));
    let (tx_a, rx_a) = shmq::channel(&a, config(4, 64 * KIB)).expect("create a");
    let (tx_b, rx_b) = shmq::channel(&b, config(4, 64 * KIB)).expect("create b");
    let mut kid_a = Kid::spawn("hold_sender", &[&a]);
    let mut kid_b = Kid::spawn("hold_sender", &[&b]);
    kid_a.expect("attached");
    kid_b.expect("attached");
    drop((tx_a, tx_b)); // each channel's only sender is now its child
    let mut sel = Select::new();
    let on_a = sel.recv(&rx_a);
    let on_b = sel.recv(&rx_b);
    assert!(sel.select_timeout(Duration::from_millis(100)).is_err());

    let killed = Instant::now();
    kid_a.kill();
    let oper = sel.select_timeout(HANG).expect("the death within HANG");
    assert_eq!(oper.index(), on_a, "channel b's sender is alive");
    assert_eq!(oper.recv(&rx_a).unwrap_err(), RecvError::Disconnected);
    eprintln!("death seen after {:?}", killed.elapsed());

    sel.remove(on_a);
    assert!(sel.try_select().is_err(), "b still has its sender");
    kid_b.kill();
    let oper = sel
        .select_timeout(HANG)
        .expect("the second death within HANG");
    assert_eq!(oper.index(), on_b);
    assert_eq!(oper.recv(&rx_b).unwrap_err(), RecvError::Disconnected);
}

#[test]
fn ready_operations_are_chosen_fairly_and_one_completes_at_a_time() {
    let (tx_a, rx_a) =
        shmq::channel(&common::unique_name("sel-fair"), config(2048, MIB)).expect("create");
    let (tx_b, rx_b) =
        shmq::channel(&common::unique_name("sel-fair"), config(2048, MIB)).expect("create");
    for i in 0..1000u32 {
        tx_a.send(&i.to_le_bytes()).expect("send a");
        tx_b.send(&i.to_le_bytes()).expect("send b");
    }
    let mut sel = Select::new();
    let on_a = sel.recv(&rx_a);
    let on_b = sel.recv(&rx_b);
    let (mut from_a, mut from_b) = (0u32, 0u32);
    for _ in 0..1000 {
        let oper = sel.select();
        // Exactly one message moved, and in order on its channel.
        if oper.index() == on_a {
            let msg = oper.recv(&rx_a).expect("a");
            assert_eq!(&msg[..], &from_a.to_le_bytes());
            from_a += 1;
        } else {
            assert_eq!(oper.index(), on_b);
            let msg = oper.recv(&rx_b).expect("b");
            assert_eq!(&msg[..], &from_b.to_le_bytes());
            from_b += 1;
        }
    }
    assert_eq!(rx_a.len() + rx_b.len(), 1000, "one message per select");
    assert!(
        (350..=650).contains(&from_a),
        "unfair: {from_a} from a, {from_b} from b"
    );
}

#[test]
fn ready_says_which_without_taking_and_timeouts_hold() {
    let (tx, rx) =
        shmq::channel(&common::unique_name("sel-ready"), config(4, 64 * KIB)).expect("create");
    let mut sel = Select::new();
    let on_rx = sel.recv(&rx);
    assert!(sel.try_ready().is_err());
    let started = Instant::now();
    assert!(sel.ready_timeout(Duration::from_millis(30)).is_err());
    assert!(sel.select_timeout(Duration::from_millis(30)).is_err());
    assert!(started.elapsed() >= Duration::from_millis(60));
    tx.send(b"x").expect("send");
    assert_eq!(sel.ready(), on_rx);
    assert_eq!(rx.len(), 1, "ready() took nothing");
    assert_eq!(&sel.select().recv(&rx).expect("recv")[..], b"x");
}

#[test]
#[should_panic(expected = "dropped without being completed")]
fn a_selected_operation_dropped_uncompleted_panics() {
    let (tx, rx) =
        shmq::channel(&common::unique_name("sel-drop"), config(4, 64 * KIB)).expect("create");
    tx.send(b"x").expect("send");
    let mut sel = Select::new();
    sel.recv(&rx);
    let _ = sel.select();
}

#[test]
#[should_panic(expected = "another channel")]
fn completing_with_another_channels_receiver_panics() {
    let (tx, rx) =
        shmq::channel(&common::unique_name("sel-wrong"), config(4, 64 * KIB)).expect("create");
    let (_tx2, rx2) =
        shmq::channel(&common::unique_name("sel-wrong"), config(4, 64 * KIB)).expect("create");
    tx.send(b"x").expect("send");
    let mut sel = Select::new();
    sel.recv(&rx);
    let oper = sel.select();
    let _ = oper.recv(&rx2);
}

#[test]
fn the_select_macro_runs_the_arm_of_the_operation_that_completed() {
    let name = common::unique_name("sel-macro");
    let (tx, rx) = shmq::channel(&name, config(1, 64 * KIB)).expect("create");
    let (idle_tx, idle_rx) =
        shmq::channel(&common::unique_name("sel-macro-idle"), config(1, 64 * KIB)).expect("idle");
    tx.send(b"filler").expect("fill the ring");

    // Nothing ready: the `default` arm runs at once.
    let mut evaluated = false;
    let outcome = shmq::select! {
        recv(idle_rx) -> _msg => "received",
        send(tx, { evaluated = true; b"selected" }) -> _res => "sent",
        default => "nothing ready",
    };
    assert_eq!(outcome, "nothing ready");
    assert!(!evaluated, "the payload of an arm not chosen was evaluated");

    // A receiver in another process makes room: the send arm runs, and sends.
    let mut kid = Kid::spawn("drain_later", &[&name]);
    kid.expect("attached");
    drop(rx);
    let outcome = shmq::select! {
        recv(idle_rx) -> msg => {
            panic!("nothing was sent on the idle channel: {msg:?}");
        }
        send(tx, b"selected") -> res => {
            res.expect("selected send");
            "sent"
        }
        default(HANG) => "timed out",
    };
    assert_eq!(outcome, "sent");
    kid.expect("drained");
    kid.finish();

    // A message: the recv arm gets it.
    idle_tx.send(b"x").expect("send");
    let got = shmq::select! {
        recv(idle_rx) -> msg => msg.expect("recv").to_vec(),
    };
    assert_eq!(got, b"x");
}

#[test]
fn a_stopped_peer_on_one_channel_does_not_hold_up_the_others() {
    let (a, b) = (
        common::unique_name("sel-stop-a"),
        common::unique_name("sel-stop-b"),
    );
    let (tx_a, rx_a) = shmq::channel(&a, config(4, 64 * KIB)).expect("create a");
    let (tx_b, rx_b) = shmq::channel(&b, config(4, 64 * KIB)).expect("create b");
    let mut stopped = Kid::spawn("hold_sender", &[&a]);
    stopped.expect("attached");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(stopped.pid() as libc::pid_t, libc::SIGSTOP) },
        0
    );
    drop((tx_a, tx_b));
    let mut live = Kid::spawn("send_later", &[&b]);
    live.expect("attached");
    let mut sel = Select::new();
    let on_a = sel.recv(&rx_a);
    let on_b = sel.recv(&rx_b);
    let oper = sel.select_timeout(HANG).expect("channel b within HANG");
    assert_eq!(
        oper.index(),
        on_b,
        "not channel a ({on_a}), whose sender is stopped"
    );
    assert_eq!(&oper.recv(&rx_b).expect("recv")[..], b"from the live peer");
    // A stopped sender is alive: its channel is neither ready nor disconnected.
    sel.remove(on_b);
    assert!(sel.select_timeout(Duration::from_millis(100)).is_err());
    live.expect("sent");
    live.finish();
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(stopped.pid() as libc::pid_t, libc::SIGCONT) },
        0
    );
    stopped.kill();
}
