//! Typed shared state: one value ([`SharedValue`]) or a fixed-length array ([`SharedArray`]) of a
//! plain-old-data type in a named segment, behind a robust process-shared mutex.
//!
//! # Layout of the data area
//!
//! The data area of a `value` or `array` segment starts page aligned (see `segment.rs`).
//! Offsets below are from its start; integers are native-endian.
//!
//! ```text
//! 0     u64   element size in bytes, size_of::<T>()
//! 8     u64   element alignment, align_of::<T>() (a power of two, at most 4096)
//! 16    u64   type tag: FNV-1a (64-bit) of std::any::type_name::<T>()
//! 24    u64   number of elements (always 1 for a value)
//! 32    u32   poisoned: non-zero while a dead holder's update has not been marked consistent
//! 36    u32   length in bytes of the whole type name
//! 40    64 B  first (up to) 64 bytes of the type name, for error messages
//! 104   reserved, zero
//! 128   robust process-shared pthread mutex (ROBUST_MUTEX_SIZE bytes, at most 128 reserved)
//! V     the elements: len * size_of::<T>() bytes, where V = max(256, align_of::<T>())
//! ```
//!
//! The data area is exactly `V + len * size_of::<T>()` bytes long. Everything in it other than
//! the mutex is written once by the creator before the segment is marked initialised, except
//! the poisoned word and the elements, which are only touched while holding the mutex.
//!
//! # Trust
//!
//! `open` copies the layout words out once, checks them (element size, alignment, type tag,
//! and that the element count fits the data area) and from then on uses only its checked copy:
//! garbage in those words is an error, never a panic or an out-of-bounds access. The elements
//! are `Pod`, so any bytes are a valid `T`. The mutex itself cannot be checked: a process that
//! scribbles over it, or touches the elements without holding it, breaks the protocol for
//! everyone, as with any shared memory.
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

use std::any::type_name;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::segment::{
    validate_name, CreateSpec, Kind, Participant, Region, Role, DEFAULT_PARTICIPANTS,
    FLAG_AUTO_UNLINK, PAGE,
};
use crate::sys;

// Offsets of the layout words in the data area (see the module documentation).
const L_ELEM_SIZE: usize = 0;
const L_ELEM_ALIGN: usize = 8;
const L_TYPE_HASH: usize = 16;
const L_LEN: usize = 24;
const L_POISONED: usize = 32;
const L_TYPE_NAME_LEN: usize = 36;
const L_TYPE_NAME: usize = 40;
/// Bytes of the type name kept in the segment.
const TYPE_NAME_BYTES: usize = 64;
/// Offset of the robust mutex.
const MUTEX_OFFSET: usize = 128;
/// Bytes reserved for the robust mutex.
const MUTEX_SPACE: usize = 128;
/// Lowest offset of the elements; they start at `max(VALUES_MIN_OFFSET, align_of::<T>())`.
const VALUES_MIN_OFFSET: usize = MUTEX_OFFSET + MUTEX_SPACE;
/// Largest element alignment supported: the data area itself is page aligned.
const MAX_ALIGN: usize = PAGE;

const _: () = assert!(sys::ROBUST_MUTEX_SIZE <= MUTEX_SPACE);
const _: () = assert!(L_TYPE_NAME + TYPE_NAME_BYTES <= MUTEX_OFFSET);
const _: () = assert!(MUTEX_OFFSET.is_multiple_of(64) && VALUES_MIN_OFFSET.is_multiple_of(64));

/// Offset of the elements for an element alignment `align` (a power of two, at most
/// [`MAX_ALIGN`]): 64-byte aligned, and aligned for the element type.
fn values_offset_for(align: usize) -> usize {
    VALUES_MIN_OFFSET.max(align)
}

