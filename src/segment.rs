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

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::sys;

/// First word of every shmq segment.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMQseg\0");
/// Version of the layout described in docs/design.md. Bumped on any incompatible change.
pub(crate) const LAYOUT_VERSION: u32 = 1;
/// Granularity of the data area's placement.
pub(crate) const PAGE: usize = 4096;
/// Bytes of the header at offset 0.
pub(crate) const HEADER_SIZE: usize = 128;
/// Bytes of one participant slot.
pub(crate) const SLOT_SIZE: usize = 64;
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
/// leftover of a creator that died, and `gc` removes it.
const ABANDONED_AGE: Duration = Duration::from_secs(2);

// OFD lock bytes. They lie far beyond any file size: POSIX record locks need not cover data.
const LOCK_BASE: u64 = 1 << 40;
const CREATOR_LOCK: u64 = LOCK_BASE;
const MEMBERSHIP_LOCK: u64 = LOCK_BASE + 1;
const SLOT_LOCK_BASE: u64 = LOCK_BASE + 16;

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
const H_CLOSED: usize = 64;
const H_INITIALIZED: usize = 68;

// Participant slot field offsets.
const S_STATE: usize = 0;
const S_ROLE: usize = 4;
const S_PID: usize = 8;
const S_GENERATION: usize = 16;
const S_ATTACHED_NS: usize = 24;

const SLOT_FREE: u32 = 0;
const SLOT_ACTIVE: u32 = 1;

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

/// Offset of the data area for a participant table of `capacity` slots.
pub(crate) fn data_offset_for(capacity: u32) -> u64 {
    let control = (HEADER_SIZE + SLOT_SIZE * capacity as usize) as u64;
    control.div_ceil(PAGE as u64) * PAGE as u64
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
    fn parse(bytes: &[u8; HEADER_SIZE]) -> HeaderCopy {
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
    fn validate(
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
}

/// Reads the header of an open object without mapping it. Short files yield zeroes.
fn read_header(name: &str, fd: &OwnedFd) -> Result<HeaderCopy> {
    let mut bytes = [0u8; HEADER_SIZE];
    let mut filled = 0;
    while filled < HEADER_SIZE {
        match rustix::io::pread(fd, &mut bytes[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::from_io(name, "pread", e.into())),
        }
    }
    Ok(HeaderCopy::parse(&bytes))
}

/// Bookkeeping a segment kind does when a participant is reclaimed or the segment torn down.
pub(crate) struct KindHooks {
    /// Frees what the dead participant in `slot` held. Runs under the membership lock, before
    /// the slot is reused; must be idempotent (a reclaimer can die too).
    pub(crate) reclaim: fn(&Region, u32),
    /// Releases resources outside the segment (overflow segments) just before it is unlinked.
    pub(crate) teardown: fn(&Region),
}

fn hooks_for(kind: Kind) -> Option<&'static KindHooks> {
    match kind {
        Kind::Channel => Some(&crate::channel::HOOKS),
        _ => None,
    }
}

/// One process's mapping of one segment, shared by all its handles on that segment.
#[derive(Debug)]
pub(crate) struct Region {
    name: String,
    fd: OwnedFd,
    map: sys::Mapping,
    header: HeaderCopy,
    kind: Kind,
    /// OFD locks do not exclude threads that share a description; this does.
    membership: Mutex<()>,
}

/// Parameters of a new segment.
pub(crate) struct CreateSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: Kind,
    pub(crate) data_len: u64,
    pub(crate) capacity: u32,
    pub(crate) flags: u32,
    pub(crate) populate: bool,
}

/// Holds the membership lock of a region: no participant attaches, detaches or is reclaimed
/// while it lives.
pub(crate) struct MembershipGuard<'a> {
    /// The description holding the lock: one of its own (closing it releases the lock), or
    /// the region's base descriptor where /proc is not there to open one.
    holder: Option<OwnedFd>,
    region: &'a Region,
    _local: MutexGuard<'a, ()>,
}

impl Drop for MembershipGuard<'_> {
    fn drop(&mut self) {
        let fd = self.holder.as_ref().unwrap_or(&self.region.fd);
        let _ = sys::unlock_byte(sys::borrow(fd), MEMBERSHIP_LOCK);
    }
}

