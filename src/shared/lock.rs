//! Why a lock call did not simply return a guard: [`LockError`], [`OwnerDiedError`], and their
//! conversion into [`crate::Error`].

use std::fmt;
use std::io;
use std::time::Duration;

use crate::error::Error;
use crate::sys;

/// The result of locking a [`SharedValue`](crate::SharedValue) or
/// [`SharedArray`](crate::SharedArray): the guard, or why there is none (or, for
/// [`LockError::OwnerDied`], a guard on data that may need repair).
pub type LockResult<G> = std::result::Result<G, LockError<G>>;

/// Why a lock call on a [`SharedValue`](crate::SharedValue) or
/// [`SharedArray`](crate::SharedArray) did not simply return a guard.
///
/// `?` converts it into a [`crate::Error`] (dropping any guard; see the `From` impl) or, since
/// guards own what they need and are `'static`, into a `Box<dyn std::error::Error>`:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let name = format!("doc-lockerror-{}", std::process::id());
/// let hits = shmq::SharedValue::<u64>::create(&name, 0)?;
/// fn bump(hits: &shmq::SharedValue<u64>) -> shmq::Result<()> {
///     *hits.lock()? += 1; // into shmq::Error
///     Ok(())
/// }
/// bump(&hits)?;
/// *hits.lock()? += 1; // into Box<dyn Error>
/// assert_eq!(hits.load()?, 2);
/// # Ok(()) }
/// ```
///
/// A `LockError` is not `Send` (it may hold a guard); for `anyhow`-style errors that must be,
/// convert it first with `shmq::Error::from`.
#[non_exhaustive]
pub enum LockError<G> {
    /// A holder died while holding the lock, or a later holder released it without marking the
    /// data consistent. The lock *is* held: the guard inside gives access to data that may be
    /// half-updated. Repair it and call `mark_consistent` on the guard, or drop the guard to
    /// leave the segment poisoned (every later lock reports this again).
    OwnerDied(OwnerDiedError<G>),
    /// `try_lock` found the lock held by another thread or process.
    WouldBlock {
        /// The segment name.
        name: String,
    },
    /// `lock_timeout` waited its whole timeout without getting the lock.
    Timeout {
        /// The segment name.
        name: String,
        /// The timeout that passed.
        waited: Duration,
    },
    /// The calling thread already holds this segment's lock (through this handle, a clone, or
    /// another handle on the same segment): waiting for it would wait for ever, so `lock`,
    /// `try_lock` and `lock_timeout` all return this at once. The guard already held is
    /// unaffected and stays usable; drop it before locking again.
    WouldDeadlock {
        /// The segment name.
        name: String,
    },
    /// The mutex can never be taken again: a holder died and the mutex was released without
    /// `pthread_mutex_consistent`. shmq itself never leaves a mutex in this state; only a
    /// process that bypasses it can. The segment must be recreated.
    Unrecoverable {
        /// The segment name.
        name: String,
    },
    /// The mutex call failed in the operating system with an unexpected error.
    Io(Error),
}

