//! Payloads end to end across real processes: a gigabyte through an overflow segment and a
//! quarter gigabyte through the arena, checked word by word; two producer and two consumer
//! processes exchanging 10,000 checksummed messages of mixed sizes; overflow payloads unlinked
//! when their message is dropped.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Instant;

use common::channel::*;
use shmq::{Receiver, RecvError, Sender};

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "recv_words" => child_recv_words(args),
        "stress_producer" => child_stress_producer(args),
        "stress_consumer" => child_stress_consumer(args),
        other => panic!("unknown child role {other}"),
    });
}

// ----- big payloads end to end --------------------------------------------------------------

fn child_recv_words(args: &[String]) {
    let name = &args[0];
    let n_words: usize = args[1].parse().expect("words");
    let seed: u64 = args[2].parse().expect("seed");
    let rx = Receiver::open(name).expect("open receiver");
    let msg = rx.recv().expect("recv");
    assert_eq!(msg.len(), n_words * 8, "payload length");
    let words = msg.as_slice::<u64>().expect("payload as u64 words");
    let mut bad = None;
    for (i, &w) in words.iter().enumerate() {
        if w != word(seed, i) {
            bad = Some(i);
            break;
        }
    }
    if let Some(i) = bad {
        panic!(
            "word {i} of {n_words} is {:#x}, expected {:#x}",
            words[i],
            word(seed, i)
        );
    }
    common::signal_parent(&format!(
        "overflow files while held {}",
        overflow_files(name).len()
    ));
    drop(msg);
    common::signal_parent(&format!(
        "overflow files after drop {}",
        overflow_files(name).len()
    ));
    common::signal_parent(&format!("verified {n_words}"));
}

