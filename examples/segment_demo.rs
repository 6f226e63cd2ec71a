//! Two processes share one named segment: this program creates it and fills the first half,
//! starts itself again as a child that opens the segment by name, checks the parent's half and
//! writes the second half, then the parent checks the child's half. The segment is unlinked when
//! the last handle is dropped, so nothing is left in /dev/shm (even if a check fails).
//!
//! ```text
//! cargo run --release --example segment_demo
//! ```

use std::error::Error;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Bytes of data in the segment: two halves of 8 MiB (small enough for a 64 MiB /dev/shm).
const LEN: usize = 16 << 20;
const WORDS: usize = LEN / 8;

type BoxResult<T> = Result<T, Box<dyn Error>>;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => parent(),
        [role, name] if role == "child" => child(name),
        _ => Err("usage: segment_demo (the child form is internal)".into()),
    }
}

/// What the parent writes at word `i` of the first half.
fn parent_word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// What the child writes at word `i` of the second half: derived from the parent's word, so the
/// parent can tell the child really read its half.
fn child_word(i: usize) -> u64 {
    !parent_word(i - WORDS / 2).rotate_left(17)
}

/// Runs `f` on the segment's data as 64-bit words.
///
/// # Safety
/// While `f` runs, no other process may access the words `f` writes, nor write the words `f`
/// reads; here the two processes take turns (the parent writes before starting the child and
/// reads after it exited; the child reads only the parent's half and writes only its own).
unsafe fn with_words<R>(seg: &shmq::Segment, f: impl FnOnce(&mut [u64]) -> R) -> R {
    assert_eq!(seg.len(), LEN);
    // SAFETY: the data area is LEN bytes, page aligned (so u64 aligned) and mapped while `seg`
    // lives, which outlasts the call; no other handle of this process touches it during the
    // call, and other processes keep off by the caller's promise.
    let words = unsafe { std::slice::from_raw_parts_mut(seg.as_ptr().cast::<u64>(), WORDS) };
    f(words)
}

fn parent() -> BoxResult<()> {
    let name = format!("segment-demo-{}", std::process::id());
    let path = format!("/dev/shm/shmq.{name}");
    {
        let seg = shmq::Segment::create(&name, LEN)?;
        println!(
            "parent {}: created {path} ({} MiB)",
            std::process::id(),
            LEN >> 20
        );

        let started = Instant::now();
        // SAFETY: no other process has the segment yet.
        unsafe {
            with_words(&seg, |data| {
                for (i, w) in data[..WORDS / 2].iter_mut().enumerate() {
                    *w = parent_word(i);
                }
            })
        };
        println!(
            "parent: wrote the first half in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );

        let status = Command::new(std::env::current_exe()?)
            .args(["child", &name])
            .stdin(Stdio::null())
            .status()?;
        if !status.success() {
            // `seg` is dropped on the way out: the segment is unlinked all the same.
            return Err(format!("the child failed: {status}").into());
        }

        // SAFETY: the child exited; nobody else writes the segment now.
        let bad = unsafe {
            with_words(&seg, |data| {
                (WORDS / 2..WORDS)
                    .filter(|&i| data[i] != child_word(i))
                    .count()
            })
        };
        if bad != 0 {
            return Err(format!("{bad} words of the child's half are wrong").into());
        }
        println!("parent: the child's half is correct");
        println!("parent: participants now: {:?}", seg.participants());
    } // The last handle is dropped here: the segment is unlinked.

    if std::path::Path::new(&path).exists() {
        return Err(format!("{path} still exists after the last handle was dropped").into());
    }
    println!("parent: {path} is gone");
    Ok(())
}

fn child(name: &str) -> BoxResult<()> {
    let seg = shmq::Segment::open(name)?;
    let me = std::process::id();
    println!("child {me}: opened {name}, {} MiB", seg.len() >> 20);
    for p in seg.participants() {
        println!(
            "child: participant slot {} pid {} alive {}",
            p.slot, p.pid, p.alive
        );
    }
    // SAFETY: the parent wrote its half before starting us and waits for our exit before
    // reading ours.
    let wrong = unsafe {
        with_words(&seg, |data| {
            let (theirs, ours) = data.split_at_mut(WORDS / 2);
            let wrong = (0..theirs.len()).find(|&i| theirs[i] != parent_word(i));
            for (j, w) in ours.iter_mut().enumerate() {
                *w = child_word(WORDS / 2 + j);
            }
            wrong
        })
    };
    if let Some(i) = wrong {
        return Err(format!("word {i} of the parent's half is wrong").into());
    }
    println!("child: read the parent's half, wrote mine");
    Ok(())
}
