//! Typed messages (feature `serde`): `Sender::send_value` and `Message::value` across real
//! processes for every shape of issue 15 (a small struct, 1 MiB of floats, 10,000 records,
//! borrowed fields, a payload larger than the arena); borrowed decodes that point into shared
//! memory; the wrong type, random garbage and huge length prefixes giving errors that name the
//! type, with no panic and no allocation beyond the message; encode failures; values whose
//! encoding changes between the sizing pass and the write; the `try_` and `_timeout` forms;
//! `serde_bytes` and a plain `Vec<u8>` sharing one encoding.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::channel::*;
use common::Cleanup;
use serde::{Deserialize, Serialize};
use shmq::{Error, Exhausted, Message, Receiver, SendError, Sender, TrySendError};

// ----- the largest allocation of this thread, for the hostile-input tests -----------------------

/// The system allocator, recording the largest request of a thread that armed it (a thread-local
/// flag, so that tests running beside it on other threads do not count).
struct Largest;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: a thread being torn down has no locals left, and is not measuring.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator; only a thread-local
// maximum (const-initialised, so touching it never allocates) is recorded.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for alloc; `ptr` and `layout` come from this allocator, i.e. from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for realloc.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

// ----- the shapes -------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Kind {
    Idle,
    Busy(u32),
    Failed { code: i16 },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Small {
    id: u64,
    seq: u32,
    at: f64,
    flags: u16,
    name: String,
    kind: Kind,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Floats {
    id: u64,
    data: Vec<f32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Record {
    id: u32,
    x: f32,
    y: f32,
    valid: bool,
    class: u8,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Borrowed<'a> {
    id: u64,
    name: &'a str,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct PlainBlob {
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Blob {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn small(i: u32) -> Small {
    Small {
        id: 0x1234_5678_9abc + u64::from(i),
        seq: i,
        at: 1.5e9 + f64::from(i),
        flags: 0b1010,
        name: format!("camera-{i:02}"),
        kind: match i % 3 {
            0 => Kind::Idle,
            1 => Kind::Busy(i),
            _ => Kind::Failed { code: -7 },
        },
    }
}

fn floats() -> Floats {
    Floats {
        id: 1,
        data: (0..MIB / 4).map(|i| i as f32 * 0.25).collect(),
    }
}

fn records() -> Vec<Record> {
    (0..10_000u32)
        .map(|i| Record {
            id: i,
            x: i as f32 * 0.5,
            y: -(i as f32),
            valid: i % 3 != 0,
            class: (i % 7) as u8,
        })
        .collect()
}

/// Larger than the channels' 4 MiB arena: it travels in an overflow segment of its own.
fn blob() -> Blob {
    Blob {
        data: pattern(0xb10b, 6 * MIB),
    }
}

const BLOB_NAME: &str = "a borrowed name, ünïcode";

fn borrowed_bytes() -> Vec<u8> {
    pattern(0x5a, 64 * KIB)
}

/// Whether every byte of `part` lies inside `msg`'s payload (a borrow, not a copy).
fn inside(msg: &Message, part: &[u8]) -> bool {
    let range = msg.as_ptr_range();
    range.contains(&part.as_ptr()) && part.as_ptr_range().end <= range.end
}

// ----- child processes --------------------------------------------------------------------------

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "echo" => child_echo(args),
        other => panic!("unknown child role {other}"),
    });
}

/// Receives the values of `round_trip_of_every_shape_between_processes` from channel
/// `args[0]`, in order, decoding each as its type, and sends each decoded value back on channel
/// `args[1]` with `send_value` (so the parent checks what this process decoded and encoded).
fn child_echo(args: &[String]) {
    let rx = Receiver::open(&args[0]).expect("open receiver");
    let tx = Sender::open(&args[1]).expect("open sender");
    let recv = || rx.recv_timeout(HANG).expect("recv");

    for _ in 0..3 {
        let msg = recv();
        tx.send_value(&msg.value::<Small>().expect("Small"))
            .expect("send Small");
    }
    let msg = recv();
    tx.send_value(&msg.value::<Floats>().expect("Floats"))
        .expect("send Floats");
    let msg = recv();
    tx.send_value(&msg.value::<Vec<Record>>().expect("records"))
        .expect("send records");

    let msg = recv();
    let borrowed: Borrowed = msg.value().expect("Borrowed");
    // Zero-copy: both fields point into the message in shared memory.
    assert!(inside(&msg, borrowed.name.as_bytes()), "name was copied");
    assert!(inside(&msg, borrowed.data), "data was copied");
    common::signal_parent("borrowed in place");
    tx.send_value(&borrowed).expect("send Borrowed");

    let msg = recv();
    let text: &str = msg.value().expect("str");
    tx.send_value(text).expect("send str");

    let msg = recv();
    assert!(msg.len() > 4 * MIB, "the blob is larger than the arena");
    tx.send_value(&msg.value::<Blob>().expect("Blob"))
        .expect("send Blob");
    common::signal_parent("echoed");
}

// ----- across processes -------------------------------------------------------------------------

#[test]
fn round_trip_of_every_shape_between_processes() {
    let there = common::unique_name("typed-there");
    let back = common::unique_name("typed-back");
    let _cleanup = Cleanup::new(&[&there, &back]);
    let (tx, _keep_rx) = shmq::channel(&there, config(16, 4 * MIB)).expect("create there");
    let (_keep_tx, rx) = shmq::channel(&back, config(16, 4 * MIB)).expect("create back");
    let mut kid = Kid::spawn("echo", &[&there, &back]);
    let recv = || rx.recv_timeout(CHILD_TIMEOUT).expect("recv echo");

    let smalls: Vec<Small> = (0..3).map(small).collect();
    for s in &smalls {
        tx.send_value(s).expect("send Small");
    }
    tx.send_value(&floats()).expect("send Floats");
    tx.send_value(&records()).expect("send records");
    let data = borrowed_bytes();
    let borrowed = Borrowed {
        id: 42,
        name: BLOB_NAME,
        data: &data,
    };
    tx.send_value(&borrowed).expect("send Borrowed");
    tx.send_value("unsized: a str").expect("send str");
    tx.send_value(&blob()).expect("send Blob");

    for s in &smalls {
        assert_eq!(&recv().value::<Small>().expect("Small back"), s);
    }
    assert_eq!(recv().value::<Floats>().expect("Floats back"), floats());
    assert_eq!(
        recv().value::<Vec<Record>>().expect("records back"),
        records()
    );
    kid.expect("borrowed in place");
    let msg = recv();
    let got: Borrowed = msg.value().expect("Borrowed back");
    assert_eq!(got, borrowed);
    assert!(inside(&msg, got.data), "the parent's decode borrows too");
    drop(msg); // a held message keeps its channel's segment
    assert_eq!(recv().value::<&str>().expect("str back"), "unsized: a str");
    let msg = recv();
    assert_eq!(msg.value::<Blob>().expect("Blob back"), blob());
    drop(msg);
    kid.expect("echoed");
    kid.finish();

    drop((tx, _keep_rx, _keep_tx, rx));
    assert_gone(&there);
    assert_gone(&back);
}

// ----- errors -----------------------------------------------------------------------------------

/// The `Encoding` error of `err`, with its Display text.
fn encoding(err: &Error) -> (&'static str, &'static str, Option<usize>, String) {
    match err {
        Error::Encoding {
            type_name, op, len, ..
        } => (*type_name, *op, *len, err.to_string()),
        other => panic!("expected Error::Encoding, got {other:?}"),
    }
}

#[test]
fn wrong_type_is_an_error_naming_it() {
    let name = common::unique_name("typed-wrong");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");

    tx.send_value(&small(1)).expect("send");
    let msg = rx.recv().expect("recv");
    let len = msg.len();

    // Not a Floats, though postcard reads one from the first bytes (an id, then the seq, 1,
    // as the length of a Vec<f32>): the bytes left over give it away.
    let err = msg.value::<Floats>().unwrap_err();
    eprintln!("as Floats: {err}");
    let (type_name, op, got_len, text) = encoding(&err);
    assert!(type_name.ends_with("Floats"), "{type_name}");
    assert_eq!((op, got_len), ("decode", Some(len)));
    assert!(
        text.contains("Floats") && text.contains(&format!("{len}-byte")),
        "{text}"
    );
    assert!(text.contains(&name), "the error names the channel: {text}");

    // Bytes left over after a u64 (the id's varint).
    let err = msg.value::<u64>().unwrap_err();
    eprintln!("as u64: {err}");
    let text = encoding(&err).3;
    assert!(
        text.contains("cannot decode u64") && text.contains("left over"),
        "{text}"
    );

    // Another shape altogether: the Small's bytes read as (String, Kind).
    let err = msg.value::<(String, Kind)>().unwrap_err();
    assert!(encoding(&err).0.contains("Kind"), "{err}");

    // The message is still whole: read it as what it is.
    assert_eq!(msg.value::<Small>().expect("the right type"), small(1));
    drop(msg);
    drop((tx, rx));
    assert_gone(&name);
}

/// Every shape of the test above, decoded from `msg`; returns how many failed.
fn decode_all(msg: &Message) -> usize {
    [
        msg.value::<Small>().is_err(),
        msg.value::<Floats>().is_err(),
        msg.value::<Vec<Record>>().is_err(),
        msg.value::<Borrowed>().is_err(),
        msg.value::<Blob>().is_err(),
        msg.value::<String>().is_err(),
        msg.value::<&str>().is_err(),
        msg.value::<Vec<u64>>().is_err(),
        msg.value::<Vec<String>>().is_err(),
        msg.value::<Option<Kind>>().is_err(),
        msg.value::<std::collections::BTreeMap<u32, String>>()
            .is_err(),
    ]
    .into_iter()
    .filter(|&failed| failed)
    .count()
}

#[test]
fn random_garbage_is_an_error_not_a_panic() {
    let name = common::unique_name("typed-garbage");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, 4 * MIB)).expect("create");
    let mut rng = common::Rng(0x15_0003);
    let mut failures = 0;
    let mut decodes = 0;
    let mut largest = 0;
    for trial in 0..600u64 {
        let len = match trial % 4 {
            0 => rng.below(16) as usize,
            1 => rng.below(97) as usize, // inline in the ring slot
            2 => rng.below(8192) as usize,
            _ => rng.below(2 * MIB as u64) as usize,
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        tx.send(&bytes).expect("send garbage");
        let msg = rx.recv().expect("recv garbage");
        let (failed, big) = largest_allocation(|| decode_all(&msg));
        failures += failed;
        decodes += 11;
        // serde reserves at most 1 MiB ahead, and postcard hints a length only when the bytes
        // left could hold it; past that a collection grows only by elements decoded, each of
        // at least one byte (at most 24-byte elements here, doubling as they grow).
        assert!(
            big <= len * 48 + MIB,
            "trial {trial}: {big} bytes allocated for a {len}-byte message"
        );
        largest = largest.max(big);
    }
    eprintln!("{failures} of {decodes} decodes of garbage failed; largest allocation {largest} B");
    assert!(
        failures > decodes * 9 / 10,
        "garbage decoded too often: {failures}/{decodes}"
    );
    drop((tx, rx));
    assert_gone(&name);
}

