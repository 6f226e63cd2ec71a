//! Typed shared state: one value ([`SharedValue`]) or a fixed-length array ([`SharedArray`]) of a
//! plain-old-data type in a named segment, behind a robust process-shared mutex.
//!
//! # Layout of the data area
//!
//! The data area of a `value` or `array` segment starts page aligned (see `segment/header.rs`).
//! Offsets below are from its start; integers are native-endian.
//!
//! ```text
//! 0     u64   element size in bytes, size_of::<T>()
//! 8     u64   element alignment, align_of::<T>() (a power of two, at most 4096)
//! 16    u64   tag hash: FNV-1a (64-bit) of the tag's bytes (of "" when created untagged)
//! 24    u64   number of elements (always 1 for a value)
//! 32    u32   poisoned: non-zero while a dead holder's update has not been marked consistent
//! 36    u32   length in bytes of the whole tag
//! 40    64 B  tag text: the first (up to) 64 bytes of the tag, for error messages
//! 104   reserved, zero
//! 128   robust, error-checking, process-shared pthread mutex (ROBUST_MUTEX_SIZE bytes, at
//!       most 128 reserved)
//! V     the elements: len * size_of::<T>() bytes, where V = max(256, align_of::<T>())
//! ```
//!
//! The data area is exactly `V + len * size_of::<T>()` bytes long. Everything in it other than
//! the mutex is written once by the creator before the segment is marked initialised, except
//! the poisoned word and the elements, which are only touched while holding the mutex.
//!
//! # Element identity
//!
//! `open` accepts a segment whose element size, element alignment and tag hash equal its own
//! (see `signature.rs`). Nothing compiler-specific is stored, so programs built by different
//! compiler versions open each other's segments. Plain `create`/`open` use the empty tag: then
//! any two `Pod` types of equal size and alignment (`u64`, `i64`, `f64`, `[u32; 2]` aligned to
//! 8...) are interchangeable. That is memory-safe, because any bytes are a valid `Pod` value,
//! but it reinterprets the bits; the `_tagged` constructors and opens add a tag of the caller's
//! choosing (`"f64 prices v2"`) to tell such types apart.
//!
//! # Trust
//!
//! `open` copies the layout words out once, checks them (element size, alignment, tag hash,
//! and that the element count fits the data area) and from then on uses only its checked copy:
//! garbage in those words is an error, never a panic or an out-of-bounds access. The elements
//! are `Pod`, so any bytes are a valid `T`. The mutex itself cannot be checked: a process that
//! scribbles over it, or touches the elements without holding it, breaks the protocol for
//! everyone, as with any shared memory. Peers are assumed to crash, not to be malicious.
//!
//! # Dead holders
//!
//! The mutex is robust: when a process (or thread) dies holding it, the next locker acquires it
//! and learns that its owner died. shmq then
//!
//! 1. sets the poisoned word in the segment,
//! 2. immediately calls `pthread_mutex_consistent`, so the pthread mutex itself never becomes
//!    unrecoverable (a dead holder never causes a deadlock), and
//! 3. hands the guard to the caller inside [`LockError::OwnerDied`].
//!
//! The caller inspects and repairs the data through the guard and calls
//! [`SharedValueGuard::mark_consistent`] (or [`SharedArrayGuard::mark_consistent`]), which clears
//! the poisoned word. If the guard is dropped without that call, the lock is released normally
//! but the poisoned word stays set, and every later lock, in any process, reports
//! [`LockError::OwnerDied`] again until somebody marks the data consistent. If the repairer dies
//! too, the next locker is told the owner died, as before.
//!
//! # Re-locking
//!
//! The mutex is also error-checking (`PTHREAD_MUTEX_ERRORCHECK`): a thread that locks it while
//! it holds it already, through any handle on the segment, gets `EDEADLK` instead of sleeping
//! for ever, and shmq reports [`LockError::WouldDeadlock`]. The owner is recorded in the mutex
//! word itself (the holder's thread id), so two handles that map the segment at different
//! addresses are recognised as the same lock. Since only the creator chooses the mutex type,
//! a segment made by an older shmq (whose mutex did not check) is refused by the layout
//! version (3 since this change).
//!
//! # Files
//!
//! - `layout.rs`: the offsets above and checked access to the layout words,
//! - `signature.rs`: element identity (size, alignment, tag),
//! - `state.rs`: creating, opening and checking a segment,
//! - `handle.rs`: the handle and guard that `SharedValue` and `SharedArray` both wrap, and locking,
//! - `lock.rs`: the lock errors,
//! - `value.rs` and `array.rs`: the public types.

mod array;
mod handle;
mod layout;
mod lock;
mod signature;
mod state;
mod value;

pub use array::{SharedArray, SharedArrayGuard};
pub use lock::{LockError, LockResult, OwnerDiedError};
pub use value::{SharedValue, SharedValueGuard};
