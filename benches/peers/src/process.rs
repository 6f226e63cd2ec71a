//! The second process of every measurement: this binary started again with a hidden
//! subcommand, reporting to the parent line by line on its stdout. A watchdog ends the run if
//! the child fails while the parent may be blocked in a send or wait that cannot see it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cell::Cell;
use crate::cleanup::Names;
use crate::contender::Contender;
use crate::error::{BoxResult, Context};

/// The hidden subcommand that makes this binary the child of a measurement.
pub const CHILD_COMMAND: &str = "__peer-child";

/// How often the watchdog looks at the child.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// What the child is told on its command line: enough to build the same plan as the parent.
#[derive(Clone, Debug)]
pub struct ChildArgs {
    /// Whose receiving side it runs.
    pub contender: Contender,
    /// The cell being measured.
    pub cell: Cell,
    /// The names of this measurement.
    pub names: Names,
    /// Whether the run is `--quick`.
    pub quick: bool,
    /// The CPU the child pins itself to, if the run pins.
    pub cpu: Option<usize>,
}

impl ChildArgs {
    /// The arguments after [`CHILD_COMMAND`].
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            self.contender.id().to_owned(),
            self.cell.id(),
            self.names.run.clone(),
            self.names.measurement.clone(),
        ];
        if self.quick {
            args.push("--quick".to_owned());
        }
        if let Some(cpu) = self.cpu {
            args.push(format!("--cpu={cpu}"));
        }
        args
    }

    /// Parses what [`to_args`](Self::to_args) wrote.
    pub fn parse(args: &[String]) -> BoxResult<ChildArgs> {
        let [contender, cell, run, measurement, rest @ ..] = args else {
            return Err(
                format!("child arguments {args:?}: expected contender cell run name").into(),
            );
        };
        Ok(ChildArgs {
            contender: Contender::parse(contender)
                .ok_or_else(|| format!("unknown contender {contender:?}"))?,
            cell: Cell::parse(cell).ok_or_else(|| format!("unknown cell {cell:?}"))?,
            names: Names {
                run: run.clone(),
                measurement: measurement.clone(),
            },
            quick: rest.iter().any(|a| a == "--quick"),
            cpu: match rest.iter().find_map(|a| a.strip_prefix("--cpu=")) {
                Some(cpu) => Some(cpu.parse().map_err(|_| format!("bad child CPU {cpu:?}"))?),
                None => None,
            },
        })
    }
}

/// A running child process and the reader of its reports. Dropping it before
/// [`finish`](Peer::finish) kills and reaps the child.
pub struct Peer {
    child: Arc<Mutex<Child>>,
    reports: BufReader<ChildStdout>,
    /// Set once the parent no longer needs the watchdog (finished or dropped).
    settled: Arc<AtomicBool>,
}

impl Peer {
    /// Starts the child for `args`. Should the child fail, or the measurement outlast
    /// `deadline`, while the parent is blocked, the watchdog prints why, calls `on_failure`
    /// (which removes this run's shared memory) and exits the process with status 1.
    pub fn spawn(args: &ChildArgs, deadline: Duration, on_failure: fn()) -> BoxResult<Peer> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .arg(CHILD_COMMAND)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the child process")?;
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let child = Arc::new(Mutex::new(child));
        let settled = Arc::new(AtomicBool::new(false));
        let what = format!("{} {}", args.contender.id(), args.cell.id());
        watch(
            Arc::clone(&child),
            Arc::clone(&settled),
            what,
            deadline,
            on_failure,
        );
        Ok(Peer {
            child,
            reports: BufReader::new(stdout),
            settled,
        })
    }

    /// Reads the child's next report, which must start with `word`; returns its other fields.
    pub fn expect(&mut self, word: &str) -> BoxResult<Vec<String>> {
        let mut line = String::new();
        let read = self
            .reports
            .read_line(&mut line)
            .context("reading the child's report")?;
        if read == 0 {
            return Err(format!("the child ended before reporting {word:?}").into());
        }
        let mut fields = line.split_whitespace().map(str::to_owned);
        match fields.next() {
            Some(first) if first == word => Ok(fields.collect()),
            _ => Err(format!("the child reported {line:?}, expected {word:?}").into()),
        }
    }

    /// Waits for the child to exit, which must be with status 0.
    pub fn finish(self) -> BoxResult<()> {
        self.settled.store(true, Ordering::SeqCst);
        let status = lock(&self.child).wait().context("waiting for the child")?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the child exited with {status}").into())
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Settled first, so that the watchdog never takes this kill for a failure.
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The child, even if a thread panicked while holding it (the handle stays usable).
fn lock(child: &Mutex<Child>) -> std::sync::MutexGuard<'_, Child> {
    child
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the watchdog of `child` (see [`Peer::spawn`]).
fn watch(
    child: Arc<Mutex<Child>>,
    settled: Arc<AtomicBool>,
    what: String,
    deadline: Duration,
    on_failure: fn(),
) {
    let started = Instant::now();
    thread::spawn(move || loop {
        thread::sleep(WATCH_INTERVAL);
        if settled.load(Ordering::SeqCst) {
            return;
        }
        let mut guard = lock(&child);
        let failure = match guard.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => format!("the child exited with {status}"),
            Ok(None) if started.elapsed() > deadline => {
                let _ = guard.kill();
                let _ = guard.wait();
                format!("the measurement took more than {deadline:?}; child killed")
            }
            Ok(None) => continue,
            Err(e) => format!("cannot watch the child: {e}"),
        };
        if settled.load(Ordering::SeqCst) {
            return;
        }
        eprintln!("shmq-peers: {what}: {failure}");
        on_failure();
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    });
}

/// In the child: asks the kernel to kill this process when its parent dies, so that a
/// child blocked in a wait never outlives a parent that was killed.
pub fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes only this process's
    // death signal; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// In the child: one report line to the parent, flushed at once (the parent blocks on it).
pub fn report(line: &str) -> BoxResult<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing a report")?;
    out.flush().context("flushing a report")
}
