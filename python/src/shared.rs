//! `SharedBuf`: the storage of `shmq.Value`, `Array`, `RawValue` and `RawArray`, and the robust
//! cross-process mutex behind `shmq.Lock`, `shmq.RLock` and `Value(...).get_lock()`.
//!
//! Storage: one [`shmq::SharedArray<u8>`] per object, created under a tag that describes the
//! ctypes type (so that opening it as another type fails with `IncompatibleError`). Its bytes
//! are exported through the buffer protocol, writable; Python builds the ctypes object with
//! `T.from_buffer(memoryview(buf))`, and the ctypes object keeps the `SharedBuf` (and so the
//! mapping) alive. A lock is the same thing with no bytes.
//!
//! Locking: the segment's mutex is robust and error-checking, not recursive. Re-entrancy, as
//! multiprocessing's `RLock` has it, lives here: a thread-local table maps each `SharedBuf` this
//! thread holds to its recursion count and the core's guard. A guard must be dropped on the
//! thread that locked (pthread mutexes have owners), so the table is per thread: a lock can
//! only be released by the thread that acquired it. A thread that exits holding locks releases
//! them (the table's destructor drops the guards on that thread).
//!
//! A holder that died: the core hands the next locker the guard with `LockError::OwnerDied`.
//! The policy here (plan decision D3): mark the data consistent, release, and raise
//! `shmq.OwnerDiedError` in that one locker; the next acquire, in any process, succeeds.
//!
//! Fork: the child's table is a copy of the forking thread's, whose guards belong to the
//! parent's thread. `forget_held_locks` (run by `os.register_at_fork` in the child; CPython runs
//! those hooks after every fork that goes on running Python) forgets them without unlocking: the
//! lock stays the parent's.

use std::cell::RefCell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use shmq::{LockError, LockResult, SharedArray, SharedArrayGuard};

use crate::buffers::fill_view;
use crate::errors::{to_py, IntoPy};
use crate::wait::{blocking, deadline_after, Slice};

/// Registers this file's class and functions in the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SharedBuf>()?;
    m.add_function(wrap_pyfunction!(forget_held_locks, m)?)?;
    Ok(())
}

/// Carries a value that is not `Send` (a lock guard) out of `py.detach`.
struct SameThread<T>(T);

// SAFETY: `py.detach` runs its closure on the calling thread and returns its result to that same
// thread, so a `SameThread` made inside the closure is only ever touched by the thread that made
// it; it is never sent anywhere else (it is not stored, and the guard in it is put in this
// thread's own table).
unsafe impl<T> Send for SameThread<T> {}

/// One lock this thread holds.
struct Held {
    /// Acquisitions not yet released (1 for a `Lock`).
    count: usize,
    /// The core's guard: dropping it unlocks.
    guard: SharedArrayGuard<u8>,
}

/// The locks one thread holds, by [`SharedBuf::id`]: a few at a time, so a list beats a map.
#[derive(Default)]
struct HeldLocks {
    locks: Vec<(u64, Held)>,
}

impl HeldLocks {
    fn get_mut(&mut self, id: u64) -> Option<&mut Held> {
        self.locks
            .iter_mut()
            .find(|(held, _)| *held == id)
            .map(|(_, entry)| entry)
    }

    fn count(&self, id: u64) -> Option<usize> {
        self.locks
            .iter()
            .find(|(held, _)| *held == id)
            .map(|(_, entry)| entry.count)
    }

    fn insert(&mut self, id: u64, entry: Held) {
        self.locks.push((id, entry));
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let at = self.locks.iter().position(|(held, _)| *held == id)?;
        Some(self.locks.swap_remove(at).1)
    }

    /// Forgets every guard without unlocking: after a fork, they are the parent's.
    fn forget_all(&mut self) {
        for (_, held) in self.locks.drain(..) {
            std::mem::forget(held.guard);
        }
    }
}

thread_local! {
    static HELD: RefCell<HeldLocks> = RefCell::new(HeldLocks::default());
}

/// Runs `f` on this thread's table of held locks.
fn with_held<R>(f: impl FnOnce(&mut HeldLocks) -> R) -> R {
    HELD.with(|cell| f(&mut cell.borrow_mut()))
}

/// Forgets the locks this thread's table says it holds, without unlocking them: for the child
/// of a fork, where they are the parent's (registered with `os.register_at_fork`).
#[pyfunction]
fn forget_held_locks() {
    with_held(HeldLocks::forget_all);
}

/// Source of [`SharedBuf::id`]: never reused, so a stale table entry can never match.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `shmq._errors._from_core`, to build an `OwnerDiedError` with this file's own message.
fn error_factory(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    FACTORY.import(py, "shmq._errors", "_from_core")
}

