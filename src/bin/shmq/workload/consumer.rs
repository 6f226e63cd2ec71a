//! The consumer process of every workload: the producer starts it with the arguments it built
//! (see `peer.rs`); it reads (or echoes) everything and reports on its stdout, the back channel.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use super::contender::{Contender, PingContender};
use super::framing::{read_frame, write_frame};
use super::payload::{checksum, try_buffer, MAX_PAYLOAD, RUN, SMALL_MESSAGE};
use super::peer::READY;
use super::BoxResult;

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
                consume_shmq(arg(3)?, contender == Contender::ShmqRuns, &mut back)
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

/// The `n` of a batch header (an 8-byte message carrying the number of payloads that follow).
fn batch_size(header: &[u8]) -> BoxResult<u64> {
    let word: [u8; 8] = header.try_into().map_err(|_| {
        format!(
            "consumer: expected an 8-byte batch header, got {} bytes",
            header.len()
        )
    })?;
    Ok(u64::from_le_bytes(word))
}

/// The final report on the back channel: the checksum and byte count of everything read.
fn report(back: &mut File, sum: u64, bytes: u64) -> io::Result<()> {
    let mut words = [0u8; 16];
    words[..8].copy_from_slice(&sum.to_le_bytes());
    words[8..].copy_from_slice(&bytes.to_le_bytes());
    back.write_all(&words)
}

/// Reads batches from the shmq channel `name`, acknowledging each, until the producer is gone;
/// with `runs`, by `recv_many` in runs of up to [`RUN`] messages.
fn consume_shmq(name: &str, runs: bool, back: &mut File) -> BoxResult<()> {
    let rx = shmq::Receiver::open(name)?;
    back.write_all(&READY.to_le_bytes())?;
    let (mut sum, mut bytes) = (0u64, 0u64);
    let mut run = Vec::with_capacity(RUN);
    loop {
        let n = match rx.recv() {
            Ok(header) => batch_size(&header)?,
            Err(shmq::RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        let mut left = n;
        while runs && left > 0 {
            // At most what is left of this batch: the next header stays queued.
            left -= rx.recv_many(&mut run, left.min(RUN as u64) as usize)? as u64;
            for msg in run.drain(..) {
                sum = sum.wrapping_add(checksum(&msg));
                bytes += msg.len() as u64;
            }
        }
        for _ in 0..left {
            let msg = rx.recv()?;
            sum = sum.wrapping_add(checksum(&msg));
            bytes += msg.len() as u64;
        } // each message is dropped (its memory freed) as soon as it has been read
        back.write_all(&n.to_le_bytes())?;
    }
    report(back, sum, bytes)?;
    Ok(())
}

/// Reads framed batches from stdin (a pipe or a socket), acknowledging each, until its end.
fn consume_stream(payload: usize, back: &mut File) -> BoxResult<()> {
    let mut input = stdin_file()?;
    if payload > MAX_PAYLOAD {
        return Err(format!("consumer: payload {payload} is over {MAX_PAYLOAD} bytes").into());
    }
    let mut buf = try_buffer(payload, 1u8)?; // faulted in now, reused for every payload
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

/// Echoes every message of channel `request` into channel `response`.
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

/// Says ready on the back channel, then echoes the frames of `input` into it (the pipe).
fn echo_stream(input: File, mut back: File) -> BoxResult<()> {
    back.write_all(&READY.to_le_bytes())?;
    echo_stream_ready(input, back)
}

/// Echoes the frames of `input` into `output` until `input` ends.
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
