//! shmq's errors as Python exceptions.
//!
//! The exception classes live in Python (`shmq/_errors.py`), so that they can derive from both
//! `shmq.ShmqError` and the matching built-in (`FileNotFoundError`, `TimeoutError`...): code
//! written for multiprocessing catches what it caught before. This file only picks the class.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// The module that defines the exception classes.
const ERRORS_MODULE: &str = "shmq._errors";

/// The name in `shmq._errors` of the class for `err`.
fn class_of(err: &shmq::Error) -> &'static str {
    use shmq::Error as E;
    match err {
        E::NotFound { .. } => "NotFoundError",
        E::AlreadyExists { .. } => "AlreadyExistsError",
        E::InvalidName { .. } => "InvalidNameError",
        E::OutOfSpace { .. } => "OutOfSpaceError",
        E::Incompatible { .. } => "IncompatibleError",
        E::NotReady { .. } => "NotReadyError",
        E::PermissionDenied { .. } => "PermissionDeniedError",
        E::InUse { .. } => "InUseError",
        E::TooManyParticipants { .. } => "TooManyParticipantsError",
        E::Corrupted { .. } => "CorruptedError",
        E::OwnerDied { .. } => "OwnerDiedError",
        E::InvalidArgument { .. } => "InvalidArgumentError",
        E::LockTimeout { .. } => "LockTimeoutError",
        E::Io { .. } => "ShmqOSError",
        _ => "ShmqError",
    }
}

/// `shmq._errors._from_core`, which builds an exception from its class name, message, segment
/// and errno (Python knows each class's errno; Rust passes only an I/O error's own).
fn factory(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    FACTORY.import(py, ERRORS_MODULE, "_from_core")
}

/// Converts a shmq error into the Python exception of its class (see `shmq/_errors.py`): its
/// message is the Rust error's, its `segment` attribute the segment concerned.
pub(crate) fn to_py(err: shmq::Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let errno = match &err {
            shmq::Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        };
        let built = factory(py).and_then(|make| {
            let instance =
                make.call1((class_of(&err), message.clone(), segment_name(&err), errno))?;
            Ok(PyErr::from_value(instance))
        });
        // A failed import or call is worth reporting, but not at the cost of the original message.
        built.unwrap_or_else(|failure| PyOSError::new_err(format!("{message} ({failure})")))
    })
}

/// The segment an error is about, if it names one.
fn segment_name(err: &shmq::Error) -> Option<String> {
    use shmq::Error as E;
    match err {
        E::NotFound { name }
        | E::AlreadyExists { name }
        | E::InvalidName { name, .. }
        | E::OutOfSpace { name, .. }
        | E::Incompatible { name, .. }
        | E::NotReady { name, .. }
        | E::PermissionDenied { name, .. }
        | E::InUse { name, .. }
        | E::TooManyParticipants { name, .. }
        | E::Corrupted { name, .. }
        | E::OwnerDied { name }
        | E::InvalidArgument { name, .. }
        | E::LockTimeout { name, .. }
        | E::Io { name, .. } => Some(name.clone()),
        _ => None,
    }
}

/// `Result<T, shmq::Error>` to `PyResult<T>`, for `?` in the bindings.
pub(crate) trait IntoPy<T> {
    /// Converts the error with [`to_py`].
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, shmq::Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
