//! Each process of a measurement on a CPU of its own: the parent on the first CPU this run
//! may use, the child on the second. Without it the scheduler may put both on one CPU for a
//! while, or move them, and a busy-waiting pair then measures the scheduler; with it every
//! measurement of either contender meets the same placement. (The CPUs of a VM are still
//! threads of its host, which nothing here controls.)

use crate::error::BoxResult;

/// The CPUs of a run's two processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// The CPU of the parent (the sender, or the pinger).
    pub parent: usize,
    /// The CPU of the child (the receiver, or the echoer).
    pub child: usize,
}

impl Pinning {
    /// The first two CPUs of this process's affinity mask; `None` if it has fewer than two.
    pub fn choose() -> Option<Pinning> {
        // SAFETY: a cpu_set_t is plain data, valid all zero.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
        let got =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if got != 0 {
            return None;
        }
        let mut allowed = (0..libc::CPU_SETSIZE as usize).filter(|&cpu| {
            // SAFETY: CPU_ISSET reads a bit of `set`, a valid cpu_set_t (and `cpu` is below
            // CPU_SETSIZE, its size).
            unsafe { libc::CPU_ISSET(cpu, &set) }
        });
        Some(Pinning {
            parent: allowed.next()?,
            child: allowed.next()?,
        })
    }
}

/// Pins the calling thread (and so the threads and processes it starts after) to `cpu`.
pub fn pin_to(cpu: usize) -> BoxResult<()> {
    // SAFETY: a cpu_set_t is plain data, valid all zero.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit of `set`, a valid cpu_set_t; a `cpu` past its size is
    // ignored (sched_setaffinity then fails on the empty set, and we say so).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let done = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if done != 0 {
        return Err(format!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}
