//! The arena allocator: first fit over 4 KiB pages with boundary tags.
//!
//! The arena is cut into 4 KiB pages. A *run* is a maximal range of pages that is either free or
//! allocated as one chunk. Every run carries the same tag word at its first and its last page
//! (`run[i]` = used bit | length in pages), so freeing a chunk finds both neighbours in O(1) and
//! merges with the free ones. Free runs form a doubly linked list (`link[i]` at the run's first
//! page); allocation is first fit and cuts the chunk from the end of the run it takes, so that
//! the run stays in the list. Each chunk's first page also has an `owner` word: the participant
//! responsible for freeing it if it dies (0 while the chunk sits in the ring), with the
//! [`RETURNED`] bit once that participant has given it back without the lock (see `arena.rs`),
//! and [`FREEING`] beside it while the allocator lock's holder frees it.
//!
//! Every operation computes its writes into a [`Txn`] (journal.rs) and commits them through the
//! allocator lock's journal, so a process that dies mid-operation leaves nothing half-written.
//!
//! Every word read is range-checked; a structure that does not add up gives
//! [`AllocError::Corrupted`], never a panic, an out-of-bounds access or an endless walk.

/// Size of an arena page, the allocation unit.
pub(crate) const ARENA_PAGE: u64 = 4096;

const USED: u64 = 1 << 63;
const LEN_MASK: u64 = (1 << 40) - 1;
const NONE: u64 = 0;
/// Owner-word bit of a chunk its owner (the participant in the low bits) has given back: free
/// for whoever holds the allocator lock to free, or for a sender to take back without the lock
/// (one CAS from exactly `RETURNED | participant`), and owned by nobody else meanwhile.
pub(crate) const RETURNED: u64 = 1 << 62;
/// Owner-word bit, beside [`RETURNED`], of a returned chunk the allocator lock's holder is
/// freeing: set by CAS before the free, so that no sender takes the chunk back meanwhile. Found
/// by a later holder, it is the mark of a holder that died before its free committed, and the
/// chunk is freed again.
pub(crate) const FREEING: u64 = 1 << 61;

use super::journal::{Txn, Words, JOURNAL_CAPACITY};

/// Where the allocator's words and its journal live in a [`Words`] space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AllocLayout {
    /// Pages in the arena.
    pub(crate) pages: u64,
    /// Word holding the first free run's page + 1 (0: none).
    pub(crate) free_head: u64,
    /// Word holding the number of free pages.
    pub(crate) free_pages: u64,
    /// First of `pages` run tag words.
    pub(crate) run: u64,
    /// First of `pages` free-list link words.
    pub(crate) link: u64,
    /// First of `pages` owner words.
    pub(crate) owner: u64,
    /// Journal length word; the entries (index, value) follow it.
    pub(crate) journal: u64,
}

/// How an allocator operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllocError {
    /// No free run is long enough right now.
    NoSpace,
    /// The structure is inconsistent (written by a misbehaving process).
    Corrupted(String),
}

fn corrupted(what: impl Into<String>) -> AllocError {
    AllocError::Corrupted(what.into())
}

impl AllocLayout {
    /// Words needed after `base` for a layout of `pages` pages (journal included).
    pub(crate) fn words_needed(pages: u64) -> u64 {
        3 + 2 * JOURNAL_CAPACITY as u64 + 3 * pages
    }

    /// Places the allocator's words from word `base` on.
    pub(crate) fn at(base: u64, pages: u64) -> AllocLayout {
        AllocLayout {
            pages,
            free_head: base,
            free_pages: base + 1,
            journal: base + 2,
            run: base + 3 + 2 * JOURNAL_CAPACITY as u64,
            link: base + 3 + 2 * JOURNAL_CAPACITY as u64 + pages,
            owner: base + 3 + 2 * JOURNAL_CAPACITY as u64 + 2 * pages,
        }
    }

    /// The word range the journal may write.
    pub(crate) fn span(&self) -> std::ops::Range<u64> {
        self.free_head..self.owner + self.pages
    }

