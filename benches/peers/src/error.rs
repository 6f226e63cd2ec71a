//! One error type for the whole benchmark: a failure ends the run with its message.

use std::fmt::Debug;

/// Any failure, as a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A result that fails with a message.
pub type BoxResult<T> = Result<T, BoxError>;

/// Turns a library's error into a message saying what was being done. iceoryx2's errors and
/// shmq's carry the loan or value back in some variants, so the message comes from `Debug`,
/// which all of them implement.
pub trait Context<T> {
    /// The result, its error (if any) prefixed with `what`.
    fn context(self, what: &str) -> BoxResult<T>;
}

impl<T, E: Debug> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> BoxResult<T> {
        self.map_err(|e| format!("{what}: {e:?}").into())
    }
}
