//! The waiter thread of the async API: one thread per process that sleeps on the futex word of
//! every pending future at once (`futex_waitv`) and wakes the futures whose word moved.
//!
//! A future arms its channel's word and reads it (`Chan::arm`), then tries its operation; if
//! that is not ready, it registers the word, the value it read and its `Waker` here. Any peer
//! that changes the condition afterwards bumps the word, so the waiter thread's sleep on the
//! registered value either does not begin (the kernel sees the word changed) or ends. The
//! waiter then wakes every future whose word differs from its registered value, and removes
//! its registration: a woken future polls again, and registers again if it must still wait.
//!
//! Every registration older than 25 ms is woken too, so that a future re-checks its peers'
//! liveness as often as a blocking call does: that is how a killed peer shows up as
//! `Disconnected` in async code.
//!
//! A `Waker` is the executor's code, and may panic. The waiter thread catches such a panic and
//! drops the waker (see [`wake`]): one executor's bug costs its own future its wake-up, never
//! every other pending future of the process. Should the thread end all the same, its last act
//! lets the next registration start a new one and wakes every future still registered, so
//! that each polls again and registers with the new thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::view::Chan;
use super::wait::{WaitOn, MAX_SLEEP};
use crate::segment::Region;
use crate::sys;

/// How long the waiter sleeps at a time when some words could not be slept on (more than
/// `futex_waitv` takes, or no `futex_waitv`): those are polled this often.
const POLL_SLICE: Duration = Duration::from_millis(1);

/// A channel's futex word, held by the mapping it lies in, not by the endpoint of the future
/// that waits on it: the waiter thread then never holds a `Sender`'s or `Receiver`'s last
/// reference, whose drop (detaching the participant, maybe unlinking the channel) must happen
/// on the thread that let go of the handle, when it lets go. Holding the region keeps the
/// word mapped while the kernel sleeps on it; its drop here is only an unmap.
#[derive(Clone)]
struct Word {
    region: Arc<Region>,
    /// Byte offset of the word in the region's data area.
    offset: usize,
}

impl Word {
    fn of(chan: &Chan, on: WaitOn) -> Word {
        Word {
            region: Arc::clone(chan.region()),
            offset: chan.wait_word_offset(on),
        }
    }

    /// The word (`None` cannot happen: the same offset in the same data area is what the
    /// future armed, through its channel view, which checks it in bounds).
    fn get(&self) -> Option<&AtomicU32> {
        self.region.data_atomic(self.offset)
    }

    fn same(&self, other: &Word) -> bool {
        Arc::ptr_eq(&self.region, &other.region) && self.offset == other.offset
    }
}

/// One pending future's wait.
struct Registration {
    id: u64,
    word: Word,
    /// The word's value when the future armed it, before its last attempt.
    seq: u32,
    waker: Waker,
    since: Instant,
}

impl Registration {
    /// Whether the word moved from the registered value (a word that cannot be read counts as
    /// moved: the future polls again, and its own view of the channel reports the trouble).
    fn moved(&self) -> bool {
        self.word
            .get()
            .is_none_or(|w| w.load(Ordering::SeqCst) != self.seq)
    }
}

/// The id of the next registration, in every reactor of this process and its forked children.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct State {
    registrations: Vec<Registration>,
}

/// The waiter of one process (a child forked from it gets a new one: threads do not survive
/// `fork`).
pub(super) struct Reactor {
    fork_generation: u64,
    state: Mutex<State>,
    /// Bumped whenever registrations change, so that the waiter, which sleeps on this word
    /// too, takes a fresh look at them.
    changes: AtomicU32,
    /// Whether the waiter thread runs; a failed spawn is retried by the next registration.
    started: AtomicBool,
}