    /// Writes the state of an arena that is one free run (or empty).
    pub(crate) fn init<W: Words>(&self, words: &W) {
        words.store(self.journal, 0);
        words.store(self.free_pages, self.pages);
        if self.pages == 0 {
            words.store(self.free_head, NONE);
            return;
        }
        words.store(self.run, self.pages);
        words.store(self.run + self.pages - 1, self.pages);
        words.store(self.link, 0);
        words.store(self.free_head, 1);
    }

    /// Pages needed for `bytes` bytes (at least one).
    pub(crate) fn pages_for(bytes: u64) -> u64 {
        bytes.div_ceil(ARENA_PAGE).max(1)
    }

    fn tag<W: Words, const N: usize>(
        &self,
        txn: &Txn<'_, W, N>,
        page: u64,
    ) -> Result<u64, AllocError> {
        if page >= self.pages {
            return Err(corrupted(format!(
                "run tag index {page} beyond {} pages",
                self.pages
            )));
        }
        txn.get(self.run + page)
            .ok_or_else(|| corrupted("run tag out of the segment"))
    }

    /// Reads the run that starts at `start`: (used, length), checked against its end tag.
    fn run_at<W: Words, const N: usize>(
        &self,
        txn: &Txn<'_, W, N>,
        start: u64,
    ) -> Result<(bool, u64), AllocError> {
        let tag = self.tag(txn, start)?;
        let len = tag & LEN_MASK;
        if len == 0 || start.checked_add(len).is_none_or(|end| end > self.pages) {
            return Err(corrupted(format!("run at page {start} has length {len}")));
        }
        if self.tag(txn, start + len - 1)? != tag {
            return Err(corrupted(format!("run at page {start}: end tag differs")));
        }
        Ok((tag & USED != 0, len))
    }

    fn links<W: Words>(&self, txn: &Txn<'_, W>, start: u64) -> Result<(u64, u64), AllocError> {
        let word = txn
            .get(self.link + start)
            .ok_or_else(|| corrupted("link out of range"))?;
        let (next, prev) = (word >> 32, word & 0xffff_ffff);
        if next > self.pages || prev > self.pages {
            return Err(corrupted(format!(
                "free-list link {word:#x} at page {start}"
            )));
        }
        Ok((next, prev))
    }

    fn set_links<W: Words>(&self, txn: &mut Txn<'_, W>, start: u64, next: u64, prev: u64) {
        txn.set(self.link + start, (next << 32) | prev);
    }

    fn set_run<W: Words>(&self, txn: &mut Txn<'_, W>, start: u64, len: u64, used: bool) {
        let tag = len | if used { USED } else { 0 };
        txn.set(self.run + start, tag);
        txn.set(self.run + start + len - 1, tag);
    }

    fn unlink<W: Words>(&self, txn: &mut Txn<'_, W>, start: u64) -> Result<(), AllocError> {
        let (next, prev) = self.links(txn, start)?;
        if prev == 0 {
            txn.set(self.free_head, next);
        } else {
            let (_, pprev) = self.links(txn, prev - 1)?;
            self.set_links(txn, prev - 1, next, pprev);
        }
        if next != 0 {
            let (nnext, _) = self.links(txn, next - 1)?;
            self.set_links(txn, next - 1, nnext, prev);
        }
        Ok(())
    }

    fn push_free<W: Words>(&self, txn: &mut Txn<'_, W>, start: u64) -> Result<(), AllocError> {
        let head = txn.get(self.free_head).unwrap_or(NONE);
        if head > self.pages {
            return Err(corrupted(format!("free-list head {head}")));
        }
        if head != 0 {
            let (hnext, _) = self.links(txn, head - 1)?;
            self.set_links(txn, head - 1, hnext, start + 1);
        }
        self.set_links(txn, start, head, 0);
        txn.set(self.free_head, start + 1);
        Ok(())
    }

    fn free_pages_word<W: Words>(&self, txn: &Txn<'_, W>) -> u64 {
        txn.get(self.free_pages).unwrap_or(0)
    }

