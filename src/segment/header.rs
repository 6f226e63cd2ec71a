//! The 128-byte header at offset 0 of every segment: written once by the creator (with
//! `initialized` last), copied out once by every opener and checked before any field is used.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{
    Kind, HEADER_SIZE, LAYOUT_VERSION, MAGIC, MAX_PARTICIPANTS, MAX_SEGMENT_LEN, PAGE, SLOT_SIZE,
};
use crate::error::{Error, Result};
use crate::sys;

// Header field offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_KIND: usize = 12;
const H_TOTAL_LEN: usize = 16;
const H_CREATOR_UID: usize = 24;
const H_CREATOR_PID: usize = 28;
const H_CREATED_NS: usize = 32;
const H_CAPACITY: usize = 40;
const H_FLAGS: usize = 44;
const H_DATA_OFFSET: usize = 48;
const H_DATA_LEN: usize = 56;
pub(super) const H_CLOSED: usize = 64;
pub(super) const H_INITIALIZED: usize = 68;
/// The pid of the process holding the membership lock (0 when free), for error messages and
/// inspection only: an OFD lock does not say who holds it.
pub(super) const H_MEMBERSHIP_HOLDER: usize = 72;

/// Offset of the data area for a participant table of `capacity` slots.
pub(super) fn data_offset_for(capacity: u32) -> u64 {
    // At most 128 + 64 * 2^32 bytes: no overflow in u64, whatever the capacity.
    let control = HEADER_SIZE as u64 + SLOT_SIZE as u64 * u64::from(capacity);
    control.div_ceil(PAGE as u64) * PAGE as u64
}

/// The length of the whole file (header, participant table, data area) of a new segment with
/// `capacity` participant slots and `data_len` bytes of data, as the length of its mapping.
///
/// A length no segment can have is [`Error::InvalidArgument`] here, before anything is
/// created: otherwise the kernel would refuse it with an `EINVAL` or `EFBIG` that reads as an
/// I/O failure. A length that is possible but more than /dev/shm holds is left to the kernel
/// (it becomes [`Error::OutOfSpace`]).
pub(crate) fn segment_len(name: &str, capacity: u32, data_len: u64) -> Result<usize> {
    let data_offset = data_offset_for(capacity);
    data_offset
        .checked_add(data_len)
        .filter(|&total| total <= MAX_SEGMENT_LEN)
        .and_then(|total| usize::try_from(total).ok())
        .ok_or_else(|| Error::InvalidArgument {
            name: name.to_owned(),
            what: format!(
                "{data_len} bytes of data (after a {data_offset}-byte header) exceed the largest \
                 possible segment, {MAX_SEGMENT_LEN} bytes (the largest file offset and mapping)"
            ),
        })
}

/// A copy of a segment's header, taken once and checked before any field is used.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderCopy {
    pub(crate) magic: u64,
    pub(crate) version: u32,
    pub(crate) kind: u32,
    pub(crate) total_len: u64,
    pub(crate) creator_uid: u32,
    pub(crate) creator_pid: u32,
    pub(crate) created_unix_ns: u64,
    pub(crate) capacity: u32,
    pub(crate) flags: u32,
    pub(crate) data_offset: u64,
    pub(crate) data_len: u64,
    pub(crate) closed: u32,
    pub(crate) initialized: u32,
}

impl HeaderCopy {
    pub(super) fn parse(bytes: &[u8; HEADER_SIZE]) -> HeaderCopy {
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
        HeaderCopy {
            magic: u64_at(H_MAGIC),
            version: u32_at(H_VERSION),
            kind: u32_at(H_KIND),
            total_len: u64_at(H_TOTAL_LEN),
            creator_uid: u32_at(H_CREATOR_UID),
            creator_pid: u32_at(H_CREATOR_PID),
            created_unix_ns: u64_at(H_CREATED_NS),
            capacity: u32_at(H_CAPACITY),
            flags: u32_at(H_FLAGS),
            data_offset: u64_at(H_DATA_OFFSET),
            data_len: u64_at(H_DATA_LEN),
            closed: u32_at(H_CLOSED),
            initialized: u32_at(H_INITIALIZED),
        }
    }