impl<G> LockError<G> {
    /// The guard of an [`OwnerDied`](LockError::OwnerDied) error, `None` for the other
    /// variants (which hold no lock).
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(e) => Some(e.into_inner()),
            _ => None,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(e) => f.debug_tuple("OwnerDied").field(e).finish(),
            LockError::WouldBlock { name } => {
                f.debug_struct("WouldBlock").field("name", name).finish()
            }
            LockError::Timeout { name, waited } => f
                .debug_struct("Timeout")
                .field("name", name)
                .field("waited", waited)
                .finish(),
            LockError::WouldDeadlock { name } => {
                f.debug_struct("WouldDeadlock").field("name", name).finish()
            }
            LockError::Unrecoverable { name } => {
                f.debug_struct("Unrecoverable").field("name", name).finish()
            }
            LockError::Io(e) => f.debug_tuple("Io").field(e).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(e) => fmt::Display::fmt(e, f),
            LockError::WouldBlock { name } => write!(
                f,
                "the lock of shmq segment {name:?} is held by another thread or process"
            ),
            LockError::Timeout { name, waited } => write!(
                f,
                "the lock of shmq segment {name:?} was not acquired within {waited:?}"
            ),
            LockError::WouldDeadlock { name } => write!(
                f,
                "this thread already holds the lock of shmq segment {name:?}; locking it again \
                 would deadlock (drop the guard first)"
            ),
            LockError::Unrecoverable { name } => write!(
                f,
                "the lock of shmq segment {name:?} is unrecoverable: a holder died and the mutex \
                 was released without being marked consistent; recreate the segment"
            ),
            LockError::Io(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<G> std::error::Error for LockError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl<G> From<OwnerDiedError<G>> for LockError<G> {
    fn from(e: OwnerDiedError<G>) -> Self {
        LockError::OwnerDied(e)
    }
}

/// Converts a lock failure into a [`crate::Error`], dropping the guard of an
/// [`OwnerDied`](LockError::OwnerDied) error (which releases the lock and leaves the segment
/// poisoned, so the next lock reports the dead owner again):
///
/// - `OwnerDied` becomes [`Error::OwnerDied`],
/// - `WouldBlock` becomes [`Error::Io`] with an [`io::ErrorKind::WouldBlock`] source,
/// - `Timeout` becomes [`Error::Io`] with an [`io::ErrorKind::TimedOut`] source,
/// - `WouldDeadlock` becomes [`Error::Io`] with an [`io::ErrorKind::Deadlock`] source,
/// - `Unrecoverable` becomes [`Error::Io`] with an `ENOTRECOVERABLE` source,
/// - `Io(e)` becomes `e`.
impl<G> From<LockError<G>> for Error {
    fn from(e: LockError<G>) -> Error {
        match e {
            LockError::OwnerDied(e) => Error::OwnerDied { name: e.name },
            LockError::WouldBlock { name } => Error::Io {
                name,
                op: "pthread_mutex_trylock",
                source: io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the lock is held by another thread or process",
                ),
            },
            LockError::Timeout { name, waited } => Error::Io {
                name,
                op: "pthread_mutex_clocklock",
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the lock was not acquired within {waited:?}"),
                ),
            },
            LockError::WouldDeadlock { name } => Error::Io {
                name,
                op: "pthread_mutex_lock",
                source: io::Error::new(
                    io::ErrorKind::Deadlock,
                    "this thread already holds the lock",
                ),
            },
            LockError::Unrecoverable { name } => Error::Io {
                name,
                op: "pthread_mutex_lock",
                source: sys::not_recoverable_error(),
            },
            LockError::Io(e) => e,
        }
    }
}

/// The lock was acquired, but a previous holder died while holding it (or a later holder
/// released it without marking the data consistent). Like [`std::sync::PoisonError`], it
/// carries the guard: the lock is held until that guard is dropped.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let total = shmq::SharedValue::<u64>::open("total")?;
/// let mut guard = match total.lock() {
///     Ok(guard) => guard,
///     Err(shmq::LockError::OwnerDied(dead)) => {
///         let mut guard = dead.into_inner();
///         *guard = 0; // or whatever repairs the data
///         guard.mark_consistent();
///         guard
///     }
///     Err(e) => return Err(e.into()),
/// };
/// *guard += 1;
/// # Ok(()) }
/// ```
pub struct OwnerDiedError<G> {
    name: String,
    guard: G,
}

impl<G> OwnerDiedError<G> {
    /// The error for a lock of segment `name` acquired as `guard` from a dead holder.
    pub(super) fn new(name: String, guard: G) -> Self {
        OwnerDiedError { name, guard }
    }

    /// The guard, to repair the data and call `mark_consistent` on it.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// The guard, borrowed mutably.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// Name of the segment whose lock holder died.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<G> fmt::Debug for OwnerDiedError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDiedError")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDiedError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a holder of the lock of shmq segment {:?} died while holding it, so the data may be \
             half-updated; repair it through the guard and call mark_consistent",
            self.name
        )
    }
}

impl<G> std::error::Error for OwnerDiedError<G> {}
