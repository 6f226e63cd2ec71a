//! The throughput workload: a producer session ([`Transfer`]) that moves batches of payloads
//! to a consumer process and checks, at the end, that every byte arrived.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::contender::Contender;
use super::framing::{write_frame, CONCAT_MAX};
use super::payload::{fill_pattern, pattern_sum, try_buffer, MAX_PAYLOAD, RUN};
use super::peer::{read_u64, unique_name, wait_readable, Launcher, Peer, ACK_TIMEOUT};
use super::BoxResult;

/// The arena a shmq transfer of `payload`-byte messages uses: 4 payloads, at least 4 MiB, at
/// most 1 GiB.
pub(super) fn arena_for(payload: usize) -> usize {
    payload.saturating_mul(4).clamp(4 << 20, 1 << 30)
}

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

/// The producer end of a transfer.
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
        if spec.payload == 0 || !spec.payload.is_multiple_of(8) || spec.payload > MAX_PAYLOAD {
            return Err(format!(
                "payload {} is not a positive multiple of 8 of at most {MAX_PAYLOAD} bytes",
                spec.payload
            )
            .into());
        }
        let mut args = vec![
            "transfer".to_owned(),
            spec.contender.id().to_owned(),
            spec.payload.to_string(),
        ];
        let (link, peer) = match spec.contender {
            Contender::ShmqSend | Contender::ShmqLoan | Contender::ShmqRuns => {
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
            source = try_buffer(spec.payload / 8, 0u64)?;
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
                if self.spec.contender == Contender::ShmqRuns {
                    let run = [source; RUN];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(RUN as u64) as usize;
                        left -= tx.send_many(&run[..k])? as u64;
                    }
                    self.expected_sum = self
                        .expected_sum
                        .wrapping_add(pattern_sum(words, 0).wrapping_mul(n));
                } else if self.spec.contender == Contender::ShmqSend {
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
