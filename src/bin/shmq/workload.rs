//! The cross-process workloads behind `shmq bench` and the criterion benches (`benches/`
//! include this file with `#[path]`, so both measure exactly the same thing).
//!
//! Every workload has a producer (this process) and a consumer: the same executable started
//! again, which runs [`consumer_main`]. A [`Launcher`] says how to start it (a hidden
//! subcommand for the `shmq` binary, an environment variable for a criterion bench).
//!
//! Contenders:
//! - shmq `send`: the producer copies each payload from a prepared private buffer into the
//!   channel (one copy, reading and writing every byte).
//! - shmq `loan`: the producer writes every byte of each payload (a counter pattern of u64
//!   words, different for every payload) straight into the loaned shared memory: no source
//!   buffer is read, which is what zero copy buys when the data is produced in place.
//! - pipe: Python's `Connection.send_bytes` framing (4-byte big-endian length; header and
//!   payload in one write up to 16 KiB, two writes above) from the prepared buffer, into a pipe
//!   of default size; the consumer reads the header, then the payload into a reused buffer.
//! - Unix stream socket: the same framing over a socketpair.
//!
//! The consumer reads every byte of every payload (a wrapping sum of u64 words) and reports the
//! total at the end; the producer checks it against what it sent.
//!
//! Batches: `Transfer::run(n)` sends a framed 8-byte message carrying `n` through the same path,
//! then `n` payloads; the consumer answers with one 8-byte acknowledgement on its stdout (the
//! back channel) after it has read the n-th payload, so the measured time covers every byte
//! landing in the consumer.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Errors of the workloads: any error, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result of the workloads.
pub type BoxResult<T> = Result<T, BoxError>;

/// The size of the small messages of the latency and rate workloads.
pub const SMALL_MESSAGE: usize = 64;

const READY: u64 = 0x5348_4d51_5245_4459; // "SHMQREDY"
/// Python's `Connection` concatenates header and payload up to this size.
const CONCAT_MAX: usize = 16384;

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

// ----- contenders ------------------------------------------------------------------------------

/// A way to move payloads to another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// `Sender::send`: one copy from a private buffer into shared memory.
    ShmqSend,
    /// `Sender::loan`: the payload is written in shared memory directly.
    ShmqLoan,
    /// A pipe with length-prefixed framing.
    Pipe,
    /// A Unix stream socket with length-prefixed framing.
    UnixSocket,
}

impl Contender {
    /// All transfer contenders, in table order.
    pub const ALL: [Contender; 4] = [
        Contender::ShmqSend,
        Contender::ShmqLoan,
        Contender::Pipe,
        Contender::UnixSocket,
    ];

    /// Identifier used in benchmark ids and consumer arguments.
    pub fn id(self) -> &'static str {
        match self {
            Contender::ShmqSend => "shmq_send",
            Contender::ShmqLoan => "shmq_loan",
            Contender::Pipe => "pipe",
            Contender::UnixSocket => "unix_socket",
        }
    }

    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            Contender::ShmqSend => "shmq send (copy in)",
            Contender::ShmqLoan => "shmq loan (zero copy)",
            Contender::Pipe => "pipe, length-prefixed",
            Contender::UnixSocket => "unix socket, length-prefixed",
        }
    }

    fn from_id(id: &str) -> BoxResult<Contender> {
        Contender::ALL
            .into_iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| format!("unknown contender {id:?}").into())
    }

    fn is_shmq(self) -> bool {
        matches!(self, Contender::ShmqSend | Contender::ShmqLoan)
    }
}

/// A way to exchange small messages for the latency workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingContender {
    /// shmq with the default waiting (spin briefly, then sleep on a futex).
    ShmqDefault,
    /// shmq with `set_spin(Duration::MAX)` on every handle of both processes.
    ShmqSpin,
    /// A pipe each way, length-prefixed.
    Pipe,
    /// A Unix stream socket, length-prefixed.
    UnixSocket,
}

