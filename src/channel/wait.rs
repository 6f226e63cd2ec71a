//! Blocking: spinning on a progress word, then sleeping on a futex word, with one wake-up
//! system call per sleep.
//!
//! Each thing a caller may wait for ([`WaitOn`]) has a futex sequence word and an armed flag in
//! the control block. A sleeper sets the flag, re-checks its condition and sleeps on the word; a
//! waker that changed the condition swaps the flag to zero and, only if it was set, bumps the
//! word and issues FUTEX_WAKE. A sleep lasts at most 25 ms, so a sleeper also re-checks its
//! peers' liveness at least that often.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::layout::{
    C_ARENA_RETURNS, C_MEMBERSHIP_EPOCH, C_RETIRED_TASKS, C_WAIT_WORDS, WAIT_KINDS,
};
use super::spin::{SpinBudget, SpinOutcome};
use super::view::Chan;
use crate::error::{Error, Result};
use crate::sys;

/// What a blocked thread waits for; each has a futex sequence word and an armed flag.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WaitOn {
    NotEmpty = 0,
    NotFull = 1,
    Space = 2,
    /// Messages done (received and dropped), for `Sender::join`.
    Done = 3,
    /// Tasks done (`task_done`, or credited by a reclaim), for `join_tasks`: a word apart from
    /// `Done`, so that the drop of every message does not wake a task joiner for nothing.
    Tasks = 4,
}

pub(super) const ALL_WAITS: [WaitOn; WAIT_KINDS as usize] = [
    WaitOn::NotEmpty,
    WaitOn::NotFull,
    WaitOn::Space,
    WaitOn::Done,
    WaitOn::Tasks,
];

/// Outcome of one non-blocking attempt inside a wait loop.
pub(crate) enum Step<T> {
    Ready(T),
    Retry,
    Disconnected,
}

/// How a wait ended, before the caller turns it into its public error type.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The attempt reported that no peer is left.
    Disconnected,
    /// The attempt failed.
    Failed(Error),
}

/// Longest single futex sleep: how often a sleeper re-checks its condition and its peers.
pub(super) const MAX_SLEEP: Duration = Duration::from_millis(25);

impl Chan {
    pub(super) fn wait_word(&self, on: WaitOn) -> &AtomicU32 {
        self.data
            .atomic_in(self.wait_word_offset(on))
            .expect("wait word in bounds")
    }

    /// Byte offset of `on`'s futex word in the data area, for a holder of the mapping alone
    /// (the async waiter thread, which must not hold an endpoint).
    pub(super) fn wait_word_offset(&self, on: WaitOn) -> usize {
        C_WAIT_WORDS as usize + 4 * on as usize
    }

    /// Non-zero while some thread may sleep on `on`'s word: set by each sleeper before it
    /// re-checks its condition, swapped to zero by the one waker that then issues FUTEX_WAKE.
    /// One wake-up system call per sleep, and a sleeper that died costs one spurious wake.
    fn armed(&self, on: WaitOn) -> &AtomicU32 {
        self.data
            .atomic_in((C_WAIT_WORDS + 4 * WAIT_KINDS) as usize + 4 * on as usize)
            .expect("armed flag in bounds")
    }

    /// Announces a sleeper on `on` and returns the futex word's value to sleep on: a waker that
    /// changes the condition after this call bumps the word, so a sleep on the returned value
    /// (by this thread, a `Select`, or the async waiter thread) that begins after the waker
    /// ran returns at once. The caller re-checks its condition after this call, then sleeps.
    pub(super) fn arm(&self, on: WaitOn) -> u32 {
        self.armed(on).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.wait_word(on).load(Ordering::SeqCst)
    }

    /// Wakes threads waiting on `on`, making a syscall only if one armed the word since the
    /// last wake-up.
    pub(crate) fn notify(&self, on: WaitOn) {
        fence(Ordering::SeqCst);
        self.notify_fenced(on);
    }

    /// [`Chan::notify`] for a caller whose last write of the condition was a SeqCst
    /// read-modify-write, which already orders the armed-flag read after it (a sleeper stores
    /// its flag, fences, then re-checks the condition: one of the two sees the other).
    pub(crate) fn notify_fenced(&self, on: WaitOn) {
        let armed = self.armed(on);
        if armed.load(Ordering::Relaxed) != 0 && armed.swap(0, Ordering::SeqCst) != 0 {
            self.wait_word(on).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(self.wait_word(on));
        }
    }

