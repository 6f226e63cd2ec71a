//! The consumer process seen from the producer: how to start it ([`Launcher`]), the handshake
//! and the back channel on its stdout ([`Peer`]), and reaping it however the workload ends.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BoxResult;

/// The consumer's first word on the back channel: it has attached and is ready to read.
pub(super) const READY: u64 = 0x5348_4d51_5245_4459; // "SHMQREDY"

/// How long the producer waits for an acknowledgement once it has sent everything: far more
/// than the payloads in flight need, so a lost message fails the run instead of hanging it.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the consumer: this executable again, with leading arguments and environment.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: PathBuf,
    leading: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Launcher {
    /// The current executable, started with `leading` arguments before the workload's own and
    /// with `env` set.
    pub fn current_exe(leading: &[&str], env: &[(&str, &str)]) -> io::Result<Launcher> {
        Ok(Launcher {
            program: std::env::current_exe()?,
            leading: leading.iter().map(OsString::from).collect(),
            env: env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        })
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.leading).args(args);
        // A process group of its own: Ctrl-C stops the producer only, and the consumer, seeing
        // its peer gone, drops its handles, which removes the channel from /dev/shm.
        command.process_group(0);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }
}

/// A channel name no other workload uses (this process's id and a counter): concurrent runs
/// and successive sessions of one run never meet in /dev/shm.
pub(super) fn unique_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `fd` has data to read (or hit its end), at most `timeout`.
pub(super) fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(()),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the consumer within {timeout:?}"),
                ))
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Reads one little-endian word of the back channel.
pub(super) fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    Ok(u64::from_le_bytes(word))
}

/// A started consumer process. Dropping it without [`finish`](Peer::finish) kills and reaps it.
pub(super) struct Peer {
    child: Option<Child>,
    /// The consumer's stdout: its ready word, acknowledgements and final report (and the
    /// replies of the pipe ping-pong).
    pub(super) back: ChildStdout,
}

impl Peer {
    /// Starts the consumer with `args` and `stdin`, and waits for its ready word.
    pub(super) fn spawn(launcher: &Launcher, args: &[String], stdin: Stdio) -> BoxResult<Peer> {
        let mut child = launcher
            .command(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let Some(back) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("consumer has no stdout".into());
        };
        let mut peer = Peer {
            child: Some(child),
            back,
        };
        match read_u64(&mut peer.back) {
            Ok(READY) => Ok(peer),
            Ok(other) => Err(format!("consumer said {other:#x} instead of ready").into()),
            Err(e) => Err(format!("consumer failed to start: {e}").into()),
        }
    }

    fn child_mut(&mut self) -> io::Result<&mut Child> {
        self.child
            .as_mut()
            .ok_or_else(|| io::Error::other("consumer already reaped"))
    }

    /// The write end of the consumer's stdin pipe, as an unbuffered file (the pipe contender).
    pub(super) fn take_stdin(&mut self) -> BoxResult<File> {
        let stdin = self
            .child_mut()?
            .stdin
            .take()
            .ok_or("consumer has no stdin")?;
        Ok(File::from(OwnedFd::from(stdin)))
    }

    /// Waits for the consumer to exit and checks that it succeeded.
    pub(super) fn finish(mut self) -> BoxResult<()> {
        let mut child = self.child.take().ok_or("consumer already reaped")?;
        let status = match child.wait() {
            Ok(status) => status,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("consumer failed: {status}").into())
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
