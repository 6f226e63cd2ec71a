//! Large payloads between processes on one Linux host, through POSIX shared memory.
//!
//! shmq is for programs that split work across processes and move big buffers between them:
//! what Python's `multiprocessing` queues, pipes and `shared_memory` do, without pickling,
//! without copying every byte through the kernel, and without leaking `/dev/shm` when a process
//! is killed.
//!
//! - [`channel`] creates a bounded multi-producer, multi-consumer queue of byte messages
//!   ([`Sender`], [`Receiver`]). Payloads live in a shared arena: the sender copies them in once
//!   ([`Sender::send`], [`Sender::send_slice`]) or builds them there ([`Sender::loan`],
//!   [`Sender::loan_slice`]); the receiver reads (or writes) them in place through a
//!   [`Message`], whose drop frees the memory. Every blocking call has `try_`, `_timeout` and
//!   `_deadline` forms, and [`Sender::join`] waits until every message was received and
//!   dropped. `JoinableQueue`'s explicit task count is there too: [`Sender::task_done`] and
//!   [`Sender::join_tasks`] (on receivers as well). A channel made with
//!   [`ChannelConfig::with_disconnect`]`(false)` never reports `Disconnected`, like a
//!   `multiprocessing.Queue` that buffers with nobody reading.
//! - [`SharedValue`] and [`SharedArray`] hold `Pod` data behind a cross-process lock, like
//!   `multiprocessing.Value` and `Array`. When a holder dies, the next locker gets
//!   [`LockError::OwnerDied`] with the guard, instead of a deadlock.
//! - [`Segment`] is a raw named segment, like `shared_memory.SharedMemory`.
//! - [`gc`] removes what processes that all died left in `/dev/shm` and says why it removed or
//!   kept each file; [`remove`] removes a segment by name; [`list`] and [`inspect`] show what is
//!   there (the `shmq` command prints them).
//!
//! # Names, lifetime and crashes
//!
//! Processes find each other by name: the segment `jobs` is `/dev/shm/shmq.jobs`. Create it in
//! one process, hand the name to the others (on their command line or in an environment
//! variable) and `open` it there. Every handle is registered in its segment, and the last live
//! handle to be dropped unlinks it: there is no resource tracker. A handle's liveness is a lock
//! the kernel releases when its process dies, SIGKILL included, so a blocked call notices a
//! killed peer within about 50 ms (`Disconnected`), messages already sent survive their sender,
//! and whatever the dead held is reclaimed.
//!
//! # A channel
//!
//! Workers would normally be other processes (see `examples/producer_consumer.rs`); a thread
//! stands in for one here.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmq::{ChannelConfig, Receiver};
//!
//! let name = format!("doc-queue-{}", std::process::id()); // unique per run
//! // At most 16 messages and 16 MiB of payload queued.
//! let config = ChannelConfig::default().with_capacity(16).with_arena_bytes(16 << 20);
//! let (tx, rx) = shmq::channel(&name, config)?;
//!
//! let rx_worker = Receiver::open(&name)?; // in a worker process: `Receiver::open(name)`
//! let worker = std::thread::spawn(move || -> shmq::Result<f64> {
//!     let mut total = 0.0;
//!     for msg in rx_worker.iter() {
//!         // Ends once every sender is dropped.
//!         total += msg.as_slice::<f64>()?.iter().sum::<f64>(); // read in place
//!     } // dropping `msg` frees its memory, and is `task_done()`
//!     Ok(total)
//! });
//! drop(rx); // the worker holds its own receiver
//!
//! tx.send_slice(&[1.0f64, 2.0, 3.0])?; // one copy, into shared memory
//! let mut loan = tx.loan_slice::<f64>(1 << 20)?; // 8 MiB built in place: no copy at all
//! loan.fill(0.5);
//! loan.send()?;
//! tx.join()?; // like `JoinableQueue.join()`: every message received and dropped
//! drop(tx); // no sentinel needed: the worker's loop ends
//! assert_eq!(worker.join().expect("worker panicked")?, 6.0 + 0.5 * (1 << 20) as f64);
//! # Ok(()) }
//! ```
//!
//! # Waiting on several channels, and from async code
//!
//! [`Select`] and the [`select!`] macro (crossbeam-channel's API) wait on receives and sends of
//! any number of channels at once, asleep on all of their futex words in one system call
//! (`futex_waitv`). With the feature `async`, `Receiver::recv_async`, `Sender::send_async`,
//! `loan_async`, `join_async` and `Loan::send_async` are cancel-safe futures for any executor,
//! woken by one waiter thread per process. With the feature `serde`, `Sender::send_value` and
//! `Message::value` carry any serde type.
//!
//! # Shared values
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmq::{SharedArray, SharedValue};
//!
//! let name = format!("doc-hits-{}", std::process::id());
//! let hits = SharedValue::<u64>::create(&name, 0)?; // `Value('Q', 0)`
//! let per_worker = SharedArray::<u64>::create(&format!("{name}-per-worker"), 4, 0)?;
//! let workers: Vec<_> = (0..4)
//!     .map(|i| {
//!         let (hits, per_worker) = (hits.clone(), per_worker.clone()); // or `open(name)` elsewhere
//!         std::thread::spawn(move || -> shmq::Result<()> {
//!             for _ in 0..1000 {
//!                 *hits.lock()? += 1; // `with v.get_lock(): v.value += 1`
//!             }
//!             per_worker.lock()?[i] = 1000;
//!             Ok(())
//!         })
//!     })
//!     .collect();
//! for worker in workers {
//!     worker.join().expect("worker panicked")?;
//! }
//! assert_eq!(hits.load()?, 4000);
//! assert_eq!(per_worker.to_vec()?, [1000; 4]);
//! # Ok(()) }
//! ```
//!
//! # More
//!
//! `docs/guide.md` maps each `multiprocessing` call to its shmq counterpart, tells how to size a
//! channel and what happens when a process is killed; `docs/design.md` describes the layout and
//! the crash-safety protocol; `docs/reliability.md` the crash trials. The examples
//! (`producer_consumer`, `worker_pool`, `big_array`, `shared_counter`, `transfer`) run real
//! processes. Linux only.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// Layers, each using only those above it in this list (see docs/design.md, "Modules"):
// sys (every OS call) -> error -> segment (header, participants, lifetime) -> channel, shared (the
// kinds) -> inspect, gc, remove (know every kind). The `shmq` binary sits on top of the public API.
mod sys;

#[doc(hidden)]
pub mod crash;

mod error;
mod segment;

mod channel;
mod shared;

mod gc;
mod inspect;
mod remove;

#[cfg(feature = "async")]
pub use channel::pending_async_waits;
pub use channel::{
    channel, ChannelConfig, ChannelStats, Exhausted, IntoIter, Iter, JoinTasksTimeoutError, Loan,
    Message, ReadyTimeoutError, Receiver, RecvError, RecvTimeoutError, Select, SelectTimeoutError,
    SelectedOperation, SendError, SendTimeoutError, Sender, SliceLoan, TaskDoneError, TryIter,
    TryReadyError, TryRecvError, TrySelectError, TrySendError, DEFAULT_SPIN,
};
pub use error::{Error, Result};
pub use gc::{gc, GcEntry, GcReason};
pub use inspect::{inspect, list, SegmentInfo, SegmentState};
pub use remove::{remove, Removal};
pub use segment::{Kind, ParticipantInfo, Role, Segment, DEFAULT_PARTICIPANTS, MAX_NAME_LEN};
pub use shared::{
    LockError, LockResult, OwnerDiedError, SharedArray, SharedArrayGuard, SharedValue,
    SharedValueGuard,
};
