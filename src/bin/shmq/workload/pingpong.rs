//! The latency workload: a ping-pong of small messages ([`PingPong`]) with a consumer process
//! that echoes them.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::contender::PingContender;
use super::framing::{read_frame, write_frame};
use super::payload::SMALL_MESSAGE;
use super::peer::{unique_name, Launcher, Peer};
use super::BoxResult;

/// The producer's ends of the exchange: a channel each way, or a byte stream.
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
