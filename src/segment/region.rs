//! One process's mapping of one segment: creating it, opening it, its membership lock and its
//! teardown.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::header::{
    data_offset_for, read_header, HeaderCopy, H_CLOSED, H_INITIALIZED, H_MEMBERSHIP_HOLDER,
};
use super::object::{open_checked, TombstoneName};
use super::participants::Participant;
use super::{
    os_name, unix_now_ns, Kind, KindHooks, Role, CREATOR_LOCK, HEADER_SIZE, LAYOUT_VERSION, MAGIC,
    MAX_PARTICIPANTS, MEMBERSHIP_LOCK, READY_TIMEOUT,
};
use crate::error::{Error, Result};
use crate::sys::{self, SharedAtomic};

/// One process's mapping of one segment, shared by all its handles on that segment.
#[derive(Debug)]
pub(crate) struct Region {
    pub(super) name: String,
    pub(super) fd: OwnedFd,
    pub(super) map: sys::Mapping,
    pub(super) header: HeaderCopy,
    pub(super) kind: Kind,
    /// What the kind frees when a participant dies or the segment goes; handed in by the kind.
    pub(super) hooks: Option<&'static KindHooks>,
    /// OFD locks do not exclude threads that share a description; this does.
    pub(super) membership: LocalLock,
}

/// Parameters of a new segment.
pub(crate) struct CreateSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: Kind,
    pub(crate) data_len: u64,
    pub(crate) capacity: u32,
    pub(crate) flags: u32,
    pub(crate) populate: bool,
    /// The kind's reclaim and teardown, if it has any.
    pub(crate) hooks: Option<&'static KindHooks>,
}

/// Excludes this process's threads from one region's membership operations (OFD locks do not
/// exclude threads that share a description). Not a `std::sync::Mutex`: a fork while one of
/// the parent's threads holds it would leave the child's copy locked for ever. The word holds
/// the fork generation of its holder plus one; in a child, a hold from an earlier generation
/// belongs to a thread that does not exist there, and is taken over.
#[derive(Debug, Default)]
pub(crate) struct LocalLock(AtomicU64);

/// A hold of a [`LocalLock`]; released on drop.
pub(super) struct LocalHold<'a>(&'a LocalLock);

impl LocalLock {
    fn try_hold(&self) -> Option<LocalHold<'_>> {
        let mine = sys::fork_generation().wrapping_add(1);
        let current = self.0.load(Ordering::Acquire);
        if current == mine {
            return None; // another thread of this process holds it
        }
        self.0
            .compare_exchange(current, mine, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| LocalHold(self))
    }
}

impl Drop for LocalHold<'_> {
    fn drop(&mut self) {
        self.0 .0.store(0, Ordering::Release);
    }
}

/// How long `open` and `create` wait for the membership lock. Holders keep it for
/// microseconds (plus bounded reclaims); only a stopped holder keeps it longer.
pub(crate) const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(2);

/// Holds the membership lock of a region: no participant attaches, detaches or is reclaimed
/// while it lives.
pub(super) struct MembershipGuard<'a> {
    /// The description holding the lock, opened for this one operation (closing it releases the
    /// lock, and a child forked meanwhile lets go of it).
    holder: sys::LivenessFd,
    region: &'a Region,
    _local: LocalHold<'a>,
}

impl MembershipGuard<'_> {
    /// A description of this operation's own, through which reclaims take dead slots' locks
    /// (a child forked without exec shares the region's base description).
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.holder.as_fd()
    }
}

