//! Named shared-memory segments: a checked header, a participant table with kernel-backed
//! liveness, and a lifetime that ends with the last live participant.
//!
//! Layout of every segment (all integers native-endian; see docs/design.md):
//!
//! ```text
//! 0       header (128 bytes): magic, version, kind, lengths, creator, flags, closed, initialized
//! 128     participant table: `capacity` slots of 64 bytes
//! page    data area of the segment's kind (channel control block and arena, value, array...)
//! ```
//!
//! Liveness: participant slot `i` is alive while some open file description holds the OFD lock
//! on byte `SLOT_LOCK_BASE + i` of the object. Each participant opens its own description and
//! locks its byte; the kernel drops the lock when the process dies, however it dies. A pid can be
//! reused; a lock cannot outlive its holder, so a live participant is never taken for dead and a
//! dead one never for alive.
//!
//! This layer knows nothing of what a kind stores in its data area: a kind that must free
//! something when a participant dies (a channel's arena chunks) passes its [`KindHooks`] in when
//! it creates or opens a segment.
//!
//! - `header.rs`: the header, copied out once and checked.
//! - `region.rs`: one process's mapping of a segment: create, open, membership lock, teardown.
//! - `participants.rs`: the participant table: attach, detach, liveness, reclaim of the dead.
//! - `object.rs`: opening the object behind a name (no symbolic link, a regular file of ours)
//!   and the tombstone name of a segment removed while in use.
//! - `collect.rs`: examining a segment for `gc`, `rm` and inspection without attaching, and
//!   removing one whose participants all died (the segment half of `gc`).
//! - `remove.rs`: removal by name (`rm`), forced or not.
//! - `raw.rs`: [`Segment`], the public handle on a segment of raw bytes.

mod collect;
mod header;
mod object;
mod participants;
mod raw;
mod region;
mod remove;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

pub(crate) use collect::{
    collect_segment, examine, peek_incarnation, Collected, Found, Incarnation,
};
pub(crate) use header::segment_len;
pub(crate) use object::{open_object, parse_hex, OpenFailure, Refusal, TombstoneName};
pub(crate) use participants::Participant;
pub use participants::ParticipantInfo;
pub use raw::Segment;
pub(crate) use region::{CreateSpec, Region, MEMBERSHIP_TIMEOUT};
pub(crate) use remove::{remove_segment, Removed};

/// First word of every shmq segment.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMQseg\0");
/// Version of the layout described in docs/design.md. Bumped on any incompatible change.
///
/// 3 since every robust mutex in a segment is error-checking: an opener cannot check a
/// mutex's type, and shared values promise that re-locking by the holder is reported, which a
/// mutex made by an older version (2) would not do.
///
/// 4 since a channel's config area holds a flags word (persistent channels, which never report
/// `Disconnected`: a version-3 program would ignore it and report `Disconnected` on a channel
/// whose users count on it never doing so), and since channels count tasks (`task_done`):
/// each participant record holds its tasks done and a leaving flag, the counters a
/// retired-tasks word, and the futex words a fifth kind (which moved the armed flags). A
/// version-3 process would neither move nor reclaim the task counts, and would look for the
/// armed flags where they no longer are.
///
/// 5 since a channel's ring takes no lock: each slot starts with a state word (position,
/// phase, holder) that senders and receivers claim by CAS, the producer and consumer mutexes
/// and their journals are gone, and participant records hold the take in progress. A version-4
/// process would take the ring's locks, which nobody else takes, and read descriptors where
/// state words now are.
///
/// 6 since receivers give arena chunks back without the allocator lock (the `RETURNED` bit
/// of a chunk's owner word, the returns count and hints of the config area): a version-5
/// process would neither free a returned chunk nor count it as free.
///
/// 7 since senders take returned chunks back without the lock, by CAS of the owner word,
/// and the lock's holder marks a returned chunk `FREEING` by CAS before it frees it: a
/// version-6 holder would free a chunk that a version-7 sender has just taken back.
pub(crate) const LAYOUT_VERSION: u32 = 7;
/// Granularity of the data area's placement.
pub(crate) const PAGE: usize = 4096;
/// Bytes of the header at offset 0.
pub(crate) const HEADER_SIZE: usize = 128;
/// Bytes of one participant slot.
pub(crate) const SLOT_SIZE: usize = 64;
/// Largest length in bytes of a whole segment file: a file offset (`off_t`) is an `i64`, and a
/// mapping (and every slice into it) must fit in an `isize`. A larger request is an
/// [`Error::InvalidArgument`], never left for the kernel to refuse with `EINVAL`.
pub(crate) const MAX_SEGMENT_LEN: u64 = if (isize::MAX as u64) < (i64::MAX as u64) {
    isize::MAX as u64
} else {
    i64::MAX as u64
};
/// Largest participant table a segment may declare.
pub(crate) const MAX_PARTICIPANTS: u32 = 1024;
/// Participant slots of a segment made by [`Segment::create`].
pub const DEFAULT_PARTICIPANTS: u32 = 64;
/// Longest a segment name may be, in bytes.
pub const MAX_NAME_LEN: usize = 200;
/// Prefix of every shmq object in /dev/shm.
pub(crate) const OS_PREFIX: &str = "shmq.";
/// How long `open` waits for a segment that is still being created.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// An uninitialised segment whose creator lock is free and that is older than this is a
/// leftover of a creator that died, and `gc` removes it. A younger one may belong to a creator
/// that has created the file and not yet taken the lock.
pub(crate) const ABANDONED_AGE: Duration = Duration::from_secs(2);