/// postcard's varint (LEB128) of `n`.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn huge_length_prefix_is_an_error_without_allocating_it() {
    let name = common::unique_name("typed-huge");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    for claim in [1u64 << 30, 1 << 40, u64::MAX >> 1, u64::MAX] {
        // A bare length prefix, one with a little data after it, and one inside a struct
        // (after Floats' id).
        let mut with_tail = varint(claim);
        with_tail.extend_from_slice(&[7; 200]);
        let mut in_struct = varint(5);
        in_struct.extend_from_slice(&with_tail);
        for bytes in [varint(claim), with_tail, in_struct] {
            tx.send(&bytes).expect("send");
            let msg = rx.recv().expect("recv");
            let (failed, big) = largest_allocation(|| decode_all(&msg));
            assert_eq!(failed, 11, "claim {claim}: a decode succeeded");
            assert!(big <= 64 * KIB, "claim {claim}: {big} bytes allocated");
            let err = msg.value::<Vec<u64>>().unwrap_err();
            assert!(err.to_string().contains("Vec<u64>"), "{err}");
        }
    }
    drop((tx, rx));
    assert_gone(&name);
}

/// Fails to serialize, with a message of its own.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unencodable refuses"))
    }
}

/// A sequence whose length serde cannot tell in advance (a filter's size hint is not exact).
struct UnknownLength(Vec<u32>);

