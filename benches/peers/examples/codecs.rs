//! Which serde encoding shmq's `serde` feature uses: postcard 1.x against bincode 2.x (its
//! `standard` varint configuration and its fixed-width one), on the shapes of issue 15, then
//! shmq's two ways of sending an encoding (encoded in a loan, or in a `Vec` then copied).
//! Prints markdown tables; docs/performance.md, "Typed messages", has a run.
//!
//! ```text
//! cargo run --release -p shmq-peers --example codecs
//! ```
//!
//! Times are medians of 31 samples, each a loop long enough to take about 3 ms, per operation,
//! in this one process (encoding is plain CPU work: no second process is needed for it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// ----- the largest single allocation, for the hostile-input check ------------------------------

/// The system allocator, recording the largest request made while `ARMED`.
struct Largest;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

impl Largest {
    fn note(size: usize) {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Largest::note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Largest::note(layout.size());
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Largest::note(new_size);
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

// ----- the shapes ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Kind {
    Idle,
    Busy(u32),
    Failed { code: i16 },
}

/// About 64 bytes in memory: ints, a short String, an enum.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Small {
    id: u64,
    seq: u32,
    at: f64,
    flags: u16,
    name: String,
    kind: Kind,
}

fn small() -> Small {
    Small {
        id: 0x1234_5678_9abc,
        seq: 4242,
        at: 1.5e9,
        flags: 0b1010,
        name: "camera-07".to_owned(),
        kind: Kind::Busy(99),
    }
}

/// 1 MiB of floats, through serde's sequence path (one `serialize_f32` per element).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Floats {
    id: u64,
    data: Vec<f32>,
}

/// 1 MiB of bytes through serde_bytes (one `serialize_bytes`: a memcpy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Bytes {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// 1 MiB of bytes without serde_bytes: a sequence of u8, byte by byte.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct PlainBytes {
    id: u64,
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Record {
    id: u32,
    x: f32,
    y: f32,
    valid: bool,
    class: u8,
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

/// Borrowed fields: a decoder that can borrow leaves them pointing into its input.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Borrowed<'a> {
    id: u64,
    name: &'a str,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

const MIB: usize = 1 << 20;

// ----- the codecs ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Codec {
    Postcard,
    /// bincode 2, `config::standard()`: little endian, varints.
    BincodeStd,
    /// bincode 2, `standard().with_fixed_int_encoding()`: bincode 1's layout.
    BincodeFix,
}

const CODECS: [Codec; 3] = [Codec::Postcard, Codec::BincodeStd, Codec::BincodeFix];

impl Codec {
    fn label(self) -> &'static str {
        match self {
            Codec::Postcard => "postcard 1.2",
            Codec::BincodeStd => "bincode 2.0 standard",
            Codec::BincodeFix => "bincode 2.0 fixint",
        }
    }

    fn to_vec<T: Serialize + ?Sized>(self, v: &T) -> Vec<u8> {
        match self {
            Codec::Postcard => postcard::to_allocvec(v).unwrap(),
            Codec::BincodeStd => {
                bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
            }
            Codec::BincodeFix => bincode::serde::encode_to_vec(v, fix()).unwrap(),
        }
    }

    /// Into a buffer of the right size already (what a loan is).
    fn to_slice<T: Serialize + ?Sized>(self, v: &T, buf: &mut [u8]) -> usize {
        match self {
            Codec::Postcard => postcard::to_slice(v, buf).unwrap().len(),
            Codec::BincodeStd => {
                bincode::serde::encode_into_slice(v, buf, bincode::config::standard()).unwrap()
            }
            Codec::BincodeFix => bincode::serde::encode_into_slice(v, buf, fix()).unwrap(),
        }
    }

    /// The counting pass that sizes a loan.
    fn size<T: Serialize + ?Sized>(self, v: &T) -> usize {
        match self {
            Codec::Postcard => {
                postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default()).unwrap()
            }
            Codec::BincodeStd => {
                let mut w = bincode::enc::write::SizeWriter::default();
                bincode::serde::encode_into_writer(v, &mut w, bincode::config::standard()).unwrap();
                w.bytes_written
            }
            Codec::BincodeFix => {
                let mut w = bincode::enc::write::SizeWriter::default();
                bincode::serde::encode_into_writer(v, &mut w, fix()).unwrap();
                w.bytes_written
            }
        }
    }

    fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        self.decode_borrowed(bytes)
    }

    /// Decodes all of `bytes` (bytes left over are an error, as in `Message::value`).
    fn decode_borrowed<'a, T: Deserialize<'a>>(self, bytes: &'a [u8]) -> Result<T, String> {
        let (v, used) = match self {
            Codec::Postcard => postcard::take_from_bytes::<T>(bytes)
                .map(|(v, rest)| (v, bytes.len() - rest.len()))
                .map_err(|e| e.to_string())?,
            Codec::BincodeStd => {
                bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard())
                    .map_err(|e| e.to_string())?
            }
            Codec::BincodeFix => {
                bincode::serde::borrow_decode_from_slice(bytes, fix()).map_err(|e| e.to_string())?
            }
        };
        if used != bytes.len() {
            return Err(format!("{} bytes left over", bytes.len() - used));
        }
        Ok(v)
    }
}

