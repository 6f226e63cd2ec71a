//! Hostile and corrupted contents: random bytes are written into a live channel's and a live
//! shared value's header, participant table, control words, ring slots, descriptors, allocator
//! and overflow table while another process keeps using them. Errors are fine; a panic, a
//! signal (SIGSEGV, SIGBUS) or a hang fails the test. Files truncated or grown under an opener
//! must give an error.
//!
//! Not corrupted: the three robust mutexes of a channel and the one of a shared value. A lock
//! word of garbage looks held by a thread that never releases it; glibc then waits for ever.
//! Peers that merely crash cannot leave garbage there (the kernel's robust-list walk marks the
//! word), and docs/reliability.md states this limit of the trust model.
//!
//! `SHMQ_HOSTILE_ROUNDS` sets the number of child runs (default 12; each takes ~150
//! corruptions).

mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use common::{spawn_child, unique_name, wait_for_line, Rng};
use shmq::{ChannelConfig, Receiver, Sender, SharedValue};

const ARENA: usize = 256 << 10;
/// Where the data area of a segment with 64 participant slots starts.
const DATA_OFFSET: u64 = 8192;
/// Byte ranges (relative to the data area) holding robust mutexes, left alone.
const CHANNEL_MUTEXES: [(u64, u64); 3] = [(128, 192), (896, 960), (1664, 1728)];
const VALUE_MUTEX: (u64, u64) = (128, 192);

/// The child: uses the channel and the value with timeouts only, counting errors, until told
/// to stop (its stdin closes) or `rounds` operations are done.
fn user_child(args: &[String]) {
    let (chan, value, seed) = (&args[0], &args[1], args[2].parse::<u64>().unwrap());
    let tx = Sender::open(chan).ok();
    let rx = Receiver::open(chan).ok();
    let counter = SharedValue::<u64>::open(value).ok();
    common::signal_parent("ready");
    let mut rng = Rng(seed);
    let (mut ok, mut failed) = (0u64, 0u64);
    let t = Duration::from_millis(5);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut held = Vec::new();
    while Instant::now() < deadline {
        let result: Result<(), String> = match rng.below(9) {
            0 | 1 => match &tx {
                Some(tx) => {
                    let len = match rng.below(10) {
                        0..=5 => rng.below(97),
                        6..=8 => 97 + rng.below(64 << 10),
                        _ => ARENA as u64 + rng.below(4096),
                    } as usize;
                    tx.send_timeout(&vec![0xa5; len], t)
                        .map_err(|e| e.to_string())
                }
                None => Err("no sender".into()),
            },
            2 => match &tx {
                Some(tx) => tx
                    .loan_timeout(rng.below(8192) as usize, t)
                    .map(|mut loan| {
                        loan.fill(7);
                        let _ = loan.send_timeout(t);
                    })
                    .map_err(|e| e.to_string()),
                None => Err("no sender".into()),
            },
            3 | 4 => match &rx {
                Some(rx) => rx
                    .recv_timeout(t)
                    .map(|msg| {
                        // Read every byte: a bad view would fault here.
                        std::hint::black_box(msg.iter().map(|&b| b as u64).sum::<u64>());
                        if rng.below(3) == 0 {
                            held.push(msg);
                        }
                        if held.len() > 4 {
                            held.remove(0);
                        }
                    })
                    .map_err(|e| e.to_string()),
                None => Err("no receiver".into()),
            },
            5 => match &counter {
                Some(c) => match c.lock_timeout(t) {
                    Ok(mut g) => {
                        *g += 1;
                        Ok(())
                    }
                    Err(shmq::LockError::OwnerDied(died)) => {
                        let mut g = died.into_inner();
                        g.mark_consistent();
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                None => Err("no value".into()),
            },
            6 => Sender::open(chan).map(drop).map_err(|e| e.to_string()),
            7 => shmq::inspect(chan).map(drop).map_err(|e| e.to_string()),
            _ => {
                if let Some(tx) = &tx {
                    std::hint::black_box((tx.len(), tx.is_full(), tx.free_arena_bytes()));
                }
                match (&tx, &rx, rng.below(3)) {
                    (Some(tx), _, 0) => tx.join_timeout(t).map_err(|e| e.to_string()),
                    // Task counts read from garbage: refusals and timeouts, never a panic.
                    (_, Some(rx), 1) => {
                        std::hint::black_box(rx.unfinished_tasks());
                        rx.try_task_done().map_err(|e| e.to_string())
                    }
                    (Some(tx), _, _) => tx.join_tasks_timeout(t).map_err(|e| e.to_string()),
                    _ => Ok(()),
                }
            }
        };
        match result {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    drop(held);
    common::signal_parent(&format!("done {ok} {failed}"));
}

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "user" => user_child(args),
        other => panic!("unknown role {other}"),
    });
}

fn in_ranges(offset: u64, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|&(a, b)| offset >= a && offset < b)
}

