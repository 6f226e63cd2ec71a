//! `Loan`: room in a channel's arena that Python fills in place (`Queue.loan`), then sends
//! with no copy at all.
//!
//! `Channel.loan` reserves a whole frame and writes its header and pickle; the `Loan` exports
//! only the frame's one out-of-band buffer, writable, so a numpy array built on it fills the
//! message itself. `send()` publishes it. Until then, `discard()` (or dropping the `Loan`)
//! gives the room back.
//!
//! After the send the memory is the receiver's: new exports are refused, but views made before
//! stay mapped, since the `Loan` keeps a sender of the channel and with it the arena's mapping.
//! Writing through them then changes what the receiver reads, a race of the program's own
//! (plan risk R4; `Queue.loan` makes the array it handed out read-only after the send). A loan
//! given up unsent (`discard()`, a failed send) while views of it are alive is *parked* until
//! the last view is released, so that a stale view can never write into room that the arena
//! has lent to another message. Only arena room is ever lent, never an overflow segment, whose
//! mapping would go with the send. A forked child cannot export an inherited loan: its room is
//! the parent's.

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// A loan given up unsent while views of it were alive, freed with the last of them.
    parked: Mutex<Option<shmq::Loan>>,
    /// Views of the lent buffer alive now (exports not yet released).
    exports: AtomicUsize,
    /// The process that made the loan: only it may export the buffer.
    pid: u32,
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
            parked: Mutex::new(None),
            exports: AtomicUsize::new(0),
            pid: std::process::id(),
            addr,
            len,
        }
    }

    /// Gives `unsent` back to the arena, or parks it while views of it are alive.
    fn give_up(&self, unsent: shmq::Loan) {
        if self.exports.load(Ordering::Acquire) > 0 {
            *lock(&self.parked) = Some(unsent);
        } else {
            drop(unsent);
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
        if std::process::id() != this.pid {
            return Err(PyBufferError::new_err(
                "this loan was inherited through fork: its memory is the parent's",
            ));
        }
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
        }?;
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        // fill_view allocates nothing; the last view of a loan given up unsent frees its room.
        if self.exports.fetch_sub(1, Ordering::AcqRel) == 1 {
            drop(lock(&self.parked).take());
        }
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
            match sent {
                // The ring stayed full: the loan stays pending, to send again or discard.
                Ok(false) => *lock(&self.loan) = Some(unsent),
                // The send failed: the room goes back (parked while views of it live).
                _ => self.give_up(unsent),
            }
        }
        sent
    }

    /// Gives the room back unsent (once the last view of it is released, if views are alive).
    /// Does nothing if already sent or discarded.
    fn discard(&self) {
        if let Some(unsent) = lock(&self.loan).take() {
            self.give_up(unsent);
        }
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
