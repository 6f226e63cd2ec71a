//! Helpers shared by the integration tests: child processes and unique segment names.
//!
//! A test that needs another process re-runs its own test binary with `SHMQ_TEST_CHILD` set to
//! a role name; the binary's `child_entry` test (ignored, so a normal run skips it) reads the role
//! and its arguments and runs the matching child code. Children are real processes, so SIGKILL
//! exercises what the kernel does at death.
#![allow(dead_code)]

pub mod channel;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CHILD_VAR: &str = "SHMQ_TEST_CHILD";
const ARGS_VAR: &str = "SHMQ_TEST_ARGS";

/// A segment name no other test (or concurrent test run) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts this test binary again as child `role` with `args`.
pub fn spawn_child(role: &str, args: &[&str]) -> Child {
    spawn_child_with_env(role, args, &[])
}

/// [`spawn_child`], with extra environment variables for the child.
pub fn spawn_child_with_env(role: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .envs(env.iter().copied())
        .args([
            "--exact",
            "child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_VAR, role)
        .env(ARGS_VAR, args.join("\u{1f}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child test process")
}

/// Runs `body(role, args)` in a process started by [`spawn_child`]. Call it from an
/// `#[test] #[ignore = "..."] fn child_entry()` in each test file that spawns children; `body`
/// must panic on a role it does not know.
///
/// Panics when `SHMQ_TEST_CHILD` is not set: `child_entry` run by hand (`--ignored`) has no role
/// to play, and must fail rather than pass without doing anything.
pub fn child_dispatch(body: impl FnOnce(&str, &[String])) {
    let role = match std::env::var(CHILD_VAR) {
        Ok(role) if !role.is_empty() => role,
        _ => panic!(
            "{CHILD_VAR} is not set: child_entry is the entry point of child processes started \
             by spawn_child; it is not a test of its own"
        ),
    };
    let args: Vec<String> = std::env::var(ARGS_VAR)
        .unwrap_or_default()
        .split('\u{1f}')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    body(&role, &args);
}

/// Prints a line the parent can wait for (children talk to the parent through stdout).
pub fn signal_parent(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads the child's stdout until a line equal to `line` appears (or panics after `timeout`).
pub fn wait_for_line(child: &mut Child, line: &str, timeout: Duration) {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = line.to_owned();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = String::new();
        loop {
            buf.clear();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(false);
                    return;
                }
                Ok(_) if buf.trim_end() == wanted => {
                    let _ = tx.send(true);
                    // Keep draining so the child never blocks on a full pipe.
                    let mut sink = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut reader, &mut sink);
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(true) => {}
        Ok(false) => panic!("child exited before printing {line:?}"),
        Err(_) => panic!("child did not print {line:?} within {timeout:?}"),
    }
}

/// Sends SIGKILL to the child and reaps it.
pub fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Waits for the child to exit, failing the test after `timeout` (the child is killed then).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            kill9(child);
            panic!("child {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `/dev/shm/shmq.<name>` exists.
pub fn shm_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists()
}

/// A small deterministic generator (SplitMix64), so a failing trial can be replayed by seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Removes, when dropped, `/dev/shm/shmq.<name>` and every `shmq.<name>~...` (overflow
/// payloads, tombstones) of each name, so a failed assertion leaves nothing behind. Removing a
/// name that is already gone is fine.
pub struct Cleanup(Vec<String>);

impl Cleanup {
    pub fn new(names: &[&str]) -> Cleanup {
        Cleanup(names.iter().map(|n| n.to_string()).collect())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_file(format!("/dev/shm/shmq.{name}"));
            for derived in channel::overflow_files(name) {
                let _ = std::fs::remove_file(format!("/dev/shm/{derived}"));
            }
        }
    }
}

/// Takes the OFD write lock on one byte of `file` (shmq's creator lock lives at 2^40).
pub fn ofd_lock(file: &std::fs::File, byte: i64) {
    // SAFETY: all-zero is a valid flock.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = byte;
    request.l_len = 1;
    // SAFETY: the descriptor is open for the whole call and `request` is a valid flock.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::F_OFD_SETLK,
            &mut request,
        )
    };
    assert_eq!(rc, 0, "F_OFD_SETLK: {}", std::io::Error::last_os_error());
}
