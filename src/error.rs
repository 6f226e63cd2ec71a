//! The error type for setting up and using shmq segments.

use std::io;
use std::time::Duration;

/// A specialised `Result` for shmq's setup calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when creating, opening or using a shmq segment.
///
/// Every variant names the segment it is about, so a message read in a log says which one failed
/// and what was expected. Match on the variant to react; `Display` is for people.
///
/// `Clone` and `PartialEq` treat the OS error inside [`Error::Io`] by its
/// [`kind`](io::Error::kind) and errno: a clone is a new `io::Error` with the same code (or kind
/// and message), and two `Io` errors are equal when segment, operation, kind and errno agree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No segment by that name exists (or it is being torn down).
    #[error("no shmq segment named {name:?} (looked for /dev/shm/shmq.{name})")]
    NotFound {
        /// The segment name as given.
        name: String,
    },

    /// `create` found a segment by that name already.
    #[error("a shmq segment named {name:?} already exists (remove it with shmq::Segment::remove or `shmq rm`)")]
    AlreadyExists {
        /// The segment name as given.
        name: String,
    },

    /// The name is empty, too long, or holds a character outside `[A-Za-z0-9._-]`.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it, naming the offending character where there is one.
        reason: String,
    },

    /// /dev/shm has no room for the requested bytes, or no inode left for a new file, or the
    /// kernel cannot provide the memory now (`ENOSPC`, `EFBIG` or `ENOMEM` while creating).
    /// Reported at creation, never as SIGBUS later.
    ///
    /// A size that no segment can have at all (beyond `i64::MAX` bytes, or a multiplication
    /// that overflows) is [`Error::InvalidArgument`] instead: retrying cannot help.
    #[error("not enough space in /dev/shm (or memory) for segment {name:?}: {requested} bytes requested")]
    OutOfSpace {
        /// The segment name.
        name: String,
        /// Bytes the segment needed in all.
        requested: u64,
    },

    /// The object exists but is not what the caller expected: another program's file, another
    /// layout version, another kind of segment, another element type, or a file whose size
    /// disagrees with its header.
    #[error("segment {name:?} is incompatible: {what} is {found}, expected {expected}")]
    Incompatible {
        /// The segment name.
        name: String,
        /// Which property differs (`"magic"`, `"layout version"`, `"kind"`, `"file size"`, ...).
        what: &'static str,
        /// What this program expected.
        expected: String,
        /// What the segment holds.
        found: String,
    },

    /// The segment exists but its creator did not finish initialising it in time; it may have
    /// died while creating it (`shmq::gc` removes such leftovers).
    #[error("segment {name:?} was not initialised within {waited:?}; its creator may have died")]
    NotReady {
        /// The segment name.
        name: String,
        /// How long `open` waited.
        waited: Duration,
    },

    /// The segment belongs to another user, or the kernel refused access.
    #[error("permission denied for segment {name:?}: {reason}")]
    PermissionDenied {
        /// The segment name.
        name: String,
        /// Why.
        reason: String,
    },

    /// A removal was refused because the segment is in use: it is being created (its creator
    /// holds the creator lock, or it is unfinished and younger than two seconds), or live
    /// participants use it and the removal was not forced.
    #[error("segment {name:?} was not removed: {reason}")]
    InUse {
        /// The segment name.
        name: String,
        /// Who uses it: "it is being created ...", "2 live participants use it ...".
        reason: String,
    },

    /// Every participant slot of the segment is held by a live process.
    #[error(
        "segment {name:?} has no free participant slot: all {capacity} are held by live handles"
    )]
    TooManyParticipants {
        /// The segment name.
        name: String,
        /// The segment's participant capacity.
        capacity: u32,
    },

    /// A value read from the segment is out of range: the segment was corrupted, most likely by a
    /// process that died or misbehaved while writing it.
    #[error("segment {name:?} is corrupted: {what}")]
    Corrupted {
        /// The segment name.
        name: String,
        /// What was found wrong.
        what: String,
    },

    /// A holder of the lock of a [`SharedValue`](crate::SharedValue) or
    /// [`SharedArray`](crate::SharedArray) died while holding it (or a later holder released it
    /// without marking the data consistent), so the data may be half-updated.
    ///
    /// This is what a [`LockError::OwnerDied`](crate::LockError::OwnerDied) becomes when it is
    /// converted (with `?`) into an `Error`, and what `load`, `store` and `to_vec` report. The
    /// segment stays poisoned until a caller takes the lock with `lock`, repairs the data through
    /// the guard inside the `LockError` and calls its `mark_consistent`.
    #[error("the holder of the lock of segment {name:?} died while holding it, so the data may be half-updated (lock it, repair the data through the guard in LockError::OwnerDied and call mark_consistent)")]
    OwnerDied {
        /// The segment name.
        name: String,
    },

    /// A caller-supplied argument is out of range (a zero capacity, a length that overflows).
    #[error("invalid argument for segment {name:?}: {what}")]
    InvalidArgument {
        /// The segment name.
        name: String,
        /// What is wrong.
        what: String,
    },

    /// A lock of the segment was not free by the caller's deadline (plus a grace of a few
    /// milliseconds): another process holds it and is not letting go, most likely because it
    /// is stopped (SIGSTOP, Ctrl-Z, a debugger, a frozen cgroup). Nothing was changed; the call
    /// may be retried. A blocking call without a deadline waits instead.
    #[error("segment {name:?}: the {lock} lock was not free within {waited:?}{}", holder_text(*.holder_pid))]
    LockTimeout {
        /// The segment name.
        name: String,
        /// Which lock: `"producer"`, `"consumer"`, `"allocator"` or `"membership"`.
        lock: &'static str,
        /// The process holding it when the wait gave up, if known.
        holder_pid: Option<u32>,
        /// How long the caller waited.
        waited: Duration,
    },

    /// A typed message could not be encoded or decoded (feature `serde`: `Sender::send_value`
    /// and `Message::value`, whose docs say more): the value could not be encoded, or the
    /// bytes of a received message are not an encoding of the type asked for (another type, a
    /// truncated or garbled payload, trailing bytes). Nothing was sent; a message that failed to
    /// decode is still held, and may be read as bytes or as another type.
    #[error("segment {name:?}: cannot {op} {type_name}{}: {what}", len_text(*.len))]
    Encoding {
        /// The channel name.
        name: String,
        /// The Rust type, as [`std::any::type_name`] spells it.
        type_name: &'static str,
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The message's length in bytes: always for a decode, and for an encode once its size
        /// is known.
        len: Option<usize>,
        /// What failed, in the encoder's words (postcard's), with shmq's where it found the
        /// fault itself (trailing bytes).
        what: String,
    },

    /// An operating-system call failed.
    #[error("{op} failed for segment {name:?}: {source}")]
    Io {
        /// The segment name.
        name: String,
        /// The operation that failed (`"shm_open"`, `"mmap"`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::NotFound { name } => Error::NotFound { name: name.clone() },
            Error::AlreadyExists { name } => Error::AlreadyExists { name: name.clone() },
            Error::InvalidName { name, reason } => Error::InvalidName {
                name: name.clone(),
                reason: reason.clone(),
            },
            Error::OutOfSpace { name, requested } => Error::OutOfSpace {
                name: name.clone(),
                requested: *requested,
            },
            Error::Incompatible {
                name,
                what,
                expected,
                found,
            } => Error::Incompatible {
                name: name.clone(),
                what,
                expected: expected.clone(),
                found: found.clone(),
            },
            Error::NotReady { name, waited } => Error::NotReady {
                name: name.clone(),
                waited: *waited,
            },
            Error::PermissionDenied { name, reason } => Error::PermissionDenied {
                name: name.clone(),
                reason: reason.clone(),
            },
            Error::InUse { name, reason } => Error::InUse {
                name: name.clone(),
                reason: reason.clone(),
            },
            Error::TooManyParticipants { name, capacity } => Error::TooManyParticipants {
                name: name.clone(),
                capacity: *capacity,
            },
            Error::Corrupted { name, what } => Error::Corrupted {
                name: name.clone(),
                what: what.clone(),
            },
            Error::OwnerDied { name } => Error::OwnerDied { name: name.clone() },
            Error::InvalidArgument { name, what } => Error::InvalidArgument {
                name: name.clone(),
                what: what.clone(),
            },
            Error::LockTimeout {
                name,
                lock,
                holder_pid,
                waited,
            } => Error::LockTimeout {
                name: name.clone(),
                lock,
                holder_pid: *holder_pid,
                waited: *waited,
            },
            Error::Encoding {
                name,
                type_name,
                op,
                len,
                what,
            } => Error::Encoding {
                name: name.clone(),
                type_name,
                op,
                len: *len,
                what: what.clone(),
            },
            Error::Io { name, op, source } => Error::Io {
                name: name.clone(),
                op,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
        }
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Error::Io {
                    name: a,
                    op: op_a,
                    source: src_a,
                },
                Error::Io {
                    name: b,
                    op: op_b,
                    source: src_b,
                },
            ) => {
                a == b
                    && op_a == op_b
                    && src_a.kind() == src_b.kind()
                    && src_a.raw_os_error() == src_b.raw_os_error()
            }
            (Error::Io { .. }, _) | (_, Error::Io { .. }) => false,
            // Every other variant holds plain data, which its Display shows in full.
            _ => {
                std::mem::discriminant(self) == std::mem::discriminant(other)
                    && self.to_string() == other.to_string()
            }
        }
    }
}

