//! Error types of channel operations, shaped like crossbeam-channel's.
//!
//! As in crossbeam, a failed send gives back what the caller handed in: `T` is the [`Loan`] or
//! [`SliceLoan`] of [`Loan::send`] and [`SliceLoan::send`], and `()` for the copying sends (the
//! caller still has its slice). [`into_inner`](SendError::into_inner) returns it. Each type
//! has `is_*` helpers, `From` conversions like crossbeam's, and a `Failed` variant for the rare
//! case where the operating system refuses something the operation needs (an overflow segment
//! that /dev/shm has no room for, say).
//!
//! [`Loan`]: crate::Loan
//! [`SliceLoan`]: crate::SliceLoan
//! [`Loan::send`]: crate::Loan::send
//! [`SliceLoan::send`]: crate::SliceLoan::send

use std::fmt;

use crate::error::Error;

/// Which limit of the channel a send found reached, in [`TrySendError::Full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exhausted {
    /// The ring holds `capacity` messages.
    Ring,
    /// The arena has no free run of pages large enough for the payload.
    Arena,
    /// Every entry of the overflow table (payloads larger than the arena in flight at once) is
    /// in use.
    OverflowTable,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exhausted::Ring => "the ring is full",
            Exhausted::Arena => "the arena has no room for the payload",
            Exhausted::OverflowTable => "the overflow table is full",
        })
    }
}

/// Why [`Sender::send`](crate::Sender::send) (and the other blocking sends) failed.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<T = ()> {
    /// Every receiver is gone (dropped or dead). Holds what was to be sent.
    Disconnected(T),
    /// The operation could not be carried out (see the error). Holds what was to be sent.
    Failed(Error, T),
}

/// Why [`Sender::try_send`](crate::Sender::try_send) (and the other `try_` sends) failed.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrySendError<T = ()> {
    /// The channel has no room now: [`Exhausted`] says which of its limits was reached.
    Full(T, Exhausted),
    /// Every receiver is gone (dropped or dead).
    Disconnected(T),
    /// The operation could not be carried out (see the error).
    Failed(Error, T),
}

/// Why [`Sender::send_timeout`](crate::Sender::send_timeout) (and the other timed sends, and
/// [`Sender::join_timeout`](crate::Sender::join_timeout)) failed.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendTimeoutError<T = ()> {
    /// The deadline passed before the operation could complete.
    Timeout(T),
    /// Every receiver is gone (dropped or dead).
    Disconnected(T),
    /// The operation could not be carried out (see the error).
    Failed(Error, T),
}

/// Why [`Receiver::recv`](crate::Receiver::recv) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// Every sender is gone and the channel is drained.
    Disconnected,
    /// The operation could not be carried out (see the error).
    Failed(Error),
}

/// Why [`Receiver::try_recv`](crate::Receiver::try_recv) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is waiting.
    Empty,
    /// Every sender is gone and the channel is drained.
    Disconnected,
    /// The operation could not be carried out (see the error).
    Failed(Error),
}

/// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived before the deadline.
    Timeout,
    /// Every sender is gone and the channel is drained.
    Disconnected,
    /// The operation could not be carried out (see the error).
    Failed(Error),
}

/// Why [`Sender::task_done`](crate::Sender::task_done) (or `try_task_done`, on either handle)
/// failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskDoneError {
    /// Every task sent is done already: more `task_done` calls than messages ever sent, which
    /// Python's `JoinableQueue.task_done()` reports with `ValueError`. Nothing was counted.
    TooMany,
    /// The operation could not be carried out (see the error): for `try_task_done`,
    /// [`Error::LockTimeout`] when the allocator lock is held by a stopped process. Nothing
    /// was counted.
    Failed(Error),
}

/// Why [`Sender::try_join_tasks`](crate::Sender::try_join_tasks),
/// [`join_tasks_timeout`](crate::Sender::join_tasks_timeout) or
/// [`join_tasks_deadline`](crate::Sender::join_tasks_deadline) (on either handle) failed.
///
/// There is no `Disconnected`: any handle may call `task_done`, so no set of peers being gone
/// proves that the count can no longer reach zero.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinTasksTimeoutError {
    /// The deadline passed with tasks still unfinished.
    Timeout,
    /// The operation could not be carried out (see the error).
    Failed(Error),
}