    /// A word that changes when what `on` waits for may have happened: spinning threads watch
    /// it and run their full attempt only when it moved.
    pub(super) fn progress(&self, on: WaitOn) -> &AtomicU64 {
        match on {
            // The state of the slot the next message will be in.
            WaitOn::NotEmpty => self.slot_state(self.take_start(false)),
            WaitOn::NotFull | WaitOn::Done => self.head(),
            // Room comes back mostly by returns without the lock (frees under it, rarer,
            // are caught by the attempt every 64 polls).
            WaitOn::Space => self.word(C_ARENA_RETURNS / 8),
            // Moves only when a participant retires; a `task_done` shows in no single word,
            // and the spin's attempt every 64 polls catches it.
            WaitOn::Tasks => self.word(C_RETIRED_TASKS / 8),
        }
    }

    pub(crate) fn bump_membership(&self) {
        self.word(C_MEMBERSHIP_EPOCH / 8)
            .fetch_add(1, Ordering::AcqRel);
        for on in ALL_WAITS {
            self.wait_word(on).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(self.wait_word(on));
        }
    }

    /// Repeats `attempt` until it is ready, spinning for up to `spin` and then sleeping on the
    /// futex word of `on`, until `deadline`. With a `history`, the spin is what it allows of
    /// `spin` (see spin.rs), and the wait is recorded in it. A sleep lasts at most
    /// `MAX_SLEEP`, so the attempt runs at least that often; attempts re-check their peers'
    /// liveness (and reclaim the dead) at most every 25 ms, which is how a blocked call
    /// notices a killed peer.
    pub(crate) fn wait_for<T>(
        &self,
        on: WaitOn,
        deadline: Option<Instant>,
        spin: Duration,
        history: Option<&SpinBudget>,
        mut attempt: impl FnMut() -> Result<Step<T>>,
    ) -> Result<T, WaitError> {
        let run = |attempt: &mut dyn FnMut() -> Result<Step<T>>| match attempt() {
            Ok(Step::Ready(v)) => Some(Ok(v)),
            Ok(Step::Retry) => None,
            Ok(Step::Disconnected) => Some(Err(WaitError::Disconnected)),
            Err(e) => Some(Err(WaitError::Failed(e))),
        };
        if let Some(done) = run(&mut attempt) {
            return done;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(WaitError::Timeout); // try_ forms: one attempt, no spinning
        }
        // Spin: watch a progress word with one PAUSE per poll (about 25 ns here) and run the
        // attempt only when it moved, or every 64 polls for conditions it does not show. (A
        // sender waiting for room watches `head`, which receivers publish every few takes:
        // it resumes when a run of slots is free, not at each one.)
        let spin = history.map_or(spin, |h| h.budget(spin));
        let start = Instant::now();
        let progress = self.progress(on);
        let mut seen = progress.load(Ordering::Acquire);
        let mut polls = 0u32;
        // How long the spin had run at its last look at the clock: what a spin that pays
        // records, a little short, so that the wait that ends does not pay for a clock read
        // (about 20 ns, on the path of every message a waiting receiver gets).
        let mut spun = Duration::ZERO;
        loop {
            std::hint::spin_loop();
            polls = polls.wrapping_add(1);
            let now = progress.load(Ordering::Acquire);
            if now != seen || polls.is_multiple_of(64) {
                seen = now;
                if let Some(done) = run(&mut attempt) {
                    if let Some(h) = history {
                        h.record(SpinOutcome::Paid(spun));
                    }
                    return done;
                }
                let elapsed = start.elapsed();
                spun = elapsed;
                if elapsed >= spin {
                    if let Some(h) = history {
                        h.record(SpinOutcome::Slept);
                    }
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break; // the caller's deadline, not the spin, ran out: nothing learnt
                }
            }
        }
        loop {
            let seq = self.arm(on);
            let outcome = run(&mut attempt);
            let now = Instant::now();
            let timed_out = deadline.is_some_and(|d| now >= d);
            if outcome.is_none() && !timed_out {
                let mut slice = MAX_SLEEP;
                if let Some(d) = deadline {
                    slice = slice.min(d - now);
                }
                sys::futex_wait(self.wait_word(on), seq, Some(slice));
            }
            if let Some(done) = outcome {
                return done;
            }
            if timed_out {
                return Err(WaitError::Timeout);
            }
        }
    }
}
