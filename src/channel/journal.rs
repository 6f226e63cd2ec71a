//! The redo journal that makes multi-word updates of shared memory crash-atomic.
//!
//! All of a channel's shared state is plain words that another process may have left half
//! written. So an operation never writes in place as it goes: it computes its writes into a
//! [`Txn`] (reading through it), stores them in the journal, publishes the journal's length as its
//! commit point, applies them and clears the length. A process that dies anywhere in between
//! leaves either nothing (length 0) or a complete journal, which the next holder of the lock
//! replays ([`replay_journal`]): every write is an absolute value, so replaying twice is harmless.

/// Largest number of writes one journaled operation may make.
pub(crate) const JOURNAL_CAPACITY: usize = 32;

/// Word storage the allocator runs on: shared memory in the channel, a vector in tests.
/// Indices are word indices; out-of-range loads return `None` and stores are dropped.
pub(crate) trait Words {
    fn load(&self, index: u64) -> Option<u64>;
    fn store(&self, index: u64, value: u64);
}

/// A set of pending writes, read through before they are committed.
/// On the stack: a transaction runs for every message, so it must not allocate.
pub(crate) struct Txn<'a, W: Words, const N: usize = JOURNAL_CAPACITY> {
    words: &'a W,
    writes: [(u64, u64); N],
    len: usize,
    overflowed: bool,
}

impl<'a, W: Words, const N: usize> Txn<'a, W, N> {
    /// A transaction of at most `N` writes (`N` <= the journal's capacity): ring operations
    /// use a small one, so the per-message cost of clearing it stays small.
    pub(crate) fn new(words: &'a W) -> Self {
        Txn {
            words,
            writes: [(0, 0); N],
            len: 0,
            overflowed: false,
        }
    }

    pub(super) fn pending(&self) -> &[(u64, u64)] {
        &self.writes[..self.len]
    }

    pub(crate) fn get(&self, index: u64) -> Option<u64> {
        match self.pending().iter().find(|(i, _)| *i == index) {
            Some(&(_, v)) => Some(v),
            None => self.words.load(index),
        }
    }

    pub(crate) fn set(&mut self, index: u64, value: u64) {
        if let Some(entry) = self.writes[..self.len]
            .iter_mut()
            .find(|(i, _)| *i == index)
        {
            entry.1 = value;
        } else if self.len < N.min(JOURNAL_CAPACITY) {
            self.writes[self.len] = (index, value);
            self.len += 1;
        } else {
            self.overflowed = true;
        }
    }

    /// Journals and applies the writes, in the order they were first set. Returns false
    /// (writing nothing) if they do not fit the journal, which the operations below never
    /// exceed.
    pub(crate) fn commit(self, journal: u64) -> bool {
        let n = self.len as u64;
        if self.overflowed {
            return false;
        }
        for (k, &(index, value)) in self.pending().iter().enumerate() {
            self.words.store(journal + 1 + 2 * k as u64, index);
            self.words.store(journal + 2 + 2 * k as u64, value);
        }
        // The commit point: from here a crash is repaired by replaying.
        self.words.store(journal, n);
        for &(index, value) in self.pending() {
            self.words.store(index, value);
        }
        self.words.store(journal, 0);
        true
    }
}

/// Replays a committed journal left by a process that died while holding the lock.
/// Returns whether there was one. Indices outside `allowed` are skipped.
///
/// Replaying is harmless because only the allocator lock keeps a journal, and every word it
/// journals belongs to its holder until the operation returns: the allocator's own words, the
/// owner words of the chunks it hands out or takes back, the records of the participants it
/// retires. Nobody can have moved one of them on since the holder died.
pub(crate) fn replay_journal<W: Words>(
    words: &W,
    journal: u64,
    allowed: std::ops::Range<u64>,
) -> bool {
    let n = words.load(journal).unwrap_or(0);
    if n == 0 {
        return false;
    }
    if n as usize <= JOURNAL_CAPACITY {
        for k in 0..n {
            let index = words.load(journal + 1 + 2 * k);
            let value = words.load(journal + 2 + 2 * k);
            if let (Some(index), Some(value)) = (index, value) {
                if allowed.contains(&index) {
                    words.store(index, value);
                }
            }
        }
    }
    words.store(journal, 0);
    true
}
