//! The machine's limit that the latency target is a ratio of, measured inside the run, next
//! to the latency cells: two processes spinning on one shared word, as
//! `../shared/tools/machine-limits` measures it (`spin_pingpong_oneway_ns`: the mean of a
//! tight loop of round trips, halved). Measured in each round of a latency cell, just before
//! the contenders, so that it sees the same placement of the processes on the cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::BoxResult;
use crate::pinning::{self, Pinning};

/// Round trips of one measurement (machine-limits runs 200,000).
const ROUND_TRIPS: u64 = 200_000;

/// Round trips of one `--quick` measurement.
const QUICK_ROUND_TRIPS: u64 = 2_000;

/// The word the child's answer to the parent's last ping ends with: the parent writes odd
/// numbers, the child answers each with the next even one, and this (odd) one tells it to go.
const STOP: u64 = u64::MAX;

/// One way of a spinning ping-pong on one word between this process and a forked child
/// (on the child's CPU of `pinning`, as the contenders' children), nanoseconds: the mean over
/// the round trips, halved.
pub fn spin_ping_pong_one_way_ns(quick: bool, pinning: Option<Pinning>) -> BoxResult<f64> {
    let round_trips = if quick {
        QUICK_ROUND_TRIPS
    } else {
        ROUND_TRIPS
    };
    let page = SharedPage::new()?;
    let word = page.word();
    word.store(0, Ordering::Relaxed);
    let parent = std::process::id();
    // SAFETY: fork(2) has no preconditions. The child below only pins itself
    // (sched_setaffinity), loads and stores an atomic in memory mapped before the fork, calls
    // getppid and _exit: it allocates nothing on success and takes no lock, so it is sound
    // in the child of a process with other threads.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()).into());
    }
    if child == 0 {
        if let Some(pins) = pinning {
            // A failure leaves the child where the parent is: slower, never wrong.
            let _ = pinning::pin_to(pins.child);
        }
        answer_pings(word, parent);
    }
    let start = Instant::now();
    for trip in 0..round_trips {
        let ping = 2 * trip + 1;
        word.store(ping, Ordering::Release);
        while word.load(Ordering::Acquire) != ping + 1 {}
    }
    let elapsed = start.elapsed();
    word.store(STOP, Ordering::Release);
    let mut status = 0;
    // SAFETY: `child` is our child's pid and `status` a valid place for its status.
    if unsafe { libc::waitpid(child, &mut status, 0) } != child {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()).into());
    }
    Ok(elapsed.as_nanos() as f64 / round_trips as f64 / 2.0)
}

/// The child's side: answers each odd ping with the next even number until [`STOP`] (or until
/// its parent is gone), then ends without running anything of the parent's state.
fn answer_pings(word: &AtomicU64, parent: u32) -> ! {
    let mut spins = 0u32;
    loop {
        let ping = word.load(Ordering::Acquire);
        if ping == STOP {
            break;
        }
        if ping % 2 == 1 {
            word.store(ping + 1, Ordering::Release);
            continue;
        }
        spins = spins.wrapping_add(1);
        // SAFETY: getppid has no preconditions. A parent that died leaves no one to stop us.
        if spins.is_multiple_of(1 << 20) && unsafe { libc::getppid() } as u32 != parent {
            break;
        }
    }
    // SAFETY: _exit ends the child at once, without the parent's atexit handlers or buffers.
    unsafe { libc::_exit(0) }
}

/// One page of anonymous memory shared with the children forked after it was mapped.
struct SharedPage(*mut libc::c_void);

impl SharedPage {
    fn new() -> BoxResult<SharedPage> {
        // SAFETY: a fresh anonymous mapping: no file, no address hint, nothing aliased.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
        }
        Ok(SharedPage(addr))
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is a page, readable and writable, page-aligned (so aligned for
        // a u64), zero-filled, and lives as long as `self`; it is only accessed atomically.
        unsafe { &*self.0.cast::<AtomicU64>() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the page this struct mapped; no reference from `word` outlives `self`.
        unsafe { libc::munmap(self.0, 4096) };
    }
}