/// 64-bit FNV-1a: a fixed hash, the same in every process and build.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Size, alignment and name of an element type, as stored in (or read from) a segment.
#[derive(Clone, Copy)]
struct TypeInfo {
    size: u64,
    align: u64,
    hash: u64,
    /// Length of the whole name; only the first [`TYPE_NAME_BYTES`] are kept.
    name_len: u32,
    name: [u8; TYPE_NAME_BYTES],
}

impl TypeInfo {
    fn of<T>() -> TypeInfo {
        let full = type_name::<T>().as_bytes();
        let mut name = [0u8; TYPE_NAME_BYTES];
        let kept = full.len().min(TYPE_NAME_BYTES);
        name[..kept].copy_from_slice(&full[..kept]);
        TypeInfo {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            hash: fnv1a64(full),
            name_len: u32::try_from(full.len()).unwrap_or(u32::MAX),
            name,
        }
    }

    fn same_type(&self, other: &TypeInfo) -> bool {
        self.size == other.size && self.align == other.align && self.hash == other.hash
    }

    /// E.g. `u64 (8 bytes, align 8)`; a name longer than what is kept ends in `...`.
    fn describe(&self) -> String {
        let kept = (self.name_len as usize).min(TYPE_NAME_BYTES);
        let mut name = String::from_utf8_lossy(&self.name[..kept]).into_owned();
        if self.name_len as usize > TYPE_NAME_BYTES {
            name.push_str("...");
        }
        if name.is_empty() {
            name.push_str("<unnamed type>");
        }
        format!("{name} ({} bytes, align {})", self.size, self.align)
    }
}

/// Atomic views of the layout words of a data area that has been checked to be page aligned and
/// at least [`VALUES_MIN_OFFSET`] bytes long.
struct Words<'a> {
    base: *mut u8,
    _region: PhantomData<&'a Region>,
}

impl<'a> Words<'a> {
    fn new(region: &'a Region) -> Result<Words<'a>> {
        let base = region.data_ptr();
        if region.data_len() < VALUES_MIN_OFFSET || !(base as usize).is_multiple_of(PAGE) {
            return Err(Error::corrupted(
                region.name(),
                format!(
                    "a data area of {} bytes is too small or misaligned for shared state \
                     (at least {VALUES_MIN_OFFSET} bytes, page aligned)",
                    region.data_len()
                ),
            ));
        }
        Ok(Words {
            base,
            _region: PhantomData,
        })
    }

    fn u64(&self, offset: usize) -> &'a AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= MUTEX_OFFSET,
            "layout word out of range"
        );
        // SAFETY: `new` checked that the data area is page aligned and at least
        // VALUES_MIN_OFFSET bytes long, so offset..offset+8 (< MUTEX_OFFSET, asserted) is in
        // bounds and 8-byte aligned; the mapping lives as long as the borrowed Region ('a);
        // every access to layout words goes through atomics.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    fn u32(&self, offset: usize) -> &'a AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= MUTEX_OFFSET,
            "layout word out of range"
        );
        // SAFETY: as for `u64`, with 4-byte alignment.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    fn u8(&self, offset: usize) -> &'a AtomicU8 {
        assert!(offset < MUTEX_OFFSET, "layout byte out of range");
        // SAFETY: as for `u64`; a byte needs no alignment.
        unsafe { &*self.base.add(offset).cast::<AtomicU8>() }
    }

    fn write_type(&self, info: &TypeInfo, len: u64) {
        self.u64(L_ELEM_SIZE).store(info.size, Ordering::Relaxed);
        self.u64(L_ELEM_ALIGN).store(info.align, Ordering::Relaxed);
        self.u64(L_TYPE_HASH).store(info.hash, Ordering::Relaxed);
        self.u64(L_LEN).store(len, Ordering::Relaxed);
        self.u32(L_POISONED).store(0, Ordering::Relaxed);
        self.u32(L_TYPE_NAME_LEN)
            .store(info.name_len, Ordering::Relaxed);
        for (i, &b) in info.name.iter().enumerate() {
            self.u8(L_TYPE_NAME + i).store(b, Ordering::Relaxed);
        }
    }

    /// Copies the stored type and element count out of the segment, once.
    fn read_type(&self) -> (TypeInfo, u64) {
        let mut name = [0u8; TYPE_NAME_BYTES];
        for (i, b) in name.iter_mut().enumerate() {
            *b = self.u8(L_TYPE_NAME + i).load(Ordering::Relaxed);
        }
        let info = TypeInfo {
            size: self.u64(L_ELEM_SIZE).load(Ordering::Relaxed),
            align: self.u64(L_ELEM_ALIGN).load(Ordering::Relaxed),
            hash: self.u64(L_TYPE_HASH).load(Ordering::Relaxed),
            name_len: self.u32(L_TYPE_NAME_LEN).load(Ordering::Relaxed),
            name,
        };
        (info, self.u64(L_LEN).load(Ordering::Relaxed))
    }
}

