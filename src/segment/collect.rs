//! Looking at a segment without attaching to it ([`examine`], for `gc`, `rm` and inspection),
//! and the segment half of `gc`: removing a segment whose participants all died, or whose
//! creator died before it finished ([`collect_segment`]). `gc` (at the top of the crate) lists
//! the names, checks each object's owner first and says, per kind, what must be freed with a
//! segment.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::header::read_header;
use super::object::{open_checked, TombstoneName};
use super::region::{LocalLock, Region};
use super::{
    os_name, Kind, KindHooks, ABANDONED_AGE, CREATOR_LOCK, FLAG_AUTO_UNLINK, LAYOUT_VERSION, MAGIC,
};
use crate::error::{Error, Result};
use crate::sys;

/// Which incarnation of a segment a name refers to now, as [`peek_incarnation`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Incarnation {
    /// An initialised segment of this layout version, created at this time (its
    /// `created_unix_ns`).
    Created(u64),
    /// A segment whose creator has not finished it (or died half-way): its header cannot be
    /// trusted yet.
    Unfinished,
    /// Not a shmq segment of this layout version: why.
    Unreadable(String),
}

/// Reads which incarnation segment `name` is, from its header, without mapping or attaching.
/// The object is checked first like every open: a symbolic link or another user's file is
/// [`Error::PermissionDenied`].
pub(crate) fn peek_incarnation(name: &str) -> Result<Incarnation> {
    let (fd, _) = open_checked(name, &os_name(name))?;
    let header = read_header(name, sys::borrow(&fd))?;
    Ok(match header.magic {
        MAGIC if header.initialized != 1 => Incarnation::Unfinished,
        MAGIC if header.version != LAYOUT_VERSION => {
            Incarnation::Unreadable(format!("layout version {}", header.version))
        }
        MAGIC => Incarnation::Created(header.created_unix_ns),
        0 => Incarnation::Unfinished,
        other => Incarnation::Unreadable(format!("magic {other:#018x}, not a shmq segment")),
    })
}

fn file_info(listed: &str, fd: &OwnedFd) -> Result<sys::FileInfo> {
    sys::file_info(sys::borrow(fd)).map_err(|e| Error::from_io(listed, "fstat", e))
}

/// What [`examine`] found behind a name.
#[derive(Debug)]
pub(crate) enum Found {
    /// Its creator holds the creator lock: it is being created right now.
    BeingCreated,
    /// It was never initialised and nobody holds its creator lock: its creator died half-way
    /// (`abandoned`: older than [`ABANDONED_AGE`]) or has created the file and not yet locked
    /// it (younger). For a caller that may remove it, `fd` holds the creator lock of an
    /// abandoned one, so no creator can take it over meanwhile.
    Unfinished {
        /// Older than [`ABANDONED_AGE`].
        abandoned: bool,
        /// The open object.
        fd: OwnedFd,
    },
    /// It is not a shmq segment of this layout version, or its header does not check out.
    Invalid {
        /// Why.
        problem: Error,
        /// The open object.
        fd: OwnedFd,
    },
    /// An initialised segment, checked and mapped, with no participant of ours attached.
    /// For a tombstone, the region carries the name the segment had.
    Ready(Arc<Region>),
}

