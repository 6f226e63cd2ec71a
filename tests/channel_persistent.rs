//! Persistent channels (`ChannelConfig::with_disconnect(false)`), which never report
//! `Disconnected`: sends queue with no receiver, receives wait with no sender, peers killed with
//! SIGKILL are reclaimed but not reported; and a second role attached on one mapping
//! (`Sender::open_receiver`, `Receiver::open_sender`).

mod common;

use std::os::unix::fs::FileExt;
use std::thread;
use std::time::{Duration, Instant};

use common::channel::*;
use shmq::{
    ChannelConfig, Error, RecvTimeoutError, Role, SendTimeoutError, Sender, TryRecvError,
    TrySendError,
};

/// Byte offset of a channel's data area with the default 64 participant slots:
/// round_up(128 + 64 * 64, 4096) (docs/design.md).
const DATA_OFFSET: u64 = 8192;
/// Offset of the flags word in a channel's config area (src/channel/layout.rs).
const C_FLAGS: u64 = 32;

fn persistent(capacity: usize, arena: usize) -> ChannelConfig {
    config(capacity, arena).with_disconnect(false)
}

/// Sizes covering every placement with a 128 KiB arena: inline, arena, overflow.
const LENS: [usize; 7] = [0, 50, 96, 97, 5000, 60_000, 200_000];

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "recv_all" => {
            // Receives args[1] messages of LENS's pattern, then finds the channel empty.
            let rx = shmq::Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent(&format!("disconnects {}", rx.disconnects()));
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                let msg = rx.recv_timeout(HANG).expect("queued message");
                assert_eq!(msg.len(), LENS[i % LENS.len()], "message {i}");
                assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
            }
            common::signal_parent(&format!("received {n}"));
        }
        "send_some" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                tx.send(&pattern(i as u64, 5000)).expect("send");
            }
            common::signal_parent("sent");
        }
        "take_and_sleep" => {
            // Holds one received message (arena pages) until killed.
            let rx = shmq::Receiver::open(&args[0]).expect("open receiver");
            let held = rx.recv_timeout(HANG).expect("a message to hold");
            common::signal_parent(&format!("holding {}", held.len()));
            sleep_until_killed();
        }
        "send_loan_and_sleep" => {
            // Sends two messages, then holds an unsent loan (arena pages) until killed.
            let tx = Sender::open(&args[0]).expect("open sender");
            tx.send(&pattern(0, 5000)).expect("send");
            tx.send(&pattern(1, 5000)).expect("send");
            let _loan = tx.loan(5000).expect("loan");
            common::signal_parent("sent");
            sleep_until_killed();
        }
        other => panic!("unknown child role {other}"),
    });
}

// ----- configuration ---------------------------------------------------------------------------

#[test]
fn disconnect_is_configured_recorded_and_read_by_openers() {
    assert!(ChannelConfig::default().disconnect(), "default: disconnect");
    assert!(!ChannelConfig::default().with_disconnect(false).disconnect());
    assert!(ChannelConfig::default()
        .with_disconnect(false)
        .with_disconnect(true)
        .disconnect());

    let name = common::unique_name("ch-p-flag");
    let (tx, rx) = shmq::channel(&name, config(2, MIB)).expect("create");
    assert!(tx.disconnects() && rx.disconnects());
    assert!(Sender::open(&name).expect("open").disconnects());
    drop((tx, rx));
    assert_gone(&name);

    let (tx, rx) = shmq::channel(&name, persistent(2, MIB)).expect("create persistent");
    assert!(!tx.disconnects() && !rx.disconnects());
    let opened = shmq::Receiver::open(&name).expect("open");
    assert!(
        !opened.disconnects(),
        "an opener reads the flag from the channel"
    );
    drop((tx, rx, opened));
    assert_gone(&name);
}

#[test]
fn unknown_flag_bits_are_refused_by_openers() {
    let name = common::unique_name("ch-p-unknown");
    let _cleanup = common::Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, persistent(2, MIB)).expect("create");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/shmq.{name}"))
        .expect("open the object");
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, DATA_OFFSET + C_FLAGS)
        .expect("read flags");
    assert_eq!(u64::from_ne_bytes(word), 1, "the persistent flag is bit 0");

    file.write_all_at(&(1u64 | 1 << 7).to_ne_bytes(), DATA_OFFSET + C_FLAGS)
        .expect("write flags");
    for err in [
        Sender::open(&name).unwrap_err(),
        shmq::Receiver::open(&name).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Incompatible { what: "channel flags", found, .. } if found == "0x81"),
            "{err:?}"
        );
    }
    // The handles that read the word before keep working with what they read.
    tx.send(b"still fine").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"still fine");

    file.write_all_at(&1u64.to_ne_bytes(), DATA_OFFSET + C_FLAGS)
        .expect("restore flags");
    drop(Sender::open(&name).expect("open once restored"));
    drop((tx, rx));
    assert_gone(&name);
}

// ----- no receiver -----------------------------------------------------------------------------