/// The attached, checked state behind every handle on one segment, shared by its clones and by
/// the guards they hand out (a guard keeps the mapping alive).
struct State {
    participant: Participant,
    /// Offset of the elements in the data area; checked against the data area's length.
    values_offset: usize,
    /// Number of elements (1 for a value); checked to fit the data area.
    len: usize,
}

impl State {
    /// Checks the layout words of a freshly created or opened segment against `T` and `kind`.
    fn new<T: Pod>(participant: Participant, kind: Kind) -> Result<State> {
        let region = participant.region();
        let name = region.name();
        let words = Words::new(region)?;
        let (stored, stored_len) = words.read_type();
        let ours = TypeInfo::of::<T>();
        if !ours.same_type(&stored) {
            return Err(Error::incompatible(
                name,
                "element type",
                ours.describe(),
                stored.describe(),
            ));
        }
        // Equal to ours, hence a power of two no larger than MAX_ALIGN (checked at create).
        let align = std::mem::align_of::<T>();
        if align > MAX_ALIGN {
            return Err(alignment_error::<T>(name));
        }
        let values_offset = values_offset_for(align);
        let data_len = region.data_len();
        let fits = usize::try_from(stored_len)
            .ok()
            .filter(|&len| kind != Kind::Value || len == 1)
            .and_then(|len| {
                let end = len
                    .checked_mul(std::mem::size_of::<T>())?
                    .checked_add(values_offset)?;
                (end <= data_len && end <= isize::MAX as usize).then_some(len)
            });
        let Some(len) = fits else {
            return Err(Error::corrupted(
                name,
                format!(
                    "{stored_len} elements of {} bytes at offset {values_offset} do not fit a {kind} data area of {data_len} bytes",
                    std::mem::size_of::<T>()
                ),
            ));
        };
        if !(region.data_ptr() as usize + values_offset).is_multiple_of(align) {
            return Err(Error::corrupted(name, "the elements are misaligned"));
        }
        Ok(State {
            participant,
            values_offset,
            len,
        })
    }

    fn region(&self) -> &Region {
        self.participant.region()
    }

    fn name(&self) -> &str {
        self.region().name()
    }

    fn mutex_ptr(&self) -> *mut u8 {
        // In bounds: `new` checked data_len >= VALUES_MIN_OFFSET > MUTEX_OFFSET + MUTEX_SPACE - 1.
        self.region().data_ptr().wrapping_add(MUTEX_OFFSET)
    }

    fn poisoned(&self) -> &AtomicU32 {
        // SAFETY: `new` checked that the data area is page aligned and at least
        // VALUES_MIN_OFFSET bytes long, so the word is in bounds and aligned; the mapping lives
        // as long as &self; the word is only accessed atomically.
        unsafe { &*self.region().data_ptr().add(L_POISONED).cast::<AtomicU32>() }
    }

    /// Start of the elements: aligned for the element type, followed by `len` elements inside
    /// the data area (checked by `new`).
    fn values_ptr(&self) -> *mut u8 {
        self.region().data_ptr().wrapping_add(self.values_offset)
    }
}