fn fix() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::NoLimit,
> {
    bincode::config::standard().with_fixed_int_encoding()
}

// ----- timing ----------------------------------------------------------------------------------

const SAMPLES: usize = 31;
const SAMPLE_TIME: Duration = Duration::from_millis(3);

/// The median time of one `f()`, over SAMPLES samples of a loop calibrated to SAMPLE_TIME.
fn median(mut f: impl FnMut()) -> Duration {
    let mut iters = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        if start.elapsed() >= SAMPLE_TIME || iters >= 1 << 24 {
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    samples.sort();
    samples[SAMPLES / 2]
}

fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

fn row<T: Serialize + DeserializeOwned + PartialEq>(shape: &str, v: &T) {
    for codec in CODECS {
        let bytes = codec.to_vec(v);
        assert!(codec.decode::<T>(&bytes).unwrap() == *v, "round trip");
        let mut buf = vec![0u8; bytes.len()];
        let into = median(|| {
            black_box(codec.to_slice(black_box(v), &mut buf));
        });
        let to_vec = median(|| {
            black_box(codec.to_vec(black_box(v)));
        });
        let size = median(|| {
            black_box(codec.size(black_box(v)));
        });
        let decode = median(|| {
            black_box(codec.decode::<T>(black_box(&bytes)).unwrap());
        });
        println!(
            "| {shape} | {} | {} | {} | {} | {} | {} |",
            codec.label(),
            bytes.len(),
            show(into),
            show(to_vec),
            show(size),
            show(decode)
        );
    }
}

fn borrowed_row() {
    let blob = vec![0x5au8; 64 << 10];
    let v = Borrowed {
        id: 9,
        name: "a borrowed name",
        data: &blob,
    };
    for codec in CODECS {
        let bytes = codec.to_vec(&v);
        let back: Borrowed = codec.decode_borrowed(&bytes).unwrap();
        assert_eq!(back, v);
        let range = bytes.as_ptr_range();
        let borrows = range.contains(&back.name.as_ptr()) && range.contains(&back.data.as_ptr());
        let decode = median(|| {
            black_box(
                codec
                    .decode_borrowed::<Borrowed>(black_box(&bytes))
                    .unwrap(),
            );
        });
        println!(
            "| &str + 64 KiB &[u8] | {} | {} | {} | {} |",
            codec.label(),
            bytes.len(),
            if borrows { "yes" } else { "no" },
            show(decode)
        );
    }
}

/// What each decoder does with a few bytes that claim a huge string and a huge sequence.
fn hostile_rows() {
    // A varint claiming 1 GiB (bincode standard: 0xfc then a u32; postcard: LEB128), and a
    // fixed u64 1 GiB (bincode fixint). Kept at 1 GiB: bincode allocates the claim, and an
    // allocation that fails aborts the process.
    let claim = 1u64 << 30;
    let mut leb = Vec::new();
    let mut n = claim;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            leb.push(byte);
            break;
        }
        leb.push(byte | 0x80);
    }
    let mut std_varint = vec![0xfc];
    std_varint.extend_from_slice(&(claim as u32).to_le_bytes());
    let fixed = claim.to_le_bytes().to_vec();
    for codec in CODECS {
        let mut input = match codec {
            Codec::Postcard => leb.clone(),
            Codec::BincodeStd => std_varint.clone(),
            Codec::BincodeFix => fixed.clone(),
        };
        input.extend_from_slice(b"garbage");
        for (what, run) in [
            (
                "String",
                (|c: Codec, b: &[u8]| c.decode::<String>(b).map(drop))
                    as fn(Codec, &[u8]) -> Result<(), String>,
            ),
            ("Vec<u64>", |c, b| c.decode::<Vec<u64>>(b).map(drop)),
            ("Vec<u8> (serde_bytes)", |c, b| {
                c.decode::<serde_bytes::ByteBuf>(b).map(drop)
            }),
        ] {
            LARGEST.store(0, Ordering::Relaxed);
            ARMED.store(true, Ordering::Relaxed);
            let start = Instant::now();
            let result = run(codec, &input);
            let took = start.elapsed();
            ARMED.store(false, Ordering::Relaxed);
            println!(
                "| {} | {what} | {} | {} B | {} |",
                codec.label(),
                match result {
                    Ok(()) => "decoded (!)".to_owned(),
                    Err(e) => format!("error: {e}"),
                },
                LARGEST.load(Ordering::Relaxed),
                show(took)
            );
        }
    }
}

