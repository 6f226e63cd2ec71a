//! The segment half of `gc`: removing a segment whose participants all died, or whose creator
//! died before it finished. `gc` (at the top of the crate) lists the names and says, per kind,
//! what must be freed with a segment.

use std::sync::{Arc, Mutex};

use super::header::{read_header, HeaderCopy};
use super::region::Region;
use super::{
    os_name, Kind, KindHooks, ABANDONED_AGE, CREATOR_LOCK, FLAG_AUTO_UNLINK, MAGIC, OS_PREFIX,
};
use crate::error::{Error, Result};
use crate::sys;

/// Reads the header of segment `name` without mapping or attaching (unchecked: the caller
/// looks only at what it needs).
pub(crate) fn peek_header(name: &str) -> Result<HeaderCopy> {
    let fd =
        sys::shm_open_existing(&os_name(name)).map_err(|e| Error::from_io(name, "shm_open", e))?;
    read_header(name, sys::borrow(&fd))
}

/// Removes the object `os` (a `shmq.` name in /dev/shm) if nobody can be using it: an
/// initialised, auto-unlinking segment whose participants are all dead (after running its
/// kind's reclaim for each and its teardown), or a creation that died half-way and is older
/// than [`ABANDONED_AGE`]. Returns its name if removed.
///
/// Segments with a live participant, segments being created, and files that are not valid shmq
/// segments of this layout version are left alone.
pub(crate) fn collect_segment(
    os: &str,
    hooks_for: impl Fn(Kind) -> Option<&'static KindHooks>,
) -> Option<String> {
    let name = os.strip_prefix(OS_PREFIX)?;
    let fd = sys::shm_open_existing(os).ok()?;
    if !sys::try_lock_byte(sys::borrow(&fd), CREATOR_LOCK).ok()? {
        return None; // being created right now
    }
    let header = read_header(name, sys::borrow(&fd)).ok()?;
    let file = sys::file_info(sys::borrow(&fd)).ok()?;
    if header.initialized != 1 {
        // Magic zero or ours, never finished, creator gone: a creation that died half-way.
        let abandoned = (header.magic == 0 || header.magic == MAGIC)
            && file
                .modified
                .elapsed()
                .is_ok_and(|age| age >= ABANDONED_AGE);
        return (abandoned && sys::shm_unlink(os).is_ok()).then(|| name.to_owned());
    }
    // Anything that does not validate is not ours to judge: leave it.
    let kind = header.validate(name, None, file).ok()?;
    if header.flags & FLAG_AUTO_UNLINK == 0 {
        return None;
    }
    let region = Arc::new(Region {
        name: name.to_owned(),
        map: sys::Mapping::new(sys::borrow(&fd), header.total_len as usize, false).ok()?,
        fd,
        kind,
        header,
        hooks: hooks_for(kind),
        membership: Mutex::new(()),
    });
    let membership = region.lock_membership().ok()?;
    if (0..region.capacity()).any(|s| region.is_alive(s)) {
        return None;
    }
    region.reclaim_dead_locked(&membership);
    region.destroy_locked();
    Some(name.to_owned())
}
