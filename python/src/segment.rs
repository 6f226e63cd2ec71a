//! `SegmentBuf`: the memory of a `shmq.SharedMemory`, a [`shmq::Segment`] exported through the
//! buffer protocol.
//!
//! `SharedMemory.buf` is a `memoryview` of a `SegmentBuf`. Every view (and every numpy array
//! made from one) holds a reference to the `SegmentBuf`, which owns the segment handle: the
//! mapping, and this process's participation in the segment, last as long as the last view.
//! `SharedMemory.close()` only drops the Python object's own references, so it never
//! invalidates memory that code still sees.
//!
//! Fork: a `SegmentBuf` inherited through `fork` keeps working in the child (the mapping is
//! inherited), but its participant is the parent's, which the child does not count as. The core
//! re-registers inherited channel and shared-value handles on first use; a raw [`shmq::Segment`]
//! has no such hook, so [`SegmentBuf::reregister`] (called by `SharedMemory` at the child's
//! first use of its `buf`) opens the segment by name a second time and keeps that handle only
//! as the child's participant: the views still use the inherited mapping.

use std::ffi::c_int;
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use shmq::{ParticipantInfo, Segment};

use crate::buffers::fill_view;
use crate::errors::IntoPy;

/// Registers this file's classes in the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SegmentBuf>()?;
    Ok(())
}

/// A shmq segment of raw bytes, exported as writable memory (`memoryview(buf)`).
///
/// Private to the package: `shmq.SharedMemory` is the public name.
#[pyclass(frozen, weakref, module = "shmq._shmq")]
pub(crate) struct SegmentBuf {
    segment: Segment,
    /// In a child forked without exec: the child's own handle on the same segment, which makes
    /// the child a participant (see the module docs). `None` elsewhere.
    in_child: Mutex<Option<Segment>>,
}

impl SegmentBuf {
    fn wrap(segment: Segment) -> SegmentBuf {
        SegmentBuf {
            segment,
            in_child: Mutex::new(None),
        }
    }
}

/// Whether `theirs` (a participant table read through one mapping) holds one of this process's
/// participants listed in `ours` (read through another): then both mappings are of the same
/// segment object, since a fresh attach is written once, into one table.
fn shares_a_participant(ours: &[ParticipantInfo], theirs: &[ParticipantInfo]) -> bool {
    let pid = std::process::id();
    ours.iter().filter(|p| p.pid == pid).any(|p| {
        theirs
            .iter()
            .any(|q| q.slot == p.slot && q.pid == p.pid && q.attached_unix_ns == p.attached_unix_ns)
    })
}

#[pymethods]
impl SegmentBuf {
    /// Creates segment `name` with `size` zeroed bytes (`FileExistsError` if it exists).
    #[staticmethod]
    fn create(py: Python<'_>, name: &str, size: usize) -> PyResult<SegmentBuf> {
        let segment = py.detach(|| Segment::create(name, size)).py_err()?;
        Ok(SegmentBuf::wrap(segment))
    }

    /// Opens the existing raw segment `name` (`FileNotFoundError` if there is none).
    #[staticmethod]
    fn open(py: Python<'_>, name: &str) -> PyResult<SegmentBuf> {
        let segment = py.detach(|| Segment::open(name)).py_err()?;
        Ok(SegmentBuf::wrap(segment))
    }

    /// Removes segment `name` now, even while processes use it (they keep their mappings):
    /// `shmq::Segment::remove`. `FileNotFoundError` if there is no such segment.
    #[staticmethod]
    fn remove(py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| Segment::remove(name)).py_err()
    }

    /// The segment's name (without the `shmq.` prefix of its file).
    #[getter]
    fn name(&self) -> &str {
        self.segment.name()
    }

    /// Length in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.segment.len()
    }

    fn __len__(&self) -> usize {
        self.segment.len()
    }

    /// Exports the segment's bytes, writable. The view keeps this object, and so the mapping,
    /// alive.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = (slf.get().segment.as_ptr(), slf.get().segment.len());
        // SAFETY: `view` comes from CPython's buffer protocol; `ptr..ptr + len` is the segment's
        // data, which stays mapped at this address while the segment handle lives, and the view
        // holds a reference to `slf`, which owns that handle. Writes through the view are raw
        // shared memory, as in multiprocessing.shared_memory: other processes may write it too,
        // which is the Python program's protocol to manage (bytes have no invalid values).
        unsafe { fill_view(view, flags, slf.as_any(), ptr, len, false) }
    }

    /// In a child forked without exec, makes the child a participant of the segment (see the
    /// module docs). Returns whether it did: false when the segment has lost its name (removed,
    /// or destroyed by its last participant meanwhile) or the name now denotes another segment.
    fn reregister(&self, py: Python<'_>) -> bool {
        let name = self.segment.name().to_owned();
        let Ok(fresh) = py.detach(|| Segment::open(&name)) else {
            return false;
        };
        // The fresh handle attached a participant of this process: it shows in the inherited
        // mapping's table only if both map the same object.
        if !shares_a_participant(&fresh.participants(), &self.segment.participants()) {
            return false;
        }
        let mut in_child = self
            .in_child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A handle inherited from a grandparent's fork is dropped inertly here.
        *in_child = Some(fresh);
        true
    }

    /// Lets go of the participant [`reregister`](Self::reregister) made, if any: for the exit
    /// of a forked child, which leaves through `os._exit` (as multiprocessing's children do) and
    /// so never drops its objects. If the child was the segment's last user, this removes it.
    /// The inherited mapping, which the views use, stays.
    fn unregister(&self, py: Python<'_>) {
        let own = self
            .in_child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        py.detach(|| drop(own));
    }

    /// Whether the name still denotes this segment: false once it was removed (by `unlink()`
    /// in any process), or removed and created anew. An error other than "not found" (a
    /// permission problem, say) answers true, the answer that keeps the segment alive.
    fn name_is_ours(&self, py: Python<'_>) -> bool {
        let name = self.segment.name().to_owned();
        match py.detach(|| shmq::inspect(&name)) {
            Ok(info) => {
                let mut ours = self.segment.participants();
                if let Some(child) = self
                    .in_child
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .as_ref()
                {
                    ours.extend(child.participants());
                }
                shares_a_participant(&ours, &info.participants)
            }
            Err(shmq::Error::NotFound { .. }) => false,
            Err(_) => true,
        }
    }
}
