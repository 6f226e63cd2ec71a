//! A model-based test of one channel in one process: random sequences of sends, loans (sent,
//! dropped or held), receives and drops of held messages, checked after every step against a
//! model of what must be queued and how many arena pages must be in use.
//!
//! The model knows where each payload lives: up to 96 bytes sent by copy travel in the ring slot
//! and take no arena; loans and larger copies take whole 4 KiB pages (at least one); payloads
//! larger than the arena travel in an overflow segment and take no arena. So after every step
//! `free_arena_bytes()` must equal the arena minus the pages of everything queued, held or
//! loaned, which catches chunks that are lost or freed twice, and every payload is checked
//! byte for byte on receipt and again just before it is dropped, which catches a chunk handed
//! out while still in use.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use shmq::{ChannelConfig, Loan, Message, SendTimeoutError, TryRecvError, TrySendError};

const ARENA: usize = 64 * 1024;
const PAGE: usize = 4096;
const ARENA_PAGES: usize = ARENA / PAGE;
const CAPACITY: usize = 8;
const INLINE_MAX: usize = 96;
const OVERFLOW_SLOTS: usize = 64;

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, _| panic!("channel_model has no child role {role}"));
}

#[derive(Clone, Debug)]
enum Op {
    /// `try_send` a copy of `len` bytes.
    TrySend(usize),
    /// `try_loan(len)`, fill, send.
    LoanSend(usize),
    /// `try_loan(len)`, fill, drop unsent.
    LoanDrop(usize),
    /// `try_loan(len)`, fill, keep the loan.
    LoanHold(usize),
    /// Send a kept loan (by index).
    SendHeldLoan(usize),
    /// Drop a kept loan (by index).
    DropHeldLoan(usize),
    /// `try_recv`, keeping the message.
    TryRecv,
    /// Drop a kept message (by index).
    DropHeld(usize),
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..20_000,
        2 => 0usize..=2 * INLINE_MAX,
        1 => prop::sample::select(vec![0, 1, 96, 97, 4095, 4096, 4097, 8192]),
        // Around the arena size: the whole arena, or just too large for it.
        1 => ARENA - 2..ARENA + 2,
        1 => ARENA + 2..ARENA + 20_000,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => len_strategy().prop_map(Op::TrySend),
        3 => len_strategy().prop_map(Op::LoanSend),
        1 => len_strategy().prop_map(Op::LoanDrop),
        1 => len_strategy().prop_map(Op::LoanHold),
        1 => any::<usize>().prop_map(Op::SendHeldLoan),
        1 => any::<usize>().prop_map(Op::DropHeldLoan),
        5 => Just(Op::TryRecv),
        3 => any::<usize>().prop_map(Op::DropHeld),
    ]
}

/// Byte `i` of payload `id`.
fn byte(id: u64, i: usize) -> u8 {
    ((i as u64 ^ id.wrapping_mul(0x1000_0000_01b3)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte(id, i)).collect()
}

fn fill(buf: &mut [u8], id: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte(id, i);
    }
}

fn intact(buf: &[u8], id: u64) -> bool {
    buf.iter().enumerate().all(|(i, &b)| b == byte(id, i))
}

/// Where a payload lives and what it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cost {
    pages: usize,
    overflow: bool,
}

/// Loans always take arena pages (a zero-length one takes one page); copies of up to 96 bytes
/// are inline; anything larger than the arena is an overflow segment.
fn cost(len: usize, loaned: bool) -> Cost {
    if len > ARENA {
        Cost {
            pages: 0,
            overflow: true,
        }
    } else if !loaned && len <= INLINE_MAX {
        Cost {
            pages: 0,
            overflow: false,
        }
    } else {
        Cost {
            pages: len.div_ceil(PAGE).max(1),
            overflow: false,
        }
    }
}

#[derive(Debug)]
struct Expected {
    id: u64,
    len: usize,
    cost: Cost,
}

struct Model {
    queued: VecDeque<Expected>,
    held: Vec<(Message, Expected)>,
    loans: Vec<(Loan, Expected)>,
    next_id: u64,
    /// `Full` answers that the free page count alone does not explain (fragmentation).
    fragmented_full: usize,
}

impl Model {
    fn all(&self) -> impl Iterator<Item = &Expected> {
        self.queued
            .iter()
            .chain(self.held.iter().map(|(_, e)| e))
            .chain(self.loans.iter().map(|(_, e)| e))
    }

    fn used_pages(&self) -> usize {
        self.all().map(|e| e.cost.pages).sum()
    }

    fn free_pages(&self) -> usize {
        ARENA_PAGES - self.used_pages()
    }

