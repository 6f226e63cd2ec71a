//! This run's names and files: every shmq channel and every iceoryx2 file of a run carries
//! the run's id (`peers-<pid>`), so that the run can remove what it left, also after a
//! failure, and a later run can remove what a killed run left.
//!
//! iceoryx2 gets a domain of its own per run (its file prefix `iox2_peers-<pid>_`): its
//! global management segment, which it keeps on purpose as long as any process may use the
//! domain, can then be removed once the run's processes are gone, without touching the
//! default domain that other iceoryx2 users on the machine share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where shmq and iceoryx2 keep their segments.
const SHM_DIR: &str = "/dev/shm";

/// Where iceoryx2 keeps its node and service files.
pub const ICEORYX2_DIR: &str = "/tmp/iceoryx2";

/// The prefix of every shmq object in /dev/shm.
const SHMQ_PREFIX: &str = "shmq.";

/// The start of every run's id.
const RUN_PREFIX: &str = "peers-";

/// The names of one measurement.
#[derive(Clone, Debug)]
pub struct Names {
    /// The run's id, `peers-<pid of the parent>`.
    pub run: String,
    /// The base of this measurement's channel or service names, unique within the run.
    pub measurement: String,
}

/// The id of this run: this (parent) process's pid.
pub fn run_id() -> String {
    format!("{RUN_PREFIX}{}", std::process::id())
}

/// The iceoryx2 file prefix of run `run`'s private domain.
pub fn iceoryx2_prefix(run: &str) -> String {
    format!("iox2_{run}_")
}

/// Whether a file named `name` belongs to run `run` (a shmq object of its channels, or an
/// iceoryx2 file of its domain).
fn belongs_to(name: &str, run: &str) -> bool {
    name.starts_with(&format!("{SHMQ_PREFIX}{run}-")) || name.starts_with(&iceoryx2_prefix(run))
}

/// The run id a file named `name` belongs to, if it is one of any run's.
fn owner_run(name: &str) -> Option<String> {
    let rest = name
        .strip_prefix(SHMQ_PREFIX)
        .or_else(|| name.strip_prefix("iox2_"))?;
    let pid = rest.strip_prefix(RUN_PREFIX)?;
    let digits: String = pid.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("{RUN_PREFIX}{digits}"))
}

/// Every file (not directory) under /dev/shm (top level) and /tmp/iceoryx2 (all levels)
/// whose name satisfies `keep`.
fn files_where(keep: impl Fn(&str) -> bool) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(SHM_DIR) {
        for entry in entries.flatten() {
            if keep(&entry.file_name().to_string_lossy()) {
                files.insert(entry.path());
            }
        }
    }
    list_tree(Path::new(ICEORYX2_DIR), &keep, &mut files);
    files
}

/// Adds to `files` every file under `dir`, at any depth, whose name satisfies `keep`.
fn list_tree(dir: &Path, keep: &impl Fn(&str) -> bool, files: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_tree(&path, keep, files);
        } else if keep(&entry.file_name().to_string_lossy()) {
            files.insert(path);
        }
    }
}

/// The files run `run` has now (see [`belongs_to`]).
pub fn run_files(run: &str) -> BTreeSet<PathBuf> {
    files_where(|name| belongs_to(name, run))
}

/// Removes the shmq objects of run `run` (channels, and overflow payloads, whose names
/// start with their channel's). A channel unlinks itself when its last handle goes; this
/// catches what a failed measurement left. Returns what was removed.
pub fn remove_shmq_objects(run: &str) -> Vec<PathBuf> {
    let prefix = format!("{SHMQ_PREFIX}{run}-");
    remove_all(files_where(|name| name.starts_with(&prefix)))
}

/// Removes every file of run `run`. Only for when none of its processes uses them any more.
pub fn remove_run_files(run: &str) -> Vec<PathBuf> {
    remove_all(run_files(run))
}

/// Removes the files of earlier runs whose parent process is gone (a run that was killed
/// before it could clean up; its children died with it). Returns what was removed.
pub fn remove_dead_runs() -> Vec<PathBuf> {
    let dead = |name: &str| match owner_run(name) {
        Some(run) => {
            let pid = &run[RUN_PREFIX.len()..];
            !Path::new("/proc").join(pid).exists()
        }
        None => false,
    };
    remove_all(files_where(dead))
}

/// Removes `files`, and each iceoryx2 node or service directory that removing them left
/// empty: those directories are named by node id, without the domain's prefix, so they are
/// known to be the run's only by the files they held. iceoryx2's own top directories
/// (`nodes`, `services`), shared by every iceoryx2 user, stay.
fn remove_all(files: BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let shared_dirs = [
        Path::new(ICEORYX2_DIR).to_path_buf(),
        Path::new(ICEORYX2_DIR).join("nodes"),
        Path::new(ICEORYX2_DIR).join("services"),
    ];
    let removed: Vec<PathBuf> = files
        .into_iter()
        .filter(|path| std::fs::remove_file(path).is_ok())
        .collect();
    for path in &removed {
        if let Some(dir) = path.parent() {
            if dir.starts_with(ICEORYX2_DIR) && !shared_dirs.iter().any(|d| d == dir) {
                // Fails, harmlessly, while the directory holds files of another run.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    removed
}

/// Cleans up after a failure, just before the process exits: every file of this run (its
/// processes are ending: the child has failed, and this one exits next).
pub fn after_failure() {
    remove_run_files(&run_id());
}

/// Removes this run's shmq objects when dropped: on every way out of `main`, unwinding from
/// a panic included. (iceoryx2's files are removed by [`remove_run_files`] at the end of a
/// run, once its nodes are dropped.)
pub struct ShmqSweeper;

impl Drop for ShmqSweeper {
    fn drop(&mut self) {
        remove_shmq_objects(&run_id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_run_are_recognised() {
        assert!(belongs_to("shmq.peers-12-3-shmq-fwd", "peers-12"));
        assert!(!belongs_to("shmq.peers-123-3-shmq-fwd", "peers-12"));
        assert!(belongs_to("iox2_peers-12_abc.service", "peers-12"));
        assert_eq!(owner_run("iox2_peers-12_abc"), Some("peers-12".to_owned()));
        assert_eq!(
            owner_run("shmq.peers-7-0-shmq-fwd"),
            Some("peers-7".to_owned())
        );
        assert_eq!(owner_run("iox2_0123abcd.node"), None);
        assert_eq!(owner_run("shmq.jobs"), None);
    }
}
