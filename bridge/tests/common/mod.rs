//! Helpers of the bridge tests: `shmq-bridge` processes with their logs, free loopback ports,
//! unique channel names, and messages whose bytes and order can be checked.
//!
//! The two "hosts" of a test are two bridge processes that share nothing but a TCP connection on
//! loopback (two Zenoh peers, no router, multicast scouting off); the channels of each "host"
//! have names of their own, since both live in this machine's /dev/shm. The test process plays
//! the local producer on host A and the local consumer on host B.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A channel name no other test (or concurrent run) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-bridge-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback TCP endpoint (in Zenoh's syntax) nothing listens on now.
pub fn free_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local_addr").port();
    format!("tcp/127.0.0.1:{port}")
}

/// One `shmq-bridge` process, its stderr (the log) in a file. Killed (SIGKILL) when dropped.
pub struct Bridge {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Bridge {
    /// Starts `shmq-bridge ARGS`, logging at `info` into a file of its own.
    pub fn start(name: &str, args: &[&str]) -> Bridge {
        let log = std::env::temp_dir().join(format!(
            "shmq-bridge-test-{}-{name}-{}.log",
            std::process::id(),
            unique_name("log")
        ));
        let file = std::fs::File::create(&log).expect("create the bridge's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_shmq-bridge"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SHMQ_BRIDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn shmq-bridge");
        Bridge {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` is in `times` lines of the log; panics (printing the log) after
    /// `timeout`.
    pub fn wait_for(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < times {
            assert!(
                Instant::now() < deadline,
                "{}: {needle:?} not logged {times} times within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; panics (printing the log) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The bytes every test message is cut from: message `index` of `len` bytes is
/// `pattern[offset(index)..][..len]` with its first 8 bytes (as many as it has) replaced by
/// `index`, little-endian. Checked with one comparison, so a message out of order, repeated,
/// shifted or corrupted anywhere shows.
pub struct Pattern {
    bytes: Vec<u8>,
}

const OFFSETS: usize = 4093;

impl Pattern {
    /// A pattern for messages up to `max_len` bytes.
    pub fn new(max_len: usize) -> Pattern {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut bytes = vec![0u8; max_len + OFFSETS];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        Pattern { bytes }
    }

    fn offset(index: u64) -> usize {
        (index as usize).wrapping_mul(7919) % OFFSETS
    }

    /// Writes message `index` into `out` (its length is the message's).
    pub fn fill(&self, index: u64, out: &mut [u8]) {
        let at = Pattern::offset(index);
        out.copy_from_slice(&self.bytes[at..at + out.len()]);
        let head = out.len().min(8);
        out[..head].copy_from_slice(&index.to_le_bytes()[..head]);
    }

    /// The index of a message of 8 bytes or more (None for shorter ones).
    pub fn index_of(message: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(message.get(..8)?.try_into().ok()?))
    }

    /// Whether `message` is exactly message `index` of its length.
    pub fn is(&self, index: u64, message: &[u8]) -> bool {
        let at = Pattern::offset(index);
        let head = message.len().min(8);
        message[..head] == index.to_le_bytes()[..head]
            && message[head..] == self.bytes[at + head..at + message.len()]
    }
}

/// Sends message `index` of `len` bytes through `tx`, built in place in a loan. Panics if the
/// channel has no room for two minutes (a stuck bridge), so a failing test ends.
pub fn send(tx: &shmq::Sender, pattern: &Pattern, index: u64, len: usize) {
    let patience = Duration::from_secs(120);
    let mut loan = tx
        .loan_timeout(len, patience)
        .unwrap_or_else(|e| panic!("loan for message {index}: {e}"));
    pattern.fill(index, &mut loan);
    if let Err(e) = loan.send_timeout(patience) {
        panic!("send message {index}: {e}");
    }
}

/// The names in /dev/shm that start with `shmq.NAME` for one of `names`.
pub fn leftovers(names: &[&str]) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    names
                        .iter()
                        .any(|name| n.starts_with(&format!("shmq.{name}")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until channel `name` exists and opens a receiver on it (a bridge creates it).
pub fn open_receiver(name: &str, timeout: Duration) -> shmq::Receiver {
    let deadline = Instant::now() + timeout;
    loop {
        match shmq::Receiver::open(name) {
            Ok(rx) => return rx,
            Err(e) => {
                assert!(Instant::now() < deadline, "channel {name} not there: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