impl Serialize for UnknownLength {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter(|&&x| x % 2 == 0))
    }
}

#[test]
fn encode_failure_names_the_type_and_sends_nothing() {
    let name = common::unique_name("typed-encode");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let free = tx.free_arena_bytes();

    let err = tx.send_value(&Unencodable).unwrap_err();
    let SendError::Failed(e, ()) = &err else {
        panic!("{err:?}")
    };
    let (type_name, op, _, text) = encoding(e);
    assert!(
        type_name.ends_with("Unencodable") && op == "encode",
        "{text}"
    );
    assert!(text.contains("cannot encode"), "{text}");

    let err = tx
        .try_send_value(&UnknownLength((0..1000).collect()))
        .unwrap_err();
    let TrySendError::Failed(e, ()) = &err else {
        panic!("{err:?}")
    };
    assert!(encoding(e).0.ends_with("UnknownLength"), "{e}");

    assert!(rx.try_recv().unwrap_err().is_empty(), "nothing was sent");
    assert_eq!(tx.free_arena_bytes(), free, "no loan was kept");
    drop((tx, rx));
    assert_gone(&name);
}

/// Encodes to a different length each time it is serialized: 200 bytes, then 50 more (or
/// fewer, `step` -50) per call.
struct Changing {
    calls: AtomicUsize,
    step: isize,
}

