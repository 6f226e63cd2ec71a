//! What `shmq.Connection` (python/shmq/connection.py) needs of a channel besides whole frames:
//! a received message whose byte size is known *before* anything is copied.
//!
//! multiprocessing's `recv_bytes(maxlength)` refuses a message longer than `maxlength` without
//! reading it, and `recv_bytes_into(buf)` writes the message straight into the caller's buffer
//! (or raises `BufferTooShort` with the message as `bytes`). [`receive_message`] takes the next
//! message off a channel as a [`ReceivedMessage`]: Python looks at its `nbytes` first, then has
//! it copied once, into a new `bytes` or into its own buffer (with the GIL released when large),
//! or decoded as a frame, or discards it. The message's memory goes back to the channel as soon
//! as one of these has run.
//!
//! The bytes of a message are what multiprocessing would have put on its pipe: the payload of a
//! bare-bytes frame (`send_bytes`), or the pickle of a frame without out-of-band buffers
//! (`send(obj)` of an object without large buffers). A pickle with out-of-band buffers has no
//! such bytes here (`nbytes` is `None`): Python decodes it and pickles the object again.

use std::sync::{Mutex, MutexGuard};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::channel::Channel;
use crate::frame;
use crate::message::{self, CopyAs, Decoded, Delivery, DETACHED_COPY};
use crate::wait::deadline_after;

/// Registers this file's class and function in the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReceivedMessage>()?;
    m.add_function(wrap_pyfunction!(receive_message, m)?)?;
    m.add_function(wrap_pyfunction!(attach_receiver, m)?)?;
    Ok(())
}

/// Makes this process a receiver of `channel` now rather than at its first receive: opens the
/// receiver by name if it has none (`NotFoundError` if the channel is gone), and registers an
/// inherited one as this fork child's own participant. A receiver that is a participant keeps
/// the channel alive, so that what a sender sends and leaves before anyone received waits for
/// this process.
#[pyfunction]
fn attach_receiver(py: Python<'_>, channel: &Bound<'_, Channel>) -> PyResult<()> {
    let rx = channel.get().receiver(py)?;
    // A task query that does not wait: it registers an inherited receiver (`Endpoint::owner`)
    // and changes nothing (a pipe's channel never counts tasks done).
    match py.detach(|| rx.try_join_tasks()) {
        Ok(()) | Err(shmq::JoinTasksTimeoutError::Timeout) => Ok(()),
        Err(shmq::JoinTasksTimeoutError::Failed(e)) => Err(crate::errors::to_py(e)),
        Err(other) => Err(PyValueError::new_err(other.to_string())),
    }
}

