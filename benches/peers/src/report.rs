//! The markdown the run prints: a header with the commit and the time, the table of cells
//! (shmq | iceoryx2 | ratio), and the receiver's page faults and context switches per message
//! of the rate cells.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cell::Cell;
use crate::contender::Measurement;

/// One row of the table: a cell and what each contender measured (`None`: not run or failed).
pub struct Row {
    /// The cell.
    pub cell: Cell,
    /// shmq's measurement.
    pub shmq: Option<Measurement>,
    /// iceoryx2's measurement.
    pub iceoryx2: Option<Measurement>,
}

/// The commit of the source tree, `git rev-parse --short HEAD`, marked `+dirty` when the tree
/// has uncommitted changes; `unknown` outside a git checkout.
pub fn commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash}+dirty"),
            _ => hash,
        },
        None => "unknown".to_owned(),
    }
}

/// The 1, 5 and 15 minute load averages now (/proc/loadavg): other work on the machine shows
/// in every figure, and a 2-core machine with busy-polling on both sides has no core to spare.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One figure of a row: the suffix of the row's name, the value, the range of repetitions.
type Figure = (&'static str, f64, Option<(f64, f64)>);

/// The figures of `measurement` that the table shows, one row each, with the suffix of the
/// row's name and, for the median of repetitions, the range of the repetitions: throughput
/// and rate have one row, latency two (median and p99).
fn figures(measurement: &Measurement) -> Vec<Figure> {
    match measurement {
        Measurement::Throughput {
            bytes_per_second,
            range,
        } => vec![("", *bytes_per_second, Some(*range))],
        Measurement::Latency { median_ns, p99_ns } => {
            vec![(" median", *median_ns, None), (" p99", *p99_ns, None)]
        }
        Measurement::Rate {
            messages_per_second,
            range,
            ..
        } => vec![("", *messages_per_second, Some(*range))],
    }
}

/// A figure of `measurement` with its unit, and the range of the repetitions if given.
fn format_value(measurement: &Measurement, value: f64, range: Option<(f64, f64)>) -> String {
    let (scale, unit, digits) = match measurement {
        Measurement::Throughput { .. } => (1e9, "GB/s", 2),
        Measurement::Latency { .. } if value >= 10_000.0 => (1e3, "µs", 1),
        Measurement::Latency { .. } => (1.0, "ns", 0),
        Measurement::Rate { .. } => (1e6, "M msg/s", 2),
    };
    let shown = format!("{:.digits$} {unit}", value / scale);
    match range {
        Some((low, high)) => format!(
            "{shown} ({:.digits$}-{:.digits$})",
            low / scale,
            high / scale
        ),
        None => shown,
    }
}

/// The rows of one cell in the main table (two for latency).
fn cell_rows(row: &Row) -> String {
    let shmq = row.shmq.as_ref().map(figures).unwrap_or_default();
    let iceoryx2 = row.iceoryx2.as_ref().map(figures).unwrap_or_default();
    let shown = |m: &Option<Measurement>, f: &[Figure], i: usize| match (m, f.get(i)) {
        (Some(m), Some(&(_, value, range))) => format_value(m, value, range),
        _ => "failed".to_owned(),
    };
    let mut out = String::new();
    for i in 0..shmq.len().max(iceoryx2.len()).max(1) {
        let suffix = shmq.get(i).or(iceoryx2.get(i)).map_or("", |f| f.0);
        let ratio = match (shmq.get(i), iceoryx2.get(i)) {
            (Some((_, a, _)), Some((_, b, _))) if *b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "| {}{suffix} | {} | {} | {ratio} |\n",
            row.cell,
            shown(&row.shmq, &shmq, i),
            shown(&row.iceoryx2, &iceoryx2, i)
        ));
    }
    out
}

/// The receiver's counters per message of one contender in a rate cell; `None` for other
/// cells.
fn usage_row(cell: Cell, who: &str, measurement: &Option<Measurement>) -> Option<String> {
    let Some(Measurement::Rate {
        receiver_usage: usage,
        messages,
        ..
    }) = measurement
    else {
        return None;
    };
    let per = |count: u64| count as f64 / *messages as f64;
    Some(format!(
        "| {cell} | {who} | {messages} | {:.6} | {:.6} | {:.6} | {:.6} |\n",
        per(usage.minor_faults + usage.major_faults),
        per(usage.voluntary_switches),
        per(usage.involuntary_switches),
        per(usage.voluntary_switches + usage.involuntary_switches),
    ))
}

/// When and where a run happened: the header of the report.
pub struct RunInfo {
    /// See [`commit`].
    pub commit: String,
    /// When the run started, see [`utc_now`].
    pub started: String,
    /// When it ended.
    pub ended: String,
    /// [`load_average`] at the start.
    pub load_at_start: String,
    /// [`load_average`] at the end.
    pub load_at_end: String,
    /// Whether the run was `--quick`.
    pub quick: bool,
}

/// The whole report as markdown.
pub fn render(rows: &[Row], info: &RunInfo) -> String {
    let mut out = String::from("## shmq against iceoryx2 (benches/peers)\n\n");
    let quick = if info.quick {
        ", --quick (smoke test counts)"
    } else {
        ""
    };
    out.push_str(&format!(
        "commit {}, {} to {}{quick}, two processes; load average {} at the start, {} at the \
         end\n\n",
        info.commit, info.started, info.ended, info.load_at_start, info.load_at_end,
    ));
    out.push_str(
        "GB/s and msg/s: median of the measured repetitions (slowest-fastest in brackets); \
         shmq/iceoryx2 above 1 means shmq is faster. Latency: half the round trip; below 1 \
         means shmq is faster.\n\n",
    );
    out.push_str("| cell | shmq | iceoryx2 | shmq/iceoryx2 |\n|---|---:|---:|---:|\n");
    for row in rows {
        out.push_str(&cell_rows(row));
    }
    let usage: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            [
                usage_row(row.cell, "shmq", &row.shmq),
                usage_row(row.cell, "iceoryx2", &row.iceoryx2),
            ]
        })
        .flatten()
        .collect();
    if !usage.is_empty() {
        out.push_str(
            "\nReceiver per message (getrusage RUSAGE_SELF in the child, over the measured \
             repetitions; a futex wait that sleeps is one voluntary switch):\n\n",
        );
        out.push_str(
            "| cell | contender | messages | page faults | voluntary switches | involuntary \
             switches | all switches |\n|---|---|---:|---:|---:|---:|---:|\n",
        );
        out.extend(usage);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
    }
}