/// Writes 1 to 16 random bytes at a random place of `file` (of `len` bytes), favouring the
/// header and control areas, never touching `mutexes` (data-area relative).
fn corrupt(file: &std::fs::File, len: u64, mutexes: &[(u64, u64)], rng: &mut Rng) -> u64 {
    loop {
        let offset = match rng.below(6) {
            0 => rng.below(128),                             // header
            1 => 128 + rng.below(64 * 64),                   // participant table
            2 => DATA_OFFSET + rng.below(4096),              // control block
            _ => DATA_OFFSET + rng.below(len - DATA_OFFSET), // ring, allocator, arena, value
        };
        let n = 1 + rng.below(16);
        let touches_mutex =
            (offset..offset + n).any(|o| o >= DATA_OFFSET && in_ranges(o - DATA_OFFSET, mutexes));
        if touches_mutex || offset + n > len {
            continue;
        }
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        file.write_at(&bytes, offset).expect("pwrite");
        return offset;
    }
}

fn open_rw(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/dev/shm/shmq.{name}"))
        .expect("open shm file")
}

#[test]
fn random_bytes_in_live_segments_give_errors_never_crashes_or_hangs() {
    let rounds: u64 = std::env::var("SHMQ_HOSTILE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut cases = 0u64;
    for round in 0..rounds {
        let mut rng = Rng(0xbad5eed ^ round);
        let chan = unique_name("hostile");
        let value = format!("{chan}.v");
        let (tx, rx) = shmq::channel(
            &chan,
            ChannelConfig::default()
                .with_capacity(8)
                .with_arena_bytes(ARENA),
        )
        .expect("channel");
        let counter = SharedValue::<u64>::create(&value, 0).expect("value");
        let mut child = spawn_child("user", &[&chan, &value, &rng.next().to_string()]);
        wait_for_line(&mut child, "ready", Duration::from_secs(30));
        let chan_file = open_rw(&chan);
        let value_file = open_rw(&value);
        let chan_len = chan_file.metadata().unwrap().len();
        let value_len = value_file.metadata().unwrap().len();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                common::kill9(&mut child);
                panic!("round {round}: the child hung with corrupted segments");
            }
            if rng.below(4) == 0 {
                corrupt(&value_file, value_len, &[VALUE_MUTEX], &mut rng);
            } else {
                corrupt(&chan_file, chan_len, &CHANNEL_MUTEXES, &mut rng);
            }
            cases += 1;
            // Our own handles keep working or fail cleanly too.
            let _ = tx.try_send(&[1, 2, 3]);
            let _ = rx.try_recv();
            let _ = counter.try_lock();
            std::thread::sleep(Duration::from_micros(200 + rng.below(3000)));
        };
        assert!(
            status.success(),
            "round {round}: the child using corrupted segments ended with {status} (a panic or a signal)"
        );
        drop((tx, rx, counter));
        // Whatever the table says now, nothing may stay behind once every process is gone.
        let _ = shmq::gc();
        for name in [&chan, &value] {
            if common::shm_exists(name) {
                let _ = std::fs::remove_file(format!("/dev/shm/shmq.{name}"));
            }
        }
        for entry in std::fs::read_dir("/dev/shm").unwrap().flatten() {
            let n = entry.file_name().into_string().unwrap_or_default();
            if n.starts_with(&format!("shmq.{chan}~")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    println!("hostile contents: {cases} corruptions over {rounds} child runs, no crash, no hang");
}

#[test]
fn files_truncated_or_grown_under_an_opener_give_errors() {
    for (i, new_len) in [0u64, 64, 200, 4096, 9000, 1 << 20, 1 << 22]
        .into_iter()
        .enumerate()
    {
        let chan = unique_name(&format!("resize{i}"));
        let (tx, rx) = shmq::channel(
            &chan,
            ChannelConfig::default()
                .with_capacity(4)
                .with_arena_bytes(ARENA),
        )
        .expect("channel");
        let file = open_rw(&chan);
        let old_len = file.metadata().unwrap().len();
        if new_len == old_len {
            continue;
        }
        file.set_len(new_len).expect("set_len");
        // A new opener must refuse the segment instead of mapping past the end of the file.
        let opened = Sender::open(&chan);
        assert!(
            opened.is_err(),
            "open of a file resized {old_len} -> {new_len} succeeded"
        );
        let opened = shmq::inspect(&chan);
        assert!(opened.map(|info| info.problem.is_some()).unwrap_or(true));
        // Put the size back before our own mapping is touched again.
        file.set_len(old_len).expect("restore");
        drop((tx, rx));
        assert!(!common::shm_exists(&chan));
    }
}