impl PingContender {
    /// All latency contenders, in table order.
    pub const ALL: [PingContender; 4] = [
        PingContender::ShmqDefault,
        PingContender::ShmqSpin,
        PingContender::Pipe,
        PingContender::UnixSocket,
    ];

    /// Identifier used in benchmark ids and consumer arguments.
    pub fn id(self) -> &'static str {
        match self {
            PingContender::ShmqDefault => "shmq_default",
            PingContender::ShmqSpin => "shmq_spin",
            PingContender::Pipe => "pipe",
            PingContender::UnixSocket => "unix_socket",
        }
    }

    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            PingContender::ShmqDefault => "shmq (default waiting)",
            PingContender::ShmqSpin => "shmq (spin only)",
            PingContender::Pipe => "pipe, length-prefixed",
            PingContender::UnixSocket => "unix socket, length-prefixed",
        }
    }

    fn from_id(id: &str) -> BoxResult<PingContender> {
        PingContender::ALL
            .into_iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| format!("unknown latency contender {id:?}").into())
    }
}

/// A payload size as people write it: "4KiB", "64MiB", "64B".
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// The arena a shmq transfer of `payload`-byte messages uses: 4 payloads, at least 4 MiB, at
/// most 1 GiB.
pub fn arena_for(payload: usize) -> usize {
    payload.saturating_mul(4).clamp(4 << 20, 1 << 30)
}

fn unique_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ----- payload contents ------------------------------------------------------------------------

/// Reads every byte: the wrapping sum of the payload as native u64 words.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = (&mut words).fold(0u64, |s, w| {
        s.wrapping_add(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
    });
    for &b in words.remainder() {
        sum = sum.wrapping_add(b as u64);
    }
    sum
}

/// Writes the counter pattern `base, base + 1, ...` (every byte of the slice).
fn fill_pattern(words: &mut [u64], base: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = base.wrapping_add(i as u64);
    }
}

/// The checksum of a counter pattern of `words` words starting at `base`.
fn pattern_sum(words: u64, base: u64) -> u64 {
    let triangle = ((words as u128 * words.saturating_sub(1) as u128) / 2) as u64;
    words.wrapping_mul(base).wrapping_add(triangle)
}

// ----- framing (Python's Connection.send_bytes / recv_bytes) -----------------------------------

fn write_frame(w: &mut dyn Write, payload: &[u8], scratch: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    if payload.len() <= CONCAT_MAX {
        scratch.clear();
        scratch.extend_from_slice(&len.to_be_bytes());
        scratch.extend_from_slice(payload);
        w.write_all(scratch)
    } else {
        w.write_all(&len.to_be_bytes())?;
        w.write_all(payload)
    }
}

/// Reads one frame into `buf` (grown only if a frame is larger than ever before). `None` at a
/// clean end of stream.
fn read_frame<'a>(r: &mut dyn Read, buf: &'a mut Vec<u8>) -> io::Result<Option<&'a [u8]>> {
    let mut header = [0u8; 4];
    let first = loop {
        match r.read(&mut header) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[first..])?;
    let len = u32::from_be_bytes(header) as usize;
    if len > buf.len() {
        buf.resize(len, 0);
    }
    r.read_exact(&mut buf[..len])?;
    Ok(Some(&buf[..len]))
}

/// How long the producer waits for an acknowledgement once it has sent everything: far more
/// than the payloads in flight need, so a lost message fails the run instead of hanging it.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `fd` has data to read (or hit its end), at most `timeout`.
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<()> {
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

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    Ok(u64::from_le_bytes(word))
}

// ----- the consumer process, seen from the producer --------------------------------------------

/// A started consumer process. Dropping it without [`finish`](Peer::finish) kills and reaps it.
struct Peer {
    child: Option<Child>,
    back: ChildStdout,
}