impl TaskDoneError {
    /// Whether every task sent was done already.
    pub fn is_too_many(&self) -> bool {
        matches!(self, TaskDoneError::TooMany)
    }
}

impl JoinTasksTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, JoinTasksTimeoutError::Timeout)
    }
}

impl<T> SendError<T> {
    /// What the caller handed in (the unsent loan, for [`Loan::send`](crate::Loan::send)).
    pub fn into_inner(self) -> T {
        match self {
            SendError::Disconnected(t) | SendError::Failed(_, t) => t,
        }
    }
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendError::Disconnected(_))
    }
}

impl<T> TrySendError<T> {
    /// What the caller handed in.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(t, _)
            | TrySendError::Disconnected(t)
            | TrySendError::Failed(_, t) => t,
        }
    }
    /// Whether the channel had no room.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(..))
    }
    /// Which limit was reached, for [`Full`](TrySendError::Full).
    pub fn exhausted(&self) -> Option<Exhausted> {
        match self {
            TrySendError::Full(_, what) => Some(*what),
            _ => None,
        }
    }
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }
}

impl<T> SendTimeoutError<T> {
    /// What the caller handed in.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(t)
            | SendTimeoutError::Disconnected(t)
            | SendTimeoutError::Failed(_, t) => t,
        }
    }
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected(_))
    }
}

impl RecvError {
    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected)
    }
}

impl TryRecvError {
    /// Whether no message was waiting.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }
    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Disconnected)
    }
}

impl RecvTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Disconnected)
    }
}

// ----- conversions, as crossbeam-channel has them ----------------------------------------------

impl<T> From<SendError<T>> for TrySendError<T> {
    fn from(e: SendError<T>) -> Self {
        match e {
            SendError::Disconnected(t) => TrySendError::Disconnected(t),
            SendError::Failed(e, t) => TrySendError::Failed(e, t),
        }
    }
}

impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(e: SendError<T>) -> Self {
        match e {
            SendError::Disconnected(t) => SendTimeoutError::Disconnected(t),
            SendError::Failed(e, t) => SendTimeoutError::Failed(e, t),
        }
    }
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::Failed(e) => TryRecvError::Failed(e),
        }
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Failed(e) => RecvTimeoutError::Failed(e),
        }
    }
}

impl From<Error> for SendError {
    fn from(e: Error) -> Self {
        SendError::Failed(e, ())
    }
}

impl From<Error> for TrySendError {
    fn from(e: Error) -> Self {
        TrySendError::Failed(e, ())
    }
}

impl From<Error> for SendTimeoutError {
    fn from(e: Error) -> Self {
        SendTimeoutError::Failed(e, ())
    }
}

impl From<Error> for RecvError {
    fn from(e: Error) -> Self {
        RecvError::Failed(e)
    }
}

impl From<Error> for TryRecvError {
    fn from(e: Error) -> Self {
        TryRecvError::Failed(e)
    }
}

impl From<Error> for TaskDoneError {
    fn from(e: Error) -> Self {
        TaskDoneError::Failed(e)
    }
}

impl From<Error> for JoinTasksTimeoutError {
    fn from(e: Error) -> Self {
        JoinTasksTimeoutError::Failed(e)
    }
}

impl From<Error> for RecvTimeoutError {
    fn from(e: Error) -> Self {
        RecvTimeoutError::Failed(e)
    }
}

// ----- Debug, Display, Error --------------------------------------------------------------------

// Debug does not require `T: Debug`, as crossbeam's: the payload is shown as `..`.

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendError::Failed(e, _) => f.debug_tuple("Failed").field(e).field(&"..").finish(),
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_, what) => write!(f, "Full(.., {what:?})"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            TrySendError::Failed(e, _) => f.debug_tuple("Failed").field(e).field(&"..").finish(),
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendTimeoutError::Failed(e, _) => {
                f.debug_tuple("Failed").field(e).field(&"..").finish()
            }
        }
    }
}

