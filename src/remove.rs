//! [`remove`] and [`Segment::remove`]: removing a segment by name, as `shmq rm` does.
//!
//! This sits at the top of the library, beside `gc`, because removing a segment nobody uses runs
//! its kind's teardown (a channel unlinks its overflow payloads), so it must know every kind.
//! `Segment::remove` is defined here for the same reason.

use crate::error::Result;
use crate::gc::hooks_for;
use crate::segment::{self, validate_name, Removed, Segment};

/// What [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removal {
    /// The segment's name.
    pub name: String,
    /// Live participants that were using it (0 unless the removal was forced).
    pub live_participants: usize,
    /// Dead participants whose slots were reclaimed before it was torn down.
    pub reclaimed: usize,
    /// For a segment removed while in use: the name of the tombstone it lives on under until
    /// its live participants are gone, `<name>~<incarnation>.removed` (without the `shmq.`
    /// prefix; [`gc`](crate::gc) and the last participant to detach remove it).
    pub tombstone: Option<String>,
    /// For a file that was not a shmq segment of this layout version: why (it was unlinked as
    /// it is, with no teardown).
    pub problem: Option<String>,
}

/// Removes segment `name` (of any kind) now, as `shmq rm` does.
///
/// - While it is being created (its creator holds the creator lock, or it is unfinished and
///   younger than two seconds), the removal is refused with [`Error::InUse`], forced or not:
///   the creator would fail.
/// - A segment nobody alive uses is torn down like a last detach: its dead participants are
///   reclaimed and a channel's overflow payloads unlinked with it.
/// - A segment with live participants is refused ([`Error::InUse`]) unless `force`. Forced, it
///   loses its name at once (new opens fail with [`Error::NotFound`], and a new segment of the
///   same name can be created) while its users carry on: it lives on under a tombstone name
///   ([`Removal::tombstone`]), where `gc` sees that its overflow payloads are still in use,
///   until the last of them detaches (or `gc` finds them all dead), which removes it.
/// - A file that is not a shmq segment of this layout version is unlinked as it is.
///
/// The decision and the removal happen under the segment's membership lock: a participant
/// attaching meanwhile is counted, or finds the segment gone. Another user's file or a
/// symbolic link is refused with [`Error::PermissionDenied`].
///
/// [`Error::InUse`]: crate::Error::InUse
/// [`Error::NotFound`]: crate::Error::NotFound
/// [`Error::PermissionDenied`]: crate::Error::PermissionDenied
pub fn remove(name: &str, force: bool) -> Result<Removal> {
    validate_name(name)?;
    let mut removal = Removal {
        name: name.to_owned(),
        live_participants: 0,
        reclaimed: 0,
        tombstone: None,
        problem: None,
    };
    match segment::remove_segment(name, force, hooks_for)? {
        Removed::TornDown { reclaimed } => removal.reclaimed = reclaimed,
        Removed::Tombstoned { alive, tombstone } => {
            removal.live_participants = alive;
            removal.tombstone = Some(tombstone);
        }
        Removed::Abandoned => {}
        Removed::Unlinked { problem } => removal.problem = Some(problem.to_string()),
    }
    Ok(removal)
}

impl Segment {
    /// Removes segment `name` (of any kind) now, even while processes use it: [`remove`] with
    /// `force`. Processes that have it open keep using it; no new process can open it, and a
    /// new segment of the same name can be created. Refused ([`Error::InUse`]) while it is
    /// being created.
    ///
    /// [`Error::InUse`]: crate::Error::InUse
    pub fn remove(name: &str) -> Result<()> {
        remove(name, true).map(drop)
    }
}