#[test]
fn one_gib_through_an_overflow_segment() {
    let name = common::unique_name("ch-1g");
    let arena = 64 * MIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let n_words = (1usize << 30) / 8;
    let seed = 0x0123_4567;
    let kid = Kid::spawn(
        "recv_words",
        &[&name, &n_words.to_string(), &seed.to_string()],
    );

    let started = Instant::now();
    let mut loan = tx.loan_slice::<u64>(n_words).expect("loan 1 GiB");
    assert_eq!(
        tx.free_arena_bytes(),
        arena as u64,
        "a 1 GiB loan takes no arena"
    );
    for (i, w) in loan.iter_mut().enumerate() {
        *w = word(seed, i);
    }
    loan.send().expect("send 1 GiB");
    let lines = kid.finish();
    eprintln!("1 GiB overflow round trip: {:?}", started.elapsed());

    assert!(
        lines.contains(&"overflow files while held 1".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"overflow files after drop 0".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&format!("verified {n_words}")), "{lines:?}");
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn quarter_gib_through_the_arena() {
    let name = common::unique_name("ch-256m");
    let arena = 512 * MIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let n_words = (256 * MIB) / 8;
    let seed = 0xfeed;
    let kid = Kid::spawn(
        "recv_words",
        &[&name, &n_words.to_string(), &seed.to_string()],
    );

    let started = Instant::now();
    let words: Vec<u64> = (0..n_words).map(|i| word(seed, i)).collect();
    tx.send_slice(&words).expect("send 256 MiB");
    drop(words);
    let lines = kid.finish();
    eprintln!("256 MiB arena round trip: {:?}", started.elapsed());

    assert!(
        lines.contains(&"overflow files while held 0".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&format!("verified {n_words}")), "{lines:?}");
    assert_eq!(rx.free_arena_bytes(), arena as u64, "arena given back");
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- two producers, two consumers ---------------------------------------------------------

fn child_stress_producer(args: &[String]) {
    let producer: u32 = args[1].parse().expect("producer id");
    let tx = Sender::open(&args[0]).expect("open sender");
    common::signal_parent("attached");
    let mut buf = Vec::new();
    for seq in 0..STRESS_PER_PRODUCER {
        let len = stress_payload(producer, seq, &mut buf);
        let bytes = &bytemuck::cast_slice::<u64, u8>(&buf)[..len];
        if seq % 2 == 0 {
            tx.send(bytes).expect("send");
        } else {
            let mut loan = tx.loan(len).expect("loan");
            loan.copy_from_slice(bytes);
            loan.send().expect("send loan");
        }
    }
}

fn child_stress_consumer(args: &[String]) {
    let rx = Receiver::open(&args[0]).expect("open receiver");
    common::signal_parent("attached");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Hold the last two messages for a while, so chunks are freed out of order.
    let mut held = std::collections::VecDeque::new();
    loop {
        match rx.recv() {
            Ok(msg) => {
                match stress_check(&msg) {
                    Ok((p, s)) => writeln!(out, "m {p} {s} {}", msg.len()).expect("write"),
                    Err(what) => writeln!(out, "bad {what}").expect("write"),
                }
                held.push_back(msg);
                if held.len() > 2 {
                    held.pop_front();
                }
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv failed: {e}"),
        }
    }
    writeln!(out, "consumer done").expect("write");
    out.flush().expect("flush");
}

#[test]
fn two_producers_two_consumers_10k_messages() {
    let name = common::unique_name("ch-mpmc");
    let (tx, rx) = shmq::channel(&name, config(64, 64 * MIB)).expect("create");
    let started = Instant::now();
    let mut consumers: Vec<Kid> = (0..2)
        .map(|_| Kid::spawn("stress_consumer", &[&name]))
        .collect();
    let mut producers: Vec<Kid> = (0..2u32)
        .map(|p| Kid::spawn("stress_producer", &[&name, &p.to_string()]))
        .collect();
    for kid in consumers.iter_mut().chain(producers.iter_mut()) {
        kid.expect("attached");
    }
    // Everyone is attached: from now on the children alone keep the channel alive, and the
    // consumers see Disconnected once both producers have exited.
    drop(tx);
    drop(rx);
    for kid in producers {
        kid.finish();
    }
    let mut seen: HashMap<(u32, u32), usize> = HashMap::new();
    let mut total_bytes = 0usize;
    for (c, kid) in consumers.into_iter().enumerate() {
        let lines = kid.finish();
        assert!(
            lines.iter().any(|l| l == "consumer done"),
            "consumer {c} did not finish"
        );
        let mut last_seq: BTreeMap<u32, u32> = BTreeMap::new();
        let mut count = 0;
        for line in &lines {
            assert!(!line.starts_with("bad "), "consumer {c}: {line}");
            let Some(rest) = line.strip_prefix("m ") else {
                continue;
            };
            let fields: Vec<usize> = rest.split(' ').map(|f| f.parse().expect("field")).collect();
            let (p, s, len) = (fields[0] as u32, fields[1] as u32, fields[2]);
            assert!(
                p < 2 && s < STRESS_PER_PRODUCER,
                "consumer {c}: unknown message {p}/{s}"
            );
            assert_eq!(len, stress_len(p, s), "consumer {c}: length of {p}/{s}");
            if let Some(&prev) = last_seq.get(&p) {
                assert!(
                    s > prev,
                    "consumer {c}: producer {p}'s seq {s} came after {prev} (FIFO broken)"
                );
            }
            last_seq.insert(p, s);
            *seen.entry((p, s)).or_default() += 1;
            total_bytes += len;
            count += 1;
        }
        eprintln!("consumer {c} received {count} messages");
    }
    let expected = 2 * STRESS_PER_PRODUCER as usize;
    let duplicated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    let missing: Vec<_> = (0..2u32)
        .flat_map(|p| (0..STRESS_PER_PRODUCER).map(move |s| (p, s)))
        .filter(|k| !seen.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, first {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(seen.len(), expected);
    eprintln!(
        "2x2 processes: {expected} messages, {} MiB, in {:?}",
        total_bytes / MIB,
        started.elapsed()
    );
    assert_gone(&name);
}

// ----- overflow payloads ----------------------------------------------------------------------

#[test]
fn overflow_payload_is_unlinked_when_dropped() {
    let name = common::unique_name("ch-overflow");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    tx.send(&pattern(1, arena + 1))
        .expect("send just over the arena");
    tx.send(&pattern(2, arena)).expect("send exactly the arena");
    assert_eq!(overflow_files(&name).len(), 1);
    assert_eq!(
        tx.free_arena_bytes(),
        0,
        "a payload of exactly the arena size uses the arena"
    );
    let first = rx.recv().expect("recv");
    assert_eq!(first.len(), arena + 1);
    assert!(check_pattern(&first, 1));
    assert_eq!(overflow_files(&name).len(), 1, "still held");
    drop(first);
    assert!(
        overflow_files(&name).is_empty(),
        "unlinked when the message is dropped"
    );
    assert!(check_pattern(&rx.recv().expect("recv"), 2));
    assert_eq!(tx.free_arena_bytes(), arena as u64);

    // Queued overflow payloads are unlinked with the channel.
    tx.send(&pattern(3, 3 * arena)).expect("send");
    assert_eq!(overflow_files(&name).len(), 1);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}