/// Information about one participant slot in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Index of the slot in the segment's table.
    pub slot: u32,
    /// What the participant does.
    pub role: Option<Role>,
    /// Process id recorded when it attached (informative only: liveness never relies on it).
    pub pid: u32,
    /// Whether its process still holds its liveness lock.
    pub alive: bool,
    /// When it attached, in nanoseconds since the Unix epoch.
    pub attached_unix_ns: u64,
}

impl Region {
    /// Creates a segment and attaches one participant per entry of `roles`, running `init` on
    /// the data area before anyone can open it.
    pub(crate) fn create(
        spec: CreateSpec<'_>,
        roles: &[Role],
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        let name = spec.name;
        let os = os_name(name);
        let too_big = || Error::InvalidArgument {
            name: name.to_owned(),
            what: format!(
                "a data area of {} bytes does not fit in memory",
                spec.data_len
            ),
        };
        let data_offset = data_offset_for(spec.capacity);
        let total_len = data_offset.checked_add(spec.data_len).ok_or_else(too_big)?;
        let map_len = usize::try_from(total_len).map_err(|_| too_big())?;
        if spec.capacity > MAX_PARTICIPANTS || (spec.capacity == 0 && !roles.is_empty()) {
            return Err(Error::InvalidArgument {
                name: name.to_owned(),
                what: format!(
                    "participant capacity {} (1 to {MAX_PARTICIPANTS})",
                    spec.capacity
                ),
            });
        }

        let fd = sys::shm_create_exclusive(&os).map_err(|e| Error::from_io(name, "shm_open", e))?;
        // From here on, a failure must not leave the name behind.
        let unlink_on_error = |err: Error| {
            let _ = sys::shm_unlink(&os);
            err
        };
        // Held until initialised: gc() takes a segment whose creator lock is free and that never
        // got initialised for a leftover of a dead creator.
        // gc() may hold it for a moment while it looks at the new name.
        let deadline = Instant::now() + Duration::from_millis(500);
        let locked = sys::lock_byte_until(sys::borrow(&fd), CREATOR_LOCK, deadline)
            .map_err(|e| unlink_on_error(Error::from_io(name, "fcntl(F_OFD_SETLK)", e)))?;
        if !locked {
            return Err(unlink_on_error(Error::AlreadyExists {
                name: name.to_owned(),
            }));
        }
        if let Err(e) = sys::reserve(sys::borrow(&fd), total_len) {
            let err = match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::ENOMEM) => Error::OutOfSpace {
                    name: name.to_owned(),
                    requested: total_len,
                },
                _ => Error::from_io(name, "fallocate", e),
            };
            return Err(unlink_on_error(err));
        }
        let map = sys::map_shared(sys::borrow(&fd), map_len, spec.populate)
            .map_err(|e| unlink_on_error(Error::from_io(name, "mmap", e)))?;
        let header = HeaderCopy {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            kind: spec.kind as u32,
            total_len,
            creator_uid: sys::effective_uid(),
            creator_pid: sys::process_id(),
            created_unix_ns: unix_now_ns(),
            capacity: spec.capacity,
            flags: spec.flags,
            data_offset,
            data_len: spec.data_len,
            closed: 0,
            initialized: 0,
        };
        let region = Arc::new(Region {
            name: name.to_owned(),
            fd,
            map,
            header,
            kind: spec.kind,
            membership: Mutex::new(()),
        });
        region.write_header();
        // Declared before the membership guard is taken: if attaching a later role fails, the
        // participants attached so far must be dropped after the guard is released, because
        // dropping one takes the membership lock again.
        let mut participants = Vec::with_capacity(roles.len());
        let attached = init(&region).and_then(|()| {
            let _membership = region.lock_membership()?;
            region.attach_all_locked(roles, &mut participants)?;
            // Set last: openers wait for this word before trusting anything else.
            region.u32_at(H_INITIALIZED).store(1, Ordering::Release);
            Ok(())
        });
        if let Err(e) = attached {
            region.u32_at(H_CLOSED).store(1, Ordering::Release);
            drop(participants);
            return Err(unlink_on_error(e));
        }
        let _ = sys::unlock_byte(sys::borrow(&region.fd), CREATOR_LOCK);
        Ok((region, participants))
    }

    /// Opens an existing segment of `kind`, waiting up to [`READY_TIMEOUT`] for its creator to
    /// finish, checks its header, maps it and attaches one participant per role.
    pub(crate) fn open(
        name: &str,
        kind: Kind,
        roles: &[Role],
        populate: bool,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        Region::open_as(name, Some(kind), roles, populate)
    }

    /// Like [`Region::open`]; `kind` of `None` accepts any kind (for inspection tools).
    pub(crate) fn open_as(
        name: &str,
        kind: Option<Kind>,
        roles: &[Role],
        populate: bool,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        let os = os_name(name);
        let fd = sys::shm_open_existing(&os).map_err(|e| Error::from_io(name, "shm_open", e))?;
        let started = Instant::now();
        let header = loop {
            let copy = read_header(name, &fd)?;
            // A creator writes the magic first and `initialized` last; an opener that sees a
            // foreign magic fails at once, one that sees an unfinished header waits.
            let foreign = copy.magic != 0 && copy.magic != MAGIC;
            if foreign || copy.initialized == 1 {
                break copy;
            }
            if started.elapsed() >= READY_TIMEOUT {
                let file = sys::file_info(sys::borrow(&fd))
                    .map_err(|e| Error::from_io(name, "fstat", e))?;
                if file.size > 0 && file.size < HEADER_SIZE as u64 {
                    return Err(Error::incompatible(
                        name,
                        "file size",
                        format!("at least {HEADER_SIZE} bytes"),
                        format!("{} bytes", file.size),
                    ));
                }
                return Err(Error::NotReady {
                    name: name.to_owned(),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let file =
            sys::file_info(sys::borrow(&fd)).map_err(|e| Error::from_io(name, "fstat", e))?;
        let found_kind = header.validate(name, kind, file)?;
        if header.closed != 0 {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        }
        let map_len = usize::try_from(header.total_len)
            .map_err(|_| Error::corrupted(name, "segment larger than the address space"))?;
        let map = sys::map_shared(sys::borrow(&fd), map_len, populate)
            .map_err(|e| Error::from_io(name, "mmap", e))?;
        let region = Arc::new(Region {
            name: name.to_owned(),
            fd,
            map,
            header,
            kind: found_kind,
            membership: Mutex::new(()),
        });
        // Declared before the guard: see `create`.
        let mut participants = Vec::with_capacity(roles.len());
        {
            let _membership = region.lock_membership()?;
            if region.is_closed() {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                });
            }
            region.attach_all_locked(roles, &mut participants)?;
        }
        Ok((region, participants))
    }

    fn write_header(&self) {
        let h = &self.header;
        self.u64_at(H_MAGIC).store(h.magic, Ordering::Relaxed);
        self.u32_at(H_VERSION).store(h.version, Ordering::Relaxed);
        self.u32_at(H_KIND).store(h.kind, Ordering::Relaxed);
        self.u64_at(H_TOTAL_LEN)
            .store(h.total_len, Ordering::Relaxed);
        self.u32_at(H_CREATOR_UID)
            .store(h.creator_uid, Ordering::Relaxed);
        self.u32_at(H_CREATOR_PID)
            .store(h.creator_pid, Ordering::Relaxed);
        self.u64_at(H_CREATED_NS)
            .store(h.created_unix_ns, Ordering::Relaxed);
        self.u32_at(H_CAPACITY).store(h.capacity, Ordering::Relaxed);
        self.u32_at(H_FLAGS).store(h.flags, Ordering::Relaxed);
        self.u64_at(H_DATA_OFFSET)
            .store(h.data_offset, Ordering::Relaxed);
        self.u64_at(H_DATA_LEN).store(h.data_len, Ordering::Relaxed);
        self.u32_at(H_CLOSED).store(0, Ordering::Relaxed);
    }

    /// The segment's name as users give it (without the `shmq.` prefix).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The checked copy of the header taken at creation or open.
    pub(crate) fn header(&self) -> &HeaderCopy {
        &self.header
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Start of the data area.
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        // The header check guarantees data_offset <= total_len == mapping length.
        self.map
            .as_ptr()
            .wrapping_add(self.header.data_offset as usize)
    }

    /// Length of the data area in bytes.
    pub(crate) fn data_len(&self) -> usize {
        self.header.data_len as usize
    }

    /// An atomic view of the 32-bit word at `offset` of the mapping.
    /// Callers pass offsets of the fixed layout, which the header check keeps in bounds.
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.map.len(),
            "layout offset out of bounds"
        );
        // SAFETY: in bounds and aligned (checked above; the mapping is page aligned); the mapping
        // lives as long as &self, and all shared accesses to this word are atomic.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.map.len(),
            "layout offset out of bounds"
        );
        // SAFETY: as for u32_at.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn slot_offset(&self, slot: u32) -> usize {
        assert!(slot < self.header.capacity, "slot index out of range");
        HEADER_SIZE + SLOT_SIZE * slot as usize
    }

    /// Number of participant slots.
    pub(crate) fn capacity(&self) -> u32 {
        self.header.capacity
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.u32_at(H_CLOSED).load(Ordering::Acquire) != 0
    }

    fn lock_membership(&self) -> Result<MembershipGuard<'_>> {
        let local = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        // Locked through a description opened for this one operation: a child forked without
        // exec shares the base description, and would keep a lock taken through it held for
        // ever if the parent died holding it.
        let holder = sys::reopen(sys::borrow(&self.fd)).ok();
        let fd = holder.as_ref().unwrap_or(&self.fd);
        // Holders keep it for microseconds; a dead holder's lock is dropped by the kernel.
        let deadline = Instant::now() + Duration::from_secs(10);
        match sys::lock_byte_until(sys::borrow(fd), MEMBERSHIP_LOCK, deadline) {
            Ok(true) => Ok(MembershipGuard {
                holder,
                region: self,
                _local: local,
            }),
            Ok(false) => Err(Error::NotReady {
                name: self.name.clone(),
                waited: Duration::from_secs(10),
            }),
            Err(e) => Err(Error::from_io(&self.name, "fcntl(F_OFD_SETLK)", e)),
        }
    }

    /// Whether the participant in `slot` is attached and its process alive.
    pub(crate) fn is_alive(&self, slot: u32) -> bool {
        let base = self.slot_offset(slot);
        self.u32_at(base + S_STATE).load(Ordering::Acquire) == SLOT_ACTIVE
            && self.slot_lock_held(slot)
    }

    fn slot_lock_held(&self, slot: u32) -> bool {
        // An error here (EBADF, ENOLCK) can only come from a broken descriptor: count the slot
        // as alive, the safe answer, rather than reclaim what a live process may be using.
        sys::byte_locked_elsewhere(sys::borrow(&self.fd), SLOT_LOCK_BASE + slot as u64)
            .unwrap_or(true)
    }

    /// The role recorded in `slot`, if it is in use.
    pub(crate) fn slot_role(&self, slot: u32) -> Option<Role> {
        let base = self.slot_offset(slot);
        if self.u32_at(base + S_STATE).load(Ordering::Acquire) != SLOT_ACTIVE {
            return None;
        }
        Role::from_raw(self.u32_at(base + S_ROLE).load(Ordering::Relaxed))
    }

    /// Whether any live participant has `role`.
    pub(crate) fn any_alive_with_role(&self, role: Role) -> bool {
        (0..self.capacity()).any(|s| self.slot_role(s) == Some(role) && self.is_alive(s))
    }

    /// Every slot in use, with its liveness.
    pub(crate) fn participants(&self) -> Vec<ParticipantInfo> {
        (0..self.capacity())
            .filter_map(|slot| {
                let base = self.slot_offset(slot);
                if self.u32_at(base + S_STATE).load(Ordering::Acquire) != SLOT_ACTIVE {
                    return None;
                }
                Some(ParticipantInfo {
                    slot,
                    role: Role::from_raw(self.u32_at(base + S_ROLE).load(Ordering::Relaxed)),
                    pid: self.u32_at(base + S_PID).load(Ordering::Relaxed),
                    alive: self.slot_lock_held(slot),
                    attached_unix_ns: self.u64_at(base + S_ATTACHED_NS).load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// Attaches one participant per role, pushing each onto `into` as soon as it exists. The
    /// caller holds the membership lock and must drop `into` only after releasing it (dropping a
    /// participant takes the lock).
    fn attach_all_locked(
        self: &Arc<Self>,
        roles: &[Role],
        into: &mut Vec<Participant>,
    ) -> Result<()> {
        // Every attach frees what dead participants left, so that a long-lived segment whose
        // peers come and go never fills up with the dead or their memory.
        if !roles.is_empty() {
            self.reclaim_dead_locked();
        }
        for &role in roles {
            into.push(self.attach_locked(role)?);
        }
        Ok(())
    }

    fn attach_locked(self: &Arc<Self>, role: Role) -> Result<Participant> {
        // A description of our own: its lock marks this participant alive, and closing it (or
        // dying) releases exactly this participant.
        let fd = sys::shm_open_existing(&os_name(&self.name))
            .map_err(|e| Error::from_io(&self.name, "shm_open", e))?;
        // The name is opened again, so it must still be the object we mapped: if it was
        // removed and re-created meanwhile, a lock on the new object would make our slot in the
        // old one look dead (and hold a slot of the new one that no table entry accounts for).
        let same = sys::same_object(sys::borrow(&fd), sys::borrow(&self.fd))
            .map_err(|e| Error::from_io(&self.name, "fstat", e))?;
        if !same {
            return Err(Error::NotFound {
                name: self.name.clone(),
            });
        }
        for slot in 0..self.capacity() {
            let base = self.slot_offset(slot);
            let state = self.u32_at(base + S_STATE).load(Ordering::Acquire);
            if state == SLOT_ACTIVE && self.slot_lock_held(slot) {
                continue;
            }
            let lock_byte = SLOT_LOCK_BASE + slot as u64;
            match sys::try_lock_byte(sys::borrow(&fd), lock_byte) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(Error::from_io(&self.name, "fcntl(F_OFD_SETLK)", e)),
            }
            if state == SLOT_ACTIVE {
                self.reclaim_slot_locked(slot);
            }
            let generation = self.u64_at(base + S_GENERATION).load(Ordering::Relaxed);
            self.u32_at(base + S_ROLE)
                .store(role as u32, Ordering::Relaxed);
            self.u32_at(base + S_PID)
                .store(sys::process_id(), Ordering::Relaxed);
            self.u64_at(base + S_GENERATION)
                .store(generation.wrapping_add(1), Ordering::Relaxed);
            self.u64_at(base + S_ATTACHED_NS)
                .store(unix_now_ns(), Ordering::Relaxed);
            self.u32_at(base + S_STATE)
                .store(SLOT_ACTIVE, Ordering::Release);
            return Ok(Participant {
                region: Arc::clone(self),
                slot,
                role,
                fd: Some(fd),
            });
        }
        Err(Error::TooManyParticipants {
            name: self.name.clone(),
            capacity: self.capacity(),
        })
    }

    /// Runs the kind's reclaim for a dead participant and frees its slot. The caller holds the
    /// membership lock and the slot's lock.
    fn reclaim_slot_locked(&self, slot: u32) {
        if let Some(hooks) = hooks_for(self.kind) {
            (hooks.reclaim)(self, slot);
        }
        let base = self.slot_offset(slot);
        self.u32_at(base + S_STATE)
            .store(SLOT_FREE, Ordering::Release);
    }

    /// Reclaims every participant whose process died. Returns how many were reclaimed.
    pub(crate) fn reclaim_dead(&self) -> Result<usize> {
        let _membership = self.lock_membership()?;
        Ok(self.reclaim_dead_locked())
    }

    fn reclaim_dead_locked(&self) -> usize {
        let mut reclaimed = 0;
        for slot in 0..self.capacity() {
            let base = self.slot_offset(slot);
            if self.u32_at(base + S_STATE).load(Ordering::Acquire) != SLOT_ACTIVE {
                continue;
            }
            let lock_byte = SLOT_LOCK_BASE + slot as u64;
            // Our base description holds no slot locks, so success means nobody does.
            if let Ok(true) = sys::try_lock_byte(sys::borrow(&self.fd), lock_byte) {
                self.reclaim_slot_locked(slot);
                let _ = sys::unlock_byte(sys::borrow(&self.fd), lock_byte);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Marks the segment closed, releases what lies outside it and unlinks its name.
    fn destroy_locked(&self) {
        self.u32_at(H_CLOSED).store(1, Ordering::Release);
        if let Some(hooks) = hooks_for(self.kind) {
            (hooks.teardown)(self);
        }
        // Only if the name is still ours: after `Segment::remove` it may name a new segment.
        let _ = sys::shm_unlink_if_same(&os_name(&self.name), sys::borrow(&self.fd));
    }
}

/// One attached handle family: its slot in the table and the description whose lock says it is
/// alive. Dropping it detaches; the last live participant of an auto-unlinking segment unlinks.
#[derive(Debug)]
pub(crate) struct Participant {
    region: Arc<Region>,
    slot: u32,
    role: Role,
    fd: Option<OwnedFd>,
}

impl Participant {
    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        let region = &self.region;
        let Ok(_membership) = region.lock_membership() else {
            // Could not serialise with other members: just let go; the slot reads as dead and
            // the next attach or gc reclaims it.
            return;
        };
        let base = region.slot_offset(self.slot);
        region
            .u32_at(base + S_STATE)
            .store(SLOT_FREE, Ordering::Release);
        // Closing our description drops our slot lock.
        drop(self.fd.take());
        if region.header.flags & FLAG_AUTO_UNLINK == 0 || region.is_closed() {
            return;
        }
        let anyone_alive = (0..region.capacity()).any(|s| region.is_alive(s));
        if !anyone_alive {
            region.reclaim_dead_locked();
            region.destroy_locked();
        }
    }
}

/// A named shared-memory segment of raw bytes that several processes map.
///
/// The segment `foo` is the POSIX object `shmq.foo` (`/dev/shm/shmq.foo`). It is unlinked when the
/// last live handle on it is dropped, or by [`Segment::remove`]; one whose handles all died is
/// removed by [`gc`]. Each handle is a participant in the segment's table, so [`gc`] and the
/// `shmq` tool can tell whether anyone still uses it.
///
/// This is the counterpart of Python's `multiprocessing.shared_memory.SharedMemory`; channels and
/// shared values are built on the same machinery.
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// # let name = format!("doc-segment-{}", std::process::id());
/// let seg = shmq::Segment::create(&name, 4096)?;
/// assert_eq!(seg.len(), 4096);
/// // SAFETY: nobody else writes this segment in this example.
/// unsafe { seg.as_ptr().write(42) };
/// let other = shmq::Segment::open(&name)?; // normally in another process
/// // SAFETY: as above.
/// assert_eq!(unsafe { other.as_ptr().read() }, 42);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Segment {
    participant: Participant,
}

impl Segment {
    /// Creates segment `name` with `len` bytes of zeroed data, failing if it exists.
    ///
    /// The storage is reserved now: a full /dev/shm is [`Error::OutOfSpace`] here, never SIGBUS
    /// on a later write.
    pub fn create(name: &str, len: usize) -> Result<Segment> {
        validate_name(name)?;
        let spec = CreateSpec {
            name,
            kind: Kind::Raw,
            data_len: len as u64,
            capacity: DEFAULT_PARTICIPANTS,
            flags: FLAG_AUTO_UNLINK,
            populate: false,
        };
        let (_, mut participants) = Region::create(spec, &[Role::User], |_| Ok(()))?;
        Ok(Segment {
            participant: participants.remove(0),
        })
    }

    /// Opens the existing raw segment `name`.
    ///
    /// Waits up to two seconds for a creator that is still initialising it
    /// ([`Error::NotReady`] after that), and checks its header: a foreign file, another layout
    /// version, another kind, a size that disagrees with the header or another owner is an
    /// error, never a crash.
    pub fn open(name: &str) -> Result<Segment> {
        validate_name(name)?;
        let (_, mut participants) = Region::open(name, Kind::Raw, &[Role::User], false)?;
        Ok(Segment {
            participant: participants.remove(0),
        })
    }

    /// Unlinks segment `name` (of any kind) now. Processes that have it mapped keep using it;
    /// no new process can open it.
    pub fn remove(name: &str) -> Result<()> {
        validate_name(name)?;
        sys::shm_unlink(&os_name(name)).map_err(|e| Error::from_io(name, "shm_unlink", e))
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.participant.region.name()
    }

    /// Length of the data in bytes.
    pub fn len(&self) -> usize {
        self.participant.region.data_len()
    }

    /// Whether the segment holds no data bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start of the data: [`len`](Self::len) bytes, 4096-byte aligned, valid for reads and writes
    /// as long as this handle lives.
    ///
    /// Other processes may write the same bytes at any time: reading or writing through this
    /// pointer is `unsafe` and needs a protocol of the caller's (atomics, or a lock).
    pub fn as_ptr(&self) -> *mut u8 {
        self.participant.region.data_ptr()
    }

    /// The participants attached to this segment.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        self.participant.region.participants()
    }
}

/// What [`gc`] did with one object in /dev/shm.
fn collect_one(os: &str) -> Option<String> {
    let name = os.strip_prefix(OS_PREFIX)?;
    if let Some((parent, payload)) = name.split_once('~') {
        // An overflow payload `<channel>~<creation time>.<id>` lives as long as the channel
        // incarnation that made it. Gone when the channel's name is gone, or names a channel
        // created at another time (a leftover of an earlier channel of the same name).
        let orphan = match sys::shm_open_existing(&os_name(parent)) {
            Err(e) => e.raw_os_error() == Some(libc::ENOENT),
            Ok(fd) => {
                let made_by = payload
                    .split_once('.')
                    .and_then(|(time, _)| u64::from_str_radix(time, 16).ok());
                match (read_header(parent, &fd), made_by) {
                    (Ok(h), Some(time)) => h.initialized == 1 && h.created_unix_ns != time,
                    _ => false,
                }
            }
        };
        return (orphan && sys::shm_unlink(os).is_ok()).then(|| name.to_owned());
    }
    let fd = sys::shm_open_existing(os).ok()?;
    if !sys::try_lock_byte(sys::borrow(&fd), CREATOR_LOCK).ok()? {
        return None; // being created right now
    }
    let header = read_header(name, &fd).ok()?;
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
    header.validate(name, None, file).ok()?;
    let region = Region {
        name: name.to_owned(),
        map: sys::map_shared(sys::borrow(&fd), header.total_len as usize, false).ok()?,
        fd,
        kind: Kind::from_raw(header.kind)?,
        header,
        membership: Mutex::new(()),
    };
    if region.header.flags & FLAG_AUTO_UNLINK == 0 {
        return None;
    }
    let _membership = region.lock_membership().ok()?;
    if (0..region.capacity()).any(|s| region.is_alive(s)) {
        return None;
    }
    region.reclaim_dead_locked();
    region.destroy_locked();
    Some(name.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread and fails if it has not finished within a minute: a deadlock shows
    /// up as a failure instead of a hung test run.
    fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("did not finish within 60 s: deadlock")
    }

    fn spec(name: &str, capacity: u32) -> CreateSpec<'_> {
        CreateSpec {
            name,
            kind: Kind::Raw,
            data_len: 4096,
            capacity,
            flags: FLAG_AUTO_UNLINK,
            populate: false,
        }
    }

    fn exists(name: &str) -> bool {
        std::path::Path::new(sys::SHM_DIR)
            .join(os_name(name))
            .exists()
    }

    // Attaching several roles where a later one fails dropped the earlier participants while
    // the membership lock was held; their Drop takes that lock again and hung forever.
    #[test]
    fn create_with_more_roles_than_slots_fails_without_deadlock() {
        let name = format!("unit-create-roles-{}", std::process::id());
        let result = finishes({
            let name = name.clone();
            move || Region::create(spec(&name, 1), &[Role::User, Role::User], |_| Ok(())).err()
        });
        assert!(
            matches!(result, Some(Error::TooManyParticipants { capacity: 1, .. })),
            "{result:?}"
        );
        assert!(!exists(&name), "a failed create left its name behind");
    }

    #[test]
    fn open_with_more_roles_than_free_slots_fails_without_deadlock() {
        let name = format!("unit-open-roles-{}", std::process::id());
        let (_region, creator) = Region::create(spec(&name, 2), &[Role::User], |_| Ok(()))
            .expect("create a 2-slot segment");
        let result = finishes({
            let name = name.clone();
            move || {
                Region::open(&name, Kind::Raw, &[Role::User, Role::User], false)
                    .err()
                    .map(|e| e.to_string())
            }
        });
        let message = result.expect("opening two roles into one free slot must fail");
        assert!(message.contains("no free participant slot"), "{message}");
        // The partly attached opener let go of its slot: one more participant fits again.
        let (_r, again) = Region::open(&name, Kind::Raw, &[Role::User], false).expect("reopen");
        drop(again);
        drop(creator);
        assert!(!exists(&name), "the last detach did not unlink");
    }
}
