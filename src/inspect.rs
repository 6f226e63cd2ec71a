//! Views of the segments in /dev/shm, for tools such as `shmq ls` and `shmq info`.
//!
//! Inspecting maps a segment but never attaches to it: it changes no participant table, keeps
//! nothing alive and never waits for a segment being created (it says so instead: it asks whether
//! a creator holds the creator lock, without taking it), and opens nothing that is a symbolic
//! link or another user's file. It is read-only with one exception: a channel's
//! [`done_total`](ChannelStats::done_total) and
//! [`tasks_done_total`](ChannelStats::tasks_done_total) are read under the channel's allocator
//! lock when a participant died while moving its counts, and taking that lock replays the dead
//! holder's journal (finishing its update, as the next sender or receiver would).
//!
//! This sits at the top of the library, beside `gc`: it knows every kind.

use std::fmt;

use crate::channel::{Chan, ChannelStats};
use crate::error::{Error, Result};
use crate::segment::{
    examine, open_object, os_name, Found, Kind, OpenFailure, ParticipantInfo, TombstoneName,
    OS_PREFIX,
};
use crate::sys;

/// What state a segment listed by [`list`] is in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentState {
    /// Initialised and valid: kind, participants and figures are filled in.
    Ready,
    /// Removed while in use (`shmq rm --force`, [`Segment::remove`](crate::Segment::remove)):
    /// the entry is its tombstone, `<segment>~<incarnation>.removed`, and its participants are
    /// the processes still using it.
    Removed {
        /// The name it had.
        segment: String,
    },
    /// Its creator holds the creator lock: it is being created.
    BeingCreated,
    /// Never initialised and nobody holds its creator lock: its creator died half-way, or (if
    /// it is younger than two seconds) has not taken the lock yet. `gc` removes it once it is
    /// two seconds old.
    Unfinished,
    /// Not opened: a symbolic link, not a regular file, or another user's file (`problem`
    /// says which).
    Refused,
    /// Not a shmq segment this version can read (`problem` says why).
    Unreadable,
}

impl fmt::Display for SegmentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentState::Ready => f.write_str("ready"),
            SegmentState::Removed { segment } => {
                write!(f, "removed while in use (the tombstone of {segment})")
            }
            SegmentState::BeingCreated => {
                f.write_str("being created (its creator holds the creator lock)")
            }
            SegmentState::Unfinished => {
                f.write_str("unfinished, creator gone (no creator holds its lock)")
            }
            SegmentState::Refused => f.write_str("refused"),
            SegmentState::Unreadable => f.write_str("unreadable"),
        }
    }
}

/// What [`inspect`] and [`list`] report about one segment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The segment's name (without the `shmq.` prefix). Overflow payloads are
    /// `<channel>~<creation time>.<id>` (hex), tombstones of segments removed while in use
    /// `<segment>~<creation time>.removed`.
    pub name: String,
    /// What state it is in; anything but [`SegmentState::Ready`] and
    /// [`SegmentState::Removed`] leaves the fields below empty.
    pub state: SegmentState,
    /// What it holds; `None` if it could not be read as a shmq segment (see `problem`).
    pub kind: Option<Kind>,
    /// Size of the object in bytes (0 for one that was refused).
    pub file_bytes: u64,
    /// Process that created it (informative; may have exited).
    pub creator_pid: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Participant slots in its table.
    pub participant_capacity: u32,
    /// Slots in use, live or dead.
    pub participants: Vec<ParticipantInfo>,
    /// The process holding the segment's membership lock right now (attaching, detaching or
    /// reclaiming; one that holds it for long is probably stopped).
    pub membership_holder: Option<u32>,
    /// Queue figures, for channels.
    pub channel: Option<ChannelStats>,
    /// Why the segment could not be read (a symbolic link, another user's file, a foreign
    /// file, another version, not initialised...).
    pub problem: Option<String>,
}

impl SegmentInfo {
    /// Participants whose process is alive.
    pub fn alive(&self) -> usize {
        self.participants.iter().filter(|p| p.alive).count()
    }

    /// Participants that died without detaching (not yet reclaimed).
    pub fn dead(&self) -> usize {
        self.participants.len() - self.alive()
    }
}

/// Inspects segment `name` (as listed by [`list`]) without attaching to it, and without
/// waiting: a segment that is still being created is reported as such at once.
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "a segment name has no '/' and is not empty".into(),
        });
    }
    let os = os_name(name);
    let mut info = SegmentInfo {
        name: name.to_owned(),
        state: SegmentState::Refused,
        kind: None,
        file_bytes: 0,
        creator_pid: 0,
        created_unix_ns: 0,
        participant_capacity: 0,
        participants: Vec::new(),
        membership_holder: None,
        channel: None,
        problem: None,
    };
    // Checked like every open: a link or another user's file is reported, never looked into.
    let (fd, file) = match open_object(&os) {
        Ok(opened) => opened,
        Err(failure @ OpenFailure::Refused(_)) => {
            info.problem = Some(failure.into_error(name, &os).to_string());
            return Ok(info);
        }
        Err(failure) => return Err(failure.into_error(name, &os)),
    };
    info.file_bytes = file.size;
    let region = match examine(name, fd, false, |_| None) {
        Ok(Found::Ready(region)) => region,
        Ok(Found::BeingCreated) => {
            info.state = SegmentState::BeingCreated;
            info.problem = Some(format!("not initialised: {}", info.state));
            return Ok(info);
        }
        Ok(Found::Unfinished { .. }) => {
            info.state = SegmentState::Unfinished;
            info.problem = Some(format!("not initialised: {}", info.state));
            return Ok(info);
        }
        Ok(Found::Invalid { problem, .. }) => {
            info.state = SegmentState::Unreadable;
            info.problem = Some(problem.to_string());
            return Ok(info);
        }
        Err(e) => {
            info.state = SegmentState::Unreadable;
            info.problem = Some(e.to_string());
            return Ok(info);
        }
    };
    if region.is_closed() {
        // Being torn down by its last participant (or gc) right now.
        return Err(Error::NotFound {
            name: name.to_owned(),
        });
    }
    info.state = match TombstoneName::parse(name) {
        Some(tombstone) => SegmentState::Removed {
            segment: tombstone.segment.to_owned(),
        },
        None => SegmentState::Ready,
    };
    let header = region.header();
    info.kind = Some(region.kind());
    info.creator_pid = header.creator_pid;
    info.created_unix_ns = header.created_unix_ns;
    info.participant_capacity = header.capacity;
    info.participants = region.participants();
    info.membership_holder = region.membership_holder();
    if region.kind() == Kind::Channel {
        match Chan::attach(std::sync::Arc::clone(&region)) {
            Ok(chan) => info.channel = Some(chan.stats()),
            Err(e) => info.problem = Some(e.to_string()),
        }
    }
    Ok(info)
}

/// Inspects every shmq object in /dev/shm, sorted by name, without waiting for any.
pub fn list() -> Result<Vec<SegmentInfo>> {
    let names = sys::list_shm_names(OS_PREFIX).map_err(|e| Error::from_io("*", "read_dir", e))?;
    Ok(names
        .iter()
        .filter_map(|os| os.strip_prefix(OS_PREFIX))
        .filter_map(|name| inspect(name).ok())
        .collect())
}
