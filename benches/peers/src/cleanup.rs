//! This run's shared memory: the unique prefix of its shmq channel names, their removal at
//! the end (also after a failure), and the check of what the run left in /dev/shm and
//! /tmp/iceoryx2.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::iceoryx2_side;

/// Where shmq (and iceoryx2) keep their segments.
const SHM_DIR: &str = "/dev/shm";

/// Where iceoryx2 keeps its node and service files.
const ICEORYX2_DIR: &str = "/tmp/iceoryx2";

/// The prefix of every shmq object in /dev/shm.
const SHMQ_PREFIX: &str = "shmq.";

/// The prefix of iceoryx2's objects in /dev/shm.
const ICEORYX2_PREFIX: &str = "iox2";

/// The base of every channel and service name of this run: unique per parent process.
pub fn run_base() -> String {
    format!("peers-{}", std::process::id())
}

/// Removes every shmq object of this run from /dev/shm (channels and their overflow
/// payloads, whose names start with the channel's). A finished channel unlinks itself; this
/// catches what a failed measurement left. Returns how many were removed.
pub fn remove_own_shmq_segments() -> usize {
    let prefix = format!("{SHMQ_PREFIX}{}-", run_base());
    let Ok(entries) = std::fs::read_dir(SHM_DIR) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Cleans up after a failure, before the process exits: this run's shmq segments, and what
/// dead iceoryx2 nodes left (the child's, once it is dead).
pub fn after_failure() {
    remove_own_shmq_segments();
    iceoryx2_side::remove_dead_nodes();
}

/// Removes [`remove_own_shmq_segments`]'s objects when dropped: on every way out of `main`,
/// unwinding from a panic included.
pub struct SegmentSweeper;

impl Drop for SegmentSweeper {
    fn drop(&mut self) {
        remove_own_shmq_segments();
    }
}

/// The files of the kinds this run may leave: shmq objects of this run and every iceoryx2
/// object in /dev/shm, and everything under /tmp/iceoryx2.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(BTreeSet<PathBuf>);

impl Snapshot {
    /// The files there now.
    pub fn take() -> Snapshot {
        let own_shmq = format!("{SHMQ_PREFIX}{}-", run_base());
        let mut files = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(SHM_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&own_shmq) || name.starts_with(ICEORYX2_PREFIX) {
                    files.insert(entry.path());
                }
            }
        }
        list_tree(Path::new(ICEORYX2_DIR), &mut files);
        Snapshot(files)
    }

    /// Files in `self` that were not in `earlier`.
    pub fn new_since(&self, earlier: &Snapshot) -> Vec<PathBuf> {
        self.0.difference(&earlier.0).cloned().collect()
    }
}

/// Adds every file (not directory) under `dir` to `files`.
fn list_tree(dir: &Path, files: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_tree(&path, files);
        } else {
            files.insert(path);
        }
    }
}