fn alignment_error<T>(name: &str) -> Error {
    Error::InvalidArgument {
        name: name.to_owned(),
        what: format!(
            "element type {} needs {}-byte alignment, at most {MAX_ALIGN} is supported",
            type_name::<T>(),
            std::mem::align_of::<T>()
        ),
    }
}

/// Creates a `kind` segment for `len` elements of `T`, written by `fill` (which gets a pointer
/// to `len` uninitialised-but-zeroed, aligned slots it must not read past).
fn create_state<T: Pod>(
    name: &str,
    kind: Kind,
    len: usize,
    fill: impl FnOnce(*mut T),
) -> Result<State> {
    validate_name(name)?;
    let align = std::mem::align_of::<T>();
    if align > MAX_ALIGN {
        return Err(alignment_error::<T>(name));
    }
    let values_offset = values_offset_for(align);
    let data_len = len
        .checked_mul(std::mem::size_of::<T>())
        .and_then(|bytes| bytes.checked_add(values_offset))
        .filter(|&total| total <= isize::MAX as usize)
        .ok_or_else(|| Error::InvalidArgument {
            name: name.to_owned(),
            what: format!(
                "{len} elements of {} bytes do not fit in memory",
                std::mem::size_of::<T>()
            ),
        })?;
    let info = TypeInfo::of::<T>();
    let spec = CreateSpec {
        name,
        kind,
        data_len: data_len as u64,
        capacity: DEFAULT_PARTICIPANTS,
        flags: FLAG_AUTO_UNLINK,
        populate: false,
        hooks: None,
    };
    let init = |region: &Arc<Region>| -> Result<()> {
        let words = Words::new(region)?;
        words.write_type(&info, len as u64);
        // SAFETY: MUTEX_OFFSET..MUTEX_OFFSET+ROBUST_MUTEX_SIZE lies inside the data area (its
        // length is at least VALUES_MIN_OFFSET, checked by Words::new) and is 64-byte aligned
        // (page-aligned base); the segment is not initialised yet, so no other process can be
        // using a mutex there.
        unsafe { sys::robust_mutex_init(region.data_ptr().add(MUTEX_OFFSET)) }
            .map_err(|e| Error::from_io(name, "pthread_mutex_init", e))?;
        fill(region.data_ptr().wrapping_add(values_offset).cast::<T>());
        Ok(())
    };
    let (_, participants) = Region::create(spec, &[Role::Shared], init)?;
    let participant = participants
        .into_iter()
        .next()
        .ok_or_else(|| Error::corrupted(name, "no participant was attached"))?;
    State::new::<T>(participant, kind)
}

/// Opens the `kind` segment `name` and checks it holds `T`s.
fn open_state<T: Pod>(name: &str, kind: Kind, handle: &str) -> Result<State> {
    validate_name(name)?;
    let (_, participants) =
        Region::open(name, kind, &[Role::Shared], false, None).map_err(|e| match e {
            Error::Incompatible {
                name,
                what: "kind",
                expected,
                found,
            } => Error::Incompatible {
                name,
                what: "kind",
                expected: format!("{expected} (a {handle}<{}>)", type_name::<T>()),
                found: match found.as_str() {
                    "value" => "value (a SharedValue)".to_owned(),
                    "array" => "array (a SharedArray)".to_owned(),
                    "raw" => "raw (a Segment)".to_owned(),
                    _ => found,
                },
            },
            other => other,
        })?;
    let participant = participants
        .into_iter()
        .next()
        .ok_or_else(|| Error::corrupted(name, "no participant was attached"))?;
    State::new::<T>(participant, kind)
}

/// How a lock call waits.
#[derive(Clone, Copy)]
enum Wait {
    Forever,
    Never,
    For(Duration),
}