    fn overflows(&self) -> usize {
        self.all().filter(|e| e.cost.overflow).count()
    }

    fn ring_full(&self) -> bool {
        self.queued.len() >= CAPACITY
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether a `Full` answer for a reservation of `cost` is explained by the model: no room
    /// in the arena (or the overflow table), possibly because of fragmentation, which only a
    /// partly used arena can have.
    fn check_no_room(&mut self, cost: Cost, what: &str) -> Result<(), TestCaseError> {
        if cost.overflow {
            prop_assert!(
                self.overflows() >= OVERFLOW_SLOTS,
                "{what}: Full for an overflow payload with {} in flight",
                self.overflows()
            );
        } else if cost.pages > 0 && cost.pages <= self.free_pages() {
            prop_assert!(
                self.used_pages() > 0,
                "{what}: Full for {} pages with the whole arena free",
                cost.pages
            );
            self.fragmented_full += 1;
        } else {
            prop_assert!(
                cost.pages > 0,
                "{what}: Full for an inline payload with room in the ring"
            );
        }
        Ok(())
    }
}

fn overflow_files(name: &str) -> usize {
    let prefix = format!("shmq.{name}~");
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.starts_with(&prefix))
        .count()
}

fn check_message(msg: &Message, e: &Expected, when: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(msg.len(), e.len, "{}: length of payload {}", when, e.id);
    prop_assert!(
        intact(msg, e.id),
        "{}: payload {} ({} bytes) corrupted",
        when,
        e.id,
        e.len
    );
    Ok(())
}

/// Sends a loan: blocking if the model says the ring has room, else with a zero timeout, which
/// must fail and give the memory back.
fn send_loan(model: &mut Model, loan: Loan, e: Expected) -> Result<(), TestCaseError> {
    if model.ring_full() {
        let err = loan.send_timeout(Duration::ZERO).unwrap_err();
        prop_assert!(
            matches!(err, SendTimeoutError::Timeout(_)),
            "loan send on a full ring: {:?}",
            err
        );
    } else {
        loan.send()
            .map_err(|e| TestCaseError::fail(format!("loan send: {e}")))?;
        model.queued.push_back(e);
    }
    Ok(())
}

fn step(
    tx: &shmq::Sender,
    rx: &shmq::Receiver,
    model: &mut Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::TrySend(len) => {
            let c = cost(len, false);
            let id = model.take_id();
            match tx.try_send(&payload(id, len)) {
                Ok(()) => {
                    prop_assert!(!model.ring_full(), "try_send succeeded on a full ring");
                    prop_assert!(
                        c.pages <= model.free_pages(),
                        "try_send got pages that are in use"
                    );
                    model.queued.push_back(Expected { id, len, cost: c });
                }
                Err(TrySendError::Full(..)) => {
                    if !model.ring_full() {
                        model.check_no_room(c, "try_send")?;
                    }
                }
                Err(e) => return Err(TestCaseError::fail(format!("try_send({len}): {e}"))),
            }
        }
        Op::LoanSend(len) | Op::LoanDrop(len) | Op::LoanHold(len) => {
            let c = cost(len, true);
            let id = model.take_id();
            match tx.try_loan(len) {
                Ok(mut loan) => {
                    prop_assert!(
                        c.pages <= model.free_pages(),
                        "try_loan got pages that are in use"
                    );
                    prop_assert_eq!(loan.len(), len);
                    fill(&mut loan, id);
                    let e = Expected { id, len, cost: c };
                    match op {
                        Op::LoanSend(_) => send_loan(model, loan, e)?,
                        Op::LoanDrop(_) => drop(loan),
                        _ => model.loans.push((loan, e)),
                    }
                }
                Err(TrySendError::Full(..)) => model.check_no_room(c, "try_loan")?,
                Err(e) => return Err(TestCaseError::fail(format!("try_loan({len}): {e}"))),
            }
        }
        Op::SendHeldLoan(i) => {
            if !model.loans.is_empty() {
                let (loan, e) = model.loans.remove(i % model.loans.len());
                prop_assert!(
                    intact(&loan, e.id),
                    "loan {} changed before it was sent",
                    e.id
                );
                send_loan(model, loan, e)?;
            }
        }
        Op::DropHeldLoan(i) => {
            if !model.loans.is_empty() {
                let (loan, e) = model.loans.remove(i % model.loans.len());
                prop_assert!(intact(&loan, e.id), "loan {} changed while held", e.id);
                drop(loan);
            }
        }
        Op::TryRecv => match rx.try_recv() {
            Ok(msg) => {
                let Some(e) = model.queued.pop_front() else {
                    return Err(TestCaseError::fail(format!(
                        "received a {}-byte message from an empty channel",
                        msg.len()
                    )));
                };
                check_message(&msg, &e, "on receipt")?;
                model.held.push((msg, e));
            }
            Err(TryRecvError::Empty) => {
                prop_assert!(
                    model.queued.is_empty(),
                    "Empty with {} queued",
                    model.queued.len()
                );
            }
            Err(e) => return Err(TestCaseError::fail(format!("try_recv: {e}"))),
        },
        Op::DropHeld(i) => {
            if !model.held.is_empty() {
                let (msg, e) = model.held.remove(i % model.held.len());
                check_message(&msg, &e, "before drop")?;
                drop(msg);
            }
        }
    }
    Ok(())
}

