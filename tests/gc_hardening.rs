//! Issue 11, items 2, 5, 6 and 7: what `gc`, `rm` and every open do with files that are not
//! plainly ours. A symbolic link is refused by open, `ls` and `gc`; another user's files
//! survive gc run as root; a channel removed with `rm --force` while messages are in flight
//! loses none of them to gc; rm never pulls a segment from under its creator; `ls` does not wait
//! for unfinished files; rm of a dead channel unlinks its overflow payloads.
//!
//! `gc()` is global and other tests run at the same time: every test asserts only about its own
//! names, and keeps them alive, young or locked while another test's gc could look at them.

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::channel::{
    assert_gone, check_pattern, config, fill_pattern, overflow_files, pattern, sleep_until_killed,
    Kid, KIB, MIB,
};
use common::{ofd_lock, shm_exists, unique_name, Cleanup};
use shmq::{Error, GcEntry, GcReason, Receiver, Segment, SegmentState, Sender};

/// The uid and gid of `nobody`, whom the foreign-file test becomes.
const NOBODY: u32 = 65534;

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        // Become nobody, then leave three files behind: an empty one, a never-initialised one
        // and an initialised channel whose participants are all dead (this process exits
        // without dropping its handles). The first two are aged past gc's 2 s.
        "as_nobody_leave_files" => {
            become_nobody();
            let (empty, unfinished, channel) = (&args[0], &args[1], &args[2]);
            let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
            create_file(empty, 0)
                .set_modified(an_hour_ago)
                .expect("age");
            create_file(unfinished, 8192)
                .set_modified(an_hour_ago)
                .expect("age");
            let (tx, rx) = shmq::channel(channel, config(4, 64 * KIB)).expect("create channel");
            tx.send(b"left behind").expect("send");
            std::mem::forget((tx, rx));
            common::signal_parent("left");
            std::process::exit(0);
        }
        // Send `n` overflow payloads of `len` bytes, numbered in their first 8 bytes and
        // patterned after them; report every acknowledged one, then the total.
        "overflow_sender" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: u64 = args[1].parse().expect("n");
            let len: usize = args[2].parse().expect("len");
            common::signal_parent("attached");
            let mut acked = 0;
            for seq in 0..n {
                let mut payload = pattern(seq, len);
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                match tx.send(&payload) {
                    Ok(()) => {
                        acked += 1;
                        common::signal_parent(&format!("acked {seq}"));
                    }
                    Err(e) => {
                        common::signal_parent(&format!("failed {seq}: {e}"));
                        break;
                    }
                }
            }
            common::signal_parent(&format!("done {acked}"));
        }
        // Create a channel with a big arena (slow to reserve and fault in), report the outcome.
        "slow_create" => {
            let arena: usize = args[1].parse().expect("arena");
            match shmq::channel(&args[0], config(4, arena)) {
                Ok(handles) => {
                    common::signal_parent("created ok");
                    drop(handles);
                }
                Err(e) => common::signal_parent(&format!("created err {e}")),
            }
        }
        // Create a channel, queue an overflow payload, and wait to be killed.
        "send_overflow_and_linger" => {
            let arena = 16 * KIB;
            let (tx, rx) = shmq::channel(&args[0], config(4, arena)).expect("create");
            let mut loan = tx.loan(4 * arena).expect("overflow loan");
            fill_pattern(&mut loan, 7);
            loan.send().expect("send");
            common::signal_parent("sent");
            let _keep = (tx, rx);
            sleep_until_killed();
        }
        other => panic!("unknown child role {other:?}"),
    });
}

/// Drops root for uid and gid `nobody`, for good, keeping /proc/self readable.
fn become_nobody() {
    // SAFETY: plain system calls on this process's credentials; no memory is shared with them.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setresgid(NOBODY, NOBODY, NOBODY), 0, "setresgid");
        assert_eq!(libc::setresuid(NOBODY, NOBODY, NOBODY), 0, "setresuid");
        // Changing uid makes the process undumpable, which makes /proc/self/fd root's; a
        // process that started as nobody would be dumpable.
        assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0), 0, "prctl");
    }
    assert_eq!(euid(), NOBODY);
}

