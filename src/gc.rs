//! [`gc`]: removing what processes that all died left in /dev/shm, with the reason for every
//! decision.
//!
//! This sits at the top of the library because it must know every kind: which hooks free a
//! channel's external resources, and how an overflow payload names the channel it belongs to.

use std::fmt;

use crate::channel::{ObjectName, OverflowName, HOOKS};
use crate::error::{Error, Result};
use crate::segment::{
    self, open_object, Collected, Incarnation, Kind, KindHooks, OpenFailure, Refusal,
    TombstoneName, OS_PREFIX,
};
use crate::sys;

/// What each kind must free when gc (or a removal) tears down one of its segments.
pub(crate) fn hooks_for(kind: Kind) -> Option<&'static KindHooks> {
    match kind {
        Kind::Channel => Some(&HOOKS),
        _ => None,
    }
}

/// What [`gc`] decided about one `shmq.*` object in /dev/shm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcEntry {
    /// The object's name without the `shmq.` prefix, as [`list`](crate::list) shows it.
    pub name: String,
    /// Whether gc removed it.
    pub removed: bool,
    /// Why it was removed or kept.
    pub reason: GcReason,
}

impl fmt::Display for GcEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.removed { "removed" } else { "kept" };
        write!(f, "{verdict} {}: {}", self.name, self.reason)
    }
}

/// Why [`gc`] removed or kept an object. The checks run in this order: the owner and the file
/// type first (another user's file or a link is never looked into), then the creator lock,
/// then the header, then the participants.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcReason {
    /// Kept: another user owns the file (gc leaves it alone even when run by root).
    NotOurs {
        /// The owner's uid.
        uid: u32,
    },
    /// Kept: the name is a symbolic link, or the object is not a regular file.
    NotRegular {
        /// What it is: "a symbolic link", "a FIFO"...
        found: String,
    },
    /// Kept: its creator holds the creator lock.
    BeingCreated,
    /// Kept: never initialised and nobody holds its creator lock, but younger than two
    /// seconds (its creator may not have taken the lock yet).
    Unfinished,
    /// Removed: never initialised, nobody holds its creator lock, older than two seconds: a
    /// creator died half-way.
    Abandoned,
    /// Kept: not a shmq segment this version can judge (another program's file, another
    /// layout version, a header that does not check out), or an overflow payload whose
    /// channel's name holds such a file.
    Incompatible {
        /// What is wrong with it.
        problem: String,
    },
    /// Kept: a segment without the auto-unlink flag; its owner removes it.
    NotAutoUnlink,
    /// Kept: live participants use it.
    LiveParticipants {
        /// How many.
        alive: usize,
    },
    /// Removed: every participant died; their slots were reclaimed and the segment torn down
    /// (a channel's overflow payloads with it).
    AllDead {
        /// Dead participants reclaimed.
        reclaimed: usize,
    },
    /// Kept: the tombstone of `segment`, removed while in use (`shmq rm --force`,
    /// [`Segment::remove`](crate::Segment::remove)), which live participants still use.
    RemovedInUse {
        /// The name the segment had.
        segment: String,
        /// How many live participants use it.
        alive: usize,
    },
    /// Removed: the tombstone of `segment`, whose participants are all dead: torn down under
    /// the name it had.
    RemovedAllDead {
        /// The name the segment had.
        segment: String,
        /// Dead participants reclaimed.
        reclaimed: usize,
    },
    /// Kept: an overflow payload of `channel`, which exists with the payload's incarnation.
    PayloadOfLiveChannel {
        /// The channel's name.
        channel: String,
    },
    /// Kept: an overflow payload of `channel`, removed while in use: its tombstone exists.
    PayloadOfRemovedChannel {
        /// The channel's name.
        channel: String,
    },
    /// Kept: an overflow payload of `channel`, whose segment of that name is being created (or
    /// was abandoned half-way, until gc removes it), so its incarnation cannot be read yet.
    PayloadOfChannelBeingCreated {
        /// The channel's name.
        channel: String,
    },
    /// Removed: an overflow payload whose channel incarnation exists neither under the
    /// channel's name nor as a tombstone.
    OrphanPayload {
        /// The channel's name.
        channel: String,
        /// Whether a channel of that name exists (another incarnation: created at another
        /// time, so a leftover of an earlier channel of the same name).
        other_incarnation: bool,
    },
    /// Nothing done: it was gone (or replaced) before gc could look at it or remove it.
    Vanished,
    /// Kept: it could not be checked (an error opening, locking or mapping it).
    Failed {
        /// The error.
        problem: String,
    },
}