// ----- through shmq ----------------------------------------------------------------------------

/// Sending an encoding of 1 MiB through a channel and receiving it (dropped at once) in one
/// process: measured in a loan, or encoded into a Vec and copied, or by `send_value` itself.
fn shmq_rows<T: Serialize + DeserializeOwned + PartialEq>(shape: &str, v: &T) {
    let name = format!("codecs-{}", std::process::id());
    let config = shmq::ChannelConfig::default().with_arena_bytes(16 * MIB);
    let (tx, rx) = shmq::channel(&name, config).expect("channel");
    let loan = median(|| {
        let len =
            postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default()).unwrap();
        let mut loan = tx.loan(len).unwrap();
        postcard::to_slice(v, &mut loan[..]).unwrap();
        loan.send().unwrap();
        drop(black_box(rx.recv().unwrap()));
    });
    let copy = median(|| {
        let bytes = postcard::to_allocvec(v).unwrap();
        tx.send(&bytes).unwrap();
        drop(black_box(rx.recv().unwrap()));
    });
    let send_value = median(|| {
        tx.send_value(v).unwrap();
        drop(black_box(rx.recv().unwrap()));
    });
    let round_trip = median(|| {
        tx.send_value(v).unwrap();
        let msg = rx.recv().unwrap();
        black_box(msg.value::<T>().unwrap());
    });
    tx.send_value(v).unwrap();
    assert!(
        rx.recv().unwrap().value::<T>().unwrap() == *v,
        "shmq round trip"
    );
    println!(
        "| {shape} | {} | {} | {} | {} |",
        show(loan),
        show(copy),
        show(send_value),
        show(round_trip)
    );
}

fn main() {
    println!("Encode and decode, one process (medians of {SAMPLES} samples):\n");
    println!("| shape | codec | bytes | encode into a sized buffer | encode to a new Vec | size pass | decode (owned) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    row("small struct", &small());
    let floats = Floats {
        id: 1,
        data: (0..MIB / 4).map(|i| i as f32 * 0.25).collect(),
    };
    row("1 MiB Vec<f32>", &floats);
    let bytes = Bytes {
        id: 1,
        data: (0..MIB).map(|i| i as u8).collect(),
    };
    row("1 MiB Vec<u8>, serde_bytes", &bytes);
    let plain = PlainBytes {
        id: 1,
        data: bytes.data.clone(),
    };
    row("1 MiB Vec<u8>, plain", &plain);
    row("10,000 records", &records());

    println!("\nBorrowed decode (does the decoded value point into the input?):\n");
    println!("| shape | codec | bytes | borrows | decode |");
    println!("|---|---|---:|---|---:|");
    borrowed_row();

    println!("\nHostile input: a length prefix claiming 1 GiB, then 7 bytes:\n");
    println!("| codec | decoded as | result | largest allocation | time |");
    println!("|---|---|---|---:|---:|");
    hostile_rows();

    println!("\nThrough shmq with postcard, send + recv + drop in one process (medians):\n");
    println!("| shape | size pass + encode in a loan | to_allocvec + send (copy) | send_value | send_value + recv + value |");
    println!("|---|---:|---:|---:|---:|");
    row_shmq_all(&small(), &floats, &bytes);
}

fn row_shmq_all(small: &Small, floats: &Floats, bytes: &Bytes) {
    shmq_rows("small struct", small);
    shmq_rows("1 MiB Vec<f32>", floats);
    shmq_rows("1 MiB Vec<u8>, serde_bytes", bytes);
    shmq_rows("10,000 records", &records());
}
