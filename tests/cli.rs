//! The `shmq` command: `ls`, `info`, `rm` and `gc` against real segments and processes.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{kill9, shm_exists, spawn_child, unique_name, wait_for_line};

fn shmq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmq"))
        .args(args)
        .output()
        .expect("run the shmq binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn holder_child(args: &[String]) {
    let _segment = shmq::Segment::open(&args[0]).expect("open");
    common::signal_parent("attached");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "holder" => holder_child(args),
        other => panic!("unknown role {other}"),
    });
}

#[test]
fn ls_and_info_show_a_channel_with_its_figures() {
    let name = unique_name("cli-ls");
    let (tx, rx) = shmq::channel(
        &name,
        shmq::ChannelConfig::default()
            .with_capacity(8)
            .with_arena_bytes(1 << 20),
    )
    .unwrap();
    tx.send(&vec![1u8; 10_000]).unwrap();
    tx.send(b"small").unwrap();

    let out = shmq(&["ls"]);
    assert!(out.status.success());
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with(&name))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{name} not listed:\n{}", stdout(&out)));
    assert!(line.contains("channel"), "{line}");
    let columns: Vec<&str> = line.split_whitespace().collect();
    // NAME KIND SIZE(2 words) ALIVE DEAD MESSAGES BYTES(2 words) AGE
    assert_eq!(columns[4], "2", "two live participants: {line}");
    assert_eq!(columns[5], "0", "no dead participant: {line}");
    assert_eq!(columns[6], "2", "two messages in flight: {line}");

    let json = stdout(&shmq(&["ls", "--json"]));
    assert!(
        json.starts_with('[') && json.trim_end().ends_with(']'),
        "{json}"
    );
    assert!(json.contains(&format!("\"name\":\"{name}\"")), "{json}");
    assert!(json.contains("\"messages_in_flight\":2"), "{json}");
    assert!(json.contains("\"unfinished_tasks\":2"), "{json}");
    assert!(json.contains("\"tasks_done_total\":0"), "{json}");

    let info = stdout(&shmq(&["info", &name]));
    assert!(info.contains("kind          channel"), "{info}");
    assert!(info.contains("2 of 8 messages queued"), "{info}");
    assert!(info.contains("2 unfinished, 0 done"), "{info}");
    assert!(
        info.contains("sender") && info.contains("receiver"),
        "{info}"
    );
    let info_json = stdout(&shmq(&["info", &name, "--json"]));
    assert!(info_json.contains("\"participants\":[{"), "{info_json}");
    assert!(info_json.contains("\"queued\":2"), "{info_json}");

    drop((tx, rx));
    assert!(!shm_exists(&name));
    let missing = shmq(&["info", &name]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no shmq segment"));
}

#[test]
fn rm_refuses_live_segments_unless_forced() {
    let name = unique_name("cli-rm");
    let segment = shmq::Segment::create(&name, 4096).unwrap();
    let refused = shmq(&["rm", &name]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("1 live participant"), "{why}");
    assert!(why.contains("--force"), "says what would remove it: {why}");
    assert!(shm_exists(&name));
    let forced = shmq(&["rm", &name, "--force", "--json"]);
    assert!(forced.status.success(), "{:?}", forced);
    assert!(!shm_exists(&name));
    // The live handle keeps the segment, under its tombstone, which ls shows as removed.
    let printed = stdout(&forced);
    let tombstone = printed
        .split("\"tombstone\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no tombstone in {printed}"))
        .to_owned();
    assert!(tombstone.starts_with(&format!("{name}~")), "{tombstone}");
    assert!(printed.contains("\"live_participants\":1"), "{printed}");
    assert!(shm_exists(&tombstone));
    let listed = stdout(&shmq(&["ls"]));
    let mut lines = listed.lines().skip_while(|l| !l.starts_with(&tombstone));
    let line = lines.next().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(line.split_whitespace().nth(4), Some("1"), "{line}");
    let note = lines.next().unwrap_or_default();
    assert!(note.contains("removed, still in use"), "{line}\n{note}");
    // SAFETY: only this thread uses the segment.
    unsafe { segment.as_ptr().write(7) };
    drop(segment); // its last detach removes the tombstone, and recreates nothing
    assert!(!shm_exists(&tombstone));
    assert!(!shm_exists(&name));
}

/// The only test here that runs gc (gc is global: another one would race with this test's
/// dead segment).
#[test]
fn gc_removes_what_a_killed_process_left_and_says_so() {
    let name = unique_name("cli-gc");
    let live = unique_name("cli-gc-live");
    let foreign = unique_name("cli-gc-foreign");
    let here = shmq::Segment::create(&live, 4096).unwrap();
    std::fs::write(format!("/dev/shm/shmq.{foreign}"), [b'x'; 256]).unwrap();
    let creator = shmq::Segment::create(&name, 4096).unwrap();
    let mut child = spawn_child("holder", &[&name]);
    wait_for_line(&mut child, "attached", Duration::from_secs(30));
    // The creator goes away normally; the child holds the segment and is killed.
    drop(creator);
    assert!(shm_exists(&name));
    kill9(&mut child);

    let listed = stdout(&shmq(&["ls"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("listed");
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (columns[4], columns[5]),
        ("0", "1"),
        "one dead participant: {line}"
    );

    // Every decision is printed with its reason.
    let out = shmq(&["gc"]);
    assert!(out.status.success(), "{out:?}");
    let printed = stdout(&out);
    let line_of = |name: &str| {
        printed
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} not in:\n{printed}"))
            .to_owned()
    };
    let line = line_of(&name);
    assert!(
        line.starts_with("removed") && line.contains("every participant is dead (1 reclaimed)"),
        "{line}"
    );
    let line = line_of(&live);
    assert!(
        line.starts_with("kept") && line.contains("1 live participant"),
        "{line}"
    );
    let line = line_of(&foreign);
    assert!(line.starts_with("kept") && line.contains("magic"), "{line}");
    let summary = printed.lines().last().unwrap_or_default();
    assert!(
        summary.contains("removed,") && summary.contains("kept"),
        "{summary}"
    );
    assert!(!shm_exists(&name));

    let json = stdout(&shmq(&["gc", "--json"]));
    let _ = std::fs::remove_file(format!("/dev/shm/shmq.{foreign}"));
    assert!(json.starts_with("{\"removed\":["), "{json}");
    let entry = format!("{{\"name\":\"{live}\",\"removed\":false,\"decision\":\"live\",");
    assert!(json.contains(&entry), "{json}");
    drop(here);
    assert!(!shm_exists(&live));
}

// `shmq bench --payloads 18446744073709551608` (a multiple of 8 near usize::MAX) passed the
// argument check and panicked with "capacity overflow" allocating its source buffer (issue 11).
#[test]
fn bench_refuses_too_large_payloads_with_a_message_and_no_panic() {
    for payload in [
        "18446744073709551608",
        "17179869184GiB",
        "4GiB",
        "4294967296",
    ] {
        let out = shmq(&["bench", "--payloads", payload, "--time-ms", "10"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{payload}: accepted\n{stderr}");
        assert!(!stderr.contains("panicked"), "{payload}: {stderr}");
        assert!(
            stderr.contains(payload) && stderr.contains("at most 4294967288"),
            "{payload}: the message names the value and the limit:\n{stderr}"
        );
        assert!(
            stdout(&out).is_empty(),
            "{payload}: nothing ran:\n{}",
            stdout(&out)
        );
    }
}
