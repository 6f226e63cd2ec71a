//! The object behind a name in /dev/shm: opening it, checked before anything reads or maps it,
//! and the tombstone name under which a segment removed while in use lives on.
//!
//! Every open of a shmq object goes through [`open_object`]: the name is never followed if it
//! is a symbolic link, and the object must be a regular file owned by this process's effective
//! uid. Another user's file (even when running as root) or a link planted in /dev/shm is
//! refused with the reason, never mapped, attached to or removed.

use std::io;
use std::os::fd::OwnedFd;

use super::validate_name;
use crate::error::{Error, Result};
use crate::sys;

/// Why an object in /dev/shm was not opened as one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The name is a symbolic link; it is never followed.
    Symlink,
    /// The object is not a regular file.
    NotRegular(sys::FileKind),
    /// Another user owns the object.
    Owner {
        /// The owner's uid.
        uid: u32,
    },
}

impl Refusal {
    /// What was found, for messages: "a symbolic link", "a FIFO", "owned by uid 65534".
    pub(crate) fn found(&self) -> String {
        match self {
            Refusal::Symlink => sys::FileKind::Symlink.describe().to_owned(),
            Refusal::NotRegular(kind) => kind.describe().to_owned(),
            Refusal::Owner { uid } => format!("owned by uid {uid}"),
        }
    }

    /// The refusal as the error an open of segment `name` (object `os`) reports.
    pub(crate) fn to_error(self, name: &str, os: &str) -> Error {
        let path = format!("{}/{os}", sys::SHM_DIR);
        let reason = match self {
            Refusal::Symlink => format!("{path} is a symbolic link, which shmq never follows"),
            Refusal::NotRegular(kind) => {
                format!("{path} is {}, not a regular file", kind.describe())
            }
            Refusal::Owner { uid } => format!(
                "{path} is owned by uid {uid}; this process runs as uid {}",
                sys::effective_uid()
            ),
        };
        Error::PermissionDenied {
            name: name.to_owned(),
            reason,
        }
    }
}

/// How [`open_object`] failed.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// The object is not ours to open (see [`Refusal`]).
    Refused(Refusal),
    /// The system call failed (`NotFound` when the name does not exist).
    Io(io::Error),
}

impl OpenFailure {
    /// The failure as the error an open of segment `name` (object `os`) reports.
    pub(crate) fn into_error(self, name: &str, os: &str) -> Error {
        match self {
            OpenFailure::Refused(refusal) => refusal.to_error(name, os),
            OpenFailure::Io(e) => Error::from_io(name, "shm_open", e),
        }
    }
}

/// Opens the object `os` (a name in /dev/shm) without following a symbolic link, and checks
/// with `fstat` that it is a regular file owned by this process's effective uid.
pub(crate) fn open_object(os: &str) -> std::result::Result<(OwnedFd, sys::FileInfo), OpenFailure> {
    let fd = sys::shm_open_existing(os).map_err(|e| {
        if sys::is_symlink_refusal(&e) {
            OpenFailure::Refused(Refusal::Symlink)
        } else {
            OpenFailure::Io(e)
        }
    })?;
    let file = sys::file_info(sys::borrow(&fd)).map_err(OpenFailure::Io)?;
    if !file.is_regular() {
        return Err(OpenFailure::Refused(Refusal::NotRegular(file.kind)));
    }
    if file.uid != sys::effective_uid() {
        return Err(OpenFailure::Refused(Refusal::Owner { uid: file.uid }));
    }
    Ok((fd, file))
}

/// [`open_object`] for segment `name`, failures as [`Error`]s (a refusal is
/// [`Error::PermissionDenied`] saying what was found).
pub(crate) fn open_checked(name: &str, os: &str) -> Result<(OwnedFd, sys::FileInfo)> {
    open_object(os).map_err(|failure| failure.into_error(name, os))
}

/// Parses lower-case hexadecimal exactly as shmq writes it in names (`{:x}`): no sign, no
/// leading zero, no upper case, so that every number has one name.
pub(crate) fn parse_hex(text: &str) -> Option<u64> {
    let value = u64::from_str_radix(text, 16).ok()?;
    (format!("{value:x}") == text).then_some(value)
}

/// The end of a tombstone's name.
const TOMBSTONE_SUFFIX: &str = ".removed";

/// The name of a tombstone: `<segment>~<incarnation>.removed`, incarnation in hex.
///
/// A segment removed while live participants use it (a forced `rm`, [`Segment::remove`]) is
/// first given this second name (a hard link), then loses its own. New opens of the segment's
/// name fail or find a new segment, while the old one stays reachable: `gc` sees that its
/// overflow payloads still belong to a live channel, collects it once its participants are all
/// dead, and the last detach unlinks it. The incarnation (the segment's creation time) tells
/// apart two removed segments of one name; `~` cannot occur in a segment name, so a tombstone
/// never collides with one, and `removed` is not hexadecimal, so it is never taken for an
/// overflow payload `<channel>~<incarnation>.<id>`.
///
/// [`Segment::remove`]: crate::Segment::remove
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TombstoneName<'a> {
    /// The name the segment had.
    pub(crate) segment: &'a str,
    /// The segment's `created_unix_ns`.
    pub(crate) incarnation: u64,
}

impl<'a> TombstoneName<'a> {
    /// Parses a name listed in /dev/shm (without the `shmq.` prefix); `None` if it is not a
    /// tombstone's.
    pub(crate) fn parse(name: &'a str) -> Option<TombstoneName<'a>> {
        let (segment, rest) = name.split_once('~')?;
        let incarnation = parse_hex(rest.strip_suffix(TOMBSTONE_SUFFIX)?)?;
        validate_name(segment).ok()?;
        Some(TombstoneName {
            segment,
            incarnation,
        })
    }

    /// The tombstone name of segment `segment` created at `incarnation`.
    pub(crate) fn format(segment: &str, incarnation: u64) -> String {
        format!("{segment}~{incarnation:x}{TOMBSTONE_SUFFIX}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstone_names_round_trip_and_nothing_else_parses() {
        let name = TombstoneName::format("jobs.v2", 0x1234_abcd);
        assert_eq!(name, "jobs.v2~1234abcd.removed");
        assert_eq!(
            TombstoneName::parse(&name),
            Some(TombstoneName {
                segment: "jobs.v2",
                incarnation: 0x1234_abcd
            })
        );
        for not_one in [
            "jobs",
            "jobs~1234abcd.1f",
            "jobs~1234abcd.removedx",
            "jobs~+1234abcd.removed",
            "jobs~01234abcd.removed",
            "jobs~1234ABCD.removed",
            "~1234abcd.removed",
            "a~b~1234abcd.removed",
            "jobs~.removed",
        ] {
            assert_eq!(TombstoneName::parse(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn hex_is_read_only_in_the_form_it_is_written() {
        assert_eq!(parse_hex("0"), Some(0));
        assert_eq!(parse_hex("ff"), Some(255));
        for bad in ["", "+1", "01", "FF", "removed", "1 "] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }
}