    /// Adds to `txn` the allocation of `pages` pages owned by `owner`; returns the first page.
    pub(crate) fn alloc<W: Words>(
        &self,
        txn: &mut Txn<'_, W>,
        pages: u64,
        owner: u64,
    ) -> Result<u64, AllocError> {
        if pages == 0 || pages > self.pages {
            return Err(AllocError::NoSpace);
        }
        let mut cursor = txn.get(self.free_head).unwrap_or(NONE);
        // A well-formed list has at most pages/2 + 1 runs; more steps mean a cycle.
        for _ in 0..=self.pages {
            if cursor == 0 {
                return Err(AllocError::NoSpace);
            }
            let start = cursor - 1;
            let (used, len) = self.run_at(txn, start)?;
            if used {
                return Err(corrupted(format!(
                    "used run at page {start} is on the free list"
                )));
            }
            let (next, _) = self.links(txn, start)?;
            if len >= pages {
                let chunk = start + len - pages;
                if len == pages {
                    self.unlink(txn, start)?;
                } else {
                    self.set_run(txn, start, len - pages, false);
                }
                self.set_run(txn, chunk, pages, true);
                txn.set(self.owner + chunk, owner);
                let free = self.free_pages_word(txn);
                txn.set(self.free_pages, free.saturating_sub(pages));
                return Ok(chunk);
            }
            cursor = next;
        }
        Err(corrupted("free list does not end"))
    }

    /// Checks that `chunk` starts an allocated run and returns its length in pages.
    pub(crate) fn chunk_pages<W: Words, const N: usize>(
        &self,
        txn: &Txn<'_, W, N>,
        chunk: u64,
    ) -> Result<u64, AllocError> {
        match self.run_at(txn, chunk)? {
            (true, len) => Ok(len),
            (false, _) => Err(corrupted(format!("page {chunk} is not an allocated chunk"))),
        }
    }

    /// Adds to `txn` the freeing of the chunk starting at `chunk`, merging free neighbours.
    pub(crate) fn free<W: Words>(
        &self,
        txn: &mut Txn<'_, W>,
        chunk: u64,
    ) -> Result<(), AllocError> {
        let len = self.chunk_pages(txn, chunk)?;
        let (mut start, mut total) = (chunk, len);
        if chunk > 0 {
            let before = self.tag(txn, chunk - 1)?;
            let before_len = before & LEN_MASK;
            if before & USED == 0 && before_len > 0 && before_len <= chunk {
                let prev_start = chunk - before_len;
                if self.run_at(txn, prev_start)? == (false, before_len) {
                    self.unlink(txn, prev_start)?;
                    // The two tags where the runs meet become interior: clear them, so that no
                    // stale tag pair inside a run can pass for a chunk later.
                    txn.set(self.run + chunk - 1, 0);
                    txn.set(self.run + chunk, 0);
                    start = prev_start;
                    total += before_len;
                }
            }
        }
        let after = chunk + len;
        if after < self.pages {
            if let (false, after_len) = self.run_at(txn, after)? {
                self.unlink(txn, after)?;
                txn.set(self.run + after - 1, 0);
                txn.set(self.run + after, 0);
                total += after_len;
            }
        }
        self.set_run(txn, start, total, false);
        self.push_free(txn, start)?;
        txn.set(self.owner + chunk, NONE);
        let free = self.free_pages_word(txn);
        txn.set(self.free_pages, (free + len).min(self.pages));
        Ok(())
    }

    /// The owner word of the chunk starting at `chunk`.
    pub(crate) fn owner_index(&self, chunk: u64) -> u64 {
        self.owner + chunk
    }

    /// Every allocated chunk as (first page, pages, owner), walking runs from page 0.
    pub(crate) fn chunks<W: Words>(&self, words: &W) -> Result<Vec<(u64, u64, u64)>, AllocError> {
        let txn: Txn<'_, W> = Txn::new(words);
        let mut out = Vec::new();
        let mut page = 0;
        while page < self.pages {
            let (used, len) = self.run_at(&txn, page)?;
            if used {
                out.push((page, len, words.load(self.owner + page).unwrap_or(0)));
            }
            page += len;
        }
        Ok(out)
    }

