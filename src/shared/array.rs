//! [`SharedArray`]: a fixed-length array of `T` in a named segment, and its guard.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;

use super::handle::{ElementGuard, Shared, Wait};
#[cfg(doc)]
use super::lock::LockError;
use super::lock::LockResult;
#[cfg(doc)]
use super::value::SharedValue;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::segment::Kind;

/// A fixed-length array of `T` in a named shared-memory segment, behind one robust
/// cross-process mutex.
///
/// Lifetime, naming, handles and element identity (size and alignment, plus an optional tag)
/// behave as for [`SharedValue`]. The guard dereferences to `[T]`. An empty array (length 0) is
/// allowed.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-array-{}", std::process::id());
/// let grid = shmq::SharedArray::<f64>::create(&name, 1000, 0.0)?;
/// {
///     let mut g = grid.lock()?;
///     g[3] = 1.5;
///     g[4..].fill(2.0);
/// }
/// let other = shmq::SharedArray::<f64>::open(&name)?; // normally in another process
/// assert_eq!(other.len(), 1000);
/// let copy: Vec<f64> = other.to_vec()?;
/// assert_eq!(&copy[..5], &[0.0, 0.0, 0.0, 1.5, 2.0]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedArray<T: Pod> {
    shared: Shared<T>,
}

impl<T: Pod> SharedArray<T> {
    /// Creates the untagged array segment `name` with `len` copies of `value`, failing if it
    /// exists.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::OutOfSpace`],
    /// [`Error::InvalidArgument`] if `len` elements overflow the address space or the largest
    /// segment (`i64::MAX` bytes with the header) or `T` is aligned to more than 4096 bytes,
    /// [`Error::Io`].
    pub fn create(name: &str, len: usize, value: T) -> Result<SharedArray<T>> {
        Self::create_tagged(name, len, value, "")
    }

    /// Creates the array segment `name` with `len` copies of `value` under `tag`, failing if
    /// it exists: only [`open_tagged`](Self::open_tagged) with the same tag opens it.
    ///
    /// Errors as for [`create`](Self::create).
    pub fn create_tagged(name: &str, len: usize, value: T, tag: &str) -> Result<SharedArray<T>> {
        let shared = Shared::create(name, Kind::Array, len, tag, |slots| {
            // The slots are zeroed already: skip writing zeroes, so that pages stay untouched
            // (and unallocated) until used.
            if bytemuck::bytes_of(&value).iter().any(|&b| b != 0) {
                slots.fill(value);
            }
        })?;
        Ok(SharedArray { shared })
    }

    /// Creates the untagged array segment `name` holding a copy of `values`, failing if it
    /// exists.
    ///
    /// Errors as for [`create`](Self::create).
    pub fn from_slice(name: &str, values: &[T]) -> Result<SharedArray<T>> {
        Self::from_slice_tagged(name, values, "")
    }

    /// Creates the array segment `name` holding a copy of `values` under `tag`, failing if it
    /// exists: only [`open_tagged`](Self::open_tagged) with the same tag opens it.
    ///
    /// Errors as for [`create`](Self::create).
    pub fn from_slice_tagged(name: &str, values: &[T], tag: &str) -> Result<SharedArray<T>> {
        let shared = Shared::create(name, Kind::Array, values.len(), tag, |slots| {
            slots.copy_from_slice(values)
        })?;
        Ok(SharedArray { shared })
    }

    /// Opens the existing untagged array segment `name`.
    ///
    /// Waits up to two seconds for a creator still initialising it ([`Error::NotReady`]).
    /// A segment of another kind, or whose elements differ from `T` in size or alignment, or
    /// that was created with a tag, is [`Error::Incompatible`] describing both sides; a stored
    /// length that does not fit the segment is [`Error::Corrupted`].
    pub fn open(name: &str) -> Result<SharedArray<T>> {
        Self::open_tagged(name, "")
    }

