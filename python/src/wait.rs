//! Blocking without holding the GIL, and without becoming deaf to signals.
//!
//! A call that may wait (a `get`, a `put` into a full queue, a lock) runs in slices of at most
//! [`SLICE`] with the GIL released, so that other Python threads run meanwhile. Between slices it
//! takes the GIL back and runs Python's pending signal handlers: Ctrl-C raises
//! `KeyboardInterrupt` from a blocked `get` within about a slice, and a handler that returns
//! normally lets the wait go on to its own deadline, as PEP 475 asks of interrupted calls.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Longest stretch a blocking call waits with the GIL released before it looks at signals.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// What one slice of a wait came to.
pub(crate) enum Slice<T> {
    /// The operation finished (successfully or not): stop waiting.
    Done(T),
    /// Nothing yet; wait again unless the caller's deadline has passed.
    NotYet,
}

/// The deadline of a Python `timeout` in seconds: `None` waits for ever. A negative, NaN or
/// infinite-but-negative value is a `ValueError` with multiprocessing's message; a timeout too
/// large for the clock waits for ever.
pub(crate) fn deadline_after(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(seconds) = timeout else {
        return Ok(None);
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(
            "'timeout' must be a non-negative number",
        ));
    }
    Ok(Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|timeout| Instant::now().checked_add(timeout)))
}

/// Runs `op` until it is done or `deadline` passes, in slices of at most [`SLICE`] with the GIL
/// released. `op(until)` must return by `until` (give it to the `_deadline` form of a shmq call).
///
/// Returns `Ok(Some(result))` when `op` finished, `Ok(None)` when the deadline passed first
/// (the caller raises `queue.Empty`, `queue.Full` or returns `False`, as multiprocessing does),
/// and `Err` when a signal handler raised (`KeyboardInterrupt` for Ctrl-C). `op` always runs at
/// least once, so a deadline already past makes one non-blocking attempt.
///
/// `check_signals` only acts on the main thread (CPython runs handlers there alone); a wait on
/// another thread still slices, so that it never holds the GIL while it waits.
pub(crate) fn blocking<T, F>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut op: F,
) -> PyResult<Option<T>>
where
    T: Send,
    F: FnMut(Instant) -> Slice<T> + Send,
{
    loop {
        let now = Instant::now();
        let slice_end = now + SLICE;
        let until = match deadline {
            Some(deadline) if deadline < slice_end => deadline,
            _ => slice_end,
        };
        if let Slice::Done(result) = py.detach(|| op(until)) {
            return Ok(Some(result));
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}