/// Holds the mutex of one segment; unlocks on drop. Not `Send`: a pthread mutex must be
/// unlocked by the thread that locked it.
struct RawGuard {
    state: Arc<State>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        // SAFETY: a RawGuard exists only while this thread holds the mutex (it is created right
        // after a successful lock and is neither Send nor Clone), and `state` keeps the mapping
        // alive; the mutex was initialised by the creator.
        let _ = unsafe { sys::robust_mutex_unlock(self.state.mutex_ptr()) };
    }
}

impl RawGuard {
    fn mark_consistent(&mut self) {
        self.state.poisoned().store(0, Ordering::Relaxed);
    }
}

/// Locks `state`'s mutex, handing the raw guard to `wrap`.
fn lock_state<G>(
    state: &Arc<State>,
    wait: Wait,
    wrap: impl FnOnce(RawGuard) -> G,
) -> LockResult<G> {
    let mutex = state.mutex_ptr();
    let (op, outcome) = match wait {
        Wait::Never => (
            "pthread_mutex_trylock",
            // SAFETY: the mutex was initialised by the creator (the segment was initialised
            // before open returned) and `state` keeps the mapping alive for the call.
            unsafe { sys::robust_mutex_try_lock(mutex) },
        ),
        Wait::For(timeout) => {
            let deadline = Instant::now().checked_add(timeout);
            (
                "pthread_mutex_clocklock",
                // SAFETY: as above.
                unsafe { sys::robust_mutex_lock(mutex, deadline) },
            )
        }
        Wait::Forever => (
            "pthread_mutex_lock",
            // SAFETY: as above.
            unsafe { sys::robust_mutex_lock(mutex, None) },
        ),
    };
    let name = || state.name().to_owned();
    let poisoned = match outcome {
        Ok(sys::LockOutcome::Acquired) => state.poisoned().load(Ordering::Relaxed) != 0,
        Ok(sys::LockOutcome::OwnerDied) => {
            // Record the death in the segment first: if we die before the caller repairs, the
            // next locker learns of it again (from the mutex or from this word).
            state.poisoned().store(1, Ordering::Relaxed);
            // SAFETY: this thread holds the mutex (EOWNERDEAD means it was acquired) and the
            // mapping is alive.
            let _ = unsafe { sys::robust_mutex_mark_consistent(mutex) };
            true
        }
        Ok(sys::LockOutcome::Busy) => {
            return Err(match wait {
                Wait::Never => LockError::WouldBlock { name: name() },
                Wait::For(waited) => LockError::Timeout {
                    name: name(),
                    waited,
                },
                Wait::Forever => LockError::Io(Error::from_io(
                    state.name(),
                    op,
                    io::Error::from(io::ErrorKind::ResourceBusy),
                )),
            })
        }
        Ok(sys::LockOutcome::Unrecoverable) => {
            return Err(LockError::Unrecoverable { name: name() })
        }
        Err(e) => return Err(LockError::Io(Error::from_io(state.name(), op, e))),
    };
    let guard = wrap(RawGuard {
        state: Arc::clone(state),
        _not_send: PhantomData,
    });
    if poisoned {
        Err(LockError::OwnerDied(OwnerDiedError {
            name: name(),
            guard,
        }))
    } else {
        Ok(guard)
    }
}

/// The result of locking a [`SharedValue`] or [`SharedArray`]: the guard, or why there is none
/// (or, for [`LockError::OwnerDied`], a guard on data that may need repair).
pub type LockResult<G> = std::result::Result<G, LockError<G>>;

/// Why a lock call on a [`SharedValue`] or [`SharedArray`] did not simply return a guard.
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
pub struct SharedValue<T: Pod> {
    state: Arc<State>,
    _type: PhantomData<T>,
}