    /// Opens the existing array segment `name` created under `tag`.
    ///
    /// Errors as for [`open`](Self::open); a segment created under another tag (or none) is
    /// [`Error::Incompatible`].
    pub fn open_tagged(name: &str, tag: &str) -> Result<SharedArray<T>> {
        let shared = Shared::open(name, Kind::Array, tag)?;
        Ok(SharedArray { shared })
    }

    /// Locks the array, waiting as long as it takes. A holder that died never makes this wait
    /// forever: its death is reported as [`LockError::OwnerDied`] (with the guard).
    ///
    /// The lock is not re-entrant, and locking it again never deadlocks: on a thread that
    /// already holds this segment's lock (through this handle, a clone, or another handle on
    /// the same segment), `lock`, `try_lock` and `lock_timeout` return
    /// [`LockError::WouldDeadlock`] at once, and the guard already held keeps working.
    pub fn lock(&self) -> LockResult<SharedArrayGuard<T>> {
        self.shared.lock(Wait::Forever, SharedArrayGuard::new)
    }

    /// Locks the array if nobody holds the lock, else returns [`LockError::WouldBlock`]
    /// ([`LockError::WouldDeadlock`] if the holder is this thread).
    pub fn try_lock(&self) -> LockResult<SharedArrayGuard<T>> {
        self.shared.lock(Wait::Never, SharedArrayGuard::new)
    }

    /// Locks the array, waiting at most `timeout` (measured on the monotonic clock), else
    /// returns [`LockError::Timeout`] ([`LockError::WouldDeadlock`] at once if the holder is
    /// this thread).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<SharedArrayGuard<T>> {
        self.shared.lock(Wait::For(timeout), SharedArrayGuard::new)
    }

    /// A copy of the elements, taken under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] rather than
    /// return possibly half-updated data; use [`lock`](Self::lock) to repair it. On a thread
    /// that holds the lock it fails at once ([`Error::Io`] of kind `Deadlock`).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// Number of elements (fixed at creation).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Raw pointer to the first of [`len`](Self::len) elements, valid (and aligned) as long as
    /// this handle lives.
    ///
    /// For experts: other processes may access the elements at any time, so reading or writing
    /// through this pointer is `unsafe` and must follow a protocol of the caller's (hold a guard
    /// while using it, or use only atomic operations, in every process).
    pub fn as_ptr(&self) -> *mut T {
        self.shared.as_ptr()
    }
}

impl<T: Pod> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared
            .debug_struct(f, "SharedArray")
            .field("len", &self.len())
            .finish()
    }
}

/// Holds the lock of a [`SharedArray`] and dereferences to its elements as `[T]`; unlocks on
/// drop.
///
/// It keeps the segment mapped (and attached) while it lives, even if every handle is dropped.
/// It is not `Send`: it must be dropped on the thread that locked.
///
/// # Soundness
///
/// The guard hands out references into memory that other processes can write. That is sound
/// only while every process follows the lock protocol: it touches the elements only while
/// holding the lock, through shmq or an equivalent. Peers are assumed to possibly crash, leaving
/// garbage behind (which is harmless: `T: Pod` makes any bytes a valid `T`, and
/// [`LockError::OwnerDied`] tells you to check), but not to be malicious: a process that writes
/// the elements without the lock breaks the protocol for everyone, as with any shared memory.
pub struct SharedArrayGuard<T: Pod> {
    guard: ElementGuard<T>,
}

impl<T: Pod> SharedArrayGuard<T> {
    fn new(guard: ElementGuard<T>) -> Self {
        SharedArrayGuard { guard }
    }

    /// Declares the elements repaired after [`LockError::OwnerDied`]: later locks return `Ok`
    /// again. Does nothing on an array that is not poisoned.
    pub fn mark_consistent(&mut self) {
        self.guard.mark_consistent();
    }
}

impl<T: Pod> Deref for SharedArrayGuard<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.guard.elements()
    }
}

impl<T: Pod> DerefMut for SharedArrayGuard<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.guard.elements_mut()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedArrayGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedArrayGuard").field(&&**self).finish()
    }
}
