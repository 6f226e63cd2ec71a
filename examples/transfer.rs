//! The main job: move a 1 GiB `f32` array to another process in 64 MiB messages, through shmq
//! (copying with `send`, and zero-copy with `loan`) and through a pipe with length-prefixed
//! framing (what Python's `Connection.send_bytes` does), and compare.
//!
//! The consumer is this same program started again with an argument. It reads every value of
//! every message (a checksum over all f32 bit patterns) and reports it; the producer checks it.
//!
//! ```text
//! cargo run --release --example transfer [-- --total-mib 1024 --message-mib 64 --runs 3]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Options {
    total_bytes: usize,
    message_bytes: usize,
    runs: usize,
}

fn parse_options(args: &[String]) -> BoxResult<Options> {
    let mut options = Options {
        total_bytes: 1 << 30,
        message_bytes: 64 << 20,
        runs: 3,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()?;
        match flag.as_str() {
            "--total-mib" => options.total_bytes = value << 20,
            "--message-mib" => options.message_bytes = value << 20,
            "--runs" => options.runs = value.max(1),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if options.message_bytes == 0 || !options.total_bytes.is_multiple_of(options.message_bytes) {
        return Err("--total-mib must be a multiple of --message-mib".into());
    }
    Ok(options)
}

/// Reads every 4-byte value: a wrapping sum of the f32 bit patterns.
fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        let v = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
        sum = sum.wrapping_add(v & 0xffff_ffff).wrapping_add(v >> 32);
    }
    for w in words.remainder().chunks_exact(4) {
        sum = sum.wrapping_add(u32::from_ne_bytes(w.try_into().unwrap_or([0; 4])) as u64);
    }
    sum
}

fn value_at(index: usize) -> f32 {
    (index & 0xffff) as f32 * 0.5
}

// ----- consumer side ---------------------------------------------------------------------------

fn consume_shmq(name: &str) -> BoxResult<()> {
    let rx = shmq::Receiver::open(name)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut sum, mut bytes) = (0u64, 0u64);
    for msg in rx.iter() {
        let values: &[f32] = msg.as_slice::<f32>()?;
        sum = sum.wrapping_add(checksum(bytemuck::cast_slice(values)));
        bytes += msg.len() as u64;
    }
    println!("{sum} {bytes}");
    Ok(())
}

fn consume_pipe(message_bytes: usize) -> BoxResult<()> {
    println!("ready");
    std::io::stdout().flush()?;
    let mut input = std::io::stdin().lock();
    let mut buffer = vec![0u8; message_bytes]; // reused for every message
    let (mut sum, mut bytes) = (0u64, 0u64);
    loop {
        let mut len = [0u8; 8];
        if input.read_exact(&mut len).is_err() {
            break;
        }
        let len = u64::from_le_bytes(len) as usize;
        if len > buffer.len() {
            buffer.resize(len, 0);
        }
        input.read_exact(&mut buffer[..len])?;
        sum = sum.wrapping_add(checksum(&buffer[..len]));
        bytes += len as u64;
    }
    println!("{sum} {bytes}");
    Ok(())
}

// ----- producer side ---------------------------------------------------------------------------

fn spawn_consumer(
    args: &[&str],
    stdin: Stdio,
) -> BoxResult<(Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("consumer failed to start: {line:?}").into());
    }
    Ok((child, out))
}

fn finish_consumer(
    mut child: Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> BoxResult<(u64, u64)> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    let status = child.wait()?;
    let mut parts = line.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), status.success()) {
        (Some(Ok(sum)), Some(Ok(bytes)), true) => Ok((sum, bytes)),
        _ => Err(format!("consumer failed ({status}): {line:?}").into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    ShmqSend,
    ShmqLoan,
    Pipe,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::ShmqSend => "shmq send (one copy in)",
            Path::ShmqLoan => "shmq loan (zero copy)",
            Path::Pipe => "pipe, length-prefixed",
        }
    }
}

