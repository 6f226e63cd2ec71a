//! One producer process and several consumer processes on one channel: the shmq version of a
//! `multiprocessing.JoinableQueue` feeding a few `Process`es, without sentinel values.
//!
//! - The consumers find the channel by name, handed to them in the environment variable
//!   `SHMQ_CHANNEL` (the channel is named after the producer's pid, so runs never collide).
//! - Each consumer runs `for msg in rx.iter()`. The loop ends by itself once the producer has
//!   dropped its `Sender` and the channel is drained: no `None` per consumer to send, and no
//!   consumer that misses its sentinel.
//! - Dropping a received message is `task_done()`: the producer's `tx.join()` returns once every
//!   item it sent has been received *and dropped*, that is processed.
//!
//! ```text
//! cargo run --release --example producer_consumer [-- --items 2000 --consumers 3]
//! ```
//!
//! The producer is this program; it starts the consumers by running itself again as
//! `producer_consumer consumer <index>`. If anything fails, it kills and reaps them, and every
//! shared-memory segment is unlinked by the last handle to go: nothing stays in /dev/shm.

mod common;

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::{BoxResult, Children, DEADLINE};

/// Where a consumer finds the channel's name.
const CHANNEL_ENV: &str = "SHMQ_CHANNEL";
/// Work a consumer does per item, standing for real processing.
const WORK: Duration = Duration::from_micros(200);

fn main() -> ExitCode {
    common::run("producer_consumer", "consumer", consumer, producer)
}

/// Item `id`: `100 * (1 + id % 8)` words (800 B to 6.4 KiB), word `j` holding `id + j`.
fn item(id: u64, buffer: &mut Vec<u64>) {
    buffer.clear();
    buffer.extend((0..100 * (1 + id % 8)).map(|j| id + j));
}

// ----- consumer --------------------------------------------------------------------------------

fn consumer(args: &[String]) -> BoxResult<()> {
    let index: usize = args.first().ok_or("consumer needs an index")?.parse()?;
    let name = std::env::var(CHANNEL_ENV).map_err(|_| format!("{CHANNEL_ENV} is not set"))?;
    let rx = shmq::Receiver::open(&name)?;
    // The producer reads our stdout; `writeln!` rather than `println!`, so that a producer that
    // died makes this an error instead of a panic.
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;

    let (mut count, mut id_sum) = (0u64, 0u64);
    // Ends when every sender is gone and the channel is drained.
    for msg in rx.iter() {
        // Read in place in shared memory: no copy, no unpickling.
        let words: &[u64] = msg.as_slice::<u64>()?;
        let id = *words.first().ok_or("empty item")?;
        if words.len() as u64 != 100 * (1 + id % 8)
            || words.iter().zip(id..).any(|(&w, want)| w != want)
        {
            return Err(format!("consumer {index}: item {id} is damaged").into());
        }
        std::thread::sleep(WORK);
        count += 1;
        id_sum += id;
        // `msg` is dropped here: its memory goes back to the arena, and the producer's join
        // counts the item as done (`task_done()`).
    }
    writeln!(out, "done {count} {id_sum}")?;
    Ok(())
}

// ----- producer --------------------------------------------------------------------------------

fn producer(args: &[String]) -> BoxResult<()> {
    let (mut items, mut consumers) = (2000u64, 3usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--items" => items = value.parse()?,
            "--consumers" => consumers = value.parse::<usize>()?.max(1),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let started = Instant::now();
    let deadline = started + DEADLINE;

    // 32 items or 1 MiB of payload queued at most: `send` blocks beyond that, like
    // `Queue(maxsize=32).put()`, but bounded in bytes too.
    let name = format!("pc-{}", std::process::id());
    let config = shmq::ChannelConfig::default()
        .with_capacity(32)
        .with_arena_bytes(1 << 20);
    let (tx, rx) = shmq::channel(&name, config)?;
    // Declared after the channel, so dropped before it: on an early return the consumers are
    // killed and reaped first, then our handles go and the last one unlinks the segment.
    let mut children = Children::new();
    for index in 0..consumers {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("consumer")
            .arg(index.to_string())
            .env(CHANNEL_ENV, &name);
        children.spawn(command)?;
    }
    children.wait_ready(deadline, |index| format!("consumer {index}"))?;
    // Keep our own receiver until the consumers hold theirs: a channel with no receiver at
    // all is disconnected, and `send` would fail.
    drop(rx);
    println!(
        "producer: {consumers} consumer processes attached to channel {name:?} \
         (capacity {}, arena 1 MiB)",
        tx.capacity()
    );

    let mut buffer = Vec::new();
    let mut most_queued = 0;
    for id in 0..items {
        item(id, &mut buffer);
        tx.send_slice(&buffer)?; // blocks while 32 items are queued; returns once copied in
        most_queued = most_queued.max(tx.len()); // `qsize()`
    }
    println!(
        "producer: sent {items} items in {:.0?} (at most {most_queued} queued at once)",
        started.elapsed()
    );

    // `JoinableQueue.join()`: wait until every item was received and dropped. `tx.join()` waits
    // as long as it takes; an example that CI runs bounds the wait.
    let join_started = Instant::now();
    println!(
        "producer: join() waits for the {} items still queued",
        tx.len()
    );
    tx.join_timeout(deadline.saturating_duration_since(Instant::now()))?;
    println!(
        "producer: join() returned after {:.0?}: every item has been processed ({} queued)",
        join_started.elapsed(),
        tx.len()
    );

    // The shutdown: no sentinels, just drop the sender. Each consumer's `rx.iter()` ends.
    drop(tx);
    let mut counts = vec![None; consumers];
    while counts.iter().any(Option::is_none) {
        let (index, line) = children.next_line(deadline)?;
        let report: Vec<u64> = line
            .strip_prefix("done ")
            .ok_or_else(|| format!("consumer {index} said {line:?}"))?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        counts[index] = Some((report[0], report[1]));
    }
    children.wait_all(deadline)?;

    let (mut total, mut id_sum) = (0, 0);
    for (index, counts) in counts.iter().enumerate() {
        let (count, ids) = counts.unwrap_or_default();
        println!("consumer {index}: {count:>6} items");
        total += count;
        id_sum += ids;
    }
    println!("total     : {total:>6} items (sent {items})");
    if total != items || id_sum != items * items.saturating_sub(1) / 2 {
        return Err(
            format!("{total} items processed, {items} sent: some were lost or doubled").into(),
        );
    }
    // The last consumer to exit dropped the last handle, which unlinked the segment.
    common::ensure_unlinked(&[&name])?;
    println!(
        "ok: every item processed exactly once, in {:.2?}; /dev/shm/shmq.{name} is gone",
        started.elapsed()
    );
    Ok(())
}