impl GcReason {
    /// A short, stable tag for the decision (`"all-dead"`, `"not-ours"`...), for scripts and
    /// `shmq gc --json`.
    pub fn code(&self) -> &'static str {
        match self {
            GcReason::NotOurs { .. } => "not-ours",
            GcReason::NotRegular { .. } => "not-regular",
            GcReason::BeingCreated => "being-created",
            GcReason::Unfinished => "unfinished",
            GcReason::Abandoned => "abandoned",
            GcReason::Incompatible { .. } => "incompatible",
            GcReason::NotAutoUnlink => "not-auto-unlink",
            GcReason::LiveParticipants { .. } => "live",
            GcReason::AllDead { .. } => "all-dead",
            GcReason::RemovedInUse { .. } => "removed-in-use",
            GcReason::RemovedAllDead { .. } => "removed-all-dead",
            GcReason::PayloadOfLiveChannel { .. } => "payload-of-live-channel",
            GcReason::PayloadOfRemovedChannel { .. } => "payload-of-removed-channel",
            GcReason::PayloadOfChannelBeingCreated { .. } => "payload-of-channel-being-created",
            GcReason::OrphanPayload { .. } => "orphan-payload",
            GcReason::Vanished => "vanished",
            GcReason::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for GcReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcReason::NotOurs { uid } => write!(
                f,
                "not ours: owned by uid {uid}, not this process's uid (never touched)"
            ),
            GcReason::NotRegular { found } => {
                write!(f, "{found}, not a regular file (never followed or touched)")
            }
            GcReason::BeingCreated => f.write_str("being created: its creator holds the lock"),
            GcReason::Unfinished => f.write_str(
                "unfinished but younger than 2 s: its creator may not have taken its lock yet",
            ),
            GcReason::Abandoned => f.write_str(
                "abandoned: never initialised, no creator holds its lock, older than 2 s",
            ),
            GcReason::Incompatible { problem } => {
                write!(f, "not a segment this version can judge: {problem}")
            }
            GcReason::NotAutoUnlink => f.write_str("not auto-unlinking: its owner removes it"),
            GcReason::LiveParticipants { alive } => write!(f, "{alive} live participant(s)"),
            GcReason::AllDead { reclaimed } => write!(
                f,
                "every participant is dead ({reclaimed} reclaimed): torn down"
            ),
            GcReason::RemovedInUse { segment, alive } => write!(
                f,
                "tombstone of {segment}, removed but still in use by {alive} live participant(s)"
            ),
            GcReason::RemovedAllDead { segment, reclaimed } => write!(
                f,
                "tombstone of {segment}, removed while in use; every participant is now dead \
                 ({reclaimed} reclaimed): torn down"
            ),
            GcReason::PayloadOfLiveChannel { channel } => {
                write!(f, "overflow payload of channel {channel}, which exists")
            }
            GcReason::PayloadOfRemovedChannel { channel } => write!(
                f,
                "overflow payload of channel {channel}, removed but still in use (its tombstone \
                 exists)"
            ),
            GcReason::PayloadOfChannelBeingCreated { channel } => write!(
                f,
                "overflow payload; a channel {channel} is being created, its incarnation cannot \
                 be read yet"
            ),
            GcReason::OrphanPayload {
                channel,
                other_incarnation: false,
            } => write!(
                f,
                "orphan overflow payload: channel {channel} is gone and left no tombstone"
            ),
            GcReason::OrphanPayload {
                channel,
                other_incarnation: true,
            } => write!(
                f,
                "orphan overflow payload: channel {channel} is another incarnation now, and \
                 the payload's incarnation left no tombstone"
            ),
            GcReason::Vanished => f.write_str("gone before gc could look at it"),
            GcReason::Failed { problem } => write!(f, "could not be checked: {problem}"),
        }
    }
}

/// Removes every shmq segment in /dev/shm whose participants are all dead, and the overflow
/// payloads of channels that no longer exist. Returns one entry per `shmq.*` object it looked
/// at, saying whether it removed it and why (see [`GcReason`]).
///
/// Another user's files, symbolic links, segments with a live participant (tombstones of
/// segments removed while in use included), segments being created, and files that are not
/// valid shmq segments of this layout version are left alone. It may run at any time, from any
/// process: liveness comes from the kernel.
pub fn gc() -> Result<Vec<GcEntry>> {
    let names = sys::list_shm_names(OS_PREFIX).map_err(|e| Error::from_io("*", "read_dir", e))?;
    Ok(names
        .iter()
        .filter_map(|os| Some(collect_one(os, os.strip_prefix(OS_PREFIX)?)))
        .collect())
}