/// One transfer of the whole array; returns the time from the first byte produced to the
/// consumer's report, and the consumer's (checksum, bytes).
fn run_once(path: Path, data: &[f32], options: &Options) -> BoxResult<(Duration, u64, u64)> {
    let per_message = options.message_bytes / 4;
    match path {
        Path::Pipe => {
            let (mut child, out) = spawn_consumer(
                &["pipe-consumer", &options.message_bytes.to_string()],
                Stdio::piped(),
            )?;
            let mut input = child.stdin.take().ok_or("no stdin")?;
            let start = Instant::now();
            for chunk in data.chunks(per_message) {
                let bytes: &[u8] = bytemuck::cast_slice(chunk);
                input.write_all(&(bytes.len() as u64).to_le_bytes())?;
                input.write_all(bytes)?;
            }
            drop(input);
            let (sum, bytes) = finish_consumer(child, out)?;
            Ok((start.elapsed(), sum, bytes))
        }
        Path::ShmqSend | Path::ShmqLoan => {
            let name = format!("transfer-{}", std::process::id());
            let config = shmq::ChannelConfig::default()
                .with_capacity(8)
                .with_arena_bytes(4 * options.message_bytes);
            let (tx, rx) = shmq::channel(&name, config)?;
            let (child, out) = spawn_consumer(&["consumer", &name], Stdio::null())?;
            drop(rx); // the consumer process holds its own receiver now
            let start = Instant::now();
            if path == Path::ShmqSend {
                for chunk in data.chunks(per_message) {
                    tx.send_slice(chunk)?;
                }
            } else {
                // Build each message in shared memory directly: nothing to copy.
                let messages = options.total_bytes / options.message_bytes;
                for m in 0..messages {
                    let mut loan = tx.loan_slice::<f32>(per_message)?;
                    let base = m * per_message;
                    for (i, v) in loan.iter_mut().enumerate() {
                        *v = value_at(base + i);
                    }
                    loan.send()?;
                }
            }
            drop(tx); // disconnects: the consumer's iterator ends after the last message
            let (sum, bytes) = finish_consumer(child, out)?;
            Ok((start.elapsed(), sum, bytes))
        }
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn produce(options: &Options) -> BoxResult<()> {
    let values = options.total_bytes / 4;
    println!(
        "Moving {} MiB of f32 to another process in {} MiB messages, {} runs each (median shown).",
        options.total_bytes >> 20,
        options.message_bytes >> 20,
        options.runs
    );
    let data: Vec<f32> = (0..values).map(value_at).collect();
    let expected = checksum(bytemuck::cast_slice(&data));
    let mut rows = Vec::new();
    for path in [Path::Pipe, Path::ShmqSend, Path::ShmqLoan] {
        let mut times = Vec::new();
        for _ in 0..options.runs {
            let (time, sum, bytes) = run_once(path, &data, options)?;
            if sum != expected || bytes != options.total_bytes as u64 {
                return Err(format!(
                    "{}: checksum {sum:#x} over {bytes} bytes, expected {expected:#x} over {}",
                    path.label(),
                    options.total_bytes
                )
                .into());
            }
            times.push(time);
        }
        rows.push((path, median(times)));
    }
    let pipe_time = rows[0].1.as_secs_f64();
    println!();
    println!(
        "{:<28} {:>10} {:>12} {:>10}  checksum",
        "path", "time", "throughput", "vs pipe"
    );
    for (path, time) in &rows {
        let secs = time.as_secs_f64();
        println!(
            "{:<28} {:>8.0}ms {:>8.0} MB/s {:>9.1}x  ok",
            path.label(),
            secs * 1e3,
            options.total_bytes as f64 / secs / 1e6,
            pipe_time / secs
        );
    }
    println!();
    println!("The consumer read every value in every case; /dev/shm is left clean.");
    Ok(())
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("consumer") => consume_shmq(args.get(1).ok_or("consumer needs a channel name")?),
        Some("pipe-consumer") => consume_pipe(args.get(1).ok_or("needs a size")?.parse()?),
        _ => produce(&parse_options(&args)?),
    }
}
