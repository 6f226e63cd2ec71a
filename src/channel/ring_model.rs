//! A model test of the lock-free ring and its recovery: random interleavings of whole sends,
//! sends abandoned after one of their steps (as by a sender killed there), takes, and reclaims
//! of the abandoning participants, on a small ring that wraps many times, checked after every
//! step against a queue of what receivers must get.
//!
//! In one process, so it proves nothing about the kernel's side (tests/crash_points.rs kills
//! real processes at the same steps); what it covers is every order of these steps that the
//! generator reaches, which real deaths hit only by chance.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::layout::{InlineBuf, Place, INLINE_MAX};
use super::view::Chan;
use super::{channel, ChannelConfig};

/// Ring capacity: small, so that positions wrap the ring every few messages (and receivers
/// publish `head` every other take, so that its lag is exercised too).
const CAPACITY: usize = 8;
/// Participant slots that play senders killed half-way (never attached: a reclaim of such a
/// slot is what a reclaim of a dead sender's is, to the ring).
const DEAD_SENDERS: [u32; 2] = [40, 41];

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A whole send by the live sender.
    Send,
    /// A send by `DEAD_SENDERS[i]` abandoned after claiming (`described`: and after writing
    /// the descriptor).
    Abandon { who: usize, described: bool },
    /// A take by the live receiver.
    Take,
    /// A run of up to this many sends in one pass (`Chan::publish_run`).
    SendRun(usize),
    /// A run of up to this many takes in one pass (`Chan::take_run`).
    TakeRun(usize),
    /// The reclaim of `DEAD_SENDERS[i]`.
    Reclaim { who: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => (0..DEAD_SENDERS.len(), any::<bool>())
            .prop_map(|(who, described)| Op::Abandon { who, described }),
        4 => Just(Op::Take),
        1 => (0..DEAD_SENDERS.len()).prop_map(|who| Op::Reclaim { who }),
        1 => (1..2 * CAPACITY).prop_map(Op::SendRun),
        1 => (1..2 * CAPACITY).prop_map(Op::TakeRun),
    ]
}

/// What the model holds at one ring position, oldest first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    /// A message with this sequence number.
    Message(u64),
    /// A claim of `DEAD_SENDERS[i]` not reclaimed yet: receivers wait at it.
    Abandoned(usize),
    /// A claim voided by a reclaim: receivers skip it.
    Void,
}

