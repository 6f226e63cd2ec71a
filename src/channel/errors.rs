//! Error types of channel operations, shaped like crossbeam-channel's.
//!
//! Each type has helpers (`is_full`, `is_empty`, `is_disconnected`, `is_timeout`) and a
//! `Failed` variant for the rare case where the operating system refuses something the
//! operation needs (an overflow segment that /dev/shm has no room for, say).

use std::fmt;

use crate::Error;

macro_rules! channel_error {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// The operation could not be carried out (see the inner error).
            Failed(Error),
        }

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
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }

        impl From<Error> for $name {
            fn from(e: Error) -> Self {
                $name::Failed(e)
            }
        }
    };
}

channel_error! {
    /// Why [`Sender::send`](crate::Sender::send) failed.
    SendError {
        /// Every receiver is gone (dropped or dead).
        Disconnected => "sending on a disconnected channel",
    }
}

channel_error! {
    /// Why [`Sender::try_send`](crate::Sender::try_send) failed.
    TrySendError {
        /// The ring holds `capacity` messages, or the arena has no room for the payload.
        Full => "sending on a full channel",
        /// Every receiver is gone (dropped or dead).
        Disconnected => "sending on a disconnected channel",
    }
}

channel_error! {
    /// Why [`Sender::send_timeout`](crate::Sender::send_timeout) failed.
    SendTimeoutError {
        /// The channel stayed full until the deadline.
        Timeout => "timed out sending on a full channel",
        /// Every receiver is gone (dropped or dead).
        Disconnected => "sending on a disconnected channel",
    }
}

channel_error! {
    /// Why [`Receiver::recv`](crate::Receiver::recv) failed.
    RecvError {
        /// Every sender is gone and the channel is drained.
        Disconnected => "receiving on an empty and disconnected channel",
    }
}

channel_error! {
    /// Why [`Receiver::try_recv`](crate::Receiver::try_recv) failed.
    TryRecvError {
        /// No message is waiting.
        Empty => "receiving on an empty channel",
        /// Every sender is gone and the channel is drained.
        Disconnected => "receiving on an empty and disconnected channel",
    }
}

channel_error! {
    /// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) failed.
    RecvTimeoutError {
        /// No message arrived before the deadline.
        Timeout => "timed out waiting on an empty channel",
        /// Every sender is gone and the channel is drained.
        Disconnected => "receiving on an empty and disconnected channel",
    }
}

impl SendError {
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendError::Disconnected)
    }
}

impl TrySendError {
    /// Whether the channel was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full)
    }
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected)
    }
}

impl SendTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout)
    }
    /// Whether every receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected)
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

/// How a blocking wait ended, before it is turned into the caller's error type.
#[derive(Debug)]
pub(crate) enum WaitError {
    Timeout,
    Disconnected,
    Failed(Error),
}

impl From<WaitError> for SendError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout | WaitError::Disconnected => SendError::Disconnected,
            WaitError::Failed(e) => SendError::Failed(e),
        }
    }
}

impl From<WaitError> for TrySendError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => TrySendError::Full,
            WaitError::Disconnected => TrySendError::Disconnected,
            WaitError::Failed(e) => TrySendError::Failed(e),
        }
    }
}

impl From<WaitError> for SendTimeoutError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => SendTimeoutError::Timeout,
            WaitError::Disconnected => SendTimeoutError::Disconnected,
            WaitError::Failed(e) => SendTimeoutError::Failed(e),
        }
    }
}

impl From<WaitError> for RecvError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout | WaitError::Disconnected => RecvError::Disconnected,
            WaitError::Failed(e) => RecvError::Failed(e),
        }
    }
}

impl From<WaitError> for TryRecvError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => TryRecvError::Empty,
            WaitError::Disconnected => TryRecvError::Disconnected,
            WaitError::Failed(e) => TryRecvError::Failed(e),
        }
    }
}

impl From<WaitError> for RecvTimeoutError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => RecvTimeoutError::Timeout,
            WaitError::Disconnected => RecvTimeoutError::Disconnected,
            WaitError::Failed(e) => RecvTimeoutError::Failed(e),
        }
    }
}