impl Drop for MembershipGuard<'_> {
    fn drop(&mut self) {
        self.region
            .u32_at(H_MEMBERSHIP_HOLDER)
            .store(0, Ordering::Release);
        let _ = sys::unlock_byte(self.holder.as_fd(), MEMBERSHIP_LOCK);
    }
}
impl Region {
    /// Creates a segment and attaches one participant per entry of `roles`, running `init` on
    /// the data area before anyone can open it.
    pub(crate) fn create(
        spec: CreateSpec<'_>,
        roles: &[Role],
        init: impl FnOnce(&Arc<Region>) -> Result<()>,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        let name = spec.name;
        let os = os_name(name);
        let data_offset = data_offset_for(spec.capacity);
        // Checked before anything exists: a size no segment can have is InvalidArgument.
        let map_len = super::segment_len(name, spec.capacity, spec.data_len)?;
        let total_len = map_len as u64;
        if spec.capacity > MAX_PARTICIPANTS || (spec.capacity == 0 && !roles.is_empty()) {
            return Err(Error::InvalidArgument {
                name: name.to_owned(),
                what: format!(
                    "participant capacity {} (1 to {MAX_PARTICIPANTS})",
                    spec.capacity
                ),
            });
        }

        // ENOSPC here is a /dev/shm out of inodes: OutOfSpace, like a lack of bytes below.
        let fd = sys::shm_create_exclusive(&os)
            .map_err(|e| Error::from_io_creating(name, "shm_open", e, total_len))?;
        // From here on, a failure must not leave the name behind.
        let unlink_on_error = |err: Error| {
            let _ = sys::shm_unlink(&os);
            err
        };
        // Held until initialised: gc() takes a segment whose creator lock is free and that never
        // got initialised for a leftover of a dead creator.
        // gc() may hold it for a moment while it looks at the new name. Taken through a
        // registered description of its own where /proc allows, so that a child forked during
        // the creation does not keep it held after a dying parent (which would make the
        // leftover look as if it were still being created).
        let creator = sys::LivenessFd::open(|| sys::reopen(sys::borrow(&fd)), |e| e).ok();
        let creator_fd = creator.as_ref().map_or(sys::borrow(&fd), |c| c.as_fd());
        let deadline = Instant::now() + Duration::from_millis(500);
        let locked = sys::lock_byte_until(creator_fd, CREATOR_LOCK, deadline)
            .map_err(|e| unlink_on_error(Error::from_io(name, "fcntl(F_OFD_SETLK)", e)))?;
        if !locked {
            return Err(unlink_on_error(Error::AlreadyExists {
                name: name.to_owned(),
            }));
        }
        if let Err(e) = sys::reserve(sys::borrow(&fd), total_len) {
            let err = Error::from_io_creating(name, "fallocate", e, total_len);
            return Err(unlink_on_error(err));
        }
        let map = sys::Mapping::new(sys::borrow(&fd), map_len, spec.populate)
            .map_err(|e| unlink_on_error(Error::from_io_creating(name, "mmap", e, total_len)))?;
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
            hooks: spec.hooks,
            membership: LocalLock::default(),
        });
        region.header.write(&region.map);
        // Declared before the membership guard is taken: if attaching a later role fails, the
        // participants attached so far must be dropped after the guard is released, because
        // dropping one takes the membership lock again.
        let mut participants = Vec::with_capacity(roles.len());
        let attached = init(&region).and_then(|()| {
            let membership = region.lock_membership()?;
            region.attach_all_locked(&membership, roles, &mut participants)?;
            // Set last: openers wait for this word before trusting anything else.
            region.u32_at(H_INITIALIZED).store(1, Ordering::Release);
            Ok(())
        });
        if let Err(e) = attached {
            region.u32_at(H_CLOSED).store(1, Ordering::Release);
            drop(participants);
            return Err(unlink_on_error(e));
        }
        let creator_fd = creator
            .as_ref()
            .map_or(sys::borrow(&region.fd), |c| c.as_fd());
        let _ = sys::unlock_byte(creator_fd, CREATOR_LOCK);
        Ok((region, participants))
    }

    /// Opens an existing segment of `kind`, waiting up to [`READY_TIMEOUT`] for its creator to
    /// finish, checks its header, maps it and attaches one participant per role.
    pub(crate) fn open(
        name: &str,
        kind: Kind,
        roles: &[Role],
        populate: bool,
        hooks: Option<&'static KindHooks>,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        Region::open_as(name, Some(kind), roles, populate, hooks, READY_TIMEOUT)
    }

    /// Opens a segment of `kind` that is complete before anyone is told of it (an overflow
    /// payload, published only once written), attaching nothing: an unfinished one is
    /// [`Error::NotReady`] at once, without the wait for a creator that [`Region::open`] allows.
    pub(crate) fn open_finished(name: &str, kind: Kind, populate: bool) -> Result<Arc<Region>> {
        Region::open_as(name, Some(kind), &[], populate, None, Duration::ZERO).map(|(r, _)| r)
    }

    /// Like [`Region::open`]; `kind` of `None` accepts any kind, and an unfinished segment is
    /// waited for up to `ready_timeout`.
    fn open_as(
        name: &str,
        kind: Option<Kind>,
        roles: &[Role],
        populate: bool,
        hooks: Option<&'static KindHooks>,
        ready_timeout: Duration,
    ) -> Result<(Arc<Region>, Vec<Participant>)> {
        let os = os_name(name);
        // Checked before anything is read or mapped: a regular file of ours, not a link.
        let (fd, _) = open_checked(name, &os)?;
        let started = Instant::now();
        let header = loop {
            let copy = read_header(name, sys::borrow(&fd))?;
            // A creator writes the magic first and `initialized` last; an opener that sees a
            // foreign magic fails at once, one that sees an unfinished header waits.
            let foreign = copy.magic != 0 && copy.magic != MAGIC;
            if foreign || copy.initialized == 1 {
                break copy;
            }
            if started.elapsed() >= ready_timeout {
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
        let map = sys::Mapping::new(sys::borrow(&fd), map_len, populate)
            .map_err(|e| Error::from_io(name, "mmap", e))?;
        let region = Arc::new(Region {
            name: name.to_owned(),
            fd,
            map,
            header,
            kind: found_kind,
            hooks,
            membership: LocalLock::default(),
        });
        if roles.is_empty() {
            // Nothing to attach (an overflow payload, an inspection): no membership lock, which
            // a stopped attacher may hold.
            if region.is_closed() {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                });
            }
            return Ok((region, Vec::new()));
        }
        // Declared before the guard: see `create`.
        let mut participants = Vec::with_capacity(roles.len());
        {
            let membership = region.lock_membership()?;
            if region.is_closed() {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                });
            }
            region.attach_all_locked(&membership, roles, &mut participants)?;
        }
        Ok((region, participants))
    }

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

    /// Which creation of the segment under this name this is: its creator's `created_unix_ns`,
    /// from the checked copy of the header.
    pub(crate) fn incarnation(&self) -> u64 {
        self.header.created_unix_ns
    }

    /// Start of the data area.
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        // The header check guarantees data_offset <= total_len == mapping length.
        self.map
            .as_ptr()
            .wrapping_add(self.header.data_offset as usize)
    }

    /// Asks the kernel to fill the page tables of the mapping for reading now (best effort).
    pub(crate) fn prefault_data(&self) {
        self.map.prefault_read();
    }

    /// Length of the data area in bytes.
    pub(crate) fn data_len(&self) -> usize {
        self.header.data_len as usize
    }

    /// An atomic view of the 32-bit word at `offset` of the mapping.
    /// Callers pass offsets of the fixed layout, which the header check keeps in bounds.
    pub(super) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.map
            .atomic(offset)
            .expect("segment layout offset in bounds")
    }

    pub(super) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.map
            .atomic(offset)
            .expect("segment layout offset in bounds")
    }

    /// A [`sys::Window`] on the data area, for a kind's hot path.
    ///
    /// # Safety
    /// As for [`sys::Mapping::window`]: the caller keeps this region alive (an `Arc` of it)
    /// for as long as it uses the window.
    pub(crate) unsafe fn data_window(&self) -> sys::Window {
        // SAFETY: the caller keeps the region, and so its mapping, alive; the header check
        // guarantees the data area lies inside the mapping and starts page aligned.
        unsafe {
            self.map
                .window(self.header.data_offset as usize, self.data_len())
        }
        .expect("the data area lies inside the mapping")
    }

    /// The word of type `A` at byte `offset` of the data area, if it lies inside the data area
    /// and is aligned for `A`. Kinds reach their shared words through this.
    #[inline]
    pub(crate) fn data_atomic<A: SharedAtomic>(&self, offset: usize) -> Option<&A> {
        // The header check guarantees data_offset + data_len == the mapping's length, so the
        // mapping's bounds check is the data area's.
        self.map
            .atomic(offset.checked_add(self.header.data_offset as usize)?)
    }

    /// Number of participant slots.
    pub(crate) fn capacity(&self) -> u32 {
        self.header.capacity
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.u32_at(H_CLOSED).load(Ordering::Acquire) != 0
    }

    /// Takes the membership lock, waiting up to [`MEMBERSHIP_TIMEOUT`].
    pub(super) fn lock_membership(&self) -> Result<MembershipGuard<'_>> {
        self.lock_membership_until(Instant::now() + MEMBERSHIP_TIMEOUT)
    }

    /// Takes the membership lock, waiting until `deadline`; past it, fails with
    /// [`Error::LockTimeout`] naming the holder.
    pub(super) fn lock_membership_until(&self, deadline: Instant) -> Result<MembershipGuard<'_>> {
        let started = Instant::now();
        let timed_out = || Error::LockTimeout {
            name: self.name.clone(),
            lock: "membership",
            holder_pid: Some(self.u32_at(H_MEMBERSHIP_HOLDER).load(Ordering::Acquire))
                .filter(|&pid| pid != 0),
            waited: started.elapsed(),
        };
        // Threads of this process first (OFD locks do not exclude threads that share a
        // description). Polled rather than blocked on, so that the deadline holds here too.
        let local = loop {
            if let Some(hold) = self.membership.try_hold() {
                break hold;
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        // Locked through a description opened for this one operation: a child forked without
        // exec shares the base description, and would keep a lock taken through it held for
        // ever if the parent died holding it.
        let holder = sys::LivenessFd::open(
            || self.own_description(),
            |e| Error::from_io(&self.name, "register a liveness descriptor", e),
        )?;
        // Holders keep it for microseconds; a dead holder's lock is dropped by the kernel.
        match sys::lock_byte_until(holder.as_fd(), MEMBERSHIP_LOCK, deadline) {
            Ok(true) => {
                self.u32_at(H_MEMBERSHIP_HOLDER)
                    .store(sys::process_id(), Ordering::Release);
                Ok(MembershipGuard {
                    holder,
                    region: self,
                    _local: local,
                })
            }
            Ok(false) => Err(timed_out()),
            Err(e) => Err(Error::from_io(&self.name, "fcntl(F_OFD_SETLK)", e)),
        }
    }

    /// A new open file description of this region's object, whose locks are its own:
    /// through /proc/self/fd (always the same object), or, where /proc is not mounted, by name,
    /// checked to be the object this region maps (the name may have been removed and reused).
    pub(super) fn own_description(&self) -> Result<OwnedFd> {
        if let Ok(fd) = sys::reopen(sys::borrow(&self.fd)) {
            return Ok(fd);
        }
        let (fd, _) = open_checked(&self.name, &os_name(&self.name))?;
        let same = sys::same_object(sys::borrow(&fd), sys::borrow(&self.fd))
            .map_err(|e| Error::from_io(&self.name, "fstat", e))?;
        if !same {
            return Err(Error::NotFound {
                name: self.name.clone(),
            });
        }
        Ok(fd)
    }

    /// The pid recorded by the holder of the membership lock, if it is held (informative).
    pub(crate) fn membership_holder(&self) -> Option<u32> {
        Some(self.u32_at(H_MEMBERSHIP_HOLDER).load(Ordering::Acquire)).filter(|&pid| pid != 0)
    }

    /// Attaches one more participant with `role` to this open region (a handle inherited
    /// through `fork` registering as the child's own).
    pub(crate) fn attach(self: &Arc<Self>, role: Role, deadline: Instant) -> Result<Participant> {
        let mut participants = Vec::with_capacity(1);
        {
            let membership = self.lock_membership_until(deadline)?;
            if self.is_closed() {
                return Err(Error::NotFound {
                    name: self.name.clone(),
                });
            }
            self.attach_all_locked(&membership, &[role], &mut participants)?;
        }
        participants
            .pop()
            .ok_or_else(|| Error::corrupted(&self.name, "participant missing after attach"))
    }

    /// Marks the segment closed, releases what lies outside it and unlinks its name (and its
    /// tombstone, if it was removed while in use).
    pub(super) fn destroy_locked(self: &Arc<Self>) {
        self.u32_at(H_CLOSED).store(1, Ordering::Release);
        if let Some(hooks) = self.hooks {
            (hooks.teardown)(self);
        }
        // Only if the name is still ours: after `Segment::remove` it may name a new segment.
        let _ = sys::shm_unlink_if_same(&os_name(&self.name), sys::borrow(&self.fd));
        // A segment removed while in use lived on under its tombstone until now.
        let tombstone = TombstoneName::format(&self.name, self.header.created_unix_ns);
        let _ = sys::shm_unlink_if_same(&os_name(&tombstone), sys::borrow(&self.fd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::FLAG_AUTO_UNLINK;

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
            hooks: None,
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
                Region::open(&name, Kind::Raw, &[Role::User, Role::User], false, None)
                    .err()
                    .map(|e| e.to_string())
            }
        });
        let message = result.expect("opening two roles into one free slot must fail");
        assert!(message.contains("no free participant slot"), "{message}");
        // The partly attached opener let go of its slot: one more participant fits again.
        let (_r, again) =
            Region::open(&name, Kind::Raw, &[Role::User], false, None).expect("reopen");
        drop(again);
        drop(creator);
        assert!(!exists(&name), "the last detach did not unlink");
    }
}