impl<T: Pod> SharedValue<T> {
    /// Creates the value segment `name` holding `value`, failing if it exists.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::OutOfSpace`],
    /// [`Error::InvalidArgument`] for a `T` aligned to more than 4096 bytes, [`Error::Io`].
    pub fn create(name: &str, value: T) -> Result<SharedValue<T>> {
        let state = create_state::<T>(name, Kind::Value, 1, |ptr| {
            // SAFETY: create_state passes a pointer to one aligned slot for a T inside the
            // fresh data area, which no other process can access before it is initialised.
            unsafe { ptr.write(value) }
        })?;
        Ok(SharedValue {
            state: Arc::new(state),
            _type: PhantomData,
        })
    }

    /// Opens the existing value segment `name`.
    ///
    /// Waits up to two seconds for a creator still initialising it ([`Error::NotReady`]).
    /// A segment of another kind (an array, a channel...) or holding another element type is
    /// [`Error::Incompatible`] naming both; layout words that make no sense are
    /// [`Error::Corrupted`].
    pub fn open(name: &str) -> Result<SharedValue<T>> {
        let state = open_state::<T>(name, Kind::Value, "SharedValue")?;
        Ok(SharedValue {
            state: Arc::new(state),
            _type: PhantomData,
        })
    }

    /// Locks the value, waiting as long as it takes. A holder that died never makes this wait
    /// forever: its death is reported as [`LockError::OwnerDied`] (with the guard).
    ///
    /// Locking again on a thread that already holds this segment's lock (through any handle)
    /// is a bug, as with [`std::sync::Mutex`]: it deadlocks. `try_lock` and `lock_timeout`
    /// report it as `WouldBlock` and `Timeout`.
    pub fn lock(&self) -> LockResult<SharedValueGuard<T>> {
        lock_state(&self.state, Wait::Forever, SharedValueGuard::new)
    }

    /// Locks the value if nobody holds the lock, else returns [`LockError::WouldBlock`].
    pub fn try_lock(&self) -> LockResult<SharedValueGuard<T>> {
        lock_state(&self.state, Wait::Never, SharedValueGuard::new)
    }

    /// Locks the value, waiting at most `timeout` (measured on the monotonic clock), else
    /// returns [`LockError::Timeout`].
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<SharedValueGuard<T>> {
        lock_state(&self.state, Wait::For(timeout), SharedValueGuard::new)
    }

    /// A copy of the value, read under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] rather than
    /// return a possibly half-updated value; use [`lock`](Self::lock) to repair it.
    pub fn load(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] and leaves
    /// the value alone; use [`lock`](Self::lock) to repair it.
    pub fn store(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.state.name()
    }

    /// Raw pointer to the value, valid (and aligned) as long as this handle lives.
    ///
    /// For experts: other processes may access the value at any time, so reading or writing
    /// through this pointer is `unsafe` and must follow a protocol of the caller's (hold a guard
    /// while using it, or use only atomic operations, in every process).
    pub fn as_ptr(&self) -> *mut T {
        self.state.values_ptr().cast::<T>()
    }
}

impl<T: Pod> Clone for SharedValue<T> {
    /// Another handle on the same mapping and participant slot.
    fn clone(&self) -> Self {
        SharedValue {
            state: Arc::clone(&self.state),
            _type: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedValue")
            .field("name", &self.name())
            .field("type", &type_name::<T>())
            .finish()
    }
}

/// Holds the lock of a [`SharedValue`] and dereferences to its value; unlocks on drop.
///
/// It keeps the segment mapped (and attached) while it lives, even if every handle is dropped.
/// It is not `Send`: it must be dropped on the thread that locked.
pub struct SharedValueGuard<T: Pod> {
    raw: RawGuard,
    _type: PhantomData<T>,
}

impl<T: Pod> SharedValueGuard<T> {
    fn new(raw: RawGuard) -> Self {
        SharedValueGuard {
            raw,
            _type: PhantomData,
        }
    }