fn owner_died(py: Python<'_>, name: &str) -> PyErr {
    let message = format!(
        "a holder of the lock of shmq segment {name:?} died while holding it, so the data it \
         protects may be half-updated; the lock has been repaired and released (this is \
         reported once: the next acquire succeeds)"
    );
    match error_factory(py)
        .and_then(|make| make.call1(("OwnerDiedError", message, name, Option::<i32>::None)))
    {
        Ok(instance) => PyErr::from_value(instance),
        Err(failure) => failure,
    }
}

/// What this thread's table says about one lock.
enum Mine {
    /// Not held by this thread.
    No,
    /// Held, and re-entered: the count went up.
    Reentered,
    /// Held, and the caller does not re-enter (a `Lock`).
    HeldAlready,
}

/// The storage (or the lock) of one shared object; see the module docs.
///
/// Private to the package: `shmq.Value`, `Array`, `RawValue`, `RawArray`, `Lock` and `RLock`
/// are the public names.
#[pyclass(frozen, weakref, module = "shmq._shmq")]
pub(crate) struct SharedBuf {
    array: SharedArray<u8>,
    tag: String,
    /// Key of this handle in the threads' tables of held locks.
    id: u64,
}

impl SharedBuf {
    fn wrap(array: SharedArray<u8>, tag: &str) -> SharedBuf {
        SharedBuf {
            array,
            tag: tag.to_owned(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Records a lock just acquired, or turns a failure into the answer or the exception.
    fn took(&self, py: Python<'_>, result: LockResult<SharedArrayGuard<u8>>) -> PyResult<bool> {
        match result {
            Ok(guard) => {
                with_held(|held| held.insert(self.id, Held { count: 1, guard }));
                Ok(true)
            }
            Err(LockError::OwnerDied(mut died)) => {
                // Policy D3: repair, release, tell this one locker.
                died.get_mut().mark_consistent();
                drop(died);
                Err(owner_died(py, self.array.name()))
            }
            Err(LockError::WouldBlock { .. } | LockError::Timeout { .. }) => Ok(false),
            Err(LockError::WouldDeadlock { name, .. }) => Err(PyRuntimeError::new_err(format!(
                "this thread already holds the lock of shmq segment {name:?} through another \
                 handle; acquiring it again would deadlock"
            ))),
            Err(other) => Err(to_py(shmq::Error::from(other))),
        }
    }
}

#[pymethods]
impl SharedBuf {
    /// Creates segment `name` holding `nbytes` zeroed bytes under `tag` (`FileExistsError` if
    /// it exists).
    #[staticmethod]
    fn create(py: Python<'_>, name: &str, nbytes: usize, tag: &str) -> PyResult<SharedBuf> {
        let array = py
            .detach(|| SharedArray::<u8>::create_tagged(name, nbytes, 0, tag))
            .py_err()?;
        Ok(SharedBuf::wrap(array, tag))
    }

    /// Opens the existing segment `name` created under `tag` (`FileNotFoundError` if there is
    /// none, `IncompatibleError` if it holds something else).
    #[staticmethod]
    fn open(py: Python<'_>, name: &str, tag: &str) -> PyResult<SharedBuf> {
        let array = py
            .detach(|| SharedArray::<u8>::open_tagged(name, tag))
            .py_err()?;
        Ok(SharedBuf::wrap(array, tag))
    }

    /// The segment's name.
    #[getter]
    fn name(&self) -> &str {
        self.array.name()
    }

    /// The tag the segment was created under.
    #[getter]
    fn tag(&self) -> &str {
        &self.tag
    }

    fn __len__(&self) -> usize {
        self.array.len()
    }

    /// Exports the bytes, writable. The view keeps this object, and so the mapping, alive.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = (slf.get().array.as_ptr(), slf.get().array.len());
        // SAFETY: `view` comes from CPython's buffer protocol; `ptr..ptr + len` are the array's
        // elements, which stay mapped at this address while the handle lives, and the view
        // holds a reference to `slf`, which owns the handle. The elements are bytes (any value
        // is valid); who may write them when is the lock protocol of the Python objects built
        // on them (Value's `.value` takes the lock; a RawValue is unsynchronised, as in
        // multiprocessing).
        unsafe { fill_view(view, flags, slf.as_any(), ptr, len, false) }
    }

    /// Acquires the lock, as multiprocessing's `acquire(block, timeout)`: returns True when
    /// acquired, False when `block` is false and the lock is busy, or when `timeout` (seconds;
    /// negative counts as 0) passed first. Waits with the GIL released, in slices that let
    /// signal handlers run (Ctrl-C raises KeyboardInterrupt).
    ///
    /// `reentrant` (an `RLock`): a thread that holds the lock gets it again and must release it
    /// as often. Otherwise (a `Lock`) the holder's non-blocking or timed acquire returns False
    /// (after the timeout), and a blocking one without timeout raises RuntimeError instead of
    /// deadlocking.
    ///
    /// A holder that died: raises `OwnerDiedError` once, with the lock repaired and released.
    #[pyo3(signature = (block = true, timeout = None, reentrant = true))]
    fn acquire(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        reentrant: bool,
    ) -> PyResult<bool> {
        // multiprocessing clamps a negative timeout to 0 (and so does this, NaN included).
        let timeout = timeout.map(|t| if t > 0.0 { t } else { 0.0 });
        let mine = with_held(|held| match held.get_mut(self.id) {
            None => Mine::No,
            Some(entry) if reentrant => {
                entry.count += 1;
                Mine::Reentered
            }
            Some(_) => Mine::HeldAlready,
        });
        match mine {
            Mine::Reentered => return Ok(true),
            Mine::HeldAlready => {
                if !block {
                    return Ok(false);
                }
                let Some(timeout) = timeout else {
                    return Err(PyRuntimeError::new_err(format!(
                        "this thread already holds shmq.Lock {:?}: acquiring it again would \
                         deadlock (a multiprocessing.Lock would hang here; use shmq.RLock for a \
                         re-entrant lock)",
                        self.array.name()
                    )));
                };
                // Nobody else can release it meanwhile (only its holder, this thread, can): wait
                // out the timeout, interruptibly, and fail as multiprocessing would.
                let deadline = deadline_after(Some(timeout))?;
                blocking(py, deadline, |until| {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    Slice::<()>::NotYet
                })?;
                return Ok(false);
            }
            Mine::No => {}
        }
        // The uncontended case, without releasing the GIL (which costs more than the lock).
        let first = self.array.try_lock();
        if !block || !matches!(first, Err(LockError::WouldBlock { .. })) {
            return self.took(py, first);
        }
        let deadline = deadline_after(timeout)?;
        let array = &self.array;
        let outcome = blocking(py, deadline, |until| {
            match array.lock_timeout(until.saturating_duration_since(Instant::now())) {
                Err(LockError::Timeout { .. }) => Slice::NotYet,
                other => Slice::Done(SameThread(other)),
            }
        })?;
        match outcome {
            Some(SameThread(result)) => self.took(py, result),
            None => Ok(false),
        }
    }

    /// Releases the lock once.
    ///
    /// Not held by this thread: `reentrant` (an `RLock`) raises AssertionError, as
    /// multiprocessing's RLock does; a `Lock` that nobody holds raises ValueError ("semaphore or
    /// lock released too many times"), one that another thread or process holds raises
    /// RuntimeError (a shmq lock is released by the thread that acquired it), and one whose
    /// holder died is released (the next acquire reports the death).
    #[pyo3(signature = (reentrant = true))]
    fn release(&self, reentrant: bool) -> PyResult<()> {
        let released = with_held(|held| match held.get_mut(self.id) {
            Some(entry) if entry.count > 1 => {
                entry.count -= 1;
                Some(None)
            }
            Some(_) => Some(held.remove(self.id).map(|entry| entry.guard)),
            None => None,
        });
        if let Some(guard) = released {
            drop(guard); // unlocks, outside the table's borrow
            return Ok(());
        }
        if reentrant {
            return Err(PyAssertionError::new_err(
                "attempt to release recursive lock not owned by thread",
            ));
        }
        match self.array.try_lock() {
            Ok(guard) => {
                drop(guard);
                Err(PyValueError::new_err(
                    "semaphore or lock released too many times",
                ))
            }
            // Its holder died: the lock is free now, and the death stays recorded (the guard is
            // dropped without marking the data consistent), for the next acquire to report.
            Err(LockError::OwnerDied(died)) => {
                drop(died);
                Ok(())
            }
            Err(LockError::WouldBlock { name, .. }) => Err(PyRuntimeError::new_err(format!(
                "cannot release shmq lock {name:?}: another thread or process holds it, and a \
                 shmq lock can only be released by the thread that acquired it"
            ))),
            Err(LockError::WouldDeadlock { name, .. }) => Err(PyRuntimeError::new_err(format!(
                "cannot release shmq lock {name:?} through this handle: this thread holds it \
                 through another one"
            ))),
            Err(other) => Err(to_py(shmq::Error::from(other))),
        }
    }

    /// Whether this thread holds the lock.
    fn is_mine(&self) -> bool {
        with_held(|held| held.count(self.id).is_some())
    }

    /// How many times this thread holds the lock (0 if it does not).
    fn count(&self) -> usize {
        with_held(|held| held.count(self.id).unwrap_or(0))
    }
}
