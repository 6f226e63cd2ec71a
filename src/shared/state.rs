//! Creating, opening and checking a shared-state segment: the [`State`] behind every handle.

use std::any::type_name;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use bytemuck::Pod;

use super::layout::{values_offset_for, LayoutWords, L_POISONED, MAX_ALIGN, MUTEX_OFFSET};
use super::signature::Signature;
use crate::error::{Error, Result};
use crate::segment::{
    validate_name, CreateSpec, Kind, Participant, Region, Role, DEFAULT_PARTICIPANTS,
    FLAG_AUTO_UNLINK,
};
use crate::sys;

/// The attached, checked state behind every handle on one segment, shared by its clones and by
/// the guards they hand out (a guard keeps the mapping alive).
pub(super) struct State {
    participant: Participant,
    /// In a child forked without exec, the participant of the child's own, attached on first
    /// use (`participant` stays the parent's, and its drop here leaves it alone).
    in_child: std::sync::Mutex<Option<Participant>>,
    /// Offset of the elements in the data area; checked against the data area's length.
    values_offset: usize,
    /// Number of elements (1 for a value); checked to fit the data area.
    len: usize,
}

/// How long a handle inherited through `fork` waits for its registration mutex, which a thread
/// of the parent may have held at the fork.
const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl State {
    /// Checks the layout words of a freshly created or opened segment against `T`, `tag` and
    /// `kind`, copying them out once.
    fn check<T: Pod>(participant: Participant, kind: Kind, tag: &str) -> Result<State> {
        let region = participant.region();
        let name = region.name();
        let words = LayoutWords::new(region)?;
        let (stored, stored_len) = Signature::read(&words);
        let ours = Signature::of::<T>(tag);
        if !ours.accepts(&stored) {
            return Err(Error::incompatible(
                name,
                "element type",
                // type_name only helps the reader here; it is never compared (see signature.rs).
                format!("{} ({})", type_name::<T>(), ours.describe()),
                stored.describe(),
            ));
        }
        // Equal to ours, hence a power of two; create refuses more than MAX_ALIGN.
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
            in_child: std::sync::Mutex::new(None),
            values_offset,
            len,
        })
    }

    fn region(&self) -> &Region {
        self.participant.region()
    }

    /// Makes sure this process is a participant of the segment: in a child forked without
    /// exec, the first call attaches one of the child's own, so that the segment counts the
    /// child as a user and the parent's death is seen apart from it. One comparison otherwise.
    #[inline]
    pub(super) fn register_if_forked(&self) -> Result<()> {
        if !self.participant.is_inherited() {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + REGISTER_TIMEOUT;
        let Some(mut in_child) = crate::segment::lock_until(&self.in_child, deadline) else {
            return Err(Error::LockTimeout {
                name: self.name().to_owned(),
                lock: "registration",
                holder_pid: None,
                waited: REGISTER_TIMEOUT,
            });
        };
        if in_child.as_ref().is_some_and(|p| !p.is_inherited()) {
            return Ok(());
        }
        // One inherited from a grandparent's fork is dropped inertly here.
        *in_child = None;
        let region = self.participant.region();
        *in_child = Some(region.attach(self.participant.role(), deadline)?);
        Ok(())
    }

    /// The segment's name.
    pub(super) fn name(&self) -> &str {
        self.region().name()
    }

    /// The segment's incarnation (its creation time, from the checked header).
    pub(super) fn incarnation(&self) -> u64 {
        self.region().incarnation()
    }

    /// Number of elements (1 for a value).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The robust mutex, for the `sys::robust_mutex_*` calls.
    pub(super) fn mutex_ptr(&self) -> *mut u8 {
        // In bounds: `check` saw data_len >= VALUES_MIN_OFFSET >= MUTEX_OFFSET + the mutex.
        self.region().data_ptr().wrapping_add(MUTEX_OFFSET)
    }

    /// The poisoned word; only touched while holding the mutex.
    pub(super) fn poisoned(&self) -> &AtomicU32 {
        self.region()
            .data_atomic::<AtomicU32>(L_POISONED)
            .expect("State::check saw a data area that holds every layout word")
    }

    /// Start of the elements: aligned for the element type, followed by `len` elements inside
    /// the data area (checked by `check`).
    pub(super) fn values_ptr(&self) -> *mut u8 {
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

/// Creates a `kind` segment for `len` elements of `T` under `tag`; `fill` writes the elements,
/// which it gets zeroed (a fresh segment is zero-filled, and zeroes are a valid `T`).
pub(super) fn create_state<T: Pod>(
    name: &str,
    kind: Kind,
    len: usize,
    tag: &str,
    fill: impl FnOnce(&mut [T]),
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
    let signature = Signature::of::<T>(tag);
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
        let words = LayoutWords::new(region)?;
        signature.write(&words, len as u64);
        // SAFETY: MUTEX_OFFSET..MUTEX_OFFSET+ROBUST_MUTEX_SIZE lies inside the data area (its
        // length is at least VALUES_MIN_OFFSET, checked by LayoutWords::new) and is 64-byte
        // aligned (page-aligned base); the segment is not initialised yet, so no other process
        // can be using a mutex there.
        unsafe { sys::robust_mutex_init(region.data_ptr().wrapping_add(MUTEX_OFFSET)) }
            .map_err(|e| Error::from_io(name, "pthread_mutex_init", e))?;
        if region.data_len() != data_len {
            return Err(Error::corrupted(
                name,
                "the new data area has the wrong length",
            ));
        }
        // SAFETY: the data area is page aligned (LayoutWords::new) and data_len =
        // values_offset + len * size_of::<T>() <= isize::MAX bytes long (checked just above and
        // when computing data_len), and values_offset is a multiple of align_of::<T>(), so the
        // slice is aligned and in bounds; the fresh mapping is zero-filled, and zeroes are a
        // valid T (Pod implies Zeroable); the segment is not initialised yet, so no other
        // process accesses it, and nothing else in this one does while `fill` runs.
        let elements = unsafe {
            std::slice::from_raw_parts_mut(
                region.data_ptr().wrapping_add(values_offset).cast::<T>(),
                len,
            )
        };
        fill(elements);
        Ok(())
    };
    let (_, participants) = Region::create(spec, &[Role::Shared], init)?;
    let participant = participants
        .into_iter()
        .next()
        .ok_or_else(|| Error::corrupted(name, "no participant was attached"))?;
    // Checks our own words too: the same code path as open, and it computes len and the offset.
    State::check::<T>(participant, kind, tag)
}

/// Opens the `kind` segment `name` and checks that it holds `T`s under `tag`.
pub(super) fn open_state<T: Pod>(name: &str, kind: Kind, tag: &str) -> Result<State> {
    validate_name(name)?;
    let handle = match kind {
        Kind::Value => "SharedValue",
        _ => "SharedArray",
    };
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
    State::check::<T>(participant, kind, tag)
}
