//! A model test of the arena's chunk hand-backs: random interleavings of allocations (which
//! take back a returned chunk without the lock when one of their length is there, and free
//! returned chunks under the lock otherwise), returns, senders that die right after a take-back
//! or holding a chunk, lock holders that die after marking a returned chunk `FREEING`, and the
//! reclaims of the dead, on a small arena, checked after every step against a model of who
//! holds which pages.
//!
//! In one process, so it proves nothing about the kernel's side (tests/crash_points.rs kills
//! real processes at the same steps); what it covers is every order of these steps that the
//! generator reaches.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::alloc::{FREEING, RETURNED};
use super::layout::{ARENA_PAGE, C_ARENA_HINTS_MISSED};
use super::view::Chan;
use super::{channel, ChannelConfig};

/// Arena pages: few, so that chunks are freed, merged, cut and handed out again often.
const PAGES: u64 = 16;
/// Participant slots that play senders killed after a take-back or an allocation (never
/// attached: a reclaim of such a slot is what a reclaim of a dead sender's is, to the arena).
const DEAD_SENDERS: [u32; 2] = [40, 41];

#[derive(Clone, Copy, Debug)]
enum Op {
    /// The live sender allocates a chunk of this many pages and hands it to the receiver (as a
    /// send and a take do: the owner word moves to the receiver).
    Send(u64),
    /// The receiver gives back the `i`-th chunk it holds (modulo how many it holds).
    Return(usize),
    /// `DEAD_SENDERS[who]` takes back a chunk of this many pages, or allocates one, and dies
    /// holding it.
    DieHolding { who: usize, pages: u64 },
    /// A lock holder dies after marking the `i`-th returned chunk `FREEING`, before its free
    /// committed (the lock's next holder sets the hints-missed flag, as lock.rs does).
    DieFreeing(usize),
    /// The reclaim of `DEAD_SENDERS[who]`.
    Reclaim { who: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1..4u64).prop_map(Op::Send),
        5 => (0..8usize).prop_map(Op::Return),
        1 => (0..DEAD_SENDERS.len(), 1..4u64).prop_map(|(who, pages)| Op::DieHolding { who, pages }),
        1 => (0..8usize).prop_map(Op::DieFreeing),
        1 => (0..DEAD_SENDERS.len()).prop_map(|who| Op::Reclaim { who }),
    ]
}

/// Who the model says holds a chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Holder {
    Receiver,
    Dead(usize),
    /// Given back: free for the lock's holder to free, or for a sender to take back.
    Returned,
}

struct Model {
    /// First page → (pages, holder), for every chunk not free.
    chunks: BTreeMap<u64, (u64, Holder)>,
}

impl Model {
    fn nth(&self, holder: Holder, i: usize) -> Option<u64> {
        let of: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(_, &(_, h))| h == holder)
            .map(|(&c, _)| c)
            .collect();
        (!of.is_empty()).then(|| of[i % of.len()])
    }

    /// A chunk handed out at `chunk`: it may reuse returned chunks (taken back, or freed and
    /// cut again), never a held one.
    fn handed_out(&mut self, chunk: u64, pages: u64, holder: Holder) -> Result<(), String> {
        let overlapping: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(&c, &(p, _))| c < chunk + pages && chunk < c + p)
            .map(|(&c, _)| c)
            .collect();
        for c in overlapping {
            let (_, h) = self.chunks[&c];
            if h != Holder::Returned {
                return Err(format!(
                    "pages {chunk}+{pages} handed out over chunk {c} held by {h:?}"
                ));
            }
            self.chunks.remove(&c);
        }
        if chunk + pages > PAGES {
            return Err(format!("chunk {chunk}+{pages} beyond the arena"));
        }
        self.chunks.insert(chunk, (pages, holder));
        Ok(())
    }
}