#[test]
fn sends_without_a_receiver_queue_for_a_receiver_that_opens_later() {
    let name = common::unique_name("ch-p-norx");
    let arena = 128 * KIB;
    let capacity = LENS.len() + 1;
    let (tx, rx) = shmq::channel(&name, persistent(capacity, arena)).expect("create");
    drop(rx); // no receiver anywhere from here on
    for (i, &len) in LENS.iter().enumerate() {
        let payload = pattern(i as u64, len);
        match i % 3 {
            0 => tx.try_send(&payload).expect("try_send with no receiver"),
            1 => tx.send(&payload).expect("send with no receiver"),
            _ => tx
                .send_timeout(&payload, HANG)
                .expect("send_timeout with no receiver"),
        }
    }
    // Built in a loan too, and still no receiver.
    let mut loan = tx.loan(5000).expect("loan with no receiver");
    fill_pattern(&mut loan, LENS.len() as u64);
    loan.send().expect("loan sent with no receiver");
    // A full ring is Full and Timeout, as with receivers, not Disconnected.
    assert!(tx.is_full());
    assert!(matches!(tx.try_send(b"x"), Err(TrySendError::Full(..))));
    assert!(matches!(
        tx.send_timeout(b"x", Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout(_))
    ));
    // join waits for receivers to come.
    assert!(matches!(
        tx.join_timeout(Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout(_))
    ));

    let mut kid = Kid::spawn("recv_all", &[&name, &LENS.len().to_string()]);
    kid.expect("disconnects false");
    kid.expect(&format!("received {}", LENS.len()));
    kid.finish();
    // The loan's message is still queued: the receiver took only LENS.len().
    assert_eq!(tx.len(), 1);
    // The receiver is gone again; sending still queues, and join still waits.
    tx.send(&pattern(9, 200_000))
        .expect("send after the receiver left");
    assert!(matches!(tx.try_join(), Err(SendTimeoutError::Timeout(_))));
    // The last participant's drop unlinks the channel and its queued overflow payload.
    assert_eq!(overflow_files(&name).len(), 1);
    drop(tx);
    assert_gone(&name);
}

// ----- no sender -------------------------------------------------------------------------------

