//! The participant table: one 64-byte slot per attached handle family, alive while its OFD lock
//! is held. Attaching, detaching, liveness and the reclaim of dead participants.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::region::{MembershipGuard, Region};
use super::{unix_now_ns, Role, FLAG_AUTO_UNLINK, HEADER_SIZE, SLOT_LOCK_BASE, SLOT_SIZE};
use crate::error::{Error, Result};
use crate::sys;

// Participant slot field offsets.
const S_STATE: usize = 0;
const S_ROLE: usize = 4;
const S_PID: usize = 8;
const S_GENERATION: usize = 16;
const S_ATTACHED_NS: usize = 24;

const SLOT_FREE: u32 = 0;
const SLOT_ACTIVE: u32 = 1;

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
    pub(super) fn slot_offset(&self, slot: u32) -> usize {
        assert!(slot < self.header.capacity, "slot index out of range");
        HEADER_SIZE + SLOT_SIZE * slot as usize
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

    /// How many participants are attached and alive.
    pub(crate) fn alive_count(&self) -> usize {
        (0..self.capacity()).filter(|&s| self.is_alive(s)).count()
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
    pub(super) fn attach_all_locked(
        self: &Arc<Self>,
        membership: &MembershipGuard<'_>,
        roles: &[Role],
        into: &mut Vec<Participant>,
    ) -> Result<()> {
        // Every attach frees what dead participants left, so that a long-lived segment whose
        // peers come and go never fills up with the dead or their memory.
        if !roles.is_empty() {
            self.reclaim_dead_locked(membership);
        }
        for &role in roles {
            into.push(self.attach_locked(role)?);
        }
        Ok(())
    }

    fn attach_locked(self: &Arc<Self>, role: Role) -> Result<Participant> {
        // A description of our own: its lock marks this participant alive, and closing it (or
        // dying) releases exactly this participant. Of the object this region maps (not of
        // whatever the name refers to now, which may be a new segment), and registered, so that
        // a forked child lets go of it.
        let fd = sys::LivenessFd::open(
            || self.own_description(),
            |e| Error::from_io(&self.name, "register a liveness descriptor", e),
        )?;
        for slot in 0..self.capacity() {
            let base = self.slot_offset(slot);
            let state = self.u32_at(base + S_STATE).load(Ordering::Acquire);
            if state == SLOT_ACTIVE && self.slot_lock_held(slot) {
                continue;
            }
            let lock_byte = SLOT_LOCK_BASE + slot as u64;
            match sys::try_lock_byte(fd.as_fd(), lock_byte) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(Error::from_io(&self.name, "fcntl(F_OFD_SETLK)", e)),
            }
            if state == SLOT_ACTIVE && !self.reclaim_slot_locked(slot) {
                // Its dead holder's state could not be freed now: leave the slot for later.
                let _ = sys::unlock_byte(fd.as_fd(), lock_byte);
                continue;
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
                fork_generation: sys::fork_generation(),
            });
        }
        Err(Error::TooManyParticipants {
            name: self.name.clone(),
            capacity: self.capacity(),
        })
    }

    /// Runs the kind's reclaim for a dead participant and frees its slot. The caller holds the
    /// membership lock and the slot's lock. Returns false, leaving the slot as it is, if the
    /// kind's reclaim could not finish.
    fn reclaim_slot_locked(self: &Arc<Self>, slot: u32) -> bool {
        if let Some(hooks) = self.hooks {
            if !(hooks.reclaim)(self, slot) {
                return false;
            }
        }
        let base = self.slot_offset(slot);
        self.u32_at(base + S_STATE)
            .store(SLOT_FREE, Ordering::Release);
        true
    }

    /// Reclaims every participant whose process died, if the membership lock is free now
    /// (`None` if it is not: someone else is attaching, detaching or reclaiming). Returns how
    /// many were reclaimed.
    pub(crate) fn try_reclaim_dead(self: &Arc<Self>) -> Option<usize> {
        let membership = self.lock_membership_until(Instant::now()).ok()?;
        Some(self.reclaim_dead_locked(&membership))
    }

    pub(super) fn reclaim_dead_locked(self: &Arc<Self>, membership: &MembershipGuard<'_>) -> usize {
        let mut reclaimed = 0;
        for slot in 0..self.capacity() {
            let base = self.slot_offset(slot);
            if self.u32_at(base + S_STATE).load(Ordering::Acquire) != SLOT_ACTIVE {
                continue;
            }
            let lock_byte = SLOT_LOCK_BASE + slot as u64;
            // The membership guard's description is this operation's own and holds no slot
            // locks, so success means nobody does.
            if let Ok(true) = sys::try_lock_byte(membership.fd(), lock_byte) {
                if self.reclaim_slot_locked(slot) {
                    reclaimed += 1;
                }
                let _ = sys::unlock_byte(membership.fd(), lock_byte);
            }
        }
        reclaimed
    }
}

/// One attached handle family: its slot in the table and the description whose lock says it is
/// alive. Dropping it detaches; the last live participant of an auto-unlinking segment unlinks.
///
/// A participant inherited through `fork` is its parent's: in the child it is inert, and its
/// drop leaves the parent's slot alone (the child let go of its liveness description at the
/// fork already; see `sys::LivenessFd`).
#[derive(Debug)]
pub(crate) struct Participant {
    region: Arc<Region>,
    slot: u32,
    role: Role,
    fd: Option<sys::LivenessFd>,
    /// [`sys::fork_generation`] when it attached.
    fork_generation: u64,
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

    /// Whether this participant was inherited through `fork` (it is the parent's).
    pub(crate) fn is_inherited(&self) -> bool {
        self.fork_generation != sys::fork_generation()
    }

    /// Lets go without detaching: the slot reads as dead, and the next attach or gc reclaims
    /// it. For a detach whose cleanup could not be done now.
    pub(crate) fn abandon(mut self) {
        self.release_liveness();
    }

    /// Releases the liveness lock (explicitly, so that the copy a concurrently forked child may
    /// hold does not keep it) and closes the description.
    fn release_liveness(&mut self) {
        if let Some(fd) = self.fd.take() {
            if !self.is_inherited() {
                let _ = sys::unlock_byte(fd.as_fd(), SLOT_LOCK_BASE + self.slot as u64);
            }
        }
    }
}

/// How long dropping a participant waits for the membership lock before it lets go without
/// detaching (which leaves the slot to the next attach or gc).
const DETACH_TIMEOUT: Duration = Duration::from_millis(100);

impl Drop for Participant {
    fn drop(&mut self) {
        if self.fd.is_none() {
            return; // abandoned
        }
        if self.is_inherited() {
            // The parent's: the description is /dev/null in this process already.
            drop(self.fd.take());
            return;
        }
        let region = Arc::clone(&self.region);
        let Ok(membership) = region.lock_membership_until(Instant::now() + DETACH_TIMEOUT) else {
            // Could not serialise with other members (a stopped holder): just let go; the slot
            // reads as dead and the next attach or gc reclaims it.
            self.release_liveness();
            return;
        };
        let base = region.slot_offset(self.slot);
        region
            .u32_at(base + S_STATE)
            .store(SLOT_FREE, Ordering::Release);
        self.release_liveness();
        if region.header.flags & FLAG_AUTO_UNLINK == 0 || region.is_closed() {
            return;
        }
        let anyone_alive = (0..region.capacity()).any(|s| region.is_alive(s));
        if !anyone_alive {
            region.reclaim_dead_locked(&membership);
            region.destroy_locked();
        }
    }
}