// OFD lock bytes. They lie far beyond any file size: POSIX record locks need not cover data.
const LOCK_BASE: u64 = 1 << 40;
const CREATOR_LOCK: u64 = LOCK_BASE;
const MEMBERSHIP_LOCK: u64 = LOCK_BASE + 1;
const SLOT_LOCK_BASE: u64 = LOCK_BASE + 16;

/// Header flag: the last participant to detach unlinks the segment.
pub(crate) const FLAG_AUTO_UNLINK: u32 = 1;

/// What a segment holds. Recorded in its header and checked by every `open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[non_exhaustive]
pub enum Kind {
    /// Raw bytes, made by [`Segment::create`].
    Raw = 1,
    /// A channel: ring of descriptors and payload arena.
    Channel = 2,
    /// A [`SharedValue`](crate::SharedValue).
    Value = 3,
    /// A [`SharedArray`](crate::SharedArray).
    Array = 4,
    /// One payload larger than its channel's arena.
    Overflow = 5,
}

impl Kind {
    pub(crate) fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Raw,
            2 => Kind::Channel,
            3 => Kind::Value,
            4 => Kind::Array,
            5 => Kind::Overflow,
            _ => return None,
        })
    }

    /// Lower-case name of the kind, as `shmq ls` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Channel => "channel",
            Kind::Value => "value",
            Kind::Array => "array",
            Kind::Overflow => "overflow",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a participant does with a segment. Recorded in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[non_exhaustive]
pub enum Role {
    /// A [`Segment`] handle.
    User = 1,
    /// The channel handles of one [`Sender`](crate::Sender) and its clones.
    Sender = 2,
    /// The channel handles of one [`Receiver`](crate::Receiver) and its clones.
    Receiver = 3,
    /// A [`SharedValue`](crate::SharedValue) or [`SharedArray`](crate::SharedArray) handle.
    Shared = 4,
}

impl Role {
    pub(crate) fn from_raw(raw: u32) -> Option<Role> {
        Some(match raw {
            1 => Role::User,
            2 => Role::Sender,
            3 => Role::Receiver,
            4 => Role::Shared,
            _ => return None,
        })
    }

    /// Lower-case name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::Shared => "shared",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a user-supplied segment name: 1 to 200 characters of `[A-Za-z0-9._-]`.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "character {bad:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{} characters, at most {MAX_NAME_LEN} allowed",
            name.len()
        )));
    }
    Ok(())
}

pub(crate) fn os_name(name: &str) -> String {
    format!("{OS_PREFIX}{name}")
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Bookkeeping a segment kind does when a participant is reclaimed or the segment torn down.
///
/// The segment layer calls these without knowing the kind: the kind's code hands them in when
/// it creates or opens a segment, and `gc` (which knows every kind) when it collects one.
#[derive(Debug)]
pub(crate) struct KindHooks {
    /// Frees what the dead participant in `slot` held. Runs under the membership lock, before
    /// the slot is reused; must be idempotent (a reclaimer can die too) and bounded in time.
    /// Returns false if it could not finish (a lock of the kind held by a stopped process):
    /// the slot then stays as it is, dead, for a later reclaim.
    pub(crate) reclaim: fn(&Arc<Region>, u32) -> bool,
    /// Releases resources outside the segment (overflow segments) just before it is unlinked.
    pub(crate) teardown: fn(&Arc<Region>),
}

/// Locks `mutex`, polling until `deadline`. For the per-process mutexes of handles that a fork
/// may have left locked for ever in a child (a parent's thread held it at the fork): a wait
/// that cannot end becomes an error instead of a hang. A poisoned mutex is taken as it is.
pub(crate) fn lock_until<T>(
    mutex: &std::sync::Mutex<T>,
    deadline: std::time::Instant,
) -> Option<std::sync::MutexGuard<'_, T>> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() >= deadline => {
                return None
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_micros(100))
            }
        }
    }
}
