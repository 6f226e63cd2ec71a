//! Helpers shared by the channel tests (`tests/channel_*.rs`): child processes that report
//! through stdout, payload patterns, the stress payload generator, and checks that a channel
//! left nothing behind in /dev/shm.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use shmq::ChannelConfig;

/// Generous bound for anything a child does; only there so a bug fails instead of hanging.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
/// Generous bound for a call that should return soon; only there to turn a hang into a failure.
pub const HANG: Duration = Duration::from_secs(10);

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
pub const PAGE: u64 = 4096;

/// Ends a child role that waits for its parent to SIGKILL it.
pub fn sleep_until_killed() -> ! {
    // Bounded, so a parent that died without killing us leaves no process behind for long.
    thread::sleep(CHILD_TIMEOUT);
    std::process::exit(3)
}

/// A child process whose stdout lines are collected by a thread. Killed and reaped on drop,
/// so a failing test leaves no process behind.
pub struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read while waiting for another one.
    skipped: Vec<String>,
}

impl Kid {
    pub fn spawn(role: &str, args: &[&str]) -> Kid {
        let mut child = super::spawn_child(role, args);
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

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line equal to `wanted`.
    pub fn expect(&mut self, wanted: &str) {
        self.expect_prefix(wanted, true);
    }

    /// Waits for a line starting with `prefix` (or equal to it, with `exact`) and returns it.
    pub fn expect_prefix(&mut self, prefix: &str, exact: bool) -> String {
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
    pub fn finish(mut self) -> Vec<String> {
        let status = super::wait_exit(&mut self.child, CHILD_TIMEOUT);
        assert!(status.success(), "child failed: {status}");
        let mut lines = std::mem::take(&mut self.skipped);
        // The reader thread ends at EOF, which the exit brings.
        while let Ok(line) = self.lines.recv_timeout(CHILD_TIMEOUT) {
            lines.push(line);
        }
        lines
    }

    /// SIGKILLs and reaps the child; returns when it is reaped.
    pub fn kill(&mut self) {
        super::kill9(&mut self.child);
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            super::kill9(&mut self.child);
        }
    }
}

/// Runs `f` on a new thread; the receiver yields its result and the instant it returned.
pub fn in_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> mpsc::Receiver<(T, Instant)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let out = f();
        let _ = tx.send((out, Instant::now()));
    });
    rx
}

pub fn monotonic_ns() -> u64 {
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
pub fn pattern_byte(seed: u64, i: usize) -> u8 {
    ((i as u64 ^ seed.wrapping_mul(0x1000_0000_01b3)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56)
        as u8
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}

pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, i);
    }
}

pub fn check_pattern(buf: &[u8], seed: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(seed, i))
}

/// Word `i` of a big payload: distinct for every `i`, so any misplaced word is caught.
pub fn word(seed: u64, i: usize) -> u64 {
    (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Overflow segments of channel `name` present in /dev/shm.
pub fn overflow_files(name: &str) -> Vec<String> {
    let prefix = format!("shmq.{name}~");
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

pub fn assert_gone(name: &str) {
    assert!(!super::shm_exists(name), "segment {name} was left behind");
    assert_eq!(
        overflow_files(name),
        Vec::<String>::new(),
        "overflow segments left behind"
    );
}

pub fn config(capacity: usize, arena: usize) -> ChannelConfig {
    ChannelConfig::default()
        .with_capacity(capacity)
        .with_arena_bytes(arena)
}

// ----- stress payloads (two producers, two consumers) -----------------------------------------

pub const STRESS_PER_PRODUCER: u32 = 5_000;

pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn stress_seed(producer: u32, seq: u32) -> u64 {
    ((producer as u64) << 32 | seq as u64) ^ 0x5eed_0f5e_ed00
}

/// Length of message `seq` of `producer`: 70% inline (16 to 96 bytes: the header needs 16),
/// 20% from 97 bytes to 64 KiB and 10% from 64 KiB to 4 MiB, both log-uniform.
pub fn stress_len(producer: u32, seq: u32) -> usize {
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
pub fn stress_payload(producer: u32, seq: u32, buf: &mut Vec<u64>) -> usize {
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
pub fn stress_check(msg: &[u8]) -> Result<(u32, u32), String> {
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

/// The lowest descriptor number free in this process: a descriptor limit of this value leaves
/// no room for one more open.
pub fn lowest_free_descriptor() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").expect("open /dev/null");
    probe.as_raw_fd() as u64
}

/// Sets this process's soft limit of open descriptors; returns the one before.
pub fn set_descriptor_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a plain struct on our stack.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        old
    }
}
