//! What the multi-process examples share: the dispatch between the parent and the child role of
//! one program, the [`Children`] guard that starts child processes, reads their stdout lines and
//! kills and reaps them on drop, and the check that a run left no segment in /dev/shm.
//!
//! Each example includes it with `mod common;`. It lives in a directory of its own, so cargo
//! does not build it as an example by itself; not every example uses every item, hence the
//! `allow(dead_code)`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Upper bound on the whole run, so that a bug shows up as a failure rather than a hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `main` of a program that starts its children by running itself again: runs `child` on
/// the remaining arguments when the first one is `role`, and `parent` on all of them otherwise.
/// An error is printed on stderr after `program: ` and makes the exit status a failure.
pub fn run(
    program: &str,
    role: &str,
    child: fn(&[String]) -> BoxResult<()>,
    parent: fn(&[String]) -> BoxResult<()>,
) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first() {
        Some(first) if first == role => child(&args[1..]),
        _ => parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks that the last handle to go has unlinked the segment of each channel in `names`.
pub fn ensure_unlinked(names: &[&str]) -> BoxResult<()> {
    for name in names {
        if std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists() {
            return Err(format!("/dev/shm/shmq.{name} is still there").into());
        }
    }
    Ok(())
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Child processes whose stdout lines we read; any still running are killed and reaped on
/// drop, so that a failed run leaves no process (and so no segment) behind.
pub struct Children {
    procs: Vec<Child>,
    /// Children whose stdout is still open.
    open: usize,
    lines_tx: mpsc::Sender<(usize, Option<String>)>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
}

impl Children {
    pub fn new() -> Self {
        let (lines_tx, lines) = mpsc::channel();
        Children {
            procs: Vec::new(),
            open: 0,
            lines_tx,
            lines,
        }
    }

    /// Starts `command` with no stdin and its stdout read line by line.
    pub fn spawn(&mut self, mut command: Command) -> BoxResult<()> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take();
        let index = self.procs.len();
        self.procs.push(child);
        let stdout = stdout.ok_or("child stdout is not piped")?;
        self.open += 1;
        let lines_tx = self.lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send((index, Some(line))).is_err() {
                    return;
                }
            }
            let _ = lines_tx.send((index, None));
        });
        Ok(())
    }

    /// The next line a child printed, waiting until `deadline`. A child that closes its stdout
    /// having said everything and exited with success is fine; one that failed is an error.
    pub fn next_line(&mut self, deadline: Instant) -> BoxResult<(usize, String)> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((index, Some(line))) => return Ok((index, line)),
                Ok((index, None)) => {
                    self.open -= 1;
                    let status = self.procs[index].wait()?;
                    if !status.success() {
                        return Err(format!("child {index} failed ({status})").into());
                    }
                    if self.open == 0 {
                        return Err("every child exited before saying what was expected".into());
                    }
                }
                Err(_) => return Err("timed out waiting for the children".into()),
            }
        }
    }

    /// Waits until `deadline` for one line per child started, each of which must be `ready`.
    /// `who(index)` names the child in the error about any other line.
    pub fn wait_ready(
        &mut self,
        deadline: Instant,
        who: impl Fn(usize) -> String,
    ) -> BoxResult<()> {
        for _ in 0..self.procs.len() {
            let (index, line) = self.next_line(deadline)?;
            if line != "ready" {
                return Err(format!("{} said {line:?} instead of ready", who(index)).into());
            }
        }
        Ok(())
    }

    /// Waits until `deadline` for every child to exit, and checks that each succeeded.
    pub fn wait_all(&mut self, deadline: Instant) -> BoxResult<()> {
        for (index, child) in self.procs.iter_mut().enumerate() {
            let Some(status) = wait_until(child, deadline)? else {
                return Err(format!("child {index} did not exit in time").into());
            };
            if !status.success() {
                return Err(format!("child {index} failed ({status})").into());
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.procs {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
