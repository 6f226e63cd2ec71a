//! Channels across real processes: gigabyte payloads checked word by word, two producers and
//! two consumers exchanging 10,000 checksummed messages, full and empty rings, arena
//! backpressure, timeouts, disconnection in both directions (including peers killed with
//! SIGKILL), messages that outlive their sender, memory reclaimed from killed peers, zero-length
//! and overflow payloads, `join`, typed slices, threads, and bad input.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use shmq::{
    ChannelConfig, Error, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    Sender, TryRecvError, TrySendError,
};

/// Generous bound for anything a child does; only there so a bug fails instead of hanging.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
/// Generous bound for a call that should return soon; only there to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(10);

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAGE: u64 = 4096;

// ----- child processes -------------------------------------------------------------------------

#[test]
#[ignore]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "recv_words" => child_recv_words(args),
        "stress_producer" => child_stress_producer(args),
        "stress_consumer" => child_stress_consumer(args),
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
        "recv_exit" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            common::signal_parent("attached");
            thread::sleep(Duration::from_millis(300));
            drop(rx);
        }
        "send_exit" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            common::signal_parent("attached");
            for i in 0..n {
                tx.send(&pattern(i as u64, mixed_len(i))).expect("send");
            }
        }
        "attach_and_sleep" => {
            // Attaches as `args[1]` and waits to be killed.
            let _tx;
            let _rx;
            match args[1].as_str() {
                "sender" => _tx = Sender::open(&args[0]).expect("open sender"),
                _ => _rx = Receiver::open(&args[0]).expect("open receiver"),
            }
            common::signal_parent("attached");
            sleep_until_killed();
        }
        "send_and_linger" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                let len = linger_len(i);
                if i % 2 == 0 {
                    tx.send(&pattern(i as u64, len)).expect("send");
                } else {
                    let mut loan = tx.loan(len).expect("loan");
                    fill_pattern(&mut loan, i as u64);
                    loan.send().expect("send loan");
                }
            }
            common::signal_parent("sent");
            sleep_until_killed();
        }
        "recv_and_hold" => {
            let rx = Receiver::open(&args[0]).expect("open receiver");
            let n: usize = args[1].parse().expect("n");
            let held: Vec<_> = (0..n).map(|_| rx.recv().expect("recv")).collect();
            for (i, msg) in held.iter().enumerate() {
                assert!(check_pattern(msg, i as u64), "payload {i} corrupted");
            }
            common::signal_parent("holding");
            sleep_until_killed();
        }
        "loan_and_linger" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let small: usize = args[1].parse().expect("arena loan");
            let big: usize = args[2].parse().expect("overflow loan");
            let mut a = tx.loan(small).expect("arena loan");
            fill_pattern(&mut a, 1);
            let mut b = tx.loan(big).expect("overflow loan");
            fill_pattern(&mut b, 2);
            common::signal_parent("loaned");
            sleep_until_killed();
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
        "send_arena" => {
            // Sends arena payloads, announcing each before it starts.
            let tx = Sender::open(&args[0]).expect("open sender");
            let n: usize = args[1].parse().expect("n");
            for i in 0..n {
                common::signal_parent(&format!("sending {i}"));
                tx.send(&pattern(i as u64, 5000)).expect("send");
            }
            sleep_until_killed();
        }
        "create_send_die" => {
            // Creates the channel itself, queues an overflow payload and waits to be killed,
            // leaving the channel and its overflow segment behind.
            let arena: usize = args[1].parse().expect("arena");
            let (tx, _rx) = shmq::channel(&args[0], config(4, arena)).expect("create");
            tx.send(&pattern(1, 2 * arena)).expect("send overflow");
            common::signal_parent("sent");
            sleep_until_killed();
        }
        other => panic!("unknown child role {other}"),
    });
}

fn sleep_until_killed() -> ! {
    // Bounded, so a parent that died without killing us leaves no process behind for long.
    thread::sleep(CHILD_TIMEOUT);
    std::process::exit(3)
}

/// A child process whose stdout lines are collected by a thread. Killed and reaped on drop,
/// so a failing test leaves no process behind.
struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read while waiting for another one.
    skipped: Vec<String>,
}

