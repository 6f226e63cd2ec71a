//! `gc()` and `list_segments()`: the Rust functions, with their results as plain dicts that
//! `shmq/_admin.py` turns into dataclasses.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::IntoPy;

/// Registers this file's functions in the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(list_segments, m)?)?;
    m.add_function(wrap_pyfunction!(remove_unused, m)?)?;
    Ok(())
}

/// `shmq::gc()`: one dict per `shmq.*` file looked at, with `name`, `removed`, `reason` (a
/// sentence) and `code` (a short stable identifier of the reason).
#[pyfunction]
fn gc(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let entries = py.detach(shmq::gc).py_err()?;
    let list = PyList::empty(py);
    for entry in entries {
        let dict = PyDict::new(py);
        dict.set_item("name", &entry.name)?;
        dict.set_item("removed", entry.removed)?;
        dict.set_item("reason", entry.reason.to_string())?;
        dict.set_item("code", entry.reason.code())?;
        list.append(dict)?;
    }
    Ok(list)
}

/// `shmq::list()`: one dict per `shmq.*` file, with the fields of `SegmentInfo`; `channel` is
/// a dict of the channel's figures or `None`, `participants` a list of dicts.
#[pyfunction]
fn list_segments(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let infos = py.detach(shmq::list).py_err()?;
    let list = PyList::empty(py);
    for info in infos {
        list.append(segment_dict(py, &info)?)?;
    }
    Ok(list)
}

fn segment_dict<'py>(py: Python<'py>, info: &shmq::SegmentInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &info.name)?;
    let state = match &info.state {
        shmq::SegmentState::Ready => "ready",
        shmq::SegmentState::Removed { .. } => "removed",
        shmq::SegmentState::BeingCreated => "being-created",
        shmq::SegmentState::Unfinished => "unfinished",
        shmq::SegmentState::Refused => "refused",
        shmq::SegmentState::Unreadable => "unreadable",
        _ => "unknown",
    };
    dict.set_item("state", state)?;
    dict.set_item("kind", info.kind.map(shmq::Kind::as_str))?;
    dict.set_item("file_bytes", info.file_bytes)?;
    dict.set_item("creator_pid", info.creator_pid)?;
    dict.set_item("created_unix_ns", info.created_unix_ns)?;
    dict.set_item("participant_capacity", info.participant_capacity)?;
    let participants = PyList::empty(py);
    for p in &info.participants {
        let entry = PyDict::new(py);
        entry.set_item("slot", p.slot)?;
        entry.set_item("role", p.role.map(shmq::Role::as_str))?;
        entry.set_item("pid", p.pid)?;
        entry.set_item("alive", p.alive)?;
        entry.set_item("attached_unix_ns", p.attached_unix_ns)?;
        participants.append(entry)?;
    }
    dict.set_item("participants", participants)?;
    dict.set_item("membership_holder", info.membership_holder)?;
    let channel = match &info.channel {
        Some(stats) => Some(stats_dict(py, stats)?),
        None => None,
    };
    dict.set_item("channel", channel)?;
    dict.set_item("problem", &info.problem)?;
    Ok(dict)
}

/// `shmq::remove(name, false)` for the cleanup process (`shmq/_tracker.py`): removes segment
/// `name` if no live process uses it. Returns `"removed"`, `"in-use"` (live participants, or
/// being created) or `"gone"` (no such segment); other errors raise.
#[pyfunction]
fn remove_unused(py: Python<'_>, name: &str) -> PyResult<&'static str> {
    match py.detach(|| shmq::remove(name, false)) {
        Ok(_) => Ok("removed"),
        Err(shmq::Error::NotFound { .. }) => Ok("gone"),
        Err(shmq::Error::InUse { .. }) => Ok("in-use"),
        Err(other) => Err(crate::errors::to_py(other)),
    }
}

/// A channel's figures as a dict (for `list_segments()` and `Channel.stats()`).
pub(crate) fn stats_dict<'py>(
    py: Python<'py>,
    stats: &shmq::ChannelStats,
) -> PyResult<Bound<'py, PyDict>> {
    let c = PyDict::new(py);
    c.set_item("capacity", stats.capacity)?;
    c.set_item("queued", stats.queued)?;
    c.set_item("messages_in_flight", stats.messages_in_flight)?;
    c.set_item("bytes_in_flight", stats.bytes_in_flight)?;
    c.set_item("arena_bytes", stats.arena_bytes)?;
    c.set_item("arena_free_bytes", stats.arena_free_bytes)?;
    c.set_item("overflow_payloads", stats.overflow_payloads)?;
    c.set_item("sent_total", stats.sent_total)?;
    c.set_item("done_total", stats.done_total)?;
    c.set_item("corrupt_skipped", stats.corrupt_skipped)?;
    c.set_item("tasks_done_total", stats.tasks_done_total)?;
    c.set_item("unfinished_tasks", stats.unfinished_tasks)?;
    Ok(c)
}
