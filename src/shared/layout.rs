//! Where things are in the data area of a shared-state segment (see the module documentation of
//! `shared`), and checked atomic access to its layout words.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use crate::error::{Error, Result};
use crate::segment::{Region, PAGE};
use crate::sys;

/// Element size in bytes (u64).
pub(super) const L_ELEM_SIZE: usize = 0;
/// Element alignment in bytes (u64).
pub(super) const L_ELEM_ALIGN: usize = 8;
/// FNV-1a hash of the tag (u64).
pub(super) const L_TAG_HASH: usize = 16;
/// Number of elements (u64).
pub(super) const L_LEN: usize = 24;
/// Non-zero while the data is poisoned by a dead holder (u32).
pub(super) const L_POISONED: usize = 32;
/// Length in bytes of the whole tag (u32).
pub(super) const L_TAG_LEN: usize = 36;
/// First [`TAG_TEXT_BYTES`] bytes of the tag.
pub(super) const L_TAG_TEXT: usize = 40;
/// Bytes of the tag text kept in the segment.
pub(super) const TAG_TEXT_BYTES: usize = 64;
/// Offset of the robust mutex.
pub(super) const MUTEX_OFFSET: usize = 128;
/// Bytes reserved for the robust mutex.
const MUTEX_SPACE: usize = 128;
/// Lowest offset of the elements; they start at `max(VALUES_MIN_OFFSET, align_of::<T>())`.
pub(super) const VALUES_MIN_OFFSET: usize = MUTEX_OFFSET + MUTEX_SPACE;
/// Largest element alignment supported: the data area itself is page aligned.
pub(super) const MAX_ALIGN: usize = PAGE;

const _: () = assert!(sys::ROBUST_MUTEX_SIZE <= MUTEX_SPACE);
const _: () = assert!(L_TAG_TEXT + TAG_TEXT_BYTES <= MUTEX_OFFSET);
const _: () = assert!(MUTEX_OFFSET.is_multiple_of(64) && VALUES_MIN_OFFSET.is_multiple_of(64));

/// Offset of the elements for an element alignment `align` (a power of two, at most
/// [`MAX_ALIGN`]): 64-byte aligned, and aligned for the element type.
pub(super) fn values_offset_for(align: usize) -> usize {
    VALUES_MIN_OFFSET.max(align)
}

/// Why a layout word that [`LayoutWords::new`] vouched for cannot be missing.
const CHECKED: &str = "LayoutWords::new checked that the data area holds every layout word";

/// The layout words of a data area checked to be page aligned and long enough to hold them (and
/// the mutex), so that every fixed offset above is in bounds and aligned.
pub(super) struct LayoutWords<'a> {
    region: &'a Region,
}

impl<'a> LayoutWords<'a> {
    /// Checks that `region`'s data area can hold the layout words and the mutex. The length and
    /// address come from the region's checked header copy, so a failure here means a segment
    /// whose header claims a data area too small for its kind.
    pub(super) fn new(region: &'a Region) -> Result<LayoutWords<'a>> {
        if region.data_len() < VALUES_MIN_OFFSET
            || !(region.data_ptr() as usize).is_multiple_of(PAGE)
        {
            return Err(Error::corrupted(
                region.name(),
                format!(
                    "a data area of {} bytes is too small or misaligned for shared state \
                     (at least {VALUES_MIN_OFFSET} bytes, page aligned)",
                    region.data_len()
                ),
            ));
        }
        Ok(LayoutWords { region })
    }

    /// The 64-bit word at `offset`, one of the `L_` constants.
    pub(super) fn u64(&self, offset: usize) -> &'a AtomicU64 {
        self.region.data_atomic::<AtomicU64>(offset).expect(CHECKED)
    }

    /// The 32-bit word at `offset`, one of the `L_` constants.
    pub(super) fn u32(&self, offset: usize) -> &'a AtomicU32 {
        self.region.data_atomic::<AtomicU32>(offset).expect(CHECKED)
    }

    /// The byte at `offset`, inside one of the `L_` fields.
    pub(super) fn u8(&self, offset: usize) -> &'a AtomicU8 {
        self.region.data_atomic::<AtomicU8>(offset).expect(CHECKED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
