//! Payload chunks in the arena: allocating one for a sender and freeing one (allocator lock).

use std::time::Instant;

use super::alloc::{AllocError, AllocLayout};
use super::journal::{Txn, Words};
use super::layout::ARENA_PAGE;
use super::view::Chan;
use super::wait::WaitOn;
use crate::error::{Error, Result};

impl Chan {
    /// Allocates a chunk for `len` bytes owned by participant `slot`. `Ok(None)`: no room now.
    pub(crate) fn try_alloc(
        &self,
        len: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>> {
        let pages = AllocLayout::pages_for(len);
        let _held = self.lock_alloc(deadline)?;
        let mut txn = Txn::<Chan>::new(self);
        match self.geo.alloc.alloc(&mut txn, pages, slot as u64 + 1) {
            Ok(chunk) => {
                self.commit(txn, self.geo.alloc.journal * 8)?;
                Ok(Some(chunk))
            }
            Err(AllocError::NoSpace) => Ok(None),
            Err(e) => Err(self.alloc_error(e)),
        }
    }

    /// Frees a chunk that participant `slot` owns.
    pub(crate) fn free_chunk(
        &self,
        chunk: u64,
        slot: u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
        {
            let _held = self.lock_alloc(deadline)?;
            let owner = self.load(self.geo.alloc.owner_index(chunk)).unwrap_or(0);
            if owner != slot as u64 + 1 {
                return Err(Error::corrupted(
                    self.name(),
                    format!("chunk {chunk} is owned by {owner}, not by participant {slot}"),
                ));
            }
            let mut txn = Txn::<Chan>::new(self);
            self.geo
                .alloc
                .free(&mut txn, chunk)
                .map_err(|e| self.alloc_error(e))?;
            self.commit(txn, self.geo.alloc.journal * 8)?;
        }
        self.notify(WaitOn::Space);
        Ok(())
    }

    /// Pointer to the first byte of arena chunk `chunk`, if `len` bytes fit from there.
    pub(crate) fn chunk_ptr(&self, chunk: u64, len: u64) -> Option<*mut u8> {
        let start = chunk.checked_mul(ARENA_PAGE)?;
        if start.checked_add(len)? > self.geo.arena_bytes {
            return None;
        }
        // SAFETY: start + len lies inside the arena (checked above), which lies inside the data
        // area by construction of the geometry.
        Some(unsafe {
            self.data
                .as_ptr()
                .add((self.geo.arena_offset + start) as usize)
        })
    }

    pub(super) fn alloc_error(&self, e: AllocError) -> Error {
        match e {
            AllocError::NoSpace => Error::corrupted(self.name(), "arena full"),
            AllocError::Corrupted(what) => Error::corrupted(self.name(), format!("arena: {what}")),
        }
    }
}