impl Eq for Error {}

fn holder_text(holder_pid: Option<u32>) -> String {
    match holder_pid {
        Some(pid) => format!(" (held by process {pid}, which may be stopped)"),
        None => String::new(),
    }
}

fn len_text(len: Option<usize>) -> String {
    match len {
        Some(len) => format!(" (a {len}-byte message)"),
        None => String::new(),
    }
}

impl Error {
    /// Maps an OS error from `op` on segment `name` to the most specific variant.
    pub(crate) fn from_io(name: &str, op: &'static str, source: io::Error) -> Error {
        let name = name.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { name },
            io::ErrorKind::AlreadyExists => Error::AlreadyExists { name },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                name,
                reason: format!("{op}: {source}"),
            },
            _ => Error::Io { name, op, source },
        }
    }

    /// Maps an OS error from `op` while creating segment `name` of `requested` bytes in all.
    ///
    /// The kernel's ways of saying "not now" become [`Error::OutOfSpace`]: `ENOSPC` (no
    /// blocks, or no inode: `shm_open(O_CREAT)` reports a /dev/shm out of inodes this way),
    /// `EFBIG` and `ENOMEM`. Everything else is mapped as by [`Error::from_io`].
    pub(crate) fn from_io_creating(
        name: &str,
        op: &'static str,
        source: io::Error,
        requested: u64,
    ) -> Error {
        match source.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::FileTooLarge
            | io::ErrorKind::OutOfMemory => Error::OutOfSpace {
                name: name.to_owned(),
                requested,
            },
            _ => Error::from_io(name, op, source),
        }
    }

    pub(crate) fn corrupted(name: &str, what: impl Into<String>) -> Error {
        Error::Corrupted {
            name: name.to_owned(),
            what: what.into(),
        }
    }

    pub(crate) fn incompatible(
        name: &str,
        what: &'static str,
        expected: impl ToString,
        found: impl ToString,
    ) -> Error {
        Error::Incompatible {
            name: name.to_owned(),
            what,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    // A /dev/shm out of inodes fails shm_open(O_CREAT) with ENOSPC before any byte is asked
    // for: that is OutOfSpace too, not an Io error (issue 11).
    #[test]
    fn no_room_while_creating_is_out_of_space() {
        for (op, code) in [
            ("shm_open", libc::ENOSPC),
            ("fallocate", libc::ENOSPC),
            ("fallocate", libc::EFBIG),
            ("fallocate", libc::ENOMEM),
            ("mmap", libc::ENOMEM),
        ] {
            let err = Error::from_io_creating("seg", op, os(code), 8192);
            assert_eq!(
                err,
                Error::OutOfSpace {
                    name: "seg".into(),
                    requested: 8192
                },
                "{op}: {}",
                os(code)
            );
        }
        // A kind alone (no errno) is mapped the same way.
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(matches!(
            Error::from_io_creating("seg", "shm_open", full, 1),
            Error::OutOfSpace { requested: 1, .. }
        ));
    }

    #[test]
    fn other_errors_while_creating_keep_their_meaning() {
        let err = Error::from_io_creating("seg", "shm_open", os(libc::EEXIST), 1);
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        let err = Error::from_io_creating("seg", "shm_open", os(libc::EACCES), 1);
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
        let err = Error::from_io_creating("seg", "fallocate", os(libc::EIO), 1);
        assert!(
            matches!(&err, Error::Io { op: "fallocate", source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{err:?}"
        );
    }
}
