//! Removing a segment by name (`shmq rm`, [`Segment::remove`](crate::Segment::remove)).
//!
//! A removal never pulls a segment from under a creator, and never loses what live processes
//! use: the decision and the removal happen under the segment's membership lock, so no
//! participant attaches between them; a segment with live participants is refused unless the
//! removal is forced, and then lives on under its tombstone (see
//! [`TombstoneName`]) until its last participant detaches or `gc` finds them all dead.

use std::io::ErrorKind;

use super::collect::{examine, Found};
use super::object::{open_checked, TombstoneName};
use super::{os_name, Kind, KindHooks};
use crate::error::{Error, Result};
use crate::sys;

/// What [`remove_segment`] did.
#[derive(Debug)]
pub(crate) enum Removed {
    /// Nobody alive used it: its dead participants were reclaimed and it was torn down (its
    /// kind's teardown ran) and unlinked.
    TornDown {
        /// Dead participants whose slots were reclaimed.
        reclaimed: usize,
    },
    /// Live participants use it (a forced removal): its name is gone, and it lives on under
    /// `tombstone` until they have all detached or died.
    Tombstoned {
        /// Live participants when it was removed.
        alive: usize,
        /// The tombstone's name (without the `shmq.` prefix).
        tombstone: String,
    },
    /// A creation that died half-way (never initialised, older than two seconds): unlinked.
    Abandoned,
    /// Not a shmq segment of this layout version: unlinked as it is.
    Unlinked {
        /// Why it is not one.
        problem: Error,
    },
}

fn in_use(name: &str, reason: impl Into<String>) -> Error {
    Error::InUse {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Removes segment `name` (validated by the caller). Refused ([`Error::InUse`]) while it is
/// being created, forced or not, and while live participants use it unless `force`.
/// `hooks_for` gives each kind's hooks, for the teardown of a segment nobody uses.
pub(crate) fn remove_segment(
    name: &str,
    force: bool,
    hooks_for: impl Fn(Kind) -> Option<&'static KindHooks>,
) -> Result<Removed> {
    let os = os_name(name);
    let (fd, _) = open_checked(name, &os)?;
    let unlink = |fd: &std::os::fd::OwnedFd| match sys::shm_unlink_if_same(&os, sys::borrow(fd)) {
        Ok(true) => Ok(()),
        // Removed, or removed and re-created, by someone else meanwhile.
        Ok(false) => Err(Error::NotFound {
            name: name.to_owned(),
        }),
        Err(e) => Err(Error::from_io(name, "shm_unlink", e)),
    };
    let region =
        match examine(name, fd, true, hooks_for)? {
            Found::BeingCreated => return Err(in_use(
                name,
                "it is being created (its creator holds the creator lock); try again once it is",
            )),
            Found::Unfinished {
                abandoned: false, ..
            } => {
                return Err(in_use(
                    name,
                    "it is being created (not initialised yet, and younger than 2 s: its creator \
                 may not have taken the creator lock yet); try again in a moment",
                ))
            }
            Found::Unfinished {
                abandoned: true,
                fd,
            } => return unlink(&fd).map(|()| Removed::Abandoned),
            Found::Invalid { problem, fd } => {
                return unlink(&fd).map(|()| Removed::Unlinked { problem })
            }
            Found::Ready(region) => region,
        };
    let membership = region.lock_membership()?;
    let alive = region.alive_count();
    if alive == 0 {
        let reclaimed = region.reclaim_dead_locked(&membership);
        region.destroy_locked();
        return Ok(Removed::TornDown { reclaimed });
    }
    if !force {
        return Err(in_use(
            name,
            format!(
                "{alive} live participant(s) use it; a forced removal (`shmq rm --force`, \
                 Segment::remove) takes its name away and leaves it to them"
            ),
        ));
    }
    let tombstone = TombstoneName::format(name, region.header.created_unix_ns);
    let tombstone_os = os_name(&tombstone);
    let linked_here = match sys::shm_link(sys::borrow(&region.fd), &tombstone_os) {
        Ok(()) => true,
        // Another removal of this segment linked it first (or died between its link and its
        // unlink): fine if it is this object.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let (existing, _) = open_checked(&tombstone, &tombstone_os)?;
            let same = sys::same_object(sys::borrow(&existing), sys::borrow(&region.fd))
                .map_err(|e| Error::from_io(&tombstone, "fstat", e))?;
            if !same {
                return Err(Error::AlreadyExists { name: tombstone });
            }
            false
        }
        Err(e) => return Err(Error::from_io(name, "link", e)),
    };
    // If the name no longer refers to this object, someone removed it meanwhile: it is just
    // as removed, and the tombstone keeps it for its users all the same.
    if let Err(e) = sys::shm_unlink_if_same(&os, sys::borrow(&region.fd)) {
        if linked_here {
            let _ = sys::shm_unlink_if_same(&tombstone_os, sys::borrow(&region.fd));
        }
        return Err(Error::from_io(name, "shm_unlink", e));
    }
    Ok(Removed::Tombstoned { alive, tombstone })
}