    /// Checks every field against the file it came from. `expected_kind` of `None` accepts any
    /// known kind (for tools that inspect whatever is there).
    pub(super) fn validate(
        &self,
        name: &str,
        expected_kind: Option<Kind>,
        file: sys::FileInfo,
    ) -> Result<Kind> {
        if self.magic != MAGIC {
            return Err(Error::incompatible(
                name,
                "magic",
                format!("{MAGIC:#018x} (a shmq segment)"),
                format!("{:#018x}", self.magic),
            ));
        }
        if self.version != LAYOUT_VERSION {
            return Err(Error::incompatible(
                name,
                "layout version",
                LAYOUT_VERSION,
                self.version,
            ));
        }
        let kind = match (Kind::from_raw(self.kind), expected_kind) {
            (Some(found), Some(expected)) if found != expected => {
                return Err(Error::incompatible(name, "kind", expected, found))
            }
            (Some(found), _) => found,
            (None, expected) => {
                return Err(Error::incompatible(
                    name,
                    "kind",
                    expected.map_or("a known kind".to_string(), |k| k.to_string()),
                    format!("unknown kind {}", self.kind),
                ))
            }
        };
        if self.total_len != file.size {
            return Err(Error::incompatible(
                name,
                "file size",
                format!("{} bytes (from the header)", self.total_len),
                format!("{} bytes", file.size),
            ));
        }
        let uid = sys::effective_uid();
        if file.uid != uid || self.creator_uid != uid {
            return Err(Error::PermissionDenied {
                name: name.to_owned(),
                reason: format!(
                    "owned by uid {} (created by uid {}), this process runs as uid {uid}",
                    file.uid, self.creator_uid
                ),
            });
        }
        let capacity_ok =
            self.capacity <= MAX_PARTICIPANTS && (self.capacity > 0 || kind == Kind::Overflow);
        if !capacity_ok {
            return Err(Error::corrupted(
                name,
                format!(
                    "participant capacity {} (at most {MAX_PARTICIPANTS})",
                    self.capacity
                ),
            ));
        }
        if self.data_offset != data_offset_for(self.capacity)
            || self.data_offset.checked_add(self.data_len) != Some(self.total_len)
        {
            return Err(Error::corrupted(
                name,
                format!(
                    "data area {}+{} does not fit a {}-byte segment with {} slots",
                    self.data_offset, self.data_len, self.total_len, self.capacity
                ),
            ));
        }
        Ok(kind)
    }

    /// Writes every field but `initialized` into a fresh mapping (the creator, before anyone
    /// can open it).
    pub(super) fn write(&self, map: &sys::Mapping) {
        let u32_at = |offset: usize, value: u32| {
            if let Some(word) = map.atomic::<AtomicU32>(offset) {
                word.store(value, Ordering::Relaxed);
            }
        };
        let u64_at = |offset: usize, value: u64| {
            if let Some(word) = map.atomic::<AtomicU64>(offset) {
                word.store(value, Ordering::Relaxed);
            }
        };
        u64_at(H_MAGIC, self.magic);
        u32_at(H_VERSION, self.version);
        u32_at(H_KIND, self.kind);
        u64_at(H_TOTAL_LEN, self.total_len);
        u32_at(H_CREATOR_UID, self.creator_uid);
        u32_at(H_CREATOR_PID, self.creator_pid);
        u64_at(H_CREATED_NS, self.created_unix_ns);
        u32_at(H_CAPACITY, self.capacity);
        u32_at(H_FLAGS, self.flags);
        u64_at(H_DATA_OFFSET, self.data_offset);
        u64_at(H_DATA_LEN, self.data_len);
        u32_at(H_CLOSED, 0);
    }
}

/// Reads the header of an open object without mapping it. Short files yield zeroes.
pub(super) fn read_header(name: &str, fd: BorrowedFd<'_>) -> Result<HeaderCopy> {
    let mut bytes = [0u8; HEADER_SIZE];
    sys::read_at(fd, &mut bytes, 0).map_err(|e| Error::from_io(name, "pread", e))?;
    Ok(HeaderCopy::parse(&bytes))
}