    /// Declares the value repaired after [`LockError::OwnerDied`]: later locks return `Ok`
    /// again. Does nothing on a value that is not poisoned.
    pub fn mark_consistent(&mut self) {
        self.raw.mark_consistent();
    }
}

impl<T: Pod> Deref for SharedValueGuard<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: State::new checked that values_ptr is aligned for T and that one T fits the
        // data area; `raw.state` keeps the mapping alive as long as the guard; this thread holds
        // the mutex, so no other guard in any process accesses the value meanwhile; T is Pod, so
        // any bytes are a valid T.
        unsafe { &*self.raw.state.values_ptr().cast::<T>() }
    }
}

impl<T: Pod> DerefMut for SharedValueGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for deref; &mut self makes this the only reference derived from the guard.
        unsafe { &mut *self.raw.state.values_ptr().cast::<T>() }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedValueGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedValueGuard").field(&**self).finish()
    }
}

/// A fixed-length array of `T` in a named shared-memory segment, behind one robust
/// cross-process mutex.
///
/// Lifetime, naming and handles behave as for [`SharedValue`]. The guard dereferences to `[T]`.
/// An empty array (length 0) is allowed.
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
pub struct SharedArray<T: Pod> {
    state: Arc<State>,
    _type: PhantomData<T>,
}

impl<T: Pod> SharedArray<T> {
    /// Creates the array segment `name` with `len` copies of `value`, failing if it exists.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::OutOfSpace`],
    /// [`Error::InvalidArgument`] if `len` elements overflow the address space or `T` is aligned
    /// to more than 4096 bytes, [`Error::Io`].
    pub fn create(name: &str, len: usize, value: T) -> Result<SharedArray<T>> {
        let state = create_state::<T>(name, Kind::Array, len, |ptr| {
            // A fresh segment is zero-filled already.
            if bytemuck::bytes_of(&value).iter().all(|&b| b == 0) {
                return;
            }
            for i in 0..len {
                // SAFETY: create_state passes a pointer to `len` aligned slots for T inside the
                // fresh data area, which no other process can access before it is initialised.
                unsafe { ptr.add(i).write(value) }
            }
        })?;
        Ok(SharedArray {
            state: Arc::new(state),
            _type: PhantomData,
        })
    }

    /// Creates the array segment `name` holding a copy of `values`, failing if it exists.
    ///
    /// Errors as for [`create`](Self::create).
    pub fn from_slice(name: &str, values: &[T]) -> Result<SharedArray<T>> {
        let state = create_state::<T>(name, Kind::Array, values.len(), |ptr| {
            // SAFETY: create_state passes a pointer to values.len() aligned slots for T inside
            // the fresh data area, which cannot overlap `values` (a fresh mapping) and which no
            // other process can access before it is initialised.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr, values.len()) }
        })?;
        Ok(SharedArray {
            state: Arc::new(state),
            _type: PhantomData,
        })
    }

    /// Opens the existing array segment `name`.
    ///
    /// Waits up to two seconds for a creator still initialising it ([`Error::NotReady`]).
    /// A segment of another kind or holding another element type is [`Error::Incompatible`]
    /// naming both; a stored length that does not fit the segment is [`Error::Corrupted`].
    pub fn open(name: &str) -> Result<SharedArray<T>> {
        let state = open_state::<T>(name, Kind::Array, "SharedArray")?;
        Ok(SharedArray {
            state: Arc::new(state),
            _type: PhantomData,
        })
    }

    /// Locks the array, waiting as long as it takes. A holder that died never makes this wait
    /// forever: its death is reported as [`LockError::OwnerDied`] (with the guard).
    ///
    /// Locking again on a thread that already holds this segment's lock (through any handle)
    /// is a bug, as with [`std::sync::Mutex`]: it deadlocks. `try_lock` and `lock_timeout`
    /// report it as `WouldBlock` and `Timeout`.
    pub fn lock(&self) -> LockResult<SharedArrayGuard<T>> {
        lock_state(&self.state, Wait::Forever, SharedArrayGuard::new)
    }

    /// Locks the array if nobody holds the lock, else returns [`LockError::WouldBlock`].
    pub fn try_lock(&self) -> LockResult<SharedArrayGuard<T>> {
        lock_state(&self.state, Wait::Never, SharedArrayGuard::new)
    }