impl Kid {
    fn spawn(role: &str, args: &[&str]) -> Kid {
        let mut child = common::spawn_child(role, args);
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining even if nobody listens, so the child never blocks on the pipe.
                let _ = tx.send(line);
            }
        });
        Kid {
            child,
            lines,
            skipped: Vec::new(),
        }
    }

    /// Waits for a line equal to `wanted`.
    fn expect(&mut self, wanted: &str) {
        self.expect_prefix(wanted, true);
    }

    /// Waits for a line starting with `prefix` (or equal to it, with `exact`) and returns it.
    fn expect_prefix(&mut self, prefix: &str, exact: bool) -> String {
        let deadline = Instant::now() + CHILD_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if (exact && line == prefix) || (!exact && line.starts_with(prefix)) => {
                    return line
                }
                Ok(line) => self.skipped.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("child did not print {prefix:?} within {CHILD_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    panic!("child exited ({status}) before printing {prefix:?}")
                }
            }
        }
    }

    /// Waits for a successful exit and returns every line not yet consumed.
    fn finish(mut self) -> Vec<String> {
        let status = common::wait_exit(&mut self.child, CHILD_TIMEOUT);
        assert!(status.success(), "child failed: {status}");
        let mut lines = std::mem::take(&mut self.skipped);
        // The reader thread ends at EOF, which the exit brings.
        while let Ok(line) = self.lines.recv_timeout(CHILD_TIMEOUT) {
            lines.push(line);
        }
        lines
    }

    /// SIGKILLs and reaps the child; returns when it is reaped.
    fn kill(&mut self) {
        common::kill9(&mut self.child);
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            common::kill9(&mut self.child);
        }
    }
}

/// Runs `f` on a new thread; the receiver yields its result and the instant it returned.
fn in_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> mpsc::Receiver<(T, Instant)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let out = f();
        let _ = tx.send((out, Instant::now()));
    });
    rx
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ----- payload patterns ------------------------------------------------------------------------

/// Byte `i` of payload `seed`: position dependent, so shifted or swapped bytes are caught.
fn pattern_byte(seed: u64, i: usize) -> u8 {
    ((i as u64 ^ seed.wrapping_mul(0x1000_0000_01b3)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56)
        as u8
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}

fn fill_pattern(buf: &mut [u8], seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, i);
    }
}

fn check_pattern(buf: &[u8], seed: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(seed, i))
}

