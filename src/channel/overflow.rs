//! Payloads larger than the arena: each travels in a segment of its own, named after its
//! channel's incarnation, and tracked by an entry of the overflow table (allocator lock).

use std::sync::Arc;
use std::time::Instant;

use super::journal::{Txn, Words};
use super::layout::{C_OVERFLOW_NEXT_ID, C_OVERFLOW_TABLE, OVERFLOW_SLOTS};
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::{Error, Result};
use crate::segment::{os_name, parse_hex, Kind, Region, TombstoneName};
use crate::sys;

/// The parts of an overflow payload's name `<channel>~<incarnation>.<id>` (both in hex): the
/// channel that made it and the creation time of that channel's segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OverflowName<'a> {
    /// The channel's name.
    pub(crate) channel: &'a str,
    /// `created_unix_ns` of the channel segment that made the payload.
    pub(crate) incarnation: u64,
}

impl<'a> OverflowName<'a> {
    /// Parses a segment name; `None` if it is not an overflow payload's (a tombstone
    /// `<segment>~<incarnation>.removed` is not one).
    pub(crate) fn parse(name: &'a str) -> Option<OverflowName<'a>> {
        let (channel, payload) = name.split_once('~')?;
        let (time, id) = payload.split_once('.')?;
        parse_hex(id)?;
        if channel.is_empty() || TombstoneName::parse(name).is_some() {
            return None;
        }
        Some(OverflowName {
            channel,
            incarnation: parse_hex(time)?,
        })
    }
}

/// The three shapes of the names shmq gives objects in /dev/shm (after the `shmq.` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectName<'a> {
    /// A segment's own name, as its creator gave it (or a name shmq did not make).
    Segment(&'a str),
    /// An overflow payload of a channel: `<channel>~<incarnation>.<id>`.
    Payload(OverflowName<'a>),
    /// The tombstone of a segment removed while in use: `<segment>~<incarnation>.removed`.
    Tombstone(TombstoneName<'a>),
}

impl<'a> ObjectName<'a> {
    /// Which shape `name` (without the prefix) has.
    pub(crate) fn parse(name: &'a str) -> ObjectName<'a> {
        if let Some(tombstone) = TombstoneName::parse(name) {
            ObjectName::Tombstone(tombstone)
        } else if let Some(payload) = OverflowName::parse(name) {
            ObjectName::Payload(payload)
        } else {
            ObjectName::Segment(name)
        }
    }
}

impl Chan {
    pub(super) fn overflow_word(&self, entry: u64, field: u64) -> u64 {
        C_OVERFLOW_TABLE / 8 + (entry % OVERFLOW_SLOTS) * 3 + field
    }

    /// The name of overflow payload `id` of this channel.
    pub(crate) fn overflow_name(&self, id: u64) -> String {
        // The creation time tells apart channels that reuse a name, so a leftover of an earlier
        // incarnation never collides with a new payload.
        let incarnation = self.region().header().created_unix_ns;
        format!("{}~{incarnation:x}.{id:x}", self.name())
    }

    /// Reserves an overflow table entry for `len` bytes owned by `slot`. `Ok(None)`: table full.
    pub(crate) fn try_reserve_overflow(
        &self,
        len: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<Option<(u64, u64)>> {
        let _held = self.lock_alloc(deadline)?;
        let mut txn = Txn::<Chan, 4>::new(self);
        let next_id = txn.get(C_OVERFLOW_NEXT_ID / 8).unwrap_or(1).max(1);
        for entry in 0..OVERFLOW_SLOTS {
            if txn.get(self.overflow_word(entry, 0)).unwrap_or(1) == 0 {
                txn.set(self.overflow_word(entry, 0), next_id);
                txn.set(self.overflow_word(entry, 1), slot as u64 + 1);
                txn.set(self.overflow_word(entry, 2), len);
                txn.set(C_OVERFLOW_NEXT_ID / 8, next_id.wrapping_add(1));
                self.commit(txn, self.geo.alloc.journal * 8)?;
                return Ok(Some((entry, next_id)));
            }
        }
        Ok(None)
    }

    /// Unlinks overflow payload `entry` (if it is `id` owned by `slot`) and frees the entry.
    pub(crate) fn release_overflow(
        &self,
        entry: u64,
        id: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
        {
            let _held = self.lock_alloc(deadline)?;
            let found_id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            let owner = self.load(self.overflow_word(entry, 1)).unwrap_or(0);
            if found_id != id || owner != slot as u64 + 1 {
                return Err(Error::corrupted(
                    self.name(),
                    format!("overflow entry {entry} changed hands"),
                ));
            }
            let _ = sys::shm_unlink(&os_name(&self.overflow_name(id)));
            let mut txn = Txn::<Chan, 4>::new(self);
            for field in 0..3 {
                txn.set(self.overflow_word(entry, field), 0);
            }
            self.commit(txn, self.geo.alloc.journal * 8)?;
        }
        self.notify(WaitOn::Space);
        Ok(())
    }

    /// Opens overflow payload `id` of a `len`-byte message. The mapping is not prefaulted: this
    /// runs while the receiver holds its claim of the ring slot (and its process's take lock),
    /// and the receiver prefaults it after letting go. Nor does it wait for an unfinished
    /// payload (a published one is finished; one that is not was replaced by garbage), which
    /// would hold that claim for seconds.
    pub(crate) fn open_overflow(&self, id: u64, len: u64) -> Result<Arc<Region>> {
        let name = self.overflow_name(id);
        let region = Region::open_finished(&name, Kind::Overflow, false)?;
        if (region.data_len() as u64) < len {
            return Err(Error::corrupted(
                &name,
                "overflow payload shorter than its descriptor",
            ));
        }
        Ok(region)
    }

    /// Unlinks every overflow payload still referenced (the channel is going away).
    pub(crate) fn teardown(&self) {
        for entry in 0..OVERFLOW_SLOTS {
            let id = self.load(self.overflow_word(entry, 0)).unwrap_or(0);
            if id != 0 {
                let _ = sys::shm_unlink(&os_name(&self.overflow_name(id)));
            }
        }
    }
}

/// Whether a failure to open an overflow payload is for good (the payload was removed, or is
/// not a valid, finished payload): then no receiver can ever have the message. Anything else (out of
/// descriptors or memory, a lock not free) may pass, and the message stays queued.
pub(crate) fn payload_lost(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound { .. }
            | Error::NotReady { .. }
            | Error::Corrupted { .. }
            | Error::Incompatible { .. }
            | Error::PermissionDenied { .. }
            | Error::InvalidName { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_tombstones_are_told_apart() {
        assert_eq!(
            ObjectName::parse("jobs~1f.2a"),
            ObjectName::Payload(OverflowName {
                channel: "jobs",
                incarnation: 0x1f
            })
        );
        assert_eq!(
            ObjectName::parse("jobs~1f.removed"),
            ObjectName::Tombstone(TombstoneName {
                segment: "jobs",
                incarnation: 0x1f
            })
        );
        assert_eq!(OverflowName::parse("jobs~1f.removed"), None);
        for plain in [
            "jobs", "jobs.v2", "jobs~1f", "jobs~1f.", "jobs~x.1", "~1f.2",
        ] {
            assert_eq!(
                ObjectName::parse(plain),
                ObjectName::Segment(plain),
                "{plain}"
            );
        }
    }
}
