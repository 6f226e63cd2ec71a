//! Received messages, turned into Python objects: without a copy ([`MessageBuffer`], a view of
//! the message in shared memory) or as private copies (`bytes`, `bytearray`).
//!
//! A [`MessageBuffer`] exports a range of one received `shmq::Message`. Every buffer of one
//! message shares the message through an `Arc`, and every `memoryview` or numpy array made
//! from a buffer holds a reference to it: the message's memory returns to the channel's arena
//! when the last of them goes, and not before (so closing the queue never invalidates a
//! received array).

use std::ffi::c_int;
use std::sync::Arc;

use pyo3::exceptions::PyMemoryError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::buffers::fill_view;
use crate::frame;

/// Copies at least this large run with the GIL released (below it, releasing costs more than
/// it gives).
pub(crate) const DETACHED_COPY: usize = 64 << 10;

/// The core's inline payload size: messages up to this size travel in the ring slot and are
/// copied into the `Message` on receipt.
const INLINE_BYTES: usize = 96;

/// A pickle at least this large is read in place rather than copied to `bytes` first, when the
/// message stays alive anyway for a zero-copy buffer.
const PICKLE_IN_PLACE: usize = 64 << 10;

/// Whether Python may write a received message through its exported buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Exported read-only: numpy arrays rebuilt from it have `writeable=False`.
    ReadOnly,
    /// Exported writable, as multiprocessing's received arrays are.
    Writable,
}

/// The one place that decides whether received messages are exported writable, and the start
/// address to export: writable, as multiprocessing's received arrays are. Sound: a taken
/// message's bytes belong to that message alone until it drops (the core's `DerefMut for
/// Message`), and Rust never reads them again once they are exported (the frame is parsed
/// before any buffer is handed out). Called only on a message this process has just received,
/// never on one inherited through fork (which the core refuses to write).
fn export_access(msg: &mut shmq::Message) -> (*mut u8, Access) {
    use std::ops::DerefMut;
    (msg.deref_mut().as_mut_ptr(), Access::Writable)
}

/// A received message shared by the buffers exported from it.
pub(crate) struct Received {
    msg: shmq::Message,
    /// Address of the message's first byte, as exported (stable: the message lives inside this
    /// `Arc`'s allocation, which never moves, and arena or overflow bodies never move at all).
    base: usize,
    access: Access,
    /// The message's length, kept so that nothing reads the message once it is exported.
    len: usize,
    /// The process that received it: a forked child exports it read-only (its bytes are the
    /// parent's, which may free them for another message), as the core refuses writes there.
    pid: u32,
}

impl Received {
    /// Shares `msg` for export.
    pub(crate) fn new(msg: shmq::Message) -> Arc<Received> {
        let mut shared = Arc::new(Received {
            msg,
            base: 0,
            access: Access::ReadOnly,
            len: 0,
            pid: std::process::id(),
        });
        // Taken after the move into the Arc: an inline message's bytes live inside the
        // Message value itself, so only its final place has a stable address.
        let this = Arc::get_mut(&mut shared).expect("a fresh Arc has no other reference");
        let (ptr, access) = export_access(&mut this.msg);
        this.base = ptr as usize;
        this.access = access;
        this.len = this.msg.len();
        shared
    }
}

/// A range of a received message, exported through the buffer protocol with no copy: what a
/// numpy array got from a queue is built on (its `.base` chain ends here). The message's memory
/// goes back to the channel when the last view of the last `MessageBuffer` of that message is
/// gone.
#[pyclass(frozen, module = "shmq._shmq", name = "MessageBuffer")]
pub(crate) struct MessageBuffer {
    received: Arc<Received>,
    offset: usize,
    len: usize,
}

#[pymethods]
impl MessageBuffer {
    /// Exports the range, writable (see `export_access`).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let ptr = (this.received.base + this.offset) as *mut u8;
        let readonly =
            this.received.access == Access::ReadOnly || std::process::id() != this.received.pid;
        // SAFETY: `view` is the Py_buffer CPython passed to this slot. `ptr..ptr + len` lies
        // inside the message (checked by frame::parse before this buffer was made), whose
        // memory stays mapped and unmoved while `received` lives, which every view keeps alive
        // through `slf`. It is writable only when export_access said so (see there), and only
        // in the process that received it.
        unsafe { fill_view(view, flags, slf.as_any(), ptr, this.len, readonly) }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        // Nothing to free: fill_view allocates nothing (no format string, no shape).
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether the buffer is exported read-only.
    #[getter]
    fn readonly(&self) -> bool {
        self.received.access == Access::ReadOnly || std::process::id() != self.received.pid
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmq._shmq.MessageBuffer of {} bytes at offset {} of a {}-byte message>",
            self.len, self.offset, self.received.len
        )
    }
}

/// The Python type of a private copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyAs {
    Bytes,
    ByteArray,
}