// ----- helpers ---------------------------------------------------------------------------------

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn shm_path(name: &str) -> String {
    format!("/dev/shm/shmq.{name}")
}

/// Creates `/dev/shm/shmq.<name>` with `len` zero bytes: a segment nobody ever initialised.
fn create_file(name: &str, len: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(shm_path(name))
        .expect("create file");
    file.set_len(len).expect("size file");
    file
}

fn shmq_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmq"))
        .args(args)
        .output()
        .expect("run the shmq binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `shmq ls` line of `name` and the note lines below it.
fn ls_entry(listing: &str, name: &str) -> Option<(String, Vec<String>)> {
    let mut lines = listing.lines();
    let line = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    let notes = lines
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().to_owned())
        .collect();
    Some((line.to_owned(), notes))
}

/// gc's entry for `name`, if it looked at it.
fn entry_for<'a>(entries: &'a [GcEntry], name: &str) -> Option<&'a GcEntry> {
    entries.iter().find(|e| e.name == name)
}

/// The tombstone files (`shmq.<name>~<incarnation>.removed`) of segment `name`.
fn tombstones(name: &str) -> Vec<String> {
    overflow_files(name)
        .into_iter()
        .filter(|f| f.ends_with(".removed"))
        .collect()
}

// ----- symbolic links (item 6) -----------------------------------------------------------------

