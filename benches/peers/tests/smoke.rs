//! Smoke test of the benchmark binary: `--quick` on two small cells must exit 0, print the
//! table with a figure from both contenders, and leave none of the run's files behind.
//! Runs with `cargo test -p shmq-peers` (the root `cargo test` builds the library alone).

use std::path::Path;
use std::process::Command;

/// Whether /dev/shm or /tmp/iceoryx2 (anywhere below) still holds a file of run `run`.
fn leftovers_of(run: &str) -> Vec<String> {
    let shmq = format!("shmq.{run}-");
    let iceoryx2 = format!("iox2_{run}_");
    let mut found = Vec::new();
    let mut dirs = vec![Path::new("/dev/shm").to_path_buf(), "/tmp/iceoryx2".into()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if dir.starts_with("/tmp/iceoryx2") {
                    dirs.push(entry.path());
                }
            } else if name.starts_with(&shmq) || name.starts_with(&iceoryx2) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn quick_run_prints_a_table_and_cleans_up() {
    let child = Command::new(env!("CARGO_BIN_EXE_shmq-peers"))
        .args([
            "--quick",
            "--cells",
            "rate-busy,throughput-4KiB-copy-in-busy",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting shmq-peers");
    let run = format!("peers-{}", child.id());
    let output = child.wait_with_output().expect("running shmq-peers");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("| cell | shmq | iceoryx2 | shmq/iceoryx2 |"),
        "no table header in:\n{stdout}"
    );
    for row in ["| throughput 4KiB copy-in busy |", "| rate 64 B 1→1 busy |"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        assert!(!line.contains("failed"), "a contender failed: {line}");
    }
    assert!(
        stdout.contains("page faults"),
        "no rusage table in:\n{stdout}"
    );
    let left = leftovers_of(&run);
    assert!(left.is_empty(), "the run left {left:?}");
}