fn payload(seq: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..].copy_from_slice(&(!seq).to_le_bytes());
    bytes
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let name = format!("t-ring-model-{}", std::process::id());
    let config = ChannelConfig::default()
        .with_capacity(CAPACITY)
        .with_arena_bytes(64 * 1024)
        .with_disconnect(false);
    let (tx, rx) = channel(&name, config).expect("create channel");
    let chan: &Chan = &tx.ep.chan;
    let sender = tx.ep.owner(None).expect("sender slot").slot;
    let receiver = rx.ep.owner(None).expect("receiver slot").slot;
    let mut model: VecDeque<Entry> = VecDeque::new();
    let (mut next_seq, mut next_taken, mut voids_taken, mut claims) = (0u64, 0u64, 0u64, 0u64);
    let result = (|| {
        for (step, op) in ops.iter().enumerate() {
            let full = model.len() == CAPACITY;
            match *op {
                Op::Send => {
                    let sent = chan
                        .try_publish(sender, Place::Inline, 16, &payload(next_seq))
                        .expect("publish");
                    prop_assert_eq!(
                        sent,
                        !full,
                        "step {}: send into a ring of {:?}",
                        step,
                        model
                    );
                    if sent {
                        model.push_back(Entry::Message(next_seq));
                        next_seq += 1;
                    }
                }
                Op::Abandon { who, described } => {
                    let claimed = chan.claim_for_send(DEAD_SENDERS[who]).expect("claim");
                    prop_assert_eq!(claimed.is_some(), !full, "step {}: claim", step);
                    if let Some(position) = claimed {
                        if described {
                            chan.write_desc(position, Place::Inline, 16, &payload(u64::MAX));
                        }
                        model.push_back(Entry::Abandoned(who));
                        claims += 1;
                    }
                }
                Op::Reclaim { who } => {
                    chan.recover_ring(DEAD_SENDERS[who]);
                    for entry in model.iter_mut() {
                        if *entry == Entry::Abandoned(who) {
                            *entry = Entry::Void;
                        }
                    }
                }
                Op::SendRun(n) => {
                    let run: Vec<[u8; 16]> = (0..n as u64).map(|k| payload(next_seq + k)).collect();
                    let sent = chan.publish_run(sender, &run).expect("publish run");
                    prop_assert_eq!(sent, n.min(CAPACITY - model.len()), "step {}", step);
                    for _ in 0..sent {
                        model.push_back(Entry::Message(next_seq));
                        next_seq += 1;
                    }
                }
                Op::TakeRun(n) => {
                    let mut inline = InlineBuf([0; INLINE_MAX]);
                    let mut got = Vec::new();
                    let count = chan
                        .take_run(receiver, n, &mut inline, |taken, bytes| {
                            got.push((taken.desc.len, bytes.0[..16].to_vec()));
                        })
                        .expect("take run");
                    prop_assert_eq!(count, got.len());
                    // Voids are skipped inside the run; it stops after `n` messages, or at an
                    // abandoned slot or the end.
                    let mut expected = Vec::new();
                    while expected.len() < n {
                        while model.front() == Some(&Entry::Void) {
                            model.pop_front();
                            voids_taken += 1;
                        }
                        match model.front().copied() {
                            Some(Entry::Message(seq)) => {
                                model.pop_front();
                                expected.push((16, payload(seq).to_vec()));
                                prop_assert_eq!(seq, next_taken);
                                next_taken += 1;
                                chan.mark_done(receiver);
                            }
                            _ => break,
                        }
                    }
                    prop_assert_eq!(got, expected, "step {}", step);
                }
                Op::Take => {
                    let mut inline = InlineBuf([0; INLINE_MAX]);
                    let taken = chan.try_take(receiver, &mut inline).expect("take");
                    // Receivers skip void slots, and stop at an abandoned one or at the end.
                    while model.front() == Some(&Entry::Void) {
                        model.pop_front();
                        voids_taken += 1;
                    }
                    match (model.front().copied(), taken) {
                        (Some(Entry::Message(seq)), Some(taken)) => {
                            prop_assert_eq!(taken.desc.len, 16);
                            prop_assert_eq!(&inline.0[..16], &payload(seq)[..], "step {}", step);
                            prop_assert_eq!(seq, next_taken);
                            next_taken += 1;
                            model.pop_front();
                            chan.mark_done(receiver);
                        }
                        (None | Some(Entry::Abandoned(_)), None) => {}
                        (front, taken) => prop_assert!(
                            false,
                            "step {}: model front {:?}, ring gave {:?}",
                            step,
                            front,
                            taken.map(|t| t.desc)
                        ),
                    }
                }
            }
            // The ring's own counts agree with the model after every step.
            prop_assert_eq!(chan.len(), model.len(), "step {}: queued", step);
            prop_assert_eq!(chan.sent_total(), next_seq + claims, "step {}: sent", step);
            prop_assert_eq!(chan.done_total(), next_taken + voids_taken, "step {}", step);
            prop_assert_eq!(chan.head_now(), next_taken + voids_taken);
            let lag = chan.head_now() - chan.head().load(std::sync::atomic::Ordering::Relaxed);
            prop_assert!(
                lag < chan.head_publish_every() + 1,
                "step {}: head lags {}",
                step,
                lag
            );
        }
        Ok(())
    })();
    drop((tx, rx));
    result
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ring_steps_and_reclaims_in_any_order_deliver_what_the_model_says(
        ops in prop::collection::vec(op(), 1..120)
    ) {
        run(&ops)?;
    }
}

proptest! {
    #[test]
    fn a_slot_state_keeps_its_phase_holder_and_position_across_the_wrap(
        position in any::<u64>(),
        later in 0u64..(1 << 40),
        phase in 0usize..5,
        holder in prop::option::of(0u32..1024),
    ) {
        use super::layout::{Phase, SlotState};
        let phases = [Phase::Empty, Phase::Writing, Phase::Written, Phase::Full, Phase::Taking];
        let state = SlotState::new(position, phases[phase], holder);
        prop_assert_eq!(state.phase(), Some(phases[phase]));
        prop_assert_eq!(state.holder(), holder);
        prop_assert_eq!(state.lap_offset(position), 0);
        // Positions compare modulo 2^48, whichever side of a wrap they fall.
        prop_assert_eq!(state.lap_offset(position.wrapping_sub(later)), later as i64);
        prop_assert_eq!(state.lap_offset(position.wrapping_add(later)), -(later as i64));
        prop_assert_eq!(state.freed(8).lap_offset(position), 8);
        prop_assert_eq!(state.freed(8).holder(), None);
    }
}

