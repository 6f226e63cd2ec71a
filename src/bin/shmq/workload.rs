//! The cross-process workloads behind `shmq bench` and the criterion benches (`benches/`
//! include this file with `#[path]`, so both measure exactly the same thing).
//!
//! Every workload has a producer (this process) and a consumer: the same executable started
//! again, which runs [`consumer_main`]. A [`Launcher`] says how to start it (a hidden
//! subcommand for the `shmq` binary, an environment variable for a criterion bench).
//!
//! Contenders:
//! - shmq `send`: the producer copies each payload from a prepared private buffer into the
//!   channel (one copy, reading and writing every byte).
//! - shmq `loan`: the producer writes every byte of each payload (a counter pattern of u64
//!   words, different for every payload) straight into the loaned shared memory: no source
//!   buffer is read, which is what zero copy buys when the data is produced in place.
//! - pipe: Python's `Connection.send_bytes` framing (4-byte big-endian length; header and
//!   payload in one write up to 16 KiB, two writes above) from the prepared buffer, into a pipe
//!   of default size; the consumer reads the header, then the payload into a reused buffer.
//! - Unix stream socket: the same framing over a socketpair.
//!
//! The consumer reads every byte of every payload (a wrapping sum of u64 words) and reports the
//! total at the end; the producer checks it against what it sent.
//!
//! Batches: `Transfer::run(n)` sends a framed 8-byte message carrying `n` through the same path,
//! then `n` payloads; the consumer answers with one 8-byte acknowledgement on its stdout (the
//! back channel) after it has read the n-th payload, so the measured time covers every byte
//! landing in the consumer.
//!
//! Files, one concern each (in `workload/`): the contenders, payload sizes and contents, the
//! byte-stream framing, the consumer process seen from the producer (starting, handshake,
//! reaping), the transfer and ping-pong sessions, and the consumer process itself.

// This file is always loaded with `#[path]` (by the binary and by `benches/common/`), so its
// submodules name their files explicitly, relative to this file. They reach each other through
// `super::`, never `crate::`: the crate root is the binary's in one build and a bench's in
// the other.
#[path = "workload/consumer.rs"]
mod consumer;
#[path = "workload/contender.rs"]
mod contender;
// The benches compile this file without the binary's root module, so it brings its own copy
// of the error aliases. In the binary this loads error.rs a second time, which is harmless:
// both copies are aliases of one type, so errors pass between the layers unchanged.
#[allow(clippy::duplicate_mod)]
#[path = "error.rs"]
mod error;
#[path = "workload/framing.rs"]
mod framing;
#[path = "workload/payload.rs"]
mod payload;
#[path = "workload/peer.rs"]
mod peer;
#[path = "workload/pingpong.rs"]
mod pingpong;
#[path = "workload/transfer.rs"]
mod transfer;

// What the binary and the benches use. A bench uses only part of it (`benches/common` glob
// re-exports it all), so an unused name here is no mistake.
#[allow(unused_imports)]
pub use {
    consumer::consumer_main,
    contender::{Contender, PingContender},
    error::BoxResult,
    payload::{size_label, MAX_PAYLOAD, SMALL_MESSAGE},
    peer::Launcher,
    pingpong::PingPong,
    transfer::{Transfer, TransferSpec},
};
