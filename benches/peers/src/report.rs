//! The markdown the run prints: a header with the commit and the time, the table of cells
//! (shmq | iceoryx2 | ratio), and the receiver's page faults and context switches per message
//! of the rate cells.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cell::Cell;
use crate::contender::{Contender, Measurement};
use crate::pinning::Pinning;
use crate::stats;

/// One row of the table: a cell and what each contender measured over the run's rounds
/// (`None`: not run or failed in every round).
pub struct Row {
    /// The cell.
    pub cell: Cell,
    /// shmq's measurement, every round's samples pooled.
    pub shmq: Option<Measurement>,
    /// iceoryx2's measurement, every round's samples pooled.
    pub iceoryx2: Option<Measurement>,
    /// shmq's median over iceoryx2's in each round where both were measured: the ratio of
    /// two measurements a few seconds apart, which the machine's slower moods shift less.
    pub round_ratios: Vec<f64>,
    /// Latency cells: the machine's spinning ping-pong (see limits.rs), one way, in ns, once
    /// per round.
    pub spin_ping_pong_ns: Vec<f64>,
}

impl Row {
    /// A row of `cell` with nothing measured yet.
    pub fn new(cell: Cell) -> Row {
        Row {
            cell,
            shmq: None,
            iceoryx2: None,
            round_ratios: Vec::new(),
            spin_ping_pong_ns: Vec::new(),
        }
    }

    /// Adds the measurements of one round.
    pub fn add_round(&mut self, round: Vec<(Contender, Measurement)>) {
        let median_of = |who: Contender| {
            round
                .iter()
                .find(|(c, _)| *c == who)
                .map(|(_, m)| m.median())
        };
        if let (Some(a), Some(b)) = (median_of(Contender::Shmq), median_of(Contender::Iceoryx2)) {
            if b > 0.0 {
                self.round_ratios.push(a / b);
            }
        }
        for (contender, measurement) in round {
            let pooled = match contender {
                Contender::Shmq => &mut self.shmq,
                Contender::Iceoryx2 => &mut self.iceoryx2,
            };
            *pooled = Some(match pooled.take() {
                Some(before) => before.pooled(measurement),
                None => measurement,
            });
        }
    }
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
        Measurement::Throughput { .. } | Measurement::Rate { .. } => {
            vec![("", measurement.median(), Some(measurement.range()))]
        }
        Measurement::Latency { .. } => vec![
            (" median", measurement.median(), None),
            (" p99", measurement.quantile(0.99), None),
        ],
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
        // The rounds' ratios are of the medians: the first figure of a row.
        let rounds = if i == 0 && !row.round_ratios.is_empty() {
            let each: Vec<String> = row.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
            each.join(" / ")
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {}{suffix} | {} | {} | {ratio} | {rounds} |\n",
            row.cell,
            shown(&row.shmq, &shmq, i),
            shown(&row.iceoryx2, &iceoryx2, i)
        ));
    }
    out
}

/// The row of a latency cell in the table of the machine's limit: the spinning ping-pong of
/// each round, and each contender's median as a multiple of the ping-pong's median; `None`
/// for other cells.
fn limit_row(row: &Row) -> Option<String> {
    if row.spin_ping_pong_ns.is_empty() {
        return None;
    }
    let ping_pong = stats::median(&mut row.spin_ping_pong_ns.clone())?;
    let each: Vec<String> = row
        .spin_ping_pong_ns
        .iter()
        .map(|ns| format!("{ns:.0}"))
        .collect();
    let multiple = |m: &Option<Measurement>| {
        m.as_ref().map_or("-".to_owned(), |m| {
            format!("{:.2}x", m.median() / ping_pong)
        })
    };
    Some(format!(
        "| {} | {ping_pong:.0} ns ({}) | {} | {} |\n",
        row.cell,
        each.join(" / "),
        multiple(&row.shmq),
        multiple(&row.iceoryx2)
    ))
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
    /// Rounds per cell.
    pub rounds: u32,
    /// The CPUs of the two processes, if pinned.
    pub pinning: Option<Pinning>,
}

/// The whole report as markdown.
pub fn render(rows: &[Row], info: &RunInfo) -> String {
    let mut out = String::from("## shmq against iceoryx2 (benches/peers)\n\n");
    let quick = if info.quick {
        ", --quick (smoke test counts)"
    } else {
        ""
    };
    let placement = match info.pinning {
        Some(pins) => format!("pinned to CPUs {} (sender) and {}", pins.parent, pins.child),
        None => "not pinned".to_owned(),
    };
    out.push_str(&format!(
        "commit {}, {} to {}{quick}, two processes {placement}; load average {} at the start, \
         {} at the end\n\n",
        info.commit, info.started, info.ended, info.load_at_start, info.load_at_end,
    ));
    out.push_str(&format!(
        "{} round(s) per cell, each measuring both contenders, the first of them alternating; \
         the figures pool every round. GB/s and msg/s: median of the measured repetitions \
         (slowest-fastest in brackets); shmq/iceoryx2 above 1 means shmq is faster. Latency: \
         half the round trip; below 1 means shmq is faster. Per round: the ratio of the two \
         medians in each round.\n\n",
        info.rounds
    ));
    out.push_str(
        "| cell | shmq | iceoryx2 | shmq/iceoryx2 | per round |\n|---|---:|---:|---:|---|\n",
    );
    for row in rows {
        out.push_str(&cell_rows(row));
    }
    let limits: Vec<String> = rows.iter().filter_map(limit_row).collect();
    if !limits.is_empty() {
        out.push_str(
            "\nThe machine's limit beside the latency cells: two processes spinning on one \
             word, one way (the mean of a loop of round trips, halved, as machine-limits \
             measures it), once per round just before the contenders; median, each round in \
             brackets; each contender's median as a multiple of it:\n\n",
        );
        out.push_str("| cell | spin ping-pong | shmq | iceoryx2 |\n|---|---:|---:|---:|\n");
        out.extend(limits);
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
