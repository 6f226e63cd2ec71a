//! [`SharedValue`]: one `T` in a named segment, and its guard.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;

use super::handle::{ElementGuard, Shared, Wait};
use super::lock::LockResult;
#[cfg(doc)]
use super::lock::{LockError, OwnerDiedError};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::segment::Kind;

/// One value of type `T` in a named shared-memory segment, behind a robust cross-process mutex.
///
/// The segment `foo` is `/dev/shm/shmq.foo`; it is unlinked when the last live handle on it (in
/// any process) is dropped, like every shmq segment. Handles are `Send + Sync` and cheap to
/// clone (clones share one participant slot); guards are neither, since a pthread mutex must be
/// unlocked by the thread that locked it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-value-{}", std::process::id());
/// let hits = shmq::SharedValue::<u64>::create(&name, 0)?;
/// *hits.lock()? += 1;
///
/// let other = shmq::SharedValue::<u64>::open(&name)?; // normally in another process
/// assert_eq!(other.load()?, 1);
/// other.store(7)?;
/// assert_eq!(*hits.try_lock()?, 7);
/// # Ok(()) }
/// ```
///
/// `open` checks the element size and alignment, not the type: a `SharedValue<i64>` or
/// `SharedValue<f64>` opens a segment created as `SharedValue<u64>` (memory-safe, since `T` is
/// `Pod`, but the bits are reinterpreted). To have a different type refused, create and open
/// with the same tag:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-value-tag-{}", std::process::id());
/// let price = shmq::SharedValue::<f64>::create_tagged(&name, 1.5, "price in EUR")?;
/// assert_eq!(shmq::SharedValue::<f64>::open_tagged(&name, "price in EUR")?.load()?, 1.5);
/// assert!(shmq::SharedValue::<f64>::open_tagged(&name, "price in USD").is_err());
/// assert!(shmq::SharedValue::<u64>::open(&name).is_err()); // untagged
/// # Ok(()) }
/// ```
///
/// If a process dies while holding the lock, the next lock returns
/// [`LockError::OwnerDied`] with the guard; see the [`OwnerDiedError`] example.
///
/// Guards cannot leave their thread:
///
/// ```compile_fail
/// fn needs_send<S: Send>(_: S) {}
/// let hits = shmq::SharedValue::<u64>::create("never-created", 0).unwrap();
/// needs_send(hits.lock().unwrap());
/// ```
#[derive(Clone)]
pub struct SharedValue<T: Pod> {
    shared: Shared<T>,
}

impl<T: Pod> SharedValue<T> {
    /// Creates the value segment `name` holding `value`, failing if it exists. It is untagged:
    /// any `SharedValue` of a type with `T`'s size and alignment opens it.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::OutOfSpace`],
    /// [`Error::InvalidArgument`] for a `T` aligned to more than 4096 bytes, [`Error::Io`].
    pub fn create(name: &str, value: T) -> Result<SharedValue<T>> {
        Self::create_tagged(name, value, "")
    }

    /// Creates the value segment `name` holding `value` under `tag`, failing if it exists:
    /// only [`open_tagged`](Self::open_tagged) with the same tag (and a type of `T`'s size and
    /// alignment) opens it. The empty tag is the same as [`create`](Self::create).
    ///
    /// Errors as for [`create`](Self::create).
    pub fn create_tagged(name: &str, value: T, tag: &str) -> Result<SharedValue<T>> {
        let shared = Shared::create(name, Kind::Value, 1, tag, |slots| slots.fill(value))?;
        Ok(SharedValue { shared })
    }

    /// Opens the existing untagged value segment `name`.
    ///
    /// Waits up to two seconds for a creator still initialising it ([`Error::NotReady`]).
    /// A segment of another kind (an array, a channel...), or whose elements differ from `T`
    /// in size or alignment, or that was created with a tag, is [`Error::Incompatible`]
    /// describing both sides; layout words that make no sense are [`Error::Corrupted`].
    pub fn open(name: &str) -> Result<SharedValue<T>> {
        Self::open_tagged(name, "")
    }

    /// Opens the existing value segment `name` created under `tag`.
    ///
    /// Errors as for [`open`](Self::open); a segment created under another tag (or none) is
    /// [`Error::Incompatible`]. Tags are compared whole (by a 64-bit hash); messages show their
    /// first 64 bytes.
    pub fn open_tagged(name: &str, tag: &str) -> Result<SharedValue<T>> {
        let shared = Shared::open(name, Kind::Value, tag)?;
        Ok(SharedValue { shared })
    }

