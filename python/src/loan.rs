//! `Loan`: room in a channel's arena that Python fills in place (`Queue.loan`), then sends
//! with no copy at all.
//!
//! `Channel.loan` reserves a whole frame and writes its header and pickle; the `Loan` exports
//! only the frame's one out-of-band buffer, writable, so a numpy array built on it fills the
//! message itself. `send()` publishes it. Until then, `discard()` (or dropping the `Loan`)
//! gives the room back.
//!
//! After the send (or discard) the memory is the receiver's (or free): new exports are refused,
//! but views made before stay mapped, since the `Loan` keeps a sender of the channel and with it
//! the arena's mapping. Writing through them then would change what the receiver reads (plan
//! risk R4): `Queue.loan` makes the array it handed out read-only after the send. Only arena
//! room is ever lent, never an overflow segment, whose mapping would go with the send.

use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::buffers::fill_view;
use crate::channel::{call_deadline, Channel};

/// Locks the loan cell: as for the channel's cells, only ever while attached to the
/// interpreter and never across `detach`, so a fork never leaves it locked.
fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Room for one message in a channel's arena, lent to be filled in place and sent.
#[pyclass(frozen, module = "shmq._shmq", name = "Loan")]
pub(crate) struct Loan {
    channel: Py<Channel>,
    /// Keeps the arena mapped for views that outlive the loan.
    _mapping: shmq::Sender,
    loan: Mutex<Option<shmq::Loan>>,
    /// Address and length of the lent buffer inside the loan.
    addr: usize,
    len: usize,
}

impl Loan {
    /// Lends the `len` bytes at `offset` of `loan`, a reservation made through `mapping`, a
    /// sender of `channel`.
    pub(crate) fn new(
        channel: Py<Channel>,
        mapping: shmq::Sender,
        mut loan: shmq::Loan,
        offset: usize,
        len: usize,
    ) -> Loan {
        debug_assert!(offset + len <= loan.len());
        let addr = loan.as_mut_ptr() as usize + offset;
        Loan {
            channel,
            _mapping: mapping,
            loan: Mutex::new(Some(loan)),
            addr,
            len,
        }
    }
}

#[pymethods]
impl Loan {
    /// Exports the lent bytes, writable; refused once the loan is sent or discarded.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        if lock(&this.loan).is_none() {
            return Err(PyBufferError::new_err(
                "this loan was sent or discarded: its memory is no longer the sender's",
            ));
        }
        // SAFETY: `view` is the Py_buffer CPython passed to this slot. `addr..addr + len` lies
        // inside the reservation held in `loan` (an arena chunk: Channel.loan lends no overflow
        // room), which belongs to this sender alone until sent, and stays mapped while `slf`
        // (kept alive by the view) holds `_mapping`. Rust does not touch these bytes once lent.
        unsafe {
            fill_view(
                view,
                flags,
                slf.as_any(),
                this.addr as *mut u8,
                this.len,
                false,
            )
        }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        // Nothing to free: fill_view allocates nothing.
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether the loan is still to be sent (neither sent nor discarded).
    #[getter]
    fn pending(&self) -> bool {
        lock(&self.loan).is_some()
    }

    /// Publishes the message, waiting (with `block`, up to `timeout` seconds) for room in the
    /// ring. `True` when sent; `False` when the ring stayed full, with the loan kept (send it
    /// again, or discard it). `ValueError` if already sent or discarded.
    #[pyo3(signature = (block = true, timeout = None))]
    fn send(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = call_deadline(block, timeout)?;
        let mut slot = lock(&self.loan).take();
        if slot.is_none() {
            return Err(PyValueError::new_err(
                "this loan was already sent or discarded",
            ));
        }
        let sent = self.channel.get().publish(py, &mut slot, deadline);
        if let Some(unsent) = slot {
            *lock(&self.loan) = Some(unsent);
        }
        sent
    }

    /// Gives the room back unsent. Does nothing if already sent or discarded.
    fn discard(&self) {
        let unsent = lock(&self.loan).take();
        drop(unsent);
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmq._shmq.Loan of {} bytes in {:?}{}>",
            self.len,
            self.channel.get().name_str(),
            if self.pending() { "" } else { " (spent)" }
        )
    }
}
