//! shmq: large payloads between processes through shared memory.
#![warn(missing_docs)]

mod channel;
mod error;
mod segment;
mod sys;

pub use error::{Error, Result};
pub use segment::{gc, Kind, ParticipantInfo, Role, Segment, DEFAULT_PARTICIPANTS, MAX_NAME_LEN};
