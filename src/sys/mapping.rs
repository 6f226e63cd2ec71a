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

    /// Start of the mapping (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The word of type `A` at byte `offset`, if it lies inside the mapping and `offset` is a
    /// multiple of its size. This is the only place where shmq turns an address in shared memory
    /// into a reference to an atomic.
    #[inline]
    pub(crate) fn atomic<A: SharedAtomic>(&self, offset: usize) -> Option<&A> {
        let end = offset.checked_add(A::SIZE)?;
        if end > self.len || !offset.is_multiple_of(A::SIZE) {
            return None;
        }
        // SAFETY: offset..offset + SIZE lies inside the mapping (checked above) and is aligned
        // for A (the mapping is page aligned and offset is a multiple of A's alignment). The
        // mapping stays valid while &self lives (it is unmapped only in Drop). Other processes
        // write this word concurrently, which is sound because A is an atomic type
        // (SharedAtomic's contract) and every byte pattern they may leave is a valid A.
        Some(unsafe { &*self.ptr.as_ptr().add(offset).cast::<A>() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nobody else unmaps them; every
        // borrow of the mapping is tied to a handle that holds this Mapping alive.
        unsafe { unmap_raw(self.ptr, self.len) };
    }
}