/// Examines the object open as `fd` (checked by [`open_object`](super::open_object)), listed
/// as `listed` in /dev/shm (without the prefix): a segment or a tombstone. Reads and checks its
/// header and maps an initialised segment without attaching to it. Of one that is not
/// initialised it asks whether a creator holds the creator lock; a caller that `may_remove` an
/// abandoned file (gc, rm) takes that lock instead, for a file older than [`ABANDONED_AGE`], and
/// keeps it in [`Found::Unfinished`]. `hooks_for` gives the kind's hooks, for a caller that may
/// tear the segment down.
pub(crate) fn examine(
    listed: &str,
    fd: OwnedFd,
    may_remove: bool,
    hooks_for: impl Fn(Kind) -> Option<&'static KindHooks>,
) -> Result<Found> {
    let tombstone = TombstoneName::parse(listed);
    let name = tombstone.map_or(listed, |t| t.segment);
    let mut header = read_header(listed, sys::borrow(&fd))?;
    // The creator lock matters only before `initialized`; past it nobody holds it for long.
    if header.magic != MAGIC || header.initialized != 1 {
        let abandoned = file_info(listed, &fd)?
            .modified
            .elapsed()
            .is_ok_and(|age| age >= ABANDONED_AGE);
        // Only a file that may be removed is locked, so that no creator can take it over
        // meanwhile; any other is only queried, so that gc and ls never make each other see a
        // creator that is not there.
        let take_lock = may_remove && abandoned;
        let held_elsewhere = if take_lock {
            !sys::try_lock_byte(sys::borrow(&fd), CREATOR_LOCK)
                .map_err(|e| Error::from_io(listed, "fcntl(F_OFD_SETLK)", e))?
        } else {
            sys::byte_locked_elsewhere(sys::borrow(&fd), CREATOR_LOCK)
                .map_err(|e| Error::from_io(listed, "fcntl(F_OFD_GETLK)", e))?
        };
        if held_elsewhere {
            return Ok(Found::BeingCreated);
        }
        // Read again: a creator that finished meanwhile has released the lock.
        header = read_header(listed, sys::borrow(&fd))?;
        if header.initialized != 1 && (header.magic == 0 || header.magic == MAGIC) {
            // Magic zero or ours, never finished, creator lock free.
            return Ok(Found::Unfinished { abandoned, fd });
        }
        if take_lock {
            let _ = sys::unlock_byte(sys::borrow(&fd), CREATOR_LOCK);
        }
    }
    // Stated after the header was read: a creator that finished meanwhile has sized the file.
    let file = file_info(listed, &fd)?;
    let kind = match header.validate(listed, None, file) {
        Ok(kind) => kind,
        Err(problem) => return Ok(Found::Invalid { problem, fd }),
    };
    if let Some(tombstone) = tombstone {
        if tombstone.incarnation != header.created_unix_ns {
            let problem = Error::corrupted(
                listed,
                format!(
                    "a tombstone of incarnation {:x} holds a segment created at {:x}",
                    tombstone.incarnation, header.created_unix_ns
                ),
            );
            return Ok(Found::Invalid { problem, fd });
        }
    }
    let map_len = usize::try_from(header.total_len)
        .map_err(|_| Error::corrupted(listed, "segment larger than the address space"))?;
    let map = sys::Mapping::new(sys::borrow(&fd), map_len, false)
        .map_err(|e| Error::from_io(listed, "mmap", e))?;
    Ok(Found::Ready(Arc::new(Region {
        name: name.to_owned(),
        map,
        fd,
        kind,
        header,
        hooks: hooks_for(kind),
        membership: LocalLock::default(),
    })))
}

/// What [`collect_segment`] decided about one segment or tombstone, and did.
#[derive(Debug)]
pub(crate) enum Collected {
    /// Being created (creator lock held): kept.
    BeingCreated,
    /// Never initialised, creator lock free, younger than [`ABANDONED_AGE`]: kept.
    UnfinishedYoung,
    /// Never initialised, creator lock free, older than [`ABANDONED_AGE`]: removed.
    Abandoned,
    /// Gone (or replaced) before it could be removed: nothing done.
    Vanished,
    /// Not a shmq segment of this layout version, or its header does not check out: kept.
    Invalid(Error),
    /// Not auto-unlinking (its owner removes it): kept.
    NotAutoUnlink,
    /// Live participants use it: kept.
    Live {
        /// How many.
        alive: usize,
    },
    /// Every participant is dead: reclaimed and torn down like a last detach, removed.
    AllDead {
        /// Dead participants whose slots were reclaimed.
        reclaimed: usize,
    },
    /// It could not be examined or locked: kept.
    Failed(Error),
}

/// Collects the object open as `fd` (checked by [`open_object`](super::open_object)), listed
/// as `listed` (a segment's name or a tombstone's, without the prefix), if nobody can be using
/// it: an initialised, auto-unlinking segment whose participants are all dead (after running
/// its kind's reclaim for each and its teardown, under the name the segment had), or a creation
/// that died half-way and is older than [`ABANDONED_AGE`].
///
/// Segments with a live participant, segments being created, and files that are not valid shmq
/// segments of this layout version are left alone.
pub(crate) fn collect_segment(
    listed: &str,
    fd: OwnedFd,
    hooks_for: impl Fn(Kind) -> Option<&'static KindHooks>,
) -> Collected {
    let region = match examine(listed, fd, true, hooks_for) {
        Err(e) => return Collected::Failed(e),
        Ok(Found::BeingCreated) => return Collected::BeingCreated,
        Ok(Found::Unfinished {
            abandoned: false, ..
        }) => return Collected::UnfinishedYoung,
        Ok(Found::Unfinished {
            abandoned: true,
            fd,
        }) => {
            // By descriptor, not name: the name may have been removed and reused meanwhile.
            return match sys::shm_unlink_if_same(&os_name(listed), sys::borrow(&fd)) {
                Ok(true) => Collected::Abandoned,
                Ok(false) => Collected::Vanished,
                Err(e) => Collected::Failed(Error::from_io(listed, "shm_unlink", e)),
            };
        }
        Ok(Found::Invalid { problem, .. }) => return Collected::Invalid(problem),
        Ok(Found::Ready(region)) => region,
    };
    if region.header.flags & FLAG_AUTO_UNLINK == 0 {
        return Collected::NotAutoUnlink;
    }
    let membership = match region.lock_membership() {
        Ok(guard) => guard,
        Err(e) => return Collected::Failed(e),
    };
    let alive = region.alive_count();
    if alive > 0 {
        return Collected::Live { alive };
    }
    let reclaimed = region.reclaim_dead_locked(&membership);
    region.destroy_locked();
    drop(membership);
    Collected::AllDead { reclaimed }
}