/// Word `i` of a big payload: distinct for every `i`, so any misplaced word is caught.
fn word(seed: u64, i: usize) -> u64 {
    (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Sizes for the disconnection tests: inline, arena.
fn mixed_len(i: usize) -> usize {
    [0, 1, 96, 97, 4096, 10_000][i % 6]
}

/// Sizes for `send_and_linger` (arena 1 MiB): inline, arena and overflow.
fn linger_len(i: usize) -> usize {
    [0, 10, 96, 97, 5000, 70_000, 2 * MIB][i % 7]
}

/// Overflow segments of channel `name` present in /dev/shm.
fn overflow_files(name: &str) -> Vec<String> {
    let prefix = format!("shmq.{name}~");
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

fn assert_gone(name: &str) {
    assert!(!common::shm_exists(name), "segment {name} was left behind");
    assert_eq!(
        overflow_files(name),
        Vec::<String>::new(),
        "overflow segments left behind"
    );
}

fn config(capacity: usize, arena: usize) -> ChannelConfig {
    ChannelConfig::default()
        .capacity(capacity)
        .arena_bytes(arena)
}

// ----- 1. big payloads end to end --------------------------------------------------------------

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

// ----- 2. two producers, two consumers ---------------------------------------------------------

const STRESS_PER_PRODUCER: u32 = 5_000;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn stress_seed(producer: u32, seq: u32) -> u64 {
    ((producer as u64) << 32 | seq as u64) ^ 0x5eed_0f5e_ed00
}

/// Length of message `seq` of `producer`: 70% inline (16 to 96 bytes: the header needs 16),
/// 20% from 97 bytes to 64 KiB and 10% from 64 KiB to 4 MiB, both log-uniform.
fn stress_len(producer: u32, seq: u32) -> usize {
    let mut state = stress_seed(producer, seq) ^ 0x1e57;
    let class = splitmix(&mut state) % 100;
    let unit = (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
    let log_uniform = |lo: f64, hi: f64| (lo * (hi / lo).powf(unit)) as usize;
    match class {
        0..=69 => 16 + (splitmix(&mut state) % 81) as usize,
        70..=89 => log_uniform(97.0, 64.0 * 1024.0),
        _ => log_uniform(64.0 * 1024.0, 4.0 * 1024.0 * 1024.0),
    }
}

/// Builds message `seq` of `producer` in `buf`: header (producer u32, seq u32, length u64),
/// then bytes from a PRNG seeded by (producer, seq). Returns its length in bytes.
fn stress_payload(producer: u32, seq: u32, buf: &mut Vec<u64>) -> usize {
    let len = stress_len(producer, seq);
    buf.clear();
    buf.push(producer as u64 | (seq as u64) << 32);
    buf.push(len as u64);
    let mut state = stress_seed(producer, seq);
    for _ in 2..len.div_ceil(8) {
        buf.push(splitmix(&mut state));
    }
    len
}

/// Checks a stress payload; returns (producer, seq) or what is wrong.
fn stress_check(msg: &[u8]) -> Result<(u32, u32), String> {
    if msg.len() < 16 {
        return Err(format!("{} bytes, shorter than the header", msg.len()));
    }
    let full = msg.len() / 8 * 8;
    // Payloads start 64-byte aligned, so the words can be read in place.
    let words: &[u64] =
        bytemuck::try_cast_slice(&msg[..full]).map_err(|e| format!("payload not aligned: {e}"))?;
    let (producer, seq) = (words[0] as u32, (words[0] >> 32) as u32);
    if words[1] != msg.len() as u64 || stress_len(producer, seq) != msg.len() {
        return Err(format!(
            "producer {producer} seq {seq}: {} bytes, header says {}, expected {}",
            msg.len(),
            words[1],
            stress_len(producer, seq)
        ));
    }
    let mut state = stress_seed(producer, seq);
    for (i, &w) in words[2..].iter().enumerate() {
        if w != splitmix(&mut state) {
            return Err(format!(
                "producer {producer} seq {seq}: word {} differs",
                i + 2
            ));
        }
    }
    if full < msg.len() {
        let last = splitmix(&mut state).to_ne_bytes();
        if msg[full..] != last[..msg.len() - full] {
            return Err(format!("producer {producer} seq {seq}: tail differs"));
        }
    }
    Ok((producer, seq))
}

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

// ----- 3. full and empty -----------------------------------------------------------------------

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
    assert!(matches!(tx.try_send(b"y"), Err(TrySendError::Full)));
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

// ----- 4. timeouts -----------------------------------------------------------------------------

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
        assert!(matches!(err, SendTimeoutError::Timeout), "{err:?}");
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
    assert_eq!(
        tx.free_arena_bytes(),
        arena as u64,
        "failed loan send gives memory back"
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

// ----- 5. disconnection ------------------------------------------------------------------------

#[test]
fn disconnection_in_one_process() {
    let name = common::unique_name("ch-disc");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    tx.send(b"kept").expect("send");
    tx.send(&[5; 5000]).expect("send");
    drop(tx);
    assert_eq!(&rx.recv().expect("drained first")[..], b"kept");
    assert_eq!(rx.try_recv().expect("drained second").len(), 5000);
    assert!(rx.try_recv().unwrap_err().is_disconnected());
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert!(rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_err()
        .is_disconnected());
    assert_eq!(rx.iter().count(), 0);
    let tx = Sender::open(&name).expect("a new sender reconnects");
    drop(rx);
    assert!(tx.try_send(b"x").unwrap_err().is_disconnected());
    assert!(tx.send(b"x").unwrap_err().is_disconnected());
    assert!(tx.send(&[1; 5000]).unwrap_err().is_disconnected());
    assert!(tx
        .send_timeout(b"x", Duration::from_secs(5))
        .unwrap_err()
        .is_disconnected());
    assert!(tx.loan(10).unwrap_err().is_disconnected());
    drop(tx);
    assert_gone(&name);
}

#[test]
fn receiver_process_exits_while_send_is_blocked() {
    let name = common::unique_name("ch-rx-exit");
    let (tx, rx) = shmq::channel(&name, config(2, MIB)).expect("create");
    tx.send(b"1").expect("send");
    tx.send(b"2").expect("send");
    let mut kid = Kid::spawn("recv_exit", &[&name]);
    kid.expect("attached");
    drop(rx);
    let result = in_thread(move || {
        let r = tx.send(b"3");
        (r, tx)
    });
    kid.finish();
    let ((sent, tx), _) = result.recv_timeout(HANG).expect("send still blocked");
    assert!(
        matches!(sent, Err(SendError::Disconnected)),
        "blocked send after the receiver exited: {sent:?}"
    );
    drop(tx);
    assert_gone(&name);
}

#[test]
fn sender_process_exits_receiver_drains_then_disconnects() {
    let name = common::unique_name("ch-tx-exit");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let n = 30; // more than the capacity: the child blocks until the parent receives
    let mut kid = Kid::spawn("send_exit", &[&name, &n.to_string()]);
    kid.expect("attached");
    drop(tx);
    let mut count = 0;
    for (i, msg) in rx.iter().enumerate() {
        assert_eq!(msg.len(), mixed_len(i));
        assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
        count += 1;
    }
    assert_eq!(count, n, "iter ends at Disconnected after draining");
    kid.finish();
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert_eq!(rx.free_arena_bytes(), MIB as u64);
    drop(rx);
    assert_gone(&name);

    // Same, with the parent receiving only after the child has exited.
    let name = common::unique_name("ch-tx-exit2");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    let mut kid = Kid::spawn("send_exit", &[&name, "8"]);
    kid.expect("attached");
    drop(tx);
    kid.finish();
    for i in 0..8 {
        let msg = rx
            .recv()
            .expect("messages of an exited sender are delivered");
        assert!(check_pattern(&msg, i), "message {i} corrupted");
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_sender_wakes_blocked_recv() {
    let name = common::unique_name("ch-kill-tx");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let mut kid = Kid::spawn("attach_and_sleep", &[&name, "sender"]);
    kid.expect("attached");
    drop(tx);
    let result = in_thread(move || {
        let r = rx.recv().map(|m| m.len());
        (r, rx)
    });
    thread::sleep(Duration::from_millis(100)); // let it block
    assert!(
        result.try_recv().is_err(),
        "recv returned while a sender was alive"
    );
    let killed = Instant::now();
    kid.kill();
    let ((got, rx), returned) = result.recv_timeout(HANG).expect("recv still blocked");
    eprintln!(
        "recv noticed the killed sender after {:?}",
        returned.saturating_duration_since(killed)
    );
    assert!(matches!(got, Err(RecvError::Disconnected)), "{got:?}");
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_receiver_wakes_blocked_send() {
    let name = common::unique_name("ch-kill-rx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let mut kid = Kid::spawn("attach_and_sleep", &[&name, "receiver"]);
    kid.expect("attached");
    drop(rx);
    while tx.try_send(&[9; 5000]).is_ok() {}
    assert!(tx.is_full());
    let result = in_thread(move || {
        let r = tx.send(&[3; 5000]);
        (r, tx)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        result.try_recv().is_err(),
        "send returned while the ring was full"
    );
    let killed = Instant::now();
    kid.kill();
    let ((sent, tx), returned) = result.recv_timeout(HANG).expect("send still blocked");
    eprintln!(
        "send noticed the killed receiver after {:?}",
        returned.saturating_duration_since(killed)
    );
    assert!(matches!(sent, Err(SendError::Disconnected)), "{sent:?}");
    // The failed send gave its chunk back; the queued ones are still there.
    assert_eq!(tx.free_arena_bytes(), arena as u64 - 4 * 2 * PAGE);
    drop(tx);
    assert_gone(&name);
}

// ----- 6. messages survive their sender --------------------------------------------------------

#[test]
fn messages_survive_a_killed_sender() {
    let name = common::unique_name("ch-survive");
    let arena = MIB;
    let n = 14;
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    drop(tx);
    let mut kid = Kid::spawn("send_and_linger", &[&name, &n.to_string()]);
    kid.expect("sent");
    kid.kill();
    for i in 0..n {
        let msg = rx
            .recv_timeout(HANG)
            .unwrap_or_else(|e| panic!("message {i} lost: {e}"));
        assert_eq!(msg.len(), linger_len(i), "message {i} length");
        assert!(check_pattern(&msg, i as u64), "message {i} corrupted");
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    assert!(overflow_files(&name).is_empty());
    drop(rx);
    assert_gone(&name);
}

// ----- 7. memory of killed peers is reclaimed --------------------------------------------------

#[test]
fn killed_receiver_holding_messages_gives_memory_back() {
    let name = common::unique_name("ch-reclaim-rx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    let sizes = [100 * KIB, 100 * KIB, 2 * MIB, 50];
    for (i, &len) in sizes.iter().enumerate() {
        tx.send(&pattern(i as u64, len)).expect("send");
    }
    let mut kid = Kid::spawn("recv_and_hold", &[&name, &sizes.len().to_string()]);
    kid.expect("holding");
    assert!(rx.is_empty());
    assert_eq!(tx.free_arena_bytes(), (arena - 200 * KIB) as u64);
    assert_eq!(overflow_files(&name).len(), 1);
    kid.kill();

    // A payload that needs the whole arena can only go once the dead child's chunks are back;
    // the blocked send reclaims dead participants while it waits.
    let started = Instant::now();
    tx.send_timeout(&pattern(9, arena), HANG)
        .expect("arena reclaimed from the killed receiver");
    eprintln!(
        "arena reclaimed from a killed receiver after {:?}",
        started.elapsed()
    );
    assert!(
        overflow_files(&name).is_empty(),
        "overflow payload of the dead receiver"
    );
    let msg = rx.recv().expect("recv");
    assert!(check_pattern(&msg, 9));
    drop(msg);
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    // Messages taken by a receiver that died count as done.
    tx.join_timeout(HANG)
        .expect("join after the dead receiver's messages");
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn killed_sender_holding_loans_gives_memory_back() {
    let name = common::unique_name("ch-reclaim-tx");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    let mut kid = Kid::spawn(
        "loan_and_linger",
        &[&name, &(200 * KIB).to_string(), &(2 * MIB).to_string()],
    );
    kid.expect("loaned");
    assert_eq!(tx.free_arena_bytes(), (arena - 200 * KIB) as u64);
    assert_eq!(overflow_files(&name).len(), 1);
    kid.kill();
    tx.send_timeout(&pattern(4, arena), HANG)
        .expect("arena reclaimed from the killed sender");
    assert!(
        overflow_files(&name).is_empty(),
        "overflow loan of the dead sender"
    );
    let msg = rx.try_recv().expect("the parent's message");
    assert!(check_pattern(&msg, 4));
    drop(msg);
    assert!(
        rx.try_recv().unwrap_err().is_empty(),
        "an unsent loan was delivered"
    );
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

// ----- 8. zero length, dropped loans, overflow, join -------------------------------------------

#[test]
fn zero_length_messages() {
    let name = common::unique_name("ch-zero");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    tx.send(&[]).expect("send empty");
    let loan = tx.loan(0).expect("loan 0");
    assert!(loan.is_empty());
    loan.send().expect("send empty loan");
    tx.send_slice::<f32>(&[]).expect("send empty slice");
    for _ in 0..3 {
        let msg = rx.try_recv().expect("empty message");
        assert!(msg.is_empty());
        assert!(msg.to_vec().is_empty());
        assert_eq!(msg.as_slice::<u64>().expect("empty slice").len(), 0);
    }
    assert!(rx.try_recv().unwrap_err().is_empty());
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn dropped_loan_gives_memory_back() {
    let name = common::unique_name("ch-loan-drop");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("create");
    let mut loan = tx.loan(10 * KIB).expect("loan");
    loan.fill(1);
    assert_eq!(tx.free_arena_bytes(), (arena - 12 * KIB) as u64);
    drop(loan);
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    let mut whole = tx.try_loan(arena).expect("loan the whole arena");
    whole.fill(2);
    assert_eq!(tx.free_arena_bytes(), 0);
    drop(whole);
    let overflow = tx.loan(arena + 1).expect("overflow loan");
    assert_eq!(overflow_files(&name).len(), 1);
    drop(overflow);
    assert!(
        overflow_files(&name).is_empty(),
        "dropped overflow loan unlinked"
    );
    assert!(
        rx.try_recv().unwrap_err().is_empty(),
        "a dropped loan was delivered"
    );
    assert_eq!(tx.free_arena_bytes(), arena as u64);
    assert_eq!(tx.len(), 0);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

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

#[test]
fn longest_name_carries_overflow_payloads() {
    let prefix = common::unique_name("ch-long");
    let name = format!("{prefix}{}", "x".repeat(shmq::MAX_NAME_LEN - prefix.len()));
    assert_eq!(name.len(), shmq::MAX_NAME_LEN);
    let (tx, rx) = shmq::channel(&name, config(4, 64 * KIB)).expect("create");
    tx.send(&pattern(1, MIB)).expect("send overflow");
    assert!(check_pattern(&rx.recv().expect("recv"), 1));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

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

// ----- 9. typed slices and threads -------------------------------------------------------------

#[test]
fn typed_slices_round_trip() {
    let name = common::unique_name("ch-slice");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    let values: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.25 - 7.0).collect();
    tx.send_slice(&values).expect("send_slice");
    let mut loan = tx.loan_slice::<f32>(3).expect("loan_slice");
    loan.copy_from_slice(&[1.5, -2.0, f32::MAX]);
    loan.send().expect("send");
    let mut tiny = tx.loan_slice::<f32>(20).expect("inline-sized loan_slice");
    for (i, x) in tiny.iter_mut().enumerate() {
        *x = i as f32;
    }
    tiny.into_bytes().send().expect("send");
    tx.send_slice(&[1u32, 2, 3]).expect("12 bytes");

    let msg = rx.recv().expect("recv");
    assert_eq!(msg.as_slice::<f32>().expect("f32 view"), &values[..]);
    drop(msg);
    let msg = rx.recv().expect("recv");
    assert_eq!(
        msg.as_slice::<f32>().expect("f32 view"),
        &[1.5, -2.0, f32::MAX]
    );
    drop(msg);
    let msg = rx.recv().expect("recv");
    let expected: Vec<f32> = (0..20).map(|i| i as f32).collect();
    assert_eq!(msg.as_slice::<f32>().expect("f32 view"), &expected[..]);
    drop(msg);
    let msg = rx.recv().expect("recv");
    assert_eq!(msg.len(), 12);
    assert!(msg.as_slice::<u64>().is_err(), "12 bytes are not u64s");
    assert_eq!(msg.as_slice::<u32>().expect("u32 view"), &[1, 2, 3]);
    assert_eq!(msg.to_vec(), bytemuck::cast_slice::<u32, u8>(&[1, 2, 3]));
    assert_eq!(msg.as_ref(), &msg[..]);
    drop(msg);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn handles_are_clone_send_sync_and_work_from_threads() {
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    fn send_sync<T: Send + Sync>() {}
    clone_send_sync::<Sender>();
    clone_send_sync::<Receiver>();
    send_sync::<shmq::Message>();
    send_sync::<shmq::Loan>();

    let name = common::unique_name("ch-threads");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(16, arena)).expect("create");
    assert_eq!(tx.name(), name);
    let per_thread = 500u64;
    let senders: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for seq in 0..per_thread {
                    let len = [8, 96, 200, 5000, 20_000][(seq % 5) as usize];
                    let mut payload = pattern(t << 32 | seq, len);
                    payload[..8].copy_from_slice(&(t << 32 | seq).to_le_bytes());
                    if seq % 3 == 0 {
                        let mut loan = tx.loan(len).expect("loan");
                        loan.copy_from_slice(&payload);
                        loan.send().expect("send loan");
                    } else {
                        tx.send(&payload).expect("send");
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for msg in rx.iter() {
                    let id = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
                    let mut expected = pattern(id, msg.len());
                    expected[..8].copy_from_slice(&id.to_le_bytes());
                    assert!(msg[..] == expected[..], "payload {id:#x} corrupted");
                    got.push(id);
                }
                got
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread");
    }
    let mut all: Vec<u64> = receivers
        .into_iter()
        .flat_map(|r| r.join().expect("receiver thread"))
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (0..4u64)
        .flat_map(|t| (0..per_thread).map(move |s| t << 32 | s))
        .collect();
    assert_eq!(all, expected, "every message exactly once");
    assert_eq!(rx.free_arena_bytes(), arena as u64);
    drop(rx);
    assert_gone(&name);
}

// ----- 10. bad input ---------------------------------------------------------------------------

#[test]
fn bad_configuration_is_invalid_argument() {
    let name = common::unique_name("ch-bad-cfg");
    for cfg in [
        config(0, MIB),
        config((1 << 24) + 1, MIB),
        ChannelConfig::default()
            .arena_bytes(MIB)
            .max_participants(0),
        ChannelConfig::default()
            .arena_bytes(MIB)
            .max_participants(100_000),
    ] {
        let err = shmq::channel(&name, cfg.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{cfg:?}: {err:?}"
        );
        assert!(!common::shm_exists(&name), "{cfg:?} left a segment");
    }
    // A zero-byte arena is valid: every payload above 96 bytes goes through overflow.
    let (tx, rx) = shmq::channel(&name, config(1, 0)).expect("create without arena");
    tx.send(&pattern(1, 200)).expect("send");
    assert!(check_pattern(&rx.recv().expect("recv"), 1));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn opening_what_is_not_there_or_not_a_channel() {
    let name = common::unique_name("ch-bad-open");
    assert!(matches!(Sender::open(&name), Err(Error::NotFound { .. })));
    assert!(matches!(Receiver::open(&name), Err(Error::NotFound { .. })));

    let seg = shmq::Segment::create(&name, 4096).expect("raw segment");
    for err in [
        Receiver::open(&name).unwrap_err(),
        Sender::open(&name).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::Incompatible { what: "kind", .. }),
            "opening a raw segment as a channel: {err:?}"
        );
    }
    drop(seg);
    assert_gone(&name);

    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let err = shmq::channel(&name, config(4, MIB)).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let err = shmq::Segment::open(&name).unwrap_err();
    assert!(
        matches!(err, Error::Incompatible { what: "kind", .. }),
        "{err:?}"
    );
    // The first channel is untouched by the failed attempts.
    tx.send(b"still works").expect("send");
    assert_eq!(&rx.recv().expect("recv")[..], b"still works");
    drop(tx);
    drop(rx);
    assert_gone(&name);
    assert!(matches!(Sender::open(&name), Err(Error::NotFound { .. })));
}

#[test]
fn invalid_names() {
    let too_long = "n".repeat(shmq::MAX_NAME_LEN + 1);
    for bad in [
        "",
        "a/b",
        "../x",
        "with space",
        "tab\t",
        "ü",
        "a~1",
        &too_long,
    ] {
        let err = shmq::channel(bad, config(4, MIB)).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
        let err = Sender::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
        let err = Receiver::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
    }
}

// ----- edge cases ------------------------------------------------------------------------------

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

#[test]
fn zero_length_loan_without_arena() {
    let name = common::unique_name("ch-zero-arena");
    let (tx, rx) = shmq::channel(&name, config(4, 0)).expect("create");
    tx.send(&[]).expect("empty inline");
    // FAILS: Endpoint::reserve sends a 0-byte loan to the arena (0 <= arena_bytes), which has
    // no page for it: try_loan(0) is Full forever and loan(0) blocks forever.
    let loan = tx
        .loan_timeout(0, Duration::from_secs(1))
        .expect("a zero-length loan on a channel without arena");
    loan.send().expect("send");
    assert!(rx.recv().expect("recv").is_empty());
    assert!(rx.recv().expect("recv").is_empty());
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
    // FAILS: Chan::wait_for spins for the whole spin time without looking at the deadline, so
    // send_timeout/recv_timeout/loan_timeout shorter than the spin take the whole spin.
    assert!(
        send_took < soon && recv_took < soon,
        "calls with a 50 ms deadline took {send_took:?} and {recv_took:?} (spin {spin:?})"
    );
}

#[test]
fn polling_try_send_recovers_arena_of_a_killed_receiver() {
    let name = common::unique_name("ch-poll");
    let arena = 64 * KIB;
    let (tx, rx) = shmq::channel(&name, config(8, arena)).expect("create");
    tx.send(&pattern(0, arena)).expect("send the whole arena");
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "1"]);
    kid.expect("holding");
    kid.kill();
    // A producer that polls with try_send (never blocking) while the parent's own receiver
    // stays alive but idle.
    let started = Instant::now();
    let mut sent = false;
    while started.elapsed() < Duration::from_secs(2) {
        if tx.try_send(&pattern(1, arena)).is_ok() {
            sent = true;
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "polling try_send: sent={sent} after {:?}",
        started.elapsed()
    );
    // FAILS: dead participants are reclaimed only by a call that sleeps 25 ms in
    // Chan::wait_for (or by an attach that happens to reuse the dead slot); a producer that
    // polls with try_send never sleeps, so the dead receiver's chunk is never given back.
    assert!(
        sent,
        "arena of the killed receiver never reclaimed by polling try_send"
    );
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn join_counts_messages_of_a_killed_receiver_as_done() {
    let name = common::unique_name("ch-join-dead");
    let (tx, rx) = shmq::channel(&name, config(8, MIB)).expect("create");
    for i in 0..3 {
        tx.send(&pattern(i, 10 * KIB)).expect("send");
    }
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "3"]);
    kid.expect("holding");
    drop(rx); // the child is the only receiver, and it took every message
    kid.kill();
    // FAILS: Sender::join_until returns Disconnected as soon as no receiver is alive while
    // done < target, before anyone reclaimed the dead receiver (which would count its taken
    // messages as done), contradicting the doc of `join`.
    let result = tx.join_timeout(HANG);
    assert!(
        result.is_ok(),
        "join with every message taken by a dead receiver: {result:?}"
    );
    drop(tx);
    assert_gone(&name);
}

#[test]
fn new_receiver_reuses_the_slot_of_a_killed_one() {
    let name = common::unique_name("ch-slot");
    let arena = MIB;
    let cfg = config(8, arena).max_participants(3);
    let (tx, rx) = shmq::channel(&name, cfg).expect("create");
    tx.send(&pattern(0, 100 * KIB)).expect("send");
    let mut kid = Kid::spawn("recv_and_hold", &[&name, "1"]);
    kid.expect("holding");
    assert!(matches!(
        Receiver::open(&name),
        Err(Error::TooManyParticipants { .. })
    ));
    kid.kill();
    // The only free slot is the dead child's: attaching reclaims what it held.
    let rx2 = Receiver::open(&name).expect("open reuses the dead slot");
    assert_eq!(tx.free_arena_bytes(), arena as u64, "reclaimed on attach");
    drop(rx2);
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn recreated_channel_after_a_crash_sends_overflow_payloads() {
    let name = common::unique_name("ch-recreate");
    let arena = 64 * KIB;
    let mut kid = Kid::spawn("create_send_die", &[&name, &arena.to_string()]);
    kid.expect("sent");
    kid.kill();
    // Everything of the crashed incarnation is still there: the channel and its queued
    // overflow payload. Remove the channel by name (as an operator would) and start afresh.
    assert!(common::shm_exists(&name));
    let leftovers = overflow_files(&name);
    assert_eq!(leftovers.len(), 1);
    shmq::Segment::remove(&name).expect("remove the dead channel");
    let (tx, rx) = shmq::channel(&name, config(4, arena)).expect("re-create");
    // FAILS: overflow ids restart at 1 in every incarnation of a channel, so the new
    // incarnation's first overflow payload collides with the crashed one's `<name>~1`.
    let sent = tx.send(&pattern(2, 2 * arena));
    for f in &leftovers {
        let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
    }
    sent.expect("overflow send on a re-created channel");
    assert!(check_pattern(&rx.recv().expect("recv"), 2));
    drop(tx);
    drop(rx);
    assert_gone(&name);
}

#[test]
fn sender_killed_while_blocked_gives_its_chunk_back() {
    let name = common::unique_name("ch-kill-blocked");
    let arena = MIB;
    let (tx, rx) = shmq::channel(&name, config(2, arena)).expect("create");
    drop(tx);
    // 3 messages into a ring of 2: the child blocks in its third send, holding its chunk.
    let mut kid = Kid::spawn("send_arena", &[&name, "3"]);
    kid.expect("sending 2");
    while rx.len() < 2 || rx.free_arena_bytes() > arena as u64 - 6 * PAGE {
        thread::sleep(Duration::from_millis(10));
    }
    kid.kill();
    for i in 0..2 {
        assert!(check_pattern(&rx.recv().expect("recv"), i));
    }
    assert!(rx.recv().unwrap_err().is_disconnected());
    // FAILS: the receiver has just found the sender dead, but only a call that sleeps 25 ms
    // reclaims dead participants, so the dead sender's chunk stays allocated for good.
    assert_eq!(
        rx.free_arena_bytes(),
        arena as u64,
        "chunk of the killed sender after Disconnected"
    );
    drop(rx);
    assert_gone(&name);
}

/// A `Pod` type aligned beyond a page cannot be lent: payloads are only 4096-byte aligned.
#[test]
fn loan_slice_refuses_types_aligned_beyond_a_page() {
    #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
    #[repr(C, align(8192))]
    struct Huge([u64; 1024]);
    let name = common::unique_name("overaligned");
    let (tx, rx) = shmq::channel(&name, ChannelConfig::default().arena_bytes(1 << 20)).unwrap();
    let refused = tx.loan_slice::<Huge>(1);
    assert!(matches!(
        refused,
        Err(SendError::Failed(shmq::Error::InvalidArgument { .. }))
    ));
    assert_eq!(tx.free_arena_bytes(), 1 << 20);
    drop((tx, rx));
    assert!(!common::shm_exists(&name));
}