fn check_state(
    name: &str,
    tx: &shmq::Sender,
    rx: &shmq::Receiver,
    model: &Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(rx.len(), model.queued.len(), "len() after {:?}", op);
    prop_assert_eq!(tx.is_full(), model.ring_full(), "is_full() after {:?}", op);
    prop_assert_eq!(
        tx.free_arena_bytes(),
        (model.free_pages() * PAGE) as u64,
        "free_arena_bytes() after {:?} (queued {:?}, held {:?}, loans {:?})",
        op,
        model.queued,
        model.held.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        model.loans.iter().map(|(_, e)| e).collect::<Vec<_>>()
    );
    prop_assert_eq!(
        overflow_files(name),
        model.overflows(),
        "overflow segments after {:?}",
        op
    );
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let name = common::unique_name("model");
    let config = ChannelConfig::default()
        .with_capacity(CAPACITY)
        .with_arena_bytes(ARENA);
    let (tx, rx) = shmq::channel(&name, config).expect("create");
    prop_assert_eq!(tx.free_arena_bytes(), ARENA as u64);
    let mut model = Model {
        queued: VecDeque::new(),
        held: Vec::new(),
        loans: Vec::new(),
        next_id: 0,
        fragmented_full: 0,
    };
    for op in ops {
        step(&tx, &rx, &mut model, op)?;
        check_state(&name, &tx, &rx, &model, op)?;
    }

    // Drain: everything queued arrives in order and intact; then give everything back.
    for (loan, e) in model.loans.drain(..) {
        prop_assert!(intact(&loan, e.id), "loan {} changed while held", e.id);
    }
    while let Some(e) = model.queued.pop_front() {
        let msg = rx.try_recv().map_err(|err| {
            TestCaseError::fail(format!("drain: payload {} missing: {err}", e.id))
        })?;
        check_message(&msg, &e, "drain")?;
        model.held.push((msg, e));
    }
    prop_assert!(
        rx.try_recv().unwrap_err().is_empty(),
        "drain: more messages than sent"
    );
    for (msg, e) in model.held.drain(..) {
        check_message(&msg, &e, "final drop")?;
    }
    prop_assert_eq!(rx.len(), 0);
    prop_assert_eq!(
        rx.free_arena_bytes(),
        ARENA as u64,
        "arena after everything was dropped"
    );
    prop_assert_eq!(
        overflow_files(&name),
        0,
        "overflow segments after everything was dropped"
    );
    // Nothing lost or doubly freed: the whole arena is one chunk again.
    let whole = tx
        .try_loan(ARENA)
        .map_err(|e| TestCaseError::fail(format!("whole-arena loan at the end: {e}")))?;
    drop(whole);
    tx.join_timeout(Duration::from_secs(10))
        .map_err(|e| TestCaseError::fail(format!("join at the end: {e}")))?;
    drop(tx);
    drop(rx);
    prop_assert!(!common::shm_exists(&name), "segment {} left behind", name);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn channel_matches_model(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(&ops)?;
    }
}

/// A fixed sequence that fragments the arena and then needs it whole, run without proptest so
/// a failure reads plainly.
#[test]
fn fragmentation_then_whole_arena() {
    let mut ops = Vec::new();
    for _ in 0..CAPACITY {
        ops.push(Op::TrySend(2 * PAGE));
    }
    for _ in 0..CAPACITY {
        ops.push(Op::TryRecv);
    }
    // Drop every other one, then the rest in reverse: free runs must merge both ways.
    for i in [0, 2, 4, 6] {
        ops.push(Op::DropHeld(i - i / 2));
    }
    for _ in 0..4 {
        ops.push(Op::DropHeld(usize::MAX));
    }
    ops.push(Op::LoanSend(ARENA));
    ops.push(Op::TryRecv);
    ops.push(Op::DropHeld(0));
    run(&ops).expect("model run");
}
