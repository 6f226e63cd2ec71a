//! `shmq._shmq`: the compiled half of the `shmq` Python package.
//!
//! The Python modules in `python/shmq/` give multiprocessing's names and semantics; this crate
//! gives them shmq's channels, segments and shared state, with the GIL released wherever a call
//! may wait or copy much. One concern per file, as in the library:
//!
//! - `errors.rs`: shmq's errors as the Python exceptions of `shmq._errors`;
//! - `wait.rs`: blocking in 100 ms slices, with the GIL released, so that signals are seen;
//! - `buffers.rs`: exporting shared memory through the buffer protocol, and reading Python
//!   buffers;
//! - `admin.rs`: `gc()` and `list_segments()`;
//! - `segment.rs`: `SegmentBuf`, the memory of `SharedMemory`;
//! - `shared.rs`: `SharedBuf`, the storage of `Value`/`Array` and the robust lock of
//!   `Lock`/`RLock`, re-entrant through a thread-local table.
//! - `frame.rs`: the wire format of one Python object in one channel message;
//! - `channel.rs`: `Channel`, a channel as the queues use it (lazily opened sides, frames);
//! - `message.rs`: received messages as Python buffers (no copy) or private copies;
//! - `loan.rs`: `Loan`, arena room that Python fills in place and sends;
//! - `connection.rs`: `ReceivedMessage`, a message whose size `shmq.Connection` checks before
//!   it is copied (`recv_bytes(maxlength)`, `recv_bytes_into`).
//!
//! Everything here is private to the package: the public, documented names are the Python ones.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use pyo3::prelude::*;

mod admin;
mod buffers;
mod channel;
mod connection;
mod errors;
mod frame;
mod loan;
mod message;
mod segment;
mod shared;
mod wait;

/// The extension module, imported by `shmq/__init__.py` as `shmq._shmq`.
#[pymodule]
fn _shmq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LIBRARY_VERSION", env!("CARGO_PKG_VERSION"))?;
    admin::register(m)?;
    segment::register(m)?;
    shared::register(m)?;
    channel::register(m)?;
    connection::register(m)?;
    Ok(())
}