/// What [`gc`] decides, and does, with the object `os` (listed as `name`).
fn collect_one(os: &str, name: &str) -> GcEntry {
    let entry = |removed: bool, reason: GcReason| GcEntry {
        name: name.to_owned(),
        removed,
        reason,
    };
    // The owner and the file type first: whatever the contents, another user's file or a link
    // is not ours to judge.
    let (fd, _) = match open_object(os) {
        Ok(opened) => opened,
        Err(OpenFailure::Refused(Refusal::Owner { uid })) => {
            return entry(false, GcReason::NotOurs { uid })
        }
        Err(OpenFailure::Refused(refusal)) => {
            let found = refusal.found();
            return entry(false, GcReason::NotRegular { found });
        }
        Err(OpenFailure::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return entry(false, GcReason::Vanished)
        }
        Err(failure) => {
            let problem = failure.into_error(name, os).to_string();
            return entry(false, GcReason::Failed { problem });
        }
    };
    let tombstone_of = match ObjectName::parse(name) {
        ObjectName::Payload(payload) => {
            let (removed, reason) = collect_overflow(os, payload, &fd);
            return entry(removed, reason);
        }
        ObjectName::Tombstone(tombstone) => Some(tombstone.segment.to_owned()),
        ObjectName::Segment(_) => None,
    };
    let (removed, reason) = match segment::collect_segment(name, fd, hooks_for) {
        Collected::BeingCreated => (false, GcReason::BeingCreated),
        Collected::UnfinishedYoung => (false, GcReason::Unfinished),
        Collected::Abandoned => (true, GcReason::Abandoned),
        Collected::Vanished => (false, GcReason::Vanished),
        Collected::Invalid(problem) => (
            false,
            GcReason::Incompatible {
                problem: problem.to_string(),
            },
        ),
        Collected::NotAutoUnlink => (false, GcReason::NotAutoUnlink),
        Collected::Live { alive } => match tombstone_of {
            Some(segment) => (false, GcReason::RemovedInUse { segment, alive }),
            None => (false, GcReason::LiveParticipants { alive }),
        },
        Collected::AllDead { reclaimed } => match tombstone_of {
            Some(segment) => (true, GcReason::RemovedAllDead { segment, reclaimed }),
            None => (true, GcReason::AllDead { reclaimed }),
        },
        Collected::Failed(problem) => (
            false,
            GcReason::Failed {
                problem: problem.to_string(),
            },
        ),
    };
    entry(removed, reason)
}

/// An overflow payload lives as long as the channel incarnation that made it: while the
/// channel's name refers to a segment created at the payload's incarnation, or the tombstone
/// of that incarnation exists (the channel was removed while in use). Otherwise it is an
/// orphan: its channel is gone, or the name belongs to a later channel of the same name.
///
/// The name is checked before the tombstone: a forced removal links the tombstone before it
/// unlinks the name, so a live channel is always found under one of the two.
fn collect_overflow(
    os: &str,
    payload: OverflowName<'_>,
    fd: &std::os::fd::OwnedFd,
) -> (bool, GcReason) {
    let channel = payload.channel.to_owned();
    let other_incarnation = match segment::peek_incarnation(payload.channel) {
        Ok(Incarnation::Created(created)) if created == payload.incarnation => {
            return (false, GcReason::PayloadOfLiveChannel { channel })
        }
        Ok(Incarnation::Created(_)) => true,
        Ok(Incarnation::Unfinished) => {
            return (false, GcReason::PayloadOfChannelBeingCreated { channel })
        }
        Ok(Incarnation::Unreadable(why)) => {
            let problem = format!("its channel {channel} cannot be read: {why}");
            return (false, GcReason::Incompatible { problem });
        }
        Err(Error::NotFound { .. }) => false,
        Err(e) => {
            let problem = format!("its channel {channel}: {e}");
            return (false, GcReason::Failed { problem });
        }
    };
    let tombstone = TombstoneName::format(payload.channel, payload.incarnation);
    match segment::peek_incarnation(&tombstone) {
        Ok(Incarnation::Created(created)) if created == payload.incarnation => {
            return (false, GcReason::PayloadOfRemovedChannel { channel })
        }
        // Not this incarnation's tombstone (a crafted file), or none at all.
        Ok(_) | Err(Error::NotFound { .. }) => {}
        Err(e) => {
            let problem = format!("the tombstone {tombstone}: {e}");
            return (false, GcReason::Failed { problem });
        }
    }
    // By descriptor: only the payload examined here, never a new object under its name.
    match sys::shm_unlink_if_same(os, sys::borrow(fd)) {
        Ok(true) => (
            true,
            GcReason::OrphanPayload {
                channel,
                other_incarnation,
            },
        ),
        Ok(false) => (false, GcReason::Vanished),
        Err(e) => (
            false,
            GcReason::Failed {
                problem: format!("shm_unlink: {e}"),
            },
        ),
    }
}