/// Locks the message cell: only ever while attached to the interpreter and never across
/// `detach`, so a fork never leaves it locked.
fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Receives the next message of `channel`, waiting up to `timeout` seconds (`None`: for ever;
/// `0`: one attempt) with the GIL released and signals seen every 100 ms. `None` if nothing
/// came in time. The frame is checked here (`CorruptedError` if it is not one).
#[pyfunction]
#[pyo3(signature = (channel, timeout = None))]
fn receive_message(
    py: Python<'_>,
    channel: &Bound<'_, Channel>,
    timeout: Option<f64>,
) -> PyResult<Option<ReceivedMessage>> {
    let chan = channel.get();
    let deadline = deadline_after(timeout)?;
    let Some(msg) = chan.receive(py, deadline)? else {
        return Ok(None);
    };
    let parsed = frame::parse(&msg).map_err(|e| {
        crate::errors::to_py(shmq::Error::Corrupted {
            name: chan.name_str().to_owned(),
            what: e.to_string(),
        })
    })?;
    let layout = &parsed.layout;
    let bytes = match (parsed.kind, layout.buffers.as_slice()) {
        (frame::KIND_PICKLE, []) => Some((layout.pickle_offset, layout.pickle_len)),
        (frame::KIND_BYTES | frame::KIND_BYTEARRAY | frame::KIND_MEMORYVIEW, &[one])
            if layout.pickle_len == 0 =>
        {
            Some(one)
        }
        _ => None,
    };
    Ok(Some(ReceivedMessage {
        channel: chan.name_str().to_owned(),
        kind: parsed.kind,
        bytes,
        msg: Mutex::new(Some(msg)),
    }))
}

/// One message taken off a channel, not yet turned into a Python object. Each of `to_bytes`,
/// `copy_into`, `decode` and `discard` may run once: it gives the message's memory back.
#[pyclass(frozen, module = "shmq._shmq", name = "ReceivedMessage")]
pub(crate) struct ReceivedMessage {
    channel: String,
    kind: u8,
    /// `(offset, len)` of the message's bytes (see the module documentation), if it has them.
    bytes: Option<(usize, usize)>,
    msg: Mutex<Option<shmq::Message>>,
}

impl ReceivedMessage {
    fn take(&self) -> PyResult<shmq::Message> {
        lock(&self.msg)
            .take()
            .ok_or_else(|| PyValueError::new_err("this message was already consumed"))
    }

    fn bytes_range(&self) -> PyResult<(usize, usize)> {
        self.bytes.ok_or_else(|| {
            PyValueError::new_err("this message is a pickle with out-of-band buffers: decode it")
        })
    }
}

#[pymethods]
impl ReceivedMessage {
    /// The frame kind (`FRAME_KIND_*`).
    #[getter]
    fn kind(&self) -> u8 {
        self.kind
    }

    /// Length of the message's bytes, or `None` for a pickle with out-of-band buffers.
    #[getter]
    fn nbytes(&self) -> Option<usize> {
        self.bytes.map(|(_, len)| len)
    }

    /// The message's bytes as a new `bytes` object (one copy, without the GIL when large).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (offset, len) = self.bytes_range()?;
        let msg = self.take()?;
        message::copy_out(py, &msg[offset..offset + len], CopyAs::Bytes)
    }

    /// Copies the message's bytes into the writable, C-contiguous buffer `target` at byte
    /// `offset`, and returns their length. `ValueError` (the message kept) if they do not fit.
    fn copy_into(
        &self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        offset: usize,
    ) -> PyResult<usize> {
        let (start, len) = self.bytes_range()?;
        let buffer = PyUntypedBuffer::get(target)?;
        if buffer.readonly() {
            return Err(PyTypeError::new_err(
                "the target of recv_bytes_into must be a writable bytes-like object",
            ));
        }
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "the target buffer is not C-contiguous",
            ));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > buffer.len_bytes())
        {
            return Err(PyValueError::new_err(format!(
                "a message of {len} bytes does not fit at offset {offset} of a buffer of {} bytes",
                buffer.len_bytes()
            )));
        }
        let msg = self.take()?;
        if len == 0 {
            return Ok(0);
        }
        let dst = buffer.buf_ptr() as usize + offset;
        let src = &msg[start..start + len];
        let copy = || {
            // SAFETY: `dst..dst + len` lies inside the writable export held in `buffer` (checked
            // above) for the whole call; `src` is the message, taken by this process and
            // distinct from any Python buffer. Another Python thread writing the target
            // meanwhile would be that program's own race, as with any buffer given to C.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, len) }
        };
        if len >= DETACHED_COPY {
            py.detach(copy);
        } else {
            copy();
        }
        drop(buffer);
        Ok(len)
    }

    /// The message as a frame, `(kind, pickle, buffers)` as `Channel.recv_frame` returns it
    /// (out-of-band buffers of `copy_below` bytes or more exported in place unless `copy`).
    #[pyo3(signature = (copy = false, copy_below = 65536))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        copy: bool,
        copy_below: usize,
    ) -> PyResult<Decoded<'py>> {
        let msg = self.take()?;
        message::decode(py, &self.channel, msg, Delivery { copy, copy_below })
    }

    /// Gives the message's memory back unread. Does nothing if already consumed.
    fn discard(&self) {
        let msg = lock(&self.msg).take();
        drop(msg);
    }

    fn __repr__(&self) -> String {
        let what = match self.bytes {
            Some((_, len)) => format!("{len} bytes"),
            None => "a pickle with out-of-band buffers".to_owned(),
        };
        format!(
            "<shmq._shmq.ReceivedMessage of kind {} ({what}) from {:?}>",
            self.kind, self.channel
        )
    }
}