/// The reactor of this process, made (and its thread started) on first use.
pub(super) fn reactor() -> &'static Reactor {
    static CURRENT: AtomicPtr<Reactor> = AtomicPtr::new(std::ptr::null_mut());
    let generation = sys::fork_generation();
    loop {
        let current = CURRENT.load(Ordering::Acquire);
        // SAFETY: CURRENT only ever holds null or a pointer from Box::leak below, which is
        // never freed once published (a reactor of a parent process is left in its forked
        // children, unused).
        if let Some(reactor) = unsafe { current.as_ref() } {
            if reactor.fork_generation == generation {
                return reactor;
            }
        }
        let fresh: &'static mut Reactor = Box::leak(Box::new(Reactor {
            fork_generation: generation,
            state: Mutex::new(State::default()),
            changes: AtomicU32::new(0),
            started: AtomicBool::new(false),
        }));
        let fresh_ptr: *mut Reactor = fresh;
        if CURRENT
            .compare_exchange(current, fresh_ptr, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread installed one first: use that, and free ours, never published.
            // SAFETY: fresh_ptr came from Box::leak just above and no one else has seen it.
            drop(unsafe { Box::from_raw(fresh_ptr) });
        }
    }
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held (a Waker's code, say) leaves the list whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or renews, for `id`) a wait on `on`'s word of `chan`, which held `seq` when
    /// the caller armed it. Returns the registration's id, for a renewal and for
    /// [`Reactor::cancel`].
    pub(super) fn register(
        &'static self,
        id: Option<u64>,
        chan: &Chan,
        on: WaitOn,
        seq: u32,
        waker: &Waker,
    ) -> u64 {
        if !self.start() {
            // No waiter thread to be had (the spawn failed): have the future polled again
            // rather than left asleep; the next registration tries the spawn again.
            waker.wake_by_ref();
        }
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(id) = id {
            if let Some(r) = state.registrations.iter_mut().find(|r| r.id == id) {
                let same_word = r.seq == seq;
                r.seq = seq;
                // The old waker is dropped after the lock is let go: its drop may free a task
                // whose own futures cancel their registrations here.
                let old_waker = (!r.waker.will_wake(waker))
                    .then(|| std::mem::replace(&mut r.waker, waker.clone()));
                r.since = now;
                drop(state);
                drop(old_waker);
                if !same_word {
                    self.changed();
                }
                return id;
            }
        }
        // Ids come from one counter for the process, which a forked child inherits and goes
        // on from: an id a future carried across a fork can never name another future's
        // registration in the child's new reactor.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        state.registrations.push(Registration {
            id,
            word: Word::of(chan, on),
            seq,
            waker: waker.clone(),
            since: now,
        });
        drop(state);
        self.changed();
        id
    }

    /// Removes registration `id` (a future that completed, or was dropped while pending).
    pub(super) fn cancel(&self, id: u64) {
        let mut state = self.lock();
        let removed = state
            .registrations
            .iter()
            .position(|r| r.id == id)
            .map(|at| state.registrations.swap_remove(at));
        drop(state);
        // Dropped (its waker, its mapping) outside the lock, as in `register`.
        if removed.is_some() {
            drop(removed);
            // The waiter holds the mapping while it sleeps: let it go now, not in 25 ms.
            self.changed();
        }
    }

    /// Registrations now (futures waiting, as of their last poll).
    pub(super) fn pending(&self) -> usize {
        self.lock().registrations.len()
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&self.changes);
    }

    /// Starts the waiter thread if it is not running; whether it runs.
    fn start(&'static self) -> bool {
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return true;
        }
        let spawned = std::thread::Builder::new()
            .name("shmq-waiter".to_owned())
            .spawn(move || {
                let _restart = RestartOnExit(self);
                self.run()
            });
        if spawned.is_err() {
            self.started.store(false, Ordering::Release);
        }
        spawned.is_ok()
    }

    /// The waiter thread: sleep on every registered word and on `changes`, then wake what
    /// moved (and what has waited 25 ms).
    fn run(&self) {
        loop {
            let changes = self.changes.load(Ordering::SeqCst);
            // The mappings are held while sleeping, so every word stays mapped.
            let (held, some_polled): (Vec<(Word, u32)>, bool) = {
                let state = self.lock();
                let mut held: Vec<(Word, u32)> = Vec::new();
                let mut some_polled = false;
                for r in &state.registrations {
                    if held
                        .iter()
                        .any(|(word, seq)| word.same(&r.word) && *seq == r.seq)
                    {
                        continue;
                    }
                    if held.len() + 1 < sys::FUTEX_WAITV_MAX {
                        held.push((r.word.clone(), r.seq));
                    } else {
                        some_polled = true;
                    }
                }
                (held, some_polled)
            };
            let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(held.len() + 1);
            words.push((&self.changes, changes));
            // A word that cannot be read is not slept on; wake_moved counts it moved.
            words.extend(
                held.iter()
                    .filter_map(|(word, seq)| Some((word.get()?, *seq))),
            );
            let poll = some_polled || !sys::futex_wait_any_supported();
            // With nothing registered, sleep until something is; otherwise at most 25 ms.
            let until = (!held.is_empty() || some_polled)
                .then(|| Instant::now() + if poll { POLL_SLICE } else { MAX_SLEEP });
            let slept = !poll && sys::futex_wait_any(&words, until) == sys::WaitAny::Returned;
            if !slept {
                let slice = until.map(|u| u.saturating_duration_since(Instant::now()));
                sys::futex_wait(&self.changes, changes, slice);
            }
            drop(words);
            drop(held);
            self.wake_moved();
        }
    }

    /// Wakes (and removes) every registration whose word moved or that has waited 25 ms.
    fn wake_moved(&self) {
        let now = Instant::now();
        let due = {
            let mut state = self.lock();
            let (due, waiting): (Vec<Registration>, Vec<Registration>) =
                std::mem::take(&mut state.registrations)
                    .into_iter()
                    .partition(|r| r.moved() || now.duration_since(r.since) >= MAX_SLEEP);
            state.registrations = waiting;
            due
        };
        // Outside the lock: a waker may poll at once and register again. What is dropped here
        // is a waker and a reference to a mapping, never an endpoint (see `Word`).
        for r in due {
            wake(r.waker);
        }
    }
}

/// Wakes `waker` on the waiter thread, surviving a panic in its code: a panicking `Waker`
/// (an executor's bug) must not end the thread, or every other pending future of the process
/// would sleep for ever. The panic is caught and dropped, and so is the waker (`wake` consumed
/// it); its registration is already removed, so its future is woken no more by this reactor,
/// which is all that executor's bug costs.
fn wake(waker: Waker) {
    // AssertUnwindSafe: the closure owns the waker and nothing else; after a panic nothing it
    // touched is used again (no lock is held here, and the registration list is whole).
    let _ = catch_unwind(AssertUnwindSafe(move || waker.wake()));
}

/// Dropped when the waiter thread ends, which it does only by a panic that [`wake`] did not
/// catch (a waker's drop, say): lets the next registration start a new thread, and wakes every
/// future still registered, so that each polls again and registers with that new thread
/// rather than sleep for ever on a thread that is gone.
struct RestartOnExit(&'static Reactor);

impl Drop for RestartOnExit {
    fn drop(&mut self) {
        self.0.started.store(false, Ordering::Release);
        let stranded = std::mem::take(&mut self.0.lock().registrations);
        for r in stranded {
            // The whole registration is dropped inside the guard (`let r = r` moves all of
            // it in): a panic escaping a drop while this thread unwinds would abort the
            // process.
            let _ = catch_unwind(AssertUnwindSafe(move || {
                let r = r;
                wake(r.waker);
            }));
        }
    }
}
