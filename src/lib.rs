//! shmq: large payloads between processes through shared memory.
#![warn(missing_docs)]

mod channel;
mod error;
mod inspect;
mod segment;
mod shared;
mod sys;

pub use channel::{
    channel, ChannelConfig, Iter, Loan, Message, Receiver, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Sender, SliceLoan, TryIter, TryRecvError, TrySendError, DEFAULT_SPIN,
};
pub use error::{Error, Result};
pub use inspect::{inspect, list, ChannelStats, SegmentInfo};
pub use segment::{gc, Kind, ParticipantInfo, Role, Segment, DEFAULT_PARTICIPANTS, MAX_NAME_LEN};
pub use shared::{
    LockError, LockResult, OwnerDiedError, SharedArray, SharedArrayGuard, SharedValue,
    SharedValueGuard,
};