impl Peer {
    fn spawn(launcher: &Launcher, args: &[String], stdin: Stdio) -> BoxResult<Peer> {
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

    fn take_stdin(&mut self) -> BoxResult<File> {
        let stdin = self
            .child_mut()?
            .stdin
            .take()
            .ok_or("consumer has no stdin")?;
        Ok(File::from(OwnedFd::from(stdin)))
    }

    /// Waits for the consumer to exit and checks that it succeeded.
    fn finish(mut self) -> BoxResult<()> {
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

// ----- transfer --------------------------------------------------------------------------------

/// What to transfer and how.
#[derive(Clone, Debug)]
pub struct TransferSpec {
    /// The path.
    pub contender: Contender,
    /// Bytes per payload (a multiple of 8).
    pub payload: usize,
    /// shmq ring capacity (messages).
    pub capacity: usize,
    /// shmq arena bytes.
    pub arena: usize,
}

impl TransferSpec {
    /// `payload`-byte messages through `contender`: ring of 64, arena from [`arena_for`].
    pub fn new(contender: Contender, payload: usize) -> TransferSpec {
        TransferSpec {
            contender,
            payload,
            capacity: 64,
            arena: arena_for(payload),
        }
    }

    /// Sets the shmq ring capacity.
    pub fn capacity(mut self, messages: usize) -> TransferSpec {
        self.capacity = messages;
        self
    }
}

enum Link {
    Shmq(shmq::Sender),
    Stream(Box<dyn Write + Send>),
}

/// A producer connected to a consumer process; [`run`](Transfer::run) moves batches of
/// payloads. Dropping it kills and reaps the consumer; [`finish`](Transfer::finish) ends it
/// cleanly and checks every byte arrived.
pub struct Transfer {
    spec: TransferSpec,
    // Dropped before `peer` (field order): a consumer sees the end of its input before being
    // killed, and the channel is never left to a live consumer alone.
    link: Option<Link>,
    peer: Peer,
    source: Vec<u64>,
    scratch: Vec<u8>,
    sequence: u64,
    expected_sum: u64,
    expected_bytes: u64,
}

impl Transfer {
    /// Starts the consumer and connects to it.
    pub fn start(launcher: &Launcher, spec: TransferSpec) -> BoxResult<Transfer> {
        if spec.payload == 0 || !spec.payload.is_multiple_of(8) {
            return Err(format!("payload {} is not a positive multiple of 8", spec.payload).into());
        }
        let mut args = vec![
            "transfer".to_owned(),
            spec.contender.id().to_owned(),
            spec.payload.to_string(),
        ];
        let (link, peer) = match spec.contender {
            Contender::ShmqSend | Contender::ShmqLoan => {
                let name = unique_name("transfer");
                let config = shmq::ChannelConfig::default()
                    .with_capacity(spec.capacity)
                    .with_arena_bytes(spec.arena);
                let (tx, rx) = shmq::channel(&name, config)?;
                args.push(name);
                let peer = Peer::spawn(launcher, &args, Stdio::null())?;
                drop(rx); // the consumer has attached its own receiver
                (Link::Shmq(tx), peer)
            }
            Contender::Pipe => {
                let mut peer = Peer::spawn(launcher, &args, Stdio::piped())?;
                let stdin = peer.take_stdin()?;
                (Link::Stream(Box::new(stdin)), peer)
            }
            Contender::UnixSocket => {
                let (ours, theirs) = UnixStream::pair()?;
                let peer = Peer::spawn(launcher, &args, Stdio::from(OwnedFd::from(theirs)))?;
                (Link::Stream(Box::new(ours)), peer)
            }
        };
        // The prepared source of send, pipe and socket: filled (and so faulted in) once.
        let mut source = Vec::new();
        if spec.contender != Contender::ShmqLoan {
            source = vec![0u64; spec.payload / 8];
            fill_pattern(&mut source, 0);
        }
        Ok(Transfer {
            spec,
            link: Some(link),
            peer,
            source,
            scratch: Vec::with_capacity(CONCAT_MAX + 4),
            sequence: 0,
            expected_sum: 0,
            expected_bytes: 0,
        })
    }

    /// Sends `n` payloads and waits until the consumer has read all of them; returns the time
    /// from the batch header to the acknowledgement.
    pub fn run(&mut self, n: u64) -> BoxResult<Duration> {
        let start = Instant::now();
        let link = self.link.as_mut().ok_or("transfer already finished")?;
        let source: &[u8] = bytemuck::cast_slice(&self.source);
        let words = (self.spec.payload / 8) as u64;
        match link {
            Link::Shmq(tx) => {
                tx.send(&n.to_le_bytes())?;
                if self.spec.contender == Contender::ShmqSend {
                    for _ in 0..n {
                        tx.send(source)?;
                    }
                    self.expected_sum = self
                        .expected_sum
                        .wrapping_add(pattern_sum(words, 0).wrapping_mul(n));
                } else {
                    for _ in 0..n {
                        let base = self.sequence;
                        self.sequence += 1;
                        let mut loan = tx.loan_slice::<u64>(words as usize)?;
                        fill_pattern(&mut loan, base);
                        loan.send()?;
                        self.expected_sum =
                            self.expected_sum.wrapping_add(pattern_sum(words, base));
                    }
                }
            }
            Link::Stream(w) => {
                write_frame(w.as_mut(), &n.to_le_bytes(), &mut self.scratch)?;
                for _ in 0..n {
                    write_frame(w.as_mut(), source, &mut self.scratch)?;
                }
                self.expected_sum = self
                    .expected_sum
                    .wrapping_add(pattern_sum(words, 0).wrapping_mul(n));
            }
        }
        wait_readable(&self.peer.back, ACK_TIMEOUT)?;
        let acked = read_u64(&mut self.peer.back)?;
        let elapsed = start.elapsed();
        if acked != n {
            return Err(format!("consumer acknowledged {acked} payloads, not {n}").into());
        }
        self.expected_bytes += n * self.spec.payload as u64;
        Ok(elapsed)
    }

    /// Ends the transfer: closes the path, checks the consumer's checksum and byte count, and
    /// reaps it.
    pub fn finish(mut self) -> BoxResult<()> {
        drop(self.link.take()); // end of input: the consumer reports and exits
        wait_readable(&self.peer.back, ACK_TIMEOUT)?;
        let sum = read_u64(&mut self.peer.back)?;
        let bytes = read_u64(&mut self.peer.back)?;
        if sum != self.expected_sum || bytes != self.expected_bytes {
            return Err(format!(
                "{}: consumer read {bytes} bytes summing to {sum:#x}; sent {} summing to {:#x}",
                self.spec.contender.label(),
                self.expected_bytes,
                self.expected_sum
            )
            .into());
        }
        self.peer.finish()
    }
}

// ----- latency ---------------------------------------------------------------------------------

enum PingLink {
    Shmq {
        tx: shmq::Sender,
        rx: shmq::Receiver,
    },
    Stream {
        w: Box<dyn Write + Send>,
        // None: the replies come on the peer's back channel (pipe).
        r: Option<Box<dyn Read + Send>>,
    },
}

/// A ping-pong of 64-byte messages with a consumer process that echoes them.
pub struct PingPong {
    link: Option<PingLink>,
    peer: Peer,
    message: [u8; SMALL_MESSAGE],
    reply: Vec<u8>,
    scratch: Vec<u8>,
}

impl PingPong {
    /// Starts the echoing consumer and connects to it.
    pub fn start(launcher: &Launcher, contender: PingContender) -> BoxResult<PingPong> {
        let mut args = vec!["pingpong".to_owned(), contender.id().to_owned()];
        let (link, peer) = match contender {
            PingContender::ShmqDefault | PingContender::ShmqSpin => {
                let config = shmq::ChannelConfig::default()
                    .with_capacity(4)
                    .with_arena_bytes(4096);
                let (req_name, resp_name) = (unique_name("ping"), unique_name("pong"));
                let (tx, req_rx) = shmq::channel(&req_name, config.clone())?;
                let (resp_tx, rx) = shmq::channel(&resp_name, config)?;
                args.push(req_name);
                args.push(resp_name);
                let peer = Peer::spawn(launcher, &args, Stdio::null())?;
                drop((req_rx, resp_tx)); // the consumer holds its own
                if contender == PingContender::ShmqSpin {
                    tx.set_spin(Duration::MAX);
                    rx.set_spin(Duration::MAX);
                }
                (PingLink::Shmq { tx, rx }, peer)
            }
            PingContender::Pipe => {
                let mut peer = Peer::spawn(launcher, &args, Stdio::piped())?;
                let stdin = peer.take_stdin()?;
                let link = PingLink::Stream {
                    w: Box::new(stdin),
                    r: None,
                };
                (link, peer)
            }
            PingContender::UnixSocket => {
                let (ours, theirs) = UnixStream::pair()?;
                let peer = Peer::spawn(launcher, &args, Stdio::from(OwnedFd::from(theirs)))?;
                let link = PingLink::Stream {
                    w: Box::new(ours.try_clone()?),
                    r: Some(Box::new(ours)),
                };
                (link, peer)
            }
        };
        let mut message = [0u8; SMALL_MESSAGE];
        for (i, b) in message.iter_mut().enumerate() {
            *b = i as u8;
        }
        Ok(PingPong {
            link: Some(link),
            peer,
            message,
            reply: vec![0; SMALL_MESSAGE],
            scratch: Vec::with_capacity(SMALL_MESSAGE + 4),
        })
    }

    /// `n` round trips; returns their total time.
    pub fn round_trips(&mut self, n: u64) -> BoxResult<Duration> {
        let start = Instant::now();
        let link = self.link.as_mut().ok_or("ping-pong already finished")?;
        for i in 0..n {
            self.message[0] = i as u8;
            let first = match link {
                PingLink::Shmq { tx, rx } => {
                    tx.send(&self.message)?;
                    let reply = rx.recv()?;
                    (reply.len() == SMALL_MESSAGE).then(|| reply[0])
                }
                PingLink::Stream { w, r } => {
                    write_frame(w.as_mut(), &self.message, &mut self.scratch)?;
                    let r: &mut dyn Read = match r {
                        Some(r) => r.as_mut(),
                        None => &mut self.peer.back,
                    };
                    let reply = read_frame(r, &mut self.reply)?;
                    reply.filter(|b| b.len() == SMALL_MESSAGE).map(|b| b[0])
                }
            };
            if first != Some(i as u8) {
                return Err(format!("bad echo for message {i}").into());
            }
        }
        Ok(start.elapsed())
    }

    /// Ends the exchange and reaps the consumer.
    pub fn finish(mut self) -> BoxResult<()> {
        drop(self.link.take());
        self.peer.finish()
    }
}

// ----- the consumer process --------------------------------------------------------------------

/// Runs the consumer side described by `args` (as the producer built them); returns once the
/// producer has closed its end.
pub fn consumer_main(args: &[String]) -> BoxResult<()> {
    // Raw descriptors: no buffering between the pipes or socket and the workload.
    let mut back = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let arg = |i: usize| -> BoxResult<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("consumer: argument {i} missing in {args:?}").into())
    };
    match arg(0)? {
        "transfer" => {
            let contender = Contender::from_id(arg(1)?)?;
            let payload: usize = arg(2)?.parse()?;
            if contender.is_shmq() {
                consume_shmq(arg(3)?, &mut back)
            } else {
                consume_stream(payload, &mut back)
            }
        }
        "pingpong" => match PingContender::from_id(arg(1)?)? {
            contender @ (PingContender::ShmqDefault | PingContender::ShmqSpin) => {
                let spin = contender == PingContender::ShmqSpin;
                echo_shmq(arg(2)?, arg(3)?, spin, &mut back)
            }
            PingContender::Pipe => {
                let input = stdin_file()?;
                echo_stream(input, back)
            }
            PingContender::UnixSocket => {
                back.write_all(&READY.to_le_bytes())?;
                let socket = stdin_file()?;
                let replies = socket.try_clone()?;
                echo_stream_ready(socket, replies)
            }
        },
        other => Err(format!("consumer: unknown workload {other:?}").into()),
    }
}

/// Standard input (a pipe or a socket) as an unbuffered file.
fn stdin_file() -> io::Result<File> {
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

fn batch_size(header: &[u8]) -> BoxResult<u64> {
    let word: [u8; 8] = header.try_into().map_err(|_| {
        format!(
            "consumer: expected an 8-byte batch header, got {} bytes",
            header.len()
        )
    })?;
    Ok(u64::from_le_bytes(word))
}

fn report(back: &mut File, sum: u64, bytes: u64) -> io::Result<()> {
    let mut words = [0u8; 16];
    words[..8].copy_from_slice(&sum.to_le_bytes());
    words[8..].copy_from_slice(&bytes.to_le_bytes());
    back.write_all(&words)
}

fn consume_shmq(name: &str, back: &mut File) -> BoxResult<()> {
    let rx = shmq::Receiver::open(name)?;
    back.write_all(&READY.to_le_bytes())?;
    let (mut sum, mut bytes) = (0u64, 0u64);
    loop {
        let n = match rx.recv() {
            Ok(header) => batch_size(&header)?,
            Err(shmq::RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        for _ in 0..n {
            let msg = rx.recv()?;
            sum = sum.wrapping_add(checksum(&msg));
            bytes += msg.len() as u64;
        } // each message is dropped (its memory freed) as soon as it has been read
        back.write_all(&n.to_le_bytes())?;
    }
    report(back, sum, bytes)?;
    Ok(())
}

fn consume_stream(payload: usize, back: &mut File) -> BoxResult<()> {
    let mut input = stdin_file()?;
    let mut buf = vec![1u8; payload]; // faulted in now, reused for every payload
    back.write_all(&READY.to_le_bytes())?;
    let (mut sum, mut bytes) = (0u64, 0u64);
    while let Some(header) = read_frame(&mut input, &mut buf)? {
        let n = batch_size(header)?;
        for _ in 0..n {
            let payload =
                read_frame(&mut input, &mut buf)?.ok_or("consumer: input ended inside a batch")?;
            sum = sum.wrapping_add(checksum(payload));
            bytes += payload.len() as u64;
        }
        back.write_all(&n.to_le_bytes())?;
    }
    report(back, sum, bytes)?;
    Ok(())
}

fn echo_shmq(request: &str, response: &str, spin: bool, back: &mut File) -> BoxResult<()> {
    let rx = shmq::Receiver::open(request)?;
    let tx = shmq::Sender::open(response)?;
    if spin {
        rx.set_spin(Duration::MAX);
        tx.set_spin(Duration::MAX);
    }
    back.write_all(&READY.to_le_bytes())?;
    loop {
        match rx.recv() {
            Ok(msg) => tx.send(&msg)?,
            Err(shmq::RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn echo_stream(input: File, mut back: File) -> BoxResult<()> {
    back.write_all(&READY.to_le_bytes())?;
    echo_stream_ready(input, back)
}

fn echo_stream_ready(mut input: File, mut output: File) -> BoxResult<()> {
    let (mut buf, mut scratch) = (
        vec![0u8; SMALL_MESSAGE],
        Vec::with_capacity(SMALL_MESSAGE + 4),
    );
    while let Some(msg) = read_frame(&mut input, &mut buf)? {
        write_frame(&mut output, msg, &mut scratch)?;
    }
    Ok(())
}