/// A persistent channel of the model's capacity with messages `0..queued` published.
fn queued_channel(tag: &str, queued: u64) -> (super::Sender, super::Receiver) {
    let name = format!("t-ring-{tag}-{}", std::process::id());
    let config = ChannelConfig::default()
        .with_capacity(CAPACITY)
        .with_disconnect(false);
    let (tx, rx) = channel(&name, config).expect("create channel");
    let sender = tx.ep.owner(None).expect("sender slot").slot;
    for seq in 0..queued {
        assert!(tx
            .ep
            .chan
            .try_publish(sender, Place::Inline, 16, &payload(seq))
            .expect("publish"));
    }
    (tx, rx)
}

#[test]
fn a_wait_watching_the_head_leaves_a_rewind_to_the_next_take() {
    use super::layout::C_HEAD_REWINDS;
    use super::wait::WaitOn;
    use std::sync::atomic::Ordering;
    let (tx, rx) = queued_channel("rewind", 3);
    let chan: &Chan = &rx.ep.chan;
    let receiver = rx.ep.owner(None).expect("receiver slot").slot;
    let mut inline = InlineBuf([0; INLINE_MAX]);
    chan.try_take(receiver, &mut inline)
        .expect("take")
        .expect("message 0");
    // What a take left queued does (ring.rs, `take_run`): message 1 is put back behind this
    // process's hint, and the rewind counted, after this process took it.
    chan.try_take(receiver, &mut inline)
        .expect("take")
        .expect("message 1");
    let state = chan.slot_state(1);
    state.store(
        super::layout::SlotState::new(1, super::layout::Phase::Full, None).0,
        Ordering::SeqCst,
    );
    chan.head().fetch_min(1, Ordering::AcqRel);
    chan.word(C_HEAD_REWINDS / 8).fetch_add(1, Ordering::AcqRel);
    // A spinning receive looks at the slot of the next message first.
    let _ = chan.progress(WaitOn::NotEmpty);
    let taken = chan
        .try_take(receiver, &mut inline)
        .expect("take")
        .expect("message 1 again");
    assert_eq!(taken.desc.len, 16);
    assert_eq!(
        &inline.0[..16],
        &payload(1)[..],
        "the take started over from the rewind"
    );
    drop((tx, rx));
}

#[test]
fn a_message_put_back_is_found_behind_a_head_another_receiver_published_later() {
    // Receivers A (this process) and B (another, played by hand): A claims message 1 and
    // cannot open it now, B walks past it and takes 2 and 3, A puts 1 back (the head back to
    // 1, one more rewind), then B publishes the head it reached, 4. Every receiver's next take
    // must still find 1 first.
    use super::layout::{Phase, SlotState, C_HEAD_REWINDS};
    use std::sync::atomic::Ordering;
    let (tx, rx) = queued_channel("put-back", 6);
    let chan: &Chan = &rx.ep.chan;
    let receiver = rx.ep.owner(None).expect("receiver slot").slot;
    let mut inline = InlineBuf([0; INLINE_MAX]);
    for _ in 0..4 {
        chan.try_take(receiver, &mut inline)
            .expect("take")
            .expect("messages 0 to 3");
    }
    // Message 1 put back by A, and the rewind counted; then B's publication.
    let put_back = SlotState::new(1, Phase::Full, None);
    chan.slot_state(1).store(put_back.0, Ordering::SeqCst);
    chan.head().fetch_min(1, Ordering::AcqRel);
    chan.word(C_HEAD_REWINDS / 8).fetch_add(1, Ordering::AcqRel);
    chan.head().fetch_max(4, Ordering::AcqRel);
    let mut got = Vec::new();
    while let Some(taken) = chan.try_take(receiver, &mut inline).expect("take") {
        assert_eq!(taken.desc.len, 16);
        got.push(u64::from_le_bytes(
            inline.0[..8].try_into().expect("8 bytes"),
        ));
    }
    assert_eq!(
        got,
        vec![1, 4, 5],
        "the put-back message first, then the rest"
    );
    drop((tx, rx));
}