fn owner_word(chan: &Chan, chunk: u64) -> &std::sync::atomic::AtomicU64 {
    chan.word(chan.geo.alloc.owner_index(chunk))
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let name = format!("t-arena-model-{}", std::process::id());
    let config = ChannelConfig::default()
        .with_capacity(8)
        .with_arena_bytes((PAGES * ARENA_PAGE) as usize)
        .with_disconnect(false);
    let (tx, rx) = channel(&name, config).expect("create channel");
    let chan: &Chan = &tx.ep.chan;
    let sender = tx.ep.owner(None).expect("sender slot").slot;
    let receiver = rx.ep.owner(None).expect("receiver slot").slot;
    let mut model = Model {
        chunks: BTreeMap::new(),
    };
    let result = (|| {
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Send(pages) => {
                    let allocated = chan
                        .try_alloc(pages * ARENA_PAGE, sender, None)
                        .expect("alloc");
                    if let Some(chunk) = allocated {
                        prop_assert_eq!(
                            owner_word(chan, chunk).load(Ordering::Relaxed),
                            u64::from(sender) + 1,
                            "step {}: owner of a new chunk",
                            step
                        );
                        model
                            .handed_out(chunk, pages, Holder::Receiver)
                            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                        owner_word(chan, chunk).store(u64::from(receiver) + 1, Ordering::Release);
                    } else {
                        // First fit after freeing every returned chunk: no room means the
                        // held chunks leave no run that long.
                        let held: u64 = model
                            .chunks
                            .values()
                            .filter(|(_, h)| *h != Holder::Returned)
                            .map(|(p, _)| p)
                            .sum();
                        prop_assert!(
                            held + pages > PAGES || longest_gap(&model) < pages,
                            "step {}: no room for {} pages with {:?}",
                            step,
                            pages,
                            model.chunks
                        );
                    }
                }
                Op::Return(i) => {
                    if let Some(chunk) = model.nth(Holder::Receiver, i) {
                        chan.return_chunk(chunk, receiver).expect("return");
                        model.chunks.get_mut(&chunk).expect("modelled").1 = Holder::Returned;
                    }
                }
                Op::DieHolding { who, pages } => {
                    let dead = DEAD_SENDERS[who];
                    let got = match chan.take_back(pages, dead) {
                        Some(chunk) => Some(chunk),
                        None => chan
                            .try_alloc(pages * ARENA_PAGE, dead, None)
                            .expect("alloc"),
                    };
                    if let Some(chunk) = got {
                        model
                            .handed_out(chunk, pages, Holder::Dead(who))
                            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    }
                }
                Op::DieFreeing(i) => {
                    if let Some(chunk) = model.nth(Holder::Returned, i) {
                        let word = owner_word(chan, chunk);
                        let seen = word.load(Ordering::Relaxed);
                        // Still returned, or freed already by an allocation under the lock
                        // (the model keeps both as returned: room that counts as free).
                        if seen & RETURNED != 0 {
                            word.store(seen | FREEING, Ordering::Release);
                            chan.word(C_ARENA_HINTS_MISSED / 8)
                                .store(1, Ordering::Relaxed);
                        } else {
                            prop_assert_eq!(seen, 0, "step {}: a returned chunk's owner", step);
                        }
                    }
                }
                Op::Reclaim { who } => {
                    chan.reclaim(DEAD_SENDERS[who], true, None)
                        .expect("reclaim");
                    model.chunks.retain(|_, (_, h)| *h != Holder::Dead(who));
                }
            }
            // The arena's own figures agree with the model after every step: returned chunks
            // count as free, held ones do not, and every held chunk is where the model says.
            let held: u64 = model
                .chunks
                .values()
                .filter(|(_, h)| *h != Holder::Returned)
                .map(|(p, _)| p)
                .sum();
            let free = chan.geo.alloc.free_page_count(chan) + chan.returned_pages();
            prop_assert_eq!(free, PAGES - held, "step {}: {:?}", step, model.chunks);
            let walked = chan.geo.alloc.chunks(chan).expect("walkable");
            for (&chunk, &(pages, holder)) in &model.chunks {
                if holder != Holder::Returned {
                    prop_assert!(
                        walked.iter().any(|&(c, p, _)| c == chunk && p == pages),
                        "step {}: held chunk {} missing from {:?}",
                        step,
                        chunk,
                        walked
                    );
                }
            }
        }
        // The end: everything given back and the dead reclaimed, the whole arena is one chunk
        // again (a returned or `FREEING` chunk nobody frees would fail this).
        while let Some(chunk) = model.nth(Holder::Receiver, 0) {
            chan.return_chunk(chunk, receiver).expect("return");
            model.chunks.get_mut(&chunk).expect("modelled").1 = Holder::Returned;
        }
        for &dead in &DEAD_SENDERS {
            chan.reclaim(dead, true, None).expect("reclaim");
        }
        let whole = chan
            .try_alloc(PAGES * ARENA_PAGE, sender, None)
            .expect("alloc");
        prop_assert_eq!(whole, Some(0), "the whole arena: {:?}", model.chunks);
        Ok(())
    })();
    drop((tx, rx));
    result
}

/// The longest run of pages no held chunk covers (returned ones count as free).
fn longest_gap(model: &Model) -> u64 {
    let (mut longest, mut from) = (0, 0);
    for (&chunk, &(pages, holder)) in &model.chunks {
        if holder != Holder::Returned {
            longest = longest.max(chunk - from);
            from = chunk + pages;
        }
    }
    longest.max(PAGES - from)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arena_hand_backs_in_any_order_never_hand_out_a_held_page_and_lose_nothing(
        ops in prop::collection::vec(op(), 1..150)
    ) {
        run(&ops)?;
    }
}
