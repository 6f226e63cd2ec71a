//! Shared memory through Python's buffer protocol, and Python buffers read from Rust.
//!
//! Exporting: each object Python sees as memory (a received message, a loan, a `SharedMemory`
//! block, the storage of a `Value`) is a Rust object that owns its mapping and exports it with
//! [`fill_view`]. Every `memoryview` or numpy array made from it holds a reference to the
//! exporter, so the mapping lives exactly as long as the last view of it: closing a handle
//! never invalidates memory that Python code still sees.
//!
//! Importing: [`ReadBuffer`] borrows the bytes of any C-contiguous buffer (`bytes`,
//! `bytearray`, `memoryview`, numpy arrays) for a copy that runs with the GIL released.

use std::ffi::{c_int, c_void};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

/// Fills `view` to export the `len` bytes at `ptr` on behalf of `owner`, read-only or writable.
///
/// A request for a writable buffer of read-only memory fails with `BufferError`, as the buffer
/// protocol requires.
///
/// # Safety
///
/// `view` is the `Py_buffer` that `__getbuffer__` received. `ptr..ptr + len` must stay mapped
/// and must not move while `owner` is alive (the view keeps `owner` alive), and, if `readonly`
/// is false, writing it through the view must be sound for as long as `owner` lives.
pub(crate) unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    owner: &Bound<'_, PyAny>,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("no buffer to fill"));
    }
    let len = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyValueError::new_err("buffer too large for Py_ssize_t"))?;
    // SAFETY: `view` is a valid, non-null Py_buffer from CPython (the caller's promise), and
    // `owner` is a live object; PyBuffer_FillInfo takes a new reference to it for `view.obj`
    // and fills the other fields for a one-dimensional byte buffer of `len` bytes at `ptr`,
    // which the caller keeps mapped while `owner` lives.
    let status = unsafe {
        ffi::PyBuffer_FillInfo(
            view,
            owner.as_ptr(),
            ptr.cast::<c_void>(),
            len,
            c_int::from(readonly),
            flags,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(owner.py()))
    }
}

/// The bytes of a Python buffer object, held for reading: the export stays taken (so the
/// object cannot be resized under us) until this is dropped.
pub(crate) struct ReadBuffer {
    buffer: PyBuffer<u8>,
}

impl ReadBuffer {
    /// Borrows the bytes of `obj`, which must export a C-contiguous buffer; any item format is
    /// accepted and read as bytes (numpy arrays of any dtype included).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<ReadBuffer> {
        let buffer = PyBuffer::<u8>::get(obj).or_else(|_| {
            // PyBuffer<u8> insists on an item format compatible with u8; a typed buffer (an
            // int32 array, say) is re-read through a byte-format memoryview cast.
            let bytes_view = obj
                .py()
                .import("builtins")?
                .getattr("memoryview")?
                .call1((obj,))?
                .call_method1("cast", ("B",))?;
            PyBuffer::<u8>::get(&bytes_view)
        })?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("the buffer is not C-contiguous"));
        }
        Ok(ReadBuffer { buffer })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buffer.len_bytes()
    }

    /// The start address, as an integer so that it can cross into a closure that runs without
    /// the GIL (see [`Self::as_slice_unchecked`]).
    pub(crate) fn addr(&self) -> usize {
        self.buffer.buf_ptr() as usize
    }

    /// The bytes of a buffer held by a live `ReadBuffer`, from its [`addr`](Self::addr) and
    /// [`len`](Self::len).
    ///
    /// # Safety
    ///
    /// The `ReadBuffer` these came from must outlive the returned slice, and no Python code may
    /// write the object meanwhile (the export stops resizing, not writes; a writer would be a
    /// race of the caller's own program, as with any buffer handed to a C function).
    pub(crate) unsafe fn as_slice_unchecked<'a>(addr: usize, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        // SAFETY: the caller's promise: `addr..addr + len` is the memory of a live export.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
    }
}