    /// Locks the array, waiting at most `timeout` (measured on the monotonic clock), else
    /// returns [`LockError::Timeout`].
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<SharedArrayGuard<T>> {
        lock_state(&self.state, Wait::For(timeout), SharedArrayGuard::new)
    }

    /// A copy of the elements, taken under the lock.
    ///
    /// If the data is poisoned (a holder died), this reports [`Error::OwnerDied`] rather than
    /// return possibly half-updated data; use [`lock`](Self::lock) to repair it.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// Number of elements (fixed at creation).
    pub fn len(&self) -> usize {
        self.state.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.state.len == 0
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.state.name()
    }

    /// Raw pointer to the first of [`len`](Self::len) elements, valid (and aligned) as long as
    /// this handle lives.
    ///
    /// For experts: other processes may access the elements at any time, so reading or writing
    /// through this pointer is `unsafe` and must follow a protocol of the caller's (hold a guard
    /// while using it, or use only atomic operations, in every process).
    pub fn as_ptr(&self) -> *mut T {
        self.state.values_ptr().cast::<T>()
    }
}

impl<T: Pod> Clone for SharedArray<T> {
    /// Another handle on the same mapping and participant slot.
    fn clone(&self) -> Self {
        SharedArray {
            state: Arc::clone(&self.state),
            _type: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("name", &self.name())
            .field("type", &type_name::<T>())
            .field("len", &self.len())
            .finish()
    }
}

/// Holds the lock of a [`SharedArray`] and dereferences to its elements as `[T]`; unlocks on
/// drop.
///
/// It keeps the segment mapped (and attached) while it lives, even if every handle is dropped.
/// It is not `Send`: it must be dropped on the thread that locked.
pub struct SharedArrayGuard<T: Pod> {
    raw: RawGuard,
    _type: PhantomData<T>,
}

impl<T: Pod> SharedArrayGuard<T> {
    fn new(raw: RawGuard) -> Self {
        SharedArrayGuard {
            raw,
            _type: PhantomData,
        }
    }

    /// Declares the elements repaired after [`LockError::OwnerDied`]: later locks return `Ok`
    /// again. Does nothing on an array that is not poisoned.
    pub fn mark_consistent(&mut self) {
        self.raw.mark_consistent();
    }
}

impl<T: Pod> Deref for SharedArrayGuard<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let state = &self.raw.state;
        // SAFETY: State::new checked that values_ptr is non-null and aligned for T and that
        // `len` elements fit the data area (so len * size_of::<T>() <= isize::MAX);
        // `raw.state` keeps the mapping alive as long as the guard; this thread holds the mutex,
        // so no other guard in any process accesses the elements meanwhile; T is Pod, so any
        // bytes are valid Ts.
        unsafe { std::slice::from_raw_parts(state.values_ptr().cast::<T>(), state.len) }
    }
}

impl<T: Pod> DerefMut for SharedArrayGuard<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let state = &self.raw.state;
        // SAFETY: as for deref; &mut self makes this the only reference derived from the guard.
        unsafe { std::slice::from_raw_parts_mut(state.values_ptr().cast::<T>(), state.len) }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedArrayGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedArrayGuard").field(&&**self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn values_offset_is_aligned_and_past_the_mutex() {
        for shift in 0..=12 {
            let align = 1usize << shift;
            let offset = values_offset_for(align);
            assert_eq!(offset % align, 0);
            assert_eq!(offset % 64, 0);
            assert!(offset >= MUTEX_OFFSET + sys::ROBUST_MUTEX_SIZE);
        }
    }

    #[test]
    fn describe_truncates_long_names() {
        let mut info = TypeInfo::of::<u64>();
        assert_eq!(info.describe(), "u64 (8 bytes, align 8)");
        info.name_len = 1000;
        assert!(info.describe().ends_with("... (8 bytes, align 8)"));
    }
}