#[test]
fn receives_without_a_sender_wait_for_one_instead_of_disconnecting() {
    let name = common::unique_name("ch-p-notx");
    let (tx, rx) = shmq::channel(&name, persistent(4, MIB)).expect("create");
    drop(tx); // no sender anywhere from here on
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(matches!(
        rx.recv_deadline(Instant::now() + Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_eq!(rx.try_iter().count(), 0);

    // A blocking recv waits, with no sender, for one to come and send.
    let blocked = in_thread({
        let rx = rx.clone();
        move || rx.recv().map(|m| check_pattern(&m, 0) && m.len() == 5000)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(blocked.try_recv().is_err(), "recv returned with no sender");
    let mut kid = Kid::spawn("send_some", &[&name, "3"]);
    kid.expect("sent");
    kid.finish();
    let (first, _) = blocked.recv_timeout(HANG).expect("recv still blocked");
    assert!(
        first.expect("the first message"),
        "the first message corrupted"
    );
    for i in 1..3 {
        let msg = rx.recv_timeout(HANG).expect("queued by the exited sender");
        assert!(check_pattern(&msg, i), "message {i} corrupted");
    }
    // The sender has exited: still no Disconnected.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    drop(rx);
    assert_gone(&name);
}

// ----- peers killed ----------------------------------------------------------------------------

/// Calls `poke` until `done` holds (a blocked or failing call is what rescans the peers and
/// reclaims the dead), failing after `HANG`.
fn until(mut done: impl FnMut() -> bool, mut poke: impl FnMut()) {
    let deadline = Instant::now() + HANG;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {HANG:?}"
        );
        poke();
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killed_receivers_are_reclaimed_but_never_reported() {
    let name = common::unique_name("ch-p-kill-rx");
    let arena = MIB as u64;
    let (tx, rx) = shmq::channel(&name, persistent(4, MIB)).expect("create");
    tx.send(&pattern(0, 5000)).expect("send");
    let mut kid = Kid::spawn("take_and_sleep", &[&name]);
    kid.expect("holding 5000");
    drop(rx); // the child is the only receiver
    while tx.try_send(&[7; 5000]).is_ok() {}
    assert!(tx.is_full());
    // A blocked send is waiting when the last receiver is killed: it times out, it does not
    // disconnect.
    let blocked = in_thread({
        let tx = tx.clone();
        move || tx.send_timeout(&[3; 5000], Duration::from_millis(1500))
    });
    thread::sleep(Duration::from_millis(100));
    kid.kill();
    let (sent, _) = blocked.recv_timeout(HANG).expect("send still blocked");
    assert!(
        matches!(sent, Err(SendTimeoutError::Timeout(_))),
        "{sent:?}"
    );
    assert!(matches!(tx.try_send(b"x"), Err(TrySendError::Full(..))));
    assert!(matches!(
        tx.join_timeout(Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout(_))
    ));
    // The message the dead receiver held went back to the arena; four queued ones remain.
    let queued = arena - 4 * 2 * PAGE;
    until(
        || tx.free_arena_bytes() == queued,
        || {
            let _ = tx.try_send(b"x");
        },
    );
    let info = shmq::inspect(&name).expect("inspect");
    assert_eq!(info.participants.len(), 1, "{:?}", info.participants);
    assert_eq!(info.participants[0].role, Some(Role::Sender));
    // Every receiver is dead and still no Disconnected; a new one gets the queued messages.
    let rx = tx.open_receiver().expect("a new receiver");
    for _ in 0..4 {
        assert_eq!(&rx.recv_timeout(HANG).expect("queued")[..], &[7; 5000][..]);
    }
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn killed_senders_are_reclaimed_but_never_reported() {
    let name = common::unique_name("ch-p-kill-tx");
    let arena = MIB as u64;
    let (tx, rx) = shmq::channel(&name, persistent(4, MIB)).expect("create");
    drop(tx);
    let mut kid = Kid::spawn("send_loan_and_sleep", &[&name]);
    kid.expect("sent");
    for i in 0..2 {
        let msg = rx.recv_timeout(HANG).expect("sent by the child");
        assert!(check_pattern(&msg, i), "message {i} corrupted");
    }
    // A blocked receive is waiting when the last sender is killed: it times out.
    let blocked = in_thread({
        let rx = rx.clone();
        move || {
            rx.recv_timeout(Duration::from_millis(1500))
                .map(|m| m.len())
        }
    });
    thread::sleep(Duration::from_millis(100));
    kid.kill();
    let (got, _) = blocked.recv_timeout(HANG).expect("recv still blocked");
    assert!(matches!(got, Err(RecvTimeoutError::Timeout)), "{got:?}");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    // The dead sender's unsent loan went back to the arena.
    until(
        || rx.free_arena_bytes() == arena,
        || {
            let _ = rx.try_recv();
        },
    );
    let info = shmq::inspect(&name).expect("inspect");
    assert_eq!(info.participants.len(), 1, "{:?}", info.participants);
    assert_eq!(info.participants[0].role, Some(Role::Receiver));
    drop(rx);
    assert_gone(&name);
}

// ----- a second role on one mapping ------------------------------------------------------------

/// Mappings of the channel's object in this process (each `mmap` of it starts at offset 0).
fn mappings_of(name: &str) -> usize {
    let path = format!("/dev/shm/shmq.{name}");
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 6 && fields[2].trim_start_matches('0').is_empty() && fields[5] == path
        })
        .count()
}

#[test]
fn open_receiver_and_open_sender_share_the_mapping() {
    let name = common::unique_name("ch-p-roles");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    assert_eq!(mappings_of(&name), 1);
    drop(rx);
    // A default channel without a receiver is disconnected, until a receiver attaches.
    assert!(tx.try_send(b"x").unwrap_err().is_disconnected());
    let rx = tx.open_receiver().expect("open_receiver");
    assert_eq!(
        mappings_of(&name),
        1,
        "open_receiver mapped the channel again"
    );
    assert!(rx.disconnects());
    tx.send(&pattern(1, 5000))
        .expect("send to the new receiver");
    assert!(check_pattern(&rx.recv().expect("recv"), 1));

    // For comparison: opening by name maps it a second time.
    let by_name = shmq::Receiver::open(&name).expect("open by name");
    assert_eq!(mappings_of(&name), 2);
    drop(by_name);
    assert_eq!(mappings_of(&name), 1);

    let tx2 = rx.open_sender().expect("open_sender");
    assert_eq!(
        mappings_of(&name),
        1,
        "open_sender mapped the channel again"
    );
    let info = shmq::inspect(&name).expect("inspect");
    let mut roles: Vec<_> = info.participants.iter().map(|p| p.role).collect();
    roles.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        roles,
        [Some(Role::Receiver), Some(Role::Sender), Some(Role::Sender)]
    );
    assert_eq!(info.alive(), 3);
    assert!(info
        .participants
        .iter()
        .all(|p| p.pid == std::process::id()));

    // Each is a participant of its own: with tx gone, tx2 still keeps the channel connected.
    drop(tx);
    tx2.send(b"from the second sender").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"from the second sender");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop(tx2);
    assert!(rx.try_recv().unwrap_err().is_disconnected());
    assert_eq!(shmq::inspect(&name).expect("inspect").participants.len(), 1);
    drop(rx);
    assert_eq!(mappings_of(&name), 0);
    assert_gone(&name);
}

#[test]
fn open_receiver_refuses_a_full_participant_table() {
    let name = common::unique_name("ch-p-full");
    let cfg = config(4, MIB).with_max_participants(2);
    let (tx, rx) = shmq::channel(&name, cfg).expect("create");
    assert!(matches!(
        tx.open_receiver(),
        Err(Error::TooManyParticipants { capacity: 2, .. })
    ));
    assert!(matches!(
        rx.open_sender(),
        Err(Error::TooManyParticipants { capacity: 2, .. })
    ));
    drop(rx);
    let rx = tx.open_receiver().expect("a slot is free again");
    drop((tx, rx));
    assert_gone(&name);
}
