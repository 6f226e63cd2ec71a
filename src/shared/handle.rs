//! The handle and the guard that [`SharedValue`](super::SharedValue) and
//! [`SharedArray`](super::SharedArray) both wrap: everything they have in common, written once.

use std::any::type_name;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::lock::{LockError, LockResult, OwnerDiedError};
use super::state::{create_state, open_state, State};
use crate::error::{Error, Result};
use crate::segment::Kind;
use crate::sys;

/// How a lock call waits.
#[derive(Clone, Copy)]
pub(super) enum Wait {
    /// `lock`: as long as it takes.
    Forever,
    /// `try_lock`: not at all.
    Never,
    /// `lock_timeout`: at most this long.
    For(Duration),
}

/// A handle on a checked segment of `T`s: its clones share one mapping and participant slot.
pub(super) struct Shared<T: Pod> {
    state: Arc<State>,
    _type: PhantomData<T>,
}

impl<T: Pod> Shared<T> {
    fn from_state(state: State) -> Self {
        Shared {
            state: Arc::new(state),
            _type: PhantomData,
        }
    }

    /// Creates the `kind` segment `name` for `len` elements under `tag`; `fill` gets the
    /// elements zeroed and writes their initial values.
    pub(super) fn create(
        name: &str,
        kind: Kind,
        len: usize,
        tag: &str,
        fill: impl FnOnce(&mut [T]),
    ) -> Result<Self> {
        create_state::<T>(name, kind, len, tag, fill).map(Self::from_state)
    }

    /// Opens the `kind` segment `name`, checking that it holds `T`s under `tag`.
    pub(super) fn open(name: &str, kind: Kind, tag: &str) -> Result<Self> {
        open_state::<T>(name, kind, tag).map(Self::from_state)
    }

    /// The segment's name.
    pub(super) fn name(&self) -> &str {
        self.state.name()
    }

    /// The segment's incarnation; see the public handles' `incarnation`.
    pub(super) fn incarnation(&self) -> u64 {
        self.state.incarnation()
    }

    /// Number of elements (1 for a value).
    pub(super) fn len(&self) -> usize {
        self.state.len()
    }

    /// The first element; see the `as_ptr` docs of the public handles.
    pub(super) fn as_ptr(&self) -> *mut T {
        self.state.values_ptr().cast::<T>()
    }

    /// A `Debug` builder for the public handle `handle`, with the name and element type filled
    /// in.
    pub(super) fn debug_struct<'a, 'b>(
        &self,
        f: &'a mut fmt::Formatter<'b>,
        handle: &str,
    ) -> fmt::DebugStruct<'a, 'b> {
        let mut d = f.debug_struct(handle);
        d.field("name", &self.name())
            .field("type", &type_name::<T>());
        d
    }

