//! Views of the segments in /dev/shm, for tools such as `shmq ls` and `shmq info`.
//!
//! Inspecting maps a segment but never attaches to it: it changes no participant table and
//! keeps nothing alive. It is read-only with one exception: a channel's
//! [`done_total`](ChannelStats::done_total) is read under the channel's allocator lock when a
//! participant died while moving its counts, and taking that lock replays the dead holder's
//! journal (finishing its update, as the next sender or receiver would).
//!
//! This sits at the top of the library, beside `gc`: it knows every kind.

use crate::channel::{Chan, ChannelStats};
use crate::error::{Error, Result};
use crate::segment::{os_name, Kind, ParticipantInfo, Region, OS_PREFIX};
use crate::sys;

/// What [`inspect`] and [`list`] report about one segment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The segment's name (without the `shmq.` prefix). Overflow payloads are `<channel>~<creation time>.<id>` (hex).
    pub name: String,
    /// What it holds; `None` if it could not be read as a shmq segment (see `problem`).
    pub kind: Option<Kind>,
    /// Size of the object in bytes.
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
    /// Why the segment could not be read (foreign file, other version, unfinished...).
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

/// Inspects segment `name` (as listed by [`list`]) without attaching to it.
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "a segment name has no '/' and is not empty".into(),
        });
    }
    let file_bytes = std::fs::metadata(format!("{}/{}", sys::SHM_DIR, os_name(name)))
        .map_err(|e| Error::from_io(name, "stat", e))?
        .len();
    let mut info = SegmentInfo {
        name: name.to_owned(),
        kind: None,
        file_bytes,
        creator_pid: 0,
        created_unix_ns: 0,
        participant_capacity: 0,
        participants: Vec::new(),
        membership_holder: None,
        channel: None,
        problem: None,
    };
    let region = match Region::open_as(name, None, &[], false, None) {
        Ok((region, _)) => region,
        Err(e @ Error::NotFound { .. }) => return Err(e),
        Err(e) => {
            info.problem = Some(e.to_string());
            return Ok(info);
        }
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

/// Inspects every shmq segment in /dev/shm, sorted by name.
pub fn list() -> Result<Vec<SegmentInfo>> {
    let names = sys::list_shm_names(OS_PREFIX).map_err(|e| Error::from_io("*", "read_dir", e))?;
    Ok(names
        .iter()
        .filter_map(|os| os.strip_prefix(OS_PREFIX))
        .filter_map(|name| inspect(name).ok())
        .collect())
}