    /// Locks the value, waiting as long as it takes. A holder that died never makes this wait
    /// forever: its death is reported as [`LockError::OwnerDied`] (with the guard).
    ///
    /// The lock is not re-entrant, and locking it again never deadlocks: on a thread that
    /// already holds this segment's lock (through this handle, a clone, or another handle on
    /// the same segment), `lock`, `try_lock` and `lock_timeout` return
    /// [`LockError::WouldDeadlock`] at once, and the guard already held keeps working.
    pub fn lock(&self) -> LockResult<SharedValueGuard<T>> {
        self.shared.lock(Wait::Forever, SharedValueGuard::new)
    }

    /// Locks the value if nobody holds the lock, else returns [`LockError::WouldBlock`]
    /// ([`LockError::WouldDeadlock`] if the holder is this thread).
    pub fn try_lock(&self) -> LockResult<SharedValueGuard<T>> {
        self.shared.lock(Wait::Never, SharedValueGuard::new)
    }

    /// Locks the value, waiting at most `timeout` (measured on the monotonic clock), else
    /// returns [`LockError::Timeout`] ([`LockError::WouldDeadlock`] at once if the holder is
    /// this thread).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<SharedValueGuard<T>> {
        self.shared.lock(Wait::For(timeout), SharedValueGuard::new)
    }

    /// A copy of the value, read under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] rather than
    /// return a possibly half-updated value; use [`lock`](Self::lock) to repair it. On a thread
    /// that holds the lock it fails at once ([`Error::Io`] of kind `Deadlock`): read through
    /// the guard instead.
    pub fn load(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] and leaves
    /// the value alone; use [`lock`](Self::lock) to repair it. On a thread that holds the lock
    /// it fails at once, as [`load`](Self::load) does.
    pub fn store(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Which creation of the segment named [`name`](Self::name) this handle is on: the
    /// segment's creation time in nanoseconds since the Unix epoch, recorded by its creator
    /// (what `gc` calls its incarnation). Every handle on one segment reports the same value;
    /// a segment created later under the same name reports another. A process that re-opens a
    /// segment by name compares it to the value it was given to know that it got the same one.
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation()
    }

    /// Raw pointer to the value, valid (and aligned) as long as this handle lives.
    ///
    /// For experts: other processes may access the value at any time, so reading or writing
    /// through this pointer is `unsafe` and must follow a protocol of the caller's (hold a guard
    /// while using it, or use only atomic operations, in every process).
    pub fn as_ptr(&self) -> *mut T {
        self.shared.as_ptr()
    }
}

impl<T: Pod> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.debug_struct(f, "SharedValue").finish()
    }
}

/// Holds the lock of a [`SharedValue`] and dereferences to its value; unlocks on drop.
///
/// It keeps the segment mapped (and attached) while it lives, even if every handle is dropped.
/// It is not `Send`: it must be dropped on the thread that locked.
///
/// # Soundness
///
/// The guard hands out references into memory that other processes can write. That is sound
/// only while every process follows the lock protocol: it touches the value only while holding
/// the lock, through shmq or an equivalent. Peers are assumed to possibly crash, leaving
/// garbage behind (which is harmless: `T: Pod` makes any bytes a valid `T`, and
/// [`LockError::OwnerDied`] tells you to check), but not to be malicious: a process that writes
/// the value without the lock breaks the protocol for everyone, as with any shared memory.
pub struct SharedValueGuard<T: Pod> {
    guard: ElementGuard<T>,
}

impl<T: Pod> SharedValueGuard<T> {
    fn new(guard: ElementGuard<T>) -> Self {
        SharedValueGuard { guard }
    }

    /// Declares the value repaired after [`LockError::OwnerDied`]: later locks return `Ok`
    /// again. Does nothing on a value that is not poisoned.
    pub fn mark_consistent(&mut self) {
        self.guard.mark_consistent();
    }
}

impl<T: Pod> Deref for SharedValueGuard<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // In bounds: State::check admits exactly one element in a value segment.
        &self.guard.elements()[0]
    }
}

impl<T: Pod> DerefMut for SharedValueGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // In bounds: as for deref.
        &mut self.guard.elements_mut()[0]
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedValueGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedValueGuard").field(&**self).finish()
    }
}