    /// Locks the segment's mutex as `wait` says, handing the guard to `wrap` (the public guard's
    /// constructor).
    pub(super) fn lock<G>(&self, wait: Wait, wrap: fn(ElementGuard<T>) -> G) -> LockResult<G> {
        let state = &self.state;
        state.register_if_forked().map_err(LockError::Io)?;
        let mutex = state.mutex_ptr();
        let (op, outcome) = match wait {
            Wait::Never => (
                "pthread_mutex_trylock",
                // SAFETY: the mutex was initialised by the creator (the segment was initialised
                // before open returned) and `state` keeps the mapping alive for the call.
                unsafe { sys::robust_mutex_try_lock(mutex) },
            ),
            Wait::For(timeout) => {
                let deadline = Instant::now().checked_add(timeout);
                (
                    "pthread_mutex_clocklock",
                    // SAFETY: as for try_lock above.
                    unsafe { sys::robust_mutex_lock(mutex, deadline) },
                )
            }
            Wait::Forever => (
                "pthread_mutex_lock",
                // SAFETY: as for try_lock above.
                unsafe { sys::robust_mutex_lock(mutex, None) },
            ),
        };
        let name = || state.name().to_owned();
        let (guard, poisoned) = match outcome {
            Ok(sys::LockOutcome::Acquired) => {
                let poisoned = state.poisoned().load(Ordering::Relaxed) != 0;
                (ElementGuard::new(state), poisoned)
            }
            Ok(sys::LockOutcome::OwnerDied) => {
                // We hold the mutex: made first, the guard releases it on every path below.
                let guard = ElementGuard::new(state);
                // Record the death in the segment first: if we die before the caller repairs,
                // the next locker learns of it again (from the mutex or from this word).
                state.poisoned().store(1, Ordering::Relaxed);
                // SAFETY: this thread holds the mutex (EOWNERDEAD means it was acquired) and
                // `state` keeps the mapping alive.
                let consistent = unsafe { sys::robust_mutex_mark_consistent(mutex) };
                if let Err(e) = consistent {
                    // Dropping the guard unlocks a mutex still inconsistent, which makes it
                    // unrecoverable: later lockers are told so, rather than wait for ever.
                    return Err(LockError::Io(Error::from_io(
                        state.name(),
                        "pthread_mutex_consistent",
                        e,
                    )));
                }
                (guard, true)
            }
            Ok(sys::LockOutcome::Busy) => {
                return Err(match wait {
                    Wait::Never => LockError::WouldBlock { name: name() },
                    Wait::For(waited) => LockError::Timeout {
                        name: name(),
                        waited,
                    },
                    // robust_mutex_lock without a deadline never reports Busy.
                    Wait::Forever => LockError::Io(Error::from_io(
                        state.name(),
                        op,
                        io::Error::from(io::ErrorKind::ResourceBusy),
                    )),
                });
            }
            Ok(sys::LockOutcome::Unrecoverable) => {
                return Err(LockError::Unrecoverable { name: name() })
            }
            // EDEADLK from the error-checking mutex: this thread holds it already. Nothing was
            // acquired, so the guard this thread holds stays the only one.
            Err(e) if e.kind() == io::ErrorKind::Deadlock => {
                return Err(LockError::WouldDeadlock { name: name() })
            }
            Err(e) => return Err(LockError::Io(Error::from_io(state.name(), op, e))),
        };
        let guard = wrap(guard);
        if poisoned {
            Err(LockError::OwnerDied(OwnerDiedError::new(name(), guard)))
        } else {
            Ok(guard)
        }
    }
}

impl<T: Pod> Clone for Shared<T> {
    /// Another handle on the same mapping and participant slot.
    fn clone(&self) -> Self {
        Shared {
            state: Arc::clone(&self.state),
            _type: PhantomData,
        }
    }
}

/// Holds the mutex of one segment and gives access to its elements; unlocks on drop.
///
/// It keeps the mapping alive through its `Arc<State>`. It is neither `Send` nor `Sync`: a
/// pthread mutex must be unlocked by the thread that locked it.
pub(super) struct ElementGuard<T: Pod> {
    state: Arc<State>,
    _type: PhantomData<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> ElementGuard<T> {
    /// Only called right after this thread acquired `state`'s mutex.
    fn new(state: &Arc<State>) -> Self {
        ElementGuard {
            state: Arc::clone(state),
            _type: PhantomData,
            _not_send: PhantomData,
        }
    }

    /// Clears the poisoned word, which only lock holders touch.
    pub(super) fn mark_consistent(&mut self) {
        self.state.poisoned().store(0, Ordering::Relaxed);
    }

    /// The elements.
    pub(super) fn elements(&self) -> &[T] {
        // SAFETY: State::check verified that values_ptr is non-null and aligned for T and that
        // `len` elements fit the data area (so len * size_of::<T>() <= isize::MAX); `state`
        // keeps the mapping alive as long as the guard; this thread holds the mutex, so under
        // the lock protocol (see the public guards' Soundness sections) nobody else accesses
        // the elements meanwhile; T is Pod, so any bytes are valid Ts.
        unsafe { std::slice::from_raw_parts(self.state.values_ptr().cast::<T>(), self.state.len()) }
    }

    /// The elements, mutably.
    pub(super) fn elements_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `elements`; &mut self makes this the only reference derived from the
        // guard while it lives.
        unsafe {
            std::slice::from_raw_parts_mut(self.state.values_ptr().cast::<T>(), self.state.len())
        }
    }
}

impl<T: Pod> Drop for ElementGuard<T> {
    fn drop(&mut self) {
        // SAFETY: an ElementGuard exists only while this thread holds the mutex (`new` is called
        // right after a successful lock, and the guard is neither Send nor Clone), and `state`
        // keeps the mapping alive; the mutex was initialised by the creator.
        let unlocked = unsafe { sys::robust_mutex_unlock(self.state.mutex_ptr()) };
        // Drop cannot return the error, and panicking here could abort a thread that is already
        // unwinding, or turn a peer's garbage into a crash of ours. Unlocking a mutex this thread
        // holds fails only if someone broke the lock protocol (overwrote the mutex), which no
        // caller can repair: it is ignored, and the next locker sees the word as it is.
        let _ = unlocked;
    }
}