    /// Free pages according to the counter.
    pub(crate) fn free_page_count<W: Words>(&self, words: &W) -> u64 {
        words.load(self.free_pages).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::journal::replay_journal;
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    struct HeapWords(RefCell<Vec<u64>>);

    impl Words for HeapWords {
        fn load(&self, index: u64) -> Option<u64> {
            self.0.borrow().get(index as usize).copied()
        }
        fn store(&self, index: u64, value: u64) {
            if let Some(w) = self.0.borrow_mut().get_mut(index as usize) {
                *w = value;
            }
        }
    }

    fn arena(pages: u64) -> (HeapWords, AllocLayout) {
        let layout = AllocLayout::at(0, pages);
        let words = HeapWords(RefCell::new(vec![
            0;
            AllocLayout::words_needed(pages) as usize
        ]));
        layout.init(&words);
        (words, layout)
    }

    fn alloc(
        words: &HeapWords,
        layout: &AllocLayout,
        pages: u64,
        owner: u64,
    ) -> Result<u64, AllocError> {
        let mut txn: Txn<'_, HeapWords> = Txn::new(words);
        let chunk = layout.alloc(&mut txn, pages, owner)?;
        assert!(txn.commit(layout.journal));
        Ok(chunk)
    }

    fn free(words: &HeapWords, layout: &AllocLayout, chunk: u64) -> Result<(), AllocError> {
        let mut txn: Txn<'_, HeapWords> = Txn::new(words);
        layout.free(&mut txn, chunk)?;
        assert!(txn.commit(layout.journal));
        Ok(())
    }

    /// Checks the whole structure against the model of live chunks.
    fn check(words: &HeapWords, layout: &AllocLayout, live: &BTreeMap<u64, (u64, u64)>) {
        let chunks = layout.chunks(words).expect("walkable");
        let expected: Vec<_> = live.iter().map(|(&c, &(p, o))| (c, p, o)).collect();
        assert_eq!(chunks, expected, "allocated chunks differ from the model");
        let used: u64 = live.values().map(|(p, _)| p).sum();
        assert_eq!(layout.free_page_count(words), layout.pages - used);
        // No two adjacent free runs, and the free list holds exactly the free runs.
        let txn: Txn<'_, HeapWords> = Txn::new(words);
        let mut page = 0;
        let mut free_runs = Vec::new();
        let mut last_free = false;
        while page < layout.pages {
            let (used, len) = layout.run_at(&txn, page).unwrap();
            for interior in page + 1..page + len.saturating_sub(1) {
                assert_eq!(
                    words.load(layout.run + interior),
                    Some(0),
                    "stale tag inside a run"
                );
            }
            assert!(!last_free || used, "two adjacent free runs at page {page}");
            if !used {
                free_runs.push(page);
            }
            last_free = !used;
            page += len;
        }
        let mut listed = Vec::new();
        let mut cursor = words.load(layout.free_head).unwrap();
        let mut prev = 0;
        while cursor != 0 {
            let (next, back) = layout.links(&txn, cursor - 1).unwrap();
            assert_eq!(back, prev, "broken back link");
            listed.push(cursor - 1);
            prev = cursor;
            cursor = next;
            assert!(listed.len() <= layout.pages as usize);
        }
        listed.sort();
        assert_eq!(listed, free_runs);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..20).prop_map(Op::Alloc),
            (0usize..64).prop_map(Op::Free)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// A state machine over alloc and free: no chunk is lost, handed out twice or overlaps
        /// another, free space always merges, and freeing everything restores one free run.
        #[test]
        fn allocator_matches_model(pages in 1u64..96, ops in proptest::collection::vec(op(), 1..120)) {
            let (words, layout) = arena(pages);
            let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Alloc(n) => match alloc(&words, &layout, n, step as u64 + 1) {
                        Ok(chunk) => {
                            for (&c, &(p, _)) in &live {
                                prop_assert!(chunk + n <= c || c + p <= chunk, "overlap");
                            }
                            prop_assert!(chunk + n <= pages);
                            live.insert(chunk, (n, step as u64 + 1));
                        }
                        Err(AllocError::NoSpace) => {
                            // First fit must succeed whenever some free run is long enough.
                            let txn: Txn<'_, HeapWords> = Txn::new(&words);
                            let mut page = 0;
                            while page < pages {
                                let (used, len) = layout.run_at(&txn, page).unwrap();
                                prop_assert!(used || len < n, "NoSpace with a free run of {len} >= {n}");
                                page += len;
                            }
                        }
                        Err(e) => prop_assert!(false, "{e:?}"),
                    },
                    Op::Free(k) => {
                        if let Some(&chunk) = live.keys().nth(k % live.len().max(1)) {
                            free(&words, &layout, chunk).unwrap();
                            live.remove(&chunk);
                        }
                    }
                }
                check(&words, &layout, &live);
            }
            for chunk in live.keys().copied().collect::<Vec<_>>() {
                free(&words, &layout, chunk).unwrap();
            }
            live.clear();
            check(&words, &layout, &live);
            prop_assert_eq!(alloc(&words, &layout, pages, 1), Ok(0));
        }

        /// A crash after the commit point, replayed, equals the completed operation; a crash
        /// before it leaves the state untouched.
        #[test]
        fn journal_replay_completes_an_interrupted_operation(
            pages in 4u64..64, sizes in proptest::collection::vec(1u64..6, 1..10), cut in 0usize..40,
        ) {
            let (words, layout) = arena(pages);
            let mut chunks = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                if let Ok(c) = alloc(&words, &layout, *n, i as u64 + 1) { chunks.push(c); }
            }
            let Some(&victim) = chunks.first() else { return Ok(()); };
            let before = words.0.borrow().clone();
            // Build the free's writes and apply only the first `cut` of them after committing.
            let mut txn: Txn<'_, HeapWords> = Txn::new(&words);
            layout.free(&mut txn, victim).unwrap();
            let writes = txn.pending().to_vec();
            for (k, &(i, v)) in writes.iter().enumerate() {
                words.store(layout.journal + 1 + 2 * k as u64, i);
                words.store(layout.journal + 2 + 2 * k as u64, v);
            }
            words.store(layout.journal, writes.len() as u64);
            for &(i, v) in writes.iter().take(cut) { words.store(i, v); }
            prop_assert!(replay_journal(&words, layout.journal, layout.span()));
            // Same as a clean run of the operation.
            let crashed = words.0.borrow().clone();
            *words.0.borrow_mut() = before;
            free(&words, &layout, victim).unwrap();
            let mut clean = words.0.borrow().clone();
            // Journal entry area may differ; compare the allocator state only.
            let span = layout.run as usize..clean.len();
            prop_assert_eq!(&crashed[span.clone()], &clean[span]);
            prop_assert_eq!(crashed[layout.free_head as usize], clean[layout.free_head as usize]);
            clean.clear();
        }

        /// Random garbage in the words never panics or loops: operations return errors.
        #[test]
        fn garbage_never_panics(pages in 1u64..32, garbage in proptest::collection::vec(any::<u64>(), 200), n in 1u64..8, chunk in 0u64..40) {
            let (words, layout) = arena(pages);
            for (i, g) in garbage.iter().enumerate() {
                words.store(i as u64 % AllocLayout::words_needed(pages), *g);
            }
            let mut txn: Txn<'_, HeapWords> = Txn::new(&words);
            let _ = layout.alloc(&mut txn, n, 1);
            let mut txn: Txn<'_, HeapWords> = Txn::new(&words);
            let _ = layout.free(&mut txn, chunk);
            let _ = layout.chunks(&words);
            let _ = replay_journal(&words, layout.journal, layout.span());
        }
    }
}
