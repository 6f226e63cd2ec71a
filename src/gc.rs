//! [`gc`]: removing what processes that all died left in /dev/shm.
//!
//! This sits at the top of the library because it must know every kind: which hooks free a
//! channel's external resources, and how an overflow payload names the channel it belongs to.

use crate::channel::{OverflowName, HOOKS};
use crate::error::{Error, Result};
use crate::segment::{self, Kind, KindHooks, OS_PREFIX};
use crate::sys;

/// What each kind must free when gc removes one of its segments.
fn hooks_for(kind: Kind) -> Option<&'static KindHooks> {
    match kind {
        Kind::Channel => Some(&HOOKS),
        _ => None,
    }
}

/// Removes every shmq segment in /dev/shm whose participants are all dead, and the overflow
/// payloads of channels that no longer exist. Returns the names it removed.
///
/// Segments with a live participant, segments being created, and files that are not valid shmq
/// segments of this layout version are left alone.
pub fn gc() -> Result<Vec<String>> {
    let names = sys::list_shm_names(OS_PREFIX).map_err(|e| Error::from_io("*", "read_dir", e))?;
    Ok(names.iter().filter_map(|os| collect_one(os)).collect())
}

/// What [`gc`] did with one object in /dev/shm: its name if it removed it.
fn collect_one(os: &str) -> Option<String> {
    let name = os.strip_prefix(OS_PREFIX)?;
    match OverflowName::parse(name) {
        Some(payload) => collect_overflow(os, name, payload),
        None => segment::collect_segment(os, hooks_for),
    }
}

/// An overflow payload lives as long as the channel incarnation that made it: it is an orphan
/// when its channel's name is gone, or names a channel created at another time (a leftover of
/// an earlier channel of the same name).
fn collect_overflow(os: &str, name: &str, payload: OverflowName<'_>) -> Option<String> {
    let orphan = match segment::peek_header(payload.channel) {
        Err(Error::NotFound { .. }) => true,
        Err(_) => false,
        Ok(header) => header.initialized == 1 && header.created_unix_ns != payload.incarnation,
    };
    (orphan && sys::shm_unlink(os).is_ok()).then(|| name.to_owned())
}
