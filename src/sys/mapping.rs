//! A mapped shared-memory object and the checked atomic views of its words.
//!
//! Every word that processes share is reached through [`Mapping::atomic`], which checks that
//! the word lies inside the mapping and is aligned for its type before it turns the address into
//! a reference. No other code in the crate makes an atomic reference out of a pointer into
//! shared memory.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use super::{map_shared_raw, unmap_raw};

/// An atomic type that may live in memory shared with other processes.
///
/// # Safety
/// Implementors must have the size and alignment of their `SIZE`, no invalid bit patterns
/// (every byte pattern a peer may leave is a valid value), and interior mutability through
/// atomic operations only.
pub(crate) unsafe trait SharedAtomic: Sync {
    /// Size and alignment in bytes.
    const SIZE: usize;
}

// SAFETY: AtomicU8 has size and alignment 1 and every byte is a valid u8.
unsafe impl SharedAtomic for AtomicU8 {
    const SIZE: usize = 1;
}
// SAFETY: AtomicU32 has size and alignment 4 (on every target shmq builds for) and every bit
// pattern is a valid u32.
unsafe impl SharedAtomic for AtomicU32 {
    const SIZE: usize = 4;
}
// SAFETY: AtomicU64 has size and alignment 8 on x86_64 and aarch64 Linux (checked below) and
// every bit pattern is a valid u64.
unsafe impl SharedAtomic for AtomicU64 {
    const SIZE: usize = 8;
}

const _: () = assert!(std::mem::align_of::<AtomicU64>() == 8);
const _: () = assert!(std::mem::align_of::<AtomicU32>() == 4);

/// A shared, read-write mapping of the first `len` bytes of an object, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain address range; every access to the bytes behind it goes through
// atomics (Mapping::atomic) or through types whose own Send/Sync rules govern it.
unsafe impl Send for Mapping {}
// SAFETY: see the Send impl above; &Mapping hands out the raw pointer and atomic references.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read-write. With `populate`, the kernel
    /// fills the page tables now so that later accesses take no page fault.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, populate: bool) -> io::Result<Mapping> {
        let ptr = map_shared_raw(fd, len, populate)?;
        Ok(Mapping { ptr, len })
    }

    /// Asks the kernel to fill the page tables of the whole mapping for reading now (best
    /// effort; see [`prefault_read`](super::prefault_read)).
    pub(crate) fn prefault_read(&self) {
        // SAFETY: ptr..ptr + len is this live mapping.
        unsafe { super::prefault_read(self.ptr.as_ptr(), self.len) }
    }

    /// Start of the mapping (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The word of type `A` at byte `offset`, if it lies inside the mapping and `offset` is a
    /// multiple of its size.
    #[inline]
    pub(crate) fn atomic<A: SharedAtomic>(&self, offset: usize) -> Option<&A> {
        // SAFETY: ptr..ptr + len is this mapping, which stays mapped while &self lives (it is
        // unmapped only in Drop), and the reference is tied to &self.
        unsafe { atomic_at(self.ptr, self.len, offset) }
    }

    /// A [`Window`] on `len` bytes from `offset`, if they lie inside the mapping.
    ///
    /// # Safety
    /// The caller must not use the window (or a reference it gave) after this mapping is
    /// dropped: keep the mapping's owner alive beside the window.
    pub(crate) unsafe fn window(&self, offset: usize, len: usize) -> Option<Window> {
        if offset.checked_add(len)? > self.len || !offset.is_multiple_of(8) {
            return None;
        }
        // SAFETY: offset <= len of the mapping (checked above), so the result stays inside it
        // (or one past its end for an empty window).
        let base = unsafe { self.ptr.as_ptr().add(offset) };
        Some(Window {
            base: NonNull::new(base)?,
            len,
        })
    }
}

/// A part of a [`Mapping`] that its user keeps beside the mapping's owner, so that reaching a
/// word costs one bounds check and no pointer chasing. Made only by [`Mapping::window`], whose
/// caller promises that the mapping outlives every use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// 8-byte aligned (page aligned plus a multiple of 8).
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a Window is an address range like Mapping; see Mapping's Send and Sync impls.
unsafe impl Send for Window {}
// SAFETY: as above.
unsafe impl Sync for Window {}

impl Window {
    /// Start of the window.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The word of type `A` at byte `offset` of the window, if it lies inside the window and
    /// `offset` is a multiple of its size.
    #[inline]
    pub(crate) fn atomic_in<A: SharedAtomic>(&self, offset: usize) -> Option<&A> {
        // SAFETY: base..base + len lies inside a mapping that outlives every use of the window
        // (Mapping::window's contract), and the reference is tied to &self.
        unsafe { atomic_at(self.base, self.len, offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nobody else unmaps them; every
        // borrow of the mapping is tied to a handle that holds this Mapping alive.
        unsafe { unmap_raw(self.ptr, self.len) };
    }
}

/// The word of type `A` at byte `offset` of the `len` bytes from `base`, if it lies inside them
/// and `offset` is a multiple of its size. This is the only place where shmq turns an address in
/// shared memory into a reference to an atomic.
///
/// # Safety
/// `base..base + len` must lie inside a live shared mapping that stays mapped for `'a`, and
/// `base` must be 8-byte aligned.
#[inline]
unsafe fn atomic_at<'a, A: SharedAtomic>(
    base: NonNull<u8>,
    len: usize,
    offset: usize,
) -> Option<&'a A> {
    let end = offset.checked_add(A::SIZE)?;
    if end > len || !offset.is_multiple_of(A::SIZE) {
        return None;
    }
    // SAFETY: offset..offset + SIZE lies inside the range (checked above), hence inside the
    // mapping, and is aligned for A (base is 8-byte aligned and offset a multiple of A's size,
    // which is its alignment, at most 8). The mapping stays valid for 'a (the caller's
    // contract). Other processes write this word concurrently, which is sound because A is an
    // atomic type (SharedAtomic's contract) and every byte pattern they may leave is a valid A.
    Some(unsafe { &*base.as_ptr().add(offset).cast::<A>() })
}