const DISCONNECTED_SEND: &str = "sending on a disconnected channel";

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str(DISCONNECTED_SEND),
            SendError::Failed(e, _) => write!(f, "channel operation failed: {e}"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_, what) => write!(f, "sending on a full channel ({what})"),
            TrySendError::Disconnected(_) => f.write_str(DISCONNECTED_SEND),
            TrySendError::Failed(e, _) => write!(f, "channel operation failed: {e}"),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => {
                f.write_str("timed out before the operation could complete")
            }
            SendTimeoutError::Disconnected(_) => f.write_str(DISCONNECTED_SEND),
            SendTimeoutError::Failed(e, _) => write!(f, "channel operation failed: {e}"),
        }
    }
}

impl<T> std::error::Error for SendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Failed(e, _) => Some(e),
            _ => None,
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrySendError::Failed(e, _) => Some(e),
            _ => None,
        }
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendTimeoutError::Failed(e, _) => Some(e),
            _ => None,
        }
    }
}

macro_rules! recv_error_traits {
    ($name:ident { $( $variant:ident => $text:literal, )* }) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( $name::$variant => f.write_str($text), )*
                    $name::Failed(e) => write!(f, "channel operation failed: {e}"),
                }
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $name::Failed(e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}

recv_error_traits!(RecvError {
    Disconnected => "receiving on an empty and disconnected channel",
});

recv_error_traits!(TryRecvError {
    Empty => "receiving on an empty channel",
    Disconnected => "receiving on an empty and disconnected channel",
});

recv_error_traits!(RecvTimeoutError {
    Timeout => "timed out waiting on an empty channel",
    Disconnected => "receiving on an empty and disconnected channel",
});

// Python's words, so that bindings can pass the message on as `ValueError`'s.
recv_error_traits!(TaskDoneError {
    TooMany => "task_done() called too many times",
});

recv_error_traits!(JoinTasksTimeoutError {
    Timeout => "timed out waiting for unfinished tasks",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_name_the_variant_and_the_limit() {
        let full: TrySendError<Vec<u8>> = TrySendError::Full(vec![1], Exhausted::Arena);
        assert_eq!(format!("{full:?}"), "Full(.., Arena)");
        assert_eq!(
            full.to_string(),
            "sending on a full channel (the arena has no room for the payload)"
        );
        assert_eq!(full.exhausted(), Some(Exhausted::Arena));
        assert_eq!(full.into_inner(), vec![1]);
    }

    #[test]
    fn conversions_keep_the_payload_and_the_cause() {
        let e: TrySendError<u8> = SendError::Disconnected(7).into();
        assert_eq!(e, TrySendError::Disconnected(7));
        let e: SendTimeoutError<u8> = SendError::Disconnected(8).into();
        assert_eq!(e.into_inner(), 8);
        let e: RecvTimeoutError = RecvError::Disconnected.into();
        assert!(e.is_disconnected());
        let e: TryRecvError = RecvError::Disconnected.into();
        assert_eq!(e.clone(), TryRecvError::Disconnected);
    }

    #[test]
    fn task_errors_say_what_python_says_and_keep_the_cause() {
        assert_eq!(
            TaskDoneError::TooMany.to_string(),
            "task_done() called too many times"
        );
        assert!(TaskDoneError::TooMany.is_too_many());
        let cause = Error::NotFound { name: "x".into() };
        let failed: TaskDoneError = cause.clone().into();
        assert!(!failed.is_too_many());
        assert_eq!(
            std::error::Error::source(&failed).map(|e| e.to_string()),
            Some(cause.to_string())
        );
        assert!(JoinTasksTimeoutError::Timeout.is_timeout());
        let failed: JoinTasksTimeoutError = cause.into();
        assert!(!failed.is_timeout());
        assert!(failed.to_string().starts_with("channel operation failed: "));
    }
}