impl Serialize for Changing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) as isize;
        let len = (1000 + n * self.step) as usize;
        serde_bytes::Bytes::new(&vec![n as u8; len]).serialize(s)
    }
}

#[test]
fn a_value_that_changes_between_passes_is_sent_whole() {
    let name = common::unique_name("typed-changing");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    for step in [50, -50] {
        let value = Changing {
            calls: AtomicUsize::new(0),
            step,
        };
        tx.send_value(&value).expect("send");
        // Calls: the 96-byte attempt, the sizing pass, the write into the loan (another
        // length: the loan goes back), the heap encoding that is sent.
        assert_eq!(value.calls.load(Ordering::Relaxed), 4);
        let msg = rx.recv().expect("recv");
        let bytes: &[u8] = msg.value::<&serde_bytes::Bytes>().expect("decode");
        assert_eq!(bytes, vec![3u8; (1000 + 3 * step) as usize], "step {step}");
    }
    assert_eq!(
        tx.free_arena_bytes(),
        MIB as u64,
        "loans and messages went back"
    );
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn try_and_timeout_forms_report_a_full_channel() {
    let name = common::unique_name("typed-full");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(1, MIB)).expect("create");
    tx.try_send_value(&small(0)).expect("room for one");
    // The ring's one slot is taken: a small value (inline) and a large one (a loan) are Full.
    let err = tx.try_send_value(&small(1)).unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Ring), "{err:?}");
    let err = tx.try_send_value(&records()).unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Ring), "{err:?}");
    let err = tx
        .send_value_timeout(&records(), Duration::from_millis(20))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        tx.free_arena_bytes(),
        MIB as u64,
        "the refused loans went back"
    );
    assert_eq!(
        rx.recv().expect("recv").value::<Small>().expect("decode"),
        small(0)
    );

    // A value larger than the free arena, with the ring empty: the arena is what is full.
    let hold = tx.loan(MIB - 64 * KIB).expect("hold most of the arena");
    let err = tx.try_send_value(&records()).unwrap_err();
    assert_eq!(err.exhausted(), Some(Exhausted::Arena), "{err:?}");
    drop(hold);
    tx.send_value_timeout(&records(), HANG).expect("room again");
    assert_eq!(
        rx.recv()
            .expect("recv")
            .value::<Vec<Record>>()
            .expect("decode"),
        records()
    );

    drop(rx);
    assert!(tx.send_value(&small(2)).unwrap_err().is_disconnected());
    assert!(tx.send_value(&records()).unwrap_err().is_disconnected());
    drop(tx);
    assert_gone(&name);
}

#[test]
fn serde_bytes_and_a_plain_vec_of_bytes_share_an_encoding() {
    let name = common::unique_name("typed-bytes");
    let _cleanup = Cleanup::new(&[&name]);
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    let data = pattern(7, 5000);
    tx.send_value(&PlainBlob { data: data.clone() })
        .expect("send plain");
    tx.send_value(&Blob { data: data.clone() })
        .expect("send serde_bytes");
    let plain = rx.recv().expect("recv");
    let bytes = rx.recv().expect("recv");
    assert_eq!(&plain[..], &bytes[..], "the same bytes on the wire");
    assert_eq!(plain.value::<Blob>().expect("plain as Blob").data, data);
    assert_eq!(
        bytes.value::<PlainBlob>().expect("Blob as plain").data,
        data
    );
    drop((plain, bytes, tx, rx));
    assert_gone(&name);
}
