//! [`Segment`]: the public handle on a named segment of raw bytes.

use super::participants::{Participant, ParticipantInfo};
use super::region::{CreateSpec, Region};
use super::{validate_name, Kind, Role, DEFAULT_PARTICIPANTS, FLAG_AUTO_UNLINK};
use crate::error::Result;

/// A named shared-memory segment of raw bytes that several processes map.
///
/// The segment `foo` is the POSIX object `shmq.foo` (`/dev/shm/shmq.foo`). It is unlinked when the
/// last live handle on it is dropped, or by [`Segment::remove`] (defined beside
/// [`remove`](crate::remove), since removing a channel runs its teardown); one whose handles all
/// died is removed by [`gc`](crate::gc). Each handle is a participant in the segment's table, so
/// [`gc`](crate::gc) and the `shmq` tool can tell whether anyone still uses it.
///
/// This is the counterpart of Python's `multiprocessing.shared_memory.SharedMemory`; channels and
/// shared values are built on the same machinery.
///
/// # Soundness
///
/// shmq's trust model: peers are processes of the same user that may crash at any instant and
/// leave garbage behind, but are not malicious (a process of the same user could ptrace its
/// peers anyway). A `Segment` hands out only a raw pointer ([`as_ptr`](Segment::as_ptr)):
/// other processes may write the bytes at any time, so turning it into a reference is the
/// caller's `unsafe` promise that a protocol of its own (atomics, or a lock) excludes them. A
/// peer that truncates the file makes later accesses to the lost pages raise SIGBUS; `open`
/// refuses a file whose size disagrees with its header, but a mapping already made cannot be
/// protected without a signal handler, which a library should not install.
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
    /// The storage is reserved now: a full /dev/shm (out of bytes or of inodes) is
    /// [`Error::OutOfSpace`](crate::Error::OutOfSpace) here, never SIGBUS on a later write. A
    /// `len` that no segment can have (with the header, more than `i64::MAX` bytes, the largest
    /// file) is [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    pub fn create(name: &str, len: usize) -> Result<Segment> {
        validate_name(name)?;
        let spec = CreateSpec {
            name,
            kind: Kind::Raw,
            data_len: len as u64,
            capacity: DEFAULT_PARTICIPANTS,
            flags: FLAG_AUTO_UNLINK,
            populate: false,
            hooks: None,
        };
        let (_, mut participants) = Region::create(spec, &[Role::User], |_| Ok(()))?;
        Ok(Segment {
            participant: participants.remove(0),
        })
    }

    /// Opens the existing raw segment `name`.
    ///
    /// Waits up to two seconds for a creator that is still initialising it
    /// ([`Error::NotReady`](crate::Error::NotReady) after that), and checks its header: a
    /// foreign file, a symbolic link, another layout version, another kind, a size that
    /// disagrees with the header or another owner is an error, never a crash.
    pub fn open(name: &str) -> Result<Segment> {
        validate_name(name)?;
        let (_, mut participants) = Region::open(name, Kind::Raw, &[Role::User], false, None)?;
        Ok(Segment {
            participant: participants.remove(0),
        })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.participant.region().name()
    }

    /// Which creation of the segment named [`name`](Self::name) this handle is on: the
    /// segment's creation time in nanoseconds since the Unix epoch, recorded by its creator
    /// (what `gc` calls its incarnation). Every handle on one segment reports the same value;
    /// a segment created later under the same name reports another. A process that re-opens a
    /// segment by name compares it to the value it was given to know that it got the same one.
    pub fn incarnation(&self) -> u64 {
        self.participant.region().incarnation()
    }

    /// Length of the data in bytes.
    pub fn len(&self) -> usize {
        self.participant.region().data_len()
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
        self.participant.region().data_ptr()
    }

    /// The participants attached to this segment.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        self.participant.region().participants()
    }
}