/// A new `bytes` or `bytearray` holding a copy of `src`; large copies run with the GIL
/// released.
pub(crate) fn copy_out<'py>(
    py: Python<'py>,
    src: &[u8],
    into: CopyAs,
) -> PyResult<Bound<'py, PyAny>> {
    let len = ffi::Py_ssize_t::try_from(src.len())
        .map_err(|_| PyMemoryError::new_err("message too large for this platform"))?;
    // SAFETY: both constructors accept a NULL source, returning a new (owned) object of
    // `len` uninitialised bytes, or NULL with an exception set, which from_owned_ptr_or_err
    // turns into the error; the object is ours alone until returned.
    let obj = unsafe {
        let ptr = match into {
            CopyAs::Bytes => ffi::PyBytes_FromStringAndSize(std::ptr::null(), len),
            CopyAs::ByteArray => ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len),
        };
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    if src.is_empty() {
        return Ok(obj);
    }
    // SAFETY: `obj` is the bytes or bytearray just made, of exactly src.len() bytes; its
    // storage pointer is valid for that many bytes and stays put while we hold `obj`.
    let dst = unsafe {
        match into {
            CopyAs::Bytes => ffi::PyBytes_AsString(obj.as_ptr()),
            CopyAs::ByteArray => ffi::PyByteArray_AsString(obj.as_ptr()),
        }
    } as usize;
    if dst == 0 {
        return Err(PyErr::fetch(py));
    }
    let copy = || {
        // SAFETY: `dst` is the fresh object's storage of src.len() bytes, reachable from no
        // other code (the object is not yet shared), and distinct from `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) }
    };
    if src.len() >= DETACHED_COPY {
        py.detach(copy);
    } else {
        copy();
    }
    Ok(obj)
}

/// How the buffers of a received frame are handed to Python.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Delivery {
    /// Copy every buffer (`get(copy=True)`).
    pub(crate) copy: bool,
    /// Copy buffers smaller than this; larger ones are exported in place.
    pub(crate) copy_below: usize,
}

/// What a frame's buffers become, by frame kind: the bare `bytes` and `bytearray` kinds are
/// rebuilt as their own type (a copy, since those types own their memory); every other buffer
/// is exported in place unless it is small or a copy was asked for.
fn buffer_as(kind: u8, len: usize, delivery: Delivery) -> Option<CopyAs> {
    match kind {
        frame::KIND_BYTES => Some(CopyAs::Bytes),
        frame::KIND_BYTEARRAY => Some(CopyAs::ByteArray),
        _ if delivery.copy || len < delivery.copy_below => Some(CopyAs::ByteArray),
        _ => None,
    }
}

/// A decoded frame for Python: `(kind, pickle, buffers)`.
pub(crate) type Decoded<'py> = (u8, Bound<'py, PyAny>, Bound<'py, PyList>);

/// Turns a received message into `(kind, pickle, buffers)`: the frame kind, the pickle bytes
/// (`bytes`, or a `MessageBuffer` when large and the message stays alive anyway) and a list of
/// buffers (`MessageBuffer`s exported in place, or copies). When nothing is exported in place,
/// the message is dropped (its memory freed) before this returns.
pub(crate) fn decode<'py>(
    py: Python<'py>,
    channel: &str,
    msg: shmq::Message,
    delivery: Delivery,
) -> PyResult<Decoded<'py>> {
    let parsed = frame::parse(&msg).map_err(|e| {
        crate::errors::to_py(shmq::Error::Corrupted {
            name: channel.to_owned(),
            what: e.to_string(),
        })
    })?;
    let kind = parsed.kind;
    let layout = &parsed.layout;
    let pickle_range = layout.pickle_offset..layout.pickle_offset + layout.pickle_len;
    // A message of up to INLINE_BYTES lives inside the `Message` value itself, which Rust
    // treats as immutable behind the `Arc`: such a message is always copied, never lent.
    let in_place = msg.len() > INLINE_BYTES
        && layout
            .buffers
            .iter()
            .any(|&(_, len)| buffer_as(kind, len, delivery).is_none());
    let buffers = PyList::empty(py);
    if !in_place {
        let pickle = PyBytes::new(py, &msg[pickle_range]).into_any();
        for &(offset, len) in &layout.buffers {
            let into = buffer_as(kind, len, delivery).unwrap_or(CopyAs::ByteArray);
            buffers.append(copy_out(py, &msg[offset..offset + len], into)?)?;
        }
        drop(msg); // the memory goes back now: nothing refers to it
        return Ok((kind, pickle, buffers));
    }
    let received = Received::new(msg);
    let pickle = if layout.pickle_len >= PICKLE_IN_PLACE {
        let part = MessageBuffer {
            received: Arc::clone(&received),
            offset: pickle_range.start,
            len: layout.pickle_len,
        };
        Bound::new(py, part)?.into_any()
    } else {
        PyBytes::new(py, &received.msg[pickle_range]).into_any()
    };
    for &(offset, len) in &layout.buffers {
        match buffer_as(kind, len, delivery) {
            Some(into) => {
                buffers.append(copy_out(py, &received.msg[offset..offset + len], into)?)?
            }
            None => buffers.append(Bound::new(
                py,
                MessageBuffer {
                    received: Arc::clone(&received),
                    offset,
                    len,
                },
            )?)?,
        }
    }
    Ok((kind, pickle, buffers))
}