#[test]
fn a_symlink_is_refused_by_open_ls_and_gc() {
    let target = unique_name("gch-target");
    let link = unique_name("gch-link");
    let _cleanup = Cleanup::new(&[&target, &link]);
    let (tx, rx) = shmq::channel(&target, config(4, 64 * KIB)).expect("create the target");
    std::os::unix::fs::symlink(format!("shmq.{target}"), shm_path(&link)).expect("symlink");

    // Every open refuses the link, saying what it found.
    let refusals = [
        ("Receiver::open", Receiver::open(&link).err()),
        ("Sender::open", Sender::open(&link).err()),
        ("Segment::open", Segment::open(&link).err()),
    ];
    for (call, refusal) in refusals {
        match refusal {
            Some(Error::PermissionDenied { reason, .. }) => {
                assert!(reason.contains("symbolic link"), "{call}: {reason}")
            }
            other => panic!("{call} of a symlink: expected PermissionDenied, got {other:?}"),
        }
    }

    // `shmq ls` lists it as refused, not as a live channel.
    let listing = stdout(&shmq_cli(&["ls"]));
    let (line, notes) = ls_entry(&listing, &link).unwrap_or_else(|| panic!("{listing}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1], "?", "the link has no kind: {line}");
    assert_eq!(columns[4], "0", "the link has no live participant: {line}");
    assert!(
        notes.iter().any(|n| n.contains("symbolic link")),
        "{line} {notes:?}"
    );
    let json = stdout(&shmq_cli(&["ls", "--json"]));
    let item = json
        .split("},{")
        .find(|item| item.contains(&format!("\"name\":\"{link}\"")))
        .unwrap_or_else(|| panic!("{json}"));
    assert!(item.contains("\"state\":\"refused\""), "{item}");
    assert!(item.contains("\"kind\":null"), "{item}");

    // gc keeps it with that reason, and does not touch the channel behind it.
    let entries = shmq::gc().expect("gc");
    let entry = entry_for(&entries, &link).expect("gc looked at the link");
    assert!(!entry.removed, "{entry}");
    assert_eq!(
        entry.reason,
        GcReason::NotRegular {
            found: "a symbolic link".into()
        }
    );
    let printed = stdout(&shmq_cli(&["gc"]));
    assert!(
        printed
            .lines()
            .any(|l| l.starts_with("kept") && l.contains(&link) && l.contains("symbolic link")),
        "{printed}"
    );
    assert!(std::fs::symlink_metadata(shm_path(&link)).is_ok());
    tx.send(b"still here").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"still here");

    std::fs::remove_file(shm_path(&link)).expect("remove the link");
    drop((tx, rx));
    assert_gone(&target);
}

// ----- another user's files (item 5) ----------------------------------------------------------

#[test]
fn gc_as_root_leaves_another_users_files_alone() {
    if euid() != 0 {
        eprintln!(
            "skipped gc_as_root_leaves_another_users_files_alone: \
             needs root to create files as uid {NOBODY}"
        );
        return;
    }
    let empty = unique_name("gch-nobody-empty");
    let unfinished = unique_name("gch-nobody-unfinished");
    let channel = unique_name("gch-nobody-channel");
    let names = [&empty, &unfinished, &channel];
    let _cleanup = Cleanup::new(&names.map(String::as_str));
    let mut kid = Kid::spawn("as_nobody_leave_files", &[&empty, &unfinished, &channel]);
    kid.expect("left");
    kid.finish();
    for name in names {
        let meta = std::fs::metadata(shm_path(name)).expect("the child's file");
        assert_eq!(meta.uid(), NOBODY, "{name}");
    }

    // gc (and the CLI's) keeps all three, whatever they hold, and says why.
    let entries = shmq::gc().expect("gc");
    for name in names {
        let entry = entry_for(&entries, name).unwrap_or_else(|| panic!("gc skipped {name}"));
        assert!(!entry.removed, "{entry}");
        assert_eq!(entry.reason, GcReason::NotOurs { uid: NOBODY }, "{name}");
        assert!(shm_exists(name), "gc removed {name}");
    }
    let printed = stdout(&shmq_cli(&["gc"]));
    for name in names {
        assert!(
            printed.lines().any(|l| l.starts_with("kept")
                && l.contains(name.as_str())
                && l.contains("owned by uid 65534")),
            "{name}: {printed}"
        );
        assert!(shm_exists(name), "shmq gc removed {name}");
    }
    // Opens refuse it, ls lists it as refused, and rm does not remove it.
    match Receiver::open(&channel) {
        Err(Error::PermissionDenied { reason, .. }) => {
            assert!(reason.contains("owned by uid 65534"), "{reason}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let info = shmq::inspect(&channel).expect("inspect");
    assert_eq!(info.state, SegmentState::Refused);
    assert!(matches!(
        shmq::remove(&channel, true),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(shm_exists(&channel));
}

// ----- rm --force of a live channel, and gc (item 2) -------------------------------------------

#[test]
fn rm_force_and_gc_while_overflow_messages_are_in_flight_lose_none() {
    let name = unique_name("gch-inflight");
    let _cleanup = Cleanup::new(&[&name]);
    let arena = 16 * KIB;
    let len = 4 * arena; // larger than the arena: every payload travels in an overflow segment
    let total: u64 = 120;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    let mut sender = Kid::spawn(
        "overflow_sender",
        &[&name, &total.to_string(), &len.to_string()],
    );
    sender.expect("attached");
    drop(tx); // the child is the only sender: the receive loop ends when it is done

    let mut received = Vec::new();
    let mut errors = Vec::new();
    let receive = |received: &mut Vec<u64>, errors: &mut Vec<String>| match rx
        .recv_timeout(Duration::from_secs(60))
    {
        Ok(msg) => {
            let seq = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
            let mut expected = pattern(seq, len);
            expected[..8].copy_from_slice(&seq.to_le_bytes());
            assert!(msg[..] == expected[..], "message {seq} corrupted");
            received.push(seq);
            true
        }
        Err(shmq::RecvTimeoutError::Disconnected) => false,
        Err(e) => {
            errors.push(e.to_string());
            true
        }
    };
    for _ in 0..20 {
        assert!(receive(&mut received, &mut errors));
    }

    // Remove it while the ring and the overflow table hold messages and the sender sends.
    Segment::remove(&name).expect("rm --force of the live channel");
    assert!(!shm_exists(&name), "the name is gone");
    assert_eq!(tombstones(&name).len(), 1, "{:?}", overflow_files(&name));
    let tombstone = tombstones(&name)[0]
        .strip_prefix("shmq.")
        .expect("prefix")
        .to_owned();
    assert!(
        matches!(Receiver::open(&name), Err(Error::NotFound { .. })),
        "new opens of a removed channel find nothing"
    );
    // A new channel of the same name is another incarnation; the old one's payloads still
    // belong to the old one.
    let (tx2, rx2) = shmq::channel(&name, config(4, arena)).expect("create it again");

    // gc, in this process and as the CLI, keeps the tombstone and every payload in flight.
    let listing = stdout(&shmq_cli(&["ls"]));
    let (line, notes) = ls_entry(&listing, &tombstone).unwrap_or_else(|| panic!("{listing}"));
    assert!(
        notes.iter().any(|n| n.contains("removed, still in use")),
        "{line} {notes:?}"
    );
    let entries = shmq::gc().expect("gc");
    let tomb_entry = entry_for(&entries, &tombstone).expect("gc looked at the tombstone");
    // The child's sender and our receiver.
    assert_eq!(
        tomb_entry.reason,
        GcReason::RemovedInUse {
            segment: name.clone(),
            alive: 2
        },
        "{tomb_entry}"
    );
    let payloads: Vec<&GcEntry> = entries
        .iter()
        .filter(|e| e.name.starts_with(&format!("{name}~")) && e.name != tombstone)
        .collect();
    assert!(!payloads.is_empty(), "overflow payloads are in flight");
    for entry in &payloads {
        assert!(!entry.removed, "{entry}");
        let of_the_removed_channel = GcReason::PayloadOfRemovedChannel {
            channel: name.clone(),
        };
        assert!(
            entry.reason == of_the_removed_channel || entry.reason == GcReason::Vanished,
            "{entry}"
        );
    }
    let printed = stdout(&shmq_cli(&["gc"]));
    assert!(
        printed.contains("removed but still in use"),
        "shmq gc prints why it keeps them: {printed}"
    );

    // Receive the rest, running gc along the way.
    let mut more = 0;
    while receive(&mut received, &mut errors) {
        more += 1;
        if more % 10 == 0 {
            for entry in shmq::gc().expect("gc") {
                assert!(
                    !(entry.removed && entry.name.starts_with(&format!("{name}~"))),
                    "gc removed {entry}"
                );
            }
        }
    }
    let lines = sender.finish();
    let acked: BTreeSet<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("acked ")?.parse().ok())
        .collect();
    assert!(
        lines.iter().any(|l| *l == format!("done {total}")),
        "the sender was refused: {lines:?}"
    );
    assert_eq!(errors, Vec::<String>::new(), "receive errors");
    assert_eq!(
        received,
        (0..total).collect::<Vec<_>>(),
        "every acknowledged message arrives, in order (acknowledged: {})",
        acked.len()
    );
    assert_eq!(acked.len() as u64, total);

    // The last detach of the removed channel takes the tombstone with it; the new channel
    // of the same name was never touched.
    drop(rx);
    assert_eq!(tombstones(&name), Vec::<String>::new());
    tx2.send(&pattern(9, 2 * arena))
        .expect("send on the new channel");
    assert!(check_pattern(&rx2.recv().expect("recv"), 9));
    drop((tx2, rx2));
    assert_gone(&name);
}

#[test]
fn rm_of_a_dead_channel_unlinks_its_overflow_payloads() {
    // Another test's gc may collect the dead channel first (rm then finds nothing): such a
    // round proves nothing about rm and is repeated with a fresh name.
    for round in 0..5 {
        let name = unique_name("gch-dead-rm");
        let _cleanup = Cleanup::new(&[&name]);
        let mut kid = Kid::spawn("send_overflow_and_linger", &[&name]);
        kid.expect("sent");
        kid.kill();
        assert_eq!(overflow_files(&name).len(), 1, "the queued payload");
        match shmq::remove(&name, false) {
            Ok(removal) => {
                assert_eq!(removal.live_participants, 0);
                assert_eq!(removal.reclaimed, 2, "the dead sender and receiver");
                assert_eq!(removal.tombstone, None);
                assert_gone(&name);
                return;
            }
            Err(Error::NotFound { .. }) => {
                eprintln!("round {round}: {name} was collected before rm (another test's gc?)")
            }
            Err(e) => panic!("rm of a dead channel: {e}"),
        }
    }
    panic!("every round's dead channel was collected before rm could remove it");
}

// ----- rm and the creator lock, ls of unfinished files (item 7) --------------------------------

/// `shmq rm [--force] NAME`; the error is its stderr.
fn cli_remove(name: &str, force: bool) -> Result<(), String> {
    let out = if force {
        shmq_cli(&["rm", "--force", name])
    } else {
        shmq_cli(&["rm", name])
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rm_during_a_slow_create_is_refused_and_the_creator_succeeds() {
    // A 1 GiB arena takes a while to reserve and fault in. Each round races the removals with
    // one creation; a round where every attempt came too late proves nothing and is repeated.
    let arena = 1024 * MIB;
    let (mut refused_plain, mut refused_forced) = (0, 0);
    for round in 0..8 {
        let name = unique_name("gch-slow");
        let _cleanup = Cleanup::new(&[&name]);
        let mut kid = Kid::spawn("slow_create", &[&name, &arena.to_string()]);
        let appeared = Instant::now() + Duration::from_secs(60);
        while !shm_exists(&name) {
            assert!(
                Instant::now() < appeared,
                "the creator never created {name}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // Alternate the library's rm and rm --force with the CLI's, until one is not refused
        // as "being created" (the creation is finished by then).
        for attempt in 0.. {
            let forced = attempt % 2 == 1;
            let result = match attempt % 4 {
                0 => shmq::remove(&name, false)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                1 => Segment::remove(&name).map_err(|e| e.to_string()),
                2 => cli_remove(&name, false),
                _ => cli_remove(&name, true),
            };
            match result {
                Err(e) if e.contains("being created") => {
                    if forced {
                        refused_forced += 1;
                    } else {
                        refused_plain += 1;
                    }
                }
                other => {
                    eprintln!(
                        "round {round}: attempt {attempt} came after the creation: {other:?}"
                    );
                    break;
                }
            }
        }
        let outcome = kid.expect_prefix("created", false);
        assert_eq!(outcome, "created ok", "round {round}: the creator failed");
        kid.finish();
        if refused_plain > 0 && refused_forced > 0 {
            break;
        }
    }
    assert!(
        refused_plain > 0 && refused_forced > 0,
        "no round caught the creation in progress with both rm forms \
         ({refused_plain} plain, {refused_forced} forced refusals)"
    );
}

#[test]
fn ls_lists_unfinished_files_at_once() {
    let names: Vec<String> = (0..10).map(|_| unique_name("gch-unfinished")).collect();
    let _cleanup = Cleanup::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    // Five held by a "creator" (this process holds their creator locks), five not: young
    // enough that gc leaves them alone while the listing runs.
    let files: Vec<File> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let file = create_file(name, 8192);
            if i % 2 == 0 {
                ofd_lock(&file, 1 << 40);
            }
            file
        })
        .collect();
    let started = Instant::now();
    let out = shmq_cli(&["ls"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    // A hang check, not a speed test: waiting 2 s per file would take 20 s.
    assert!(took < Duration::from_secs(5), "shmq ls took {took:?}");
    let listing = stdout(&out);
    for (i, name) in names.iter().enumerate() {
        let (line, notes) = ls_entry(&listing, name).unwrap_or_else(|| panic!("{listing}"));
        let wanted = if i % 2 == 0 {
            "being created"
        } else {
            "unfinished, creator gone"
        };
        assert!(
            notes.iter().any(|n| n.starts_with(wanted)),
            "{name}: {line} {notes:?}"
        );
    }
    let json = stdout(&shmq_cli(&["ls", "--json"]));
    for (i, name) in names.iter().enumerate() {
        let item = json
            .split("},{")
            .find(|item| item.contains(&format!("\"name\":\"{name}\"")))
            .unwrap_or_else(|| panic!("{json}"));
        let state = if i % 2 == 0 {
            "being-created"
        } else {
            "unfinished"
        };
        assert!(item.contains(&format!("\"state\":\"{state}\"")), "{item}");
    }
    drop(files);
}
