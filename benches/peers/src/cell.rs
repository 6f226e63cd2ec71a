//! The cells of the table: what is measured (throughput, latency, rate), how the sender
//! writes and how both sides wait, each with a stable id that `--cells` selects and the child
//! process is told.

use std::fmt;

/// Bytes of the small messages of the latency and rate cells.
pub const SMALL_PAYLOAD: usize = 64;
/// Most messages one call moves in the runs cells.
pub const RUN: usize = 64;

/// Payload sizes of the throughput cells.
pub const THROUGHPUT_PAYLOADS: [usize; 5] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20];

/// How the sender puts a payload into shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Writes it in place in a loaned buffer (shmq `Sender::loan`, iceoryx2
    /// `loan_slice_uninit`).
    Loan,
    /// Copies it in from a prepared private buffer (shmq `Sender::send`, iceoryx2
    /// `loan_slice_uninit` + `write_from_slice`, its copying send).
    CopyIn,
}

/// How both sides wait for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Each library's own blocking wait: shmq's blocking `recv` and `send` (a bounded spin,
    /// then a futex); iceoryx2's `receive` loop that waits on an Event listener when empty,
    /// the publisher notifying after each send.
    Default,
    /// Both sides spin: shmq `try_recv` loops and never-sleeping sends, iceoryx2 `receive`
    /// loops and no events.
    Busy,
}

/// What one cell measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Payload bytes per second of a one-way stream of `payload`-byte messages.
    Throughput {
        /// Bytes of each message.
        payload: usize,
        /// How the sender writes each one.
        write: Write,
        /// How both sides wait.
        waiting: Waiting,
    },
    /// Half the round trip of a 64-byte ping-pong over two channels.
    Latency {
        /// How both sides wait.
        waiting: Waiting,
    },
    /// Messages per second of a one-way stream of 64-byte messages.
    Rate {
        /// How both sides wait.
        waiting: Waiting,
        /// shmq moves the stream in runs (`send_many` and `recv_many` of up to
        /// [`RUN`] messages per call). iceoryx2 has no such form: its side of a runs cell
        /// is its stream of single messages, as in the cell without runs.
        runs: bool,
    },
}

impl Waiting {
    fn id(self) -> &'static str {
        match self {
            Waiting::Default => "default",
            Waiting::Busy => "busy",
        }
    }

    fn parse(text: &str) -> Option<Waiting> {
        [Waiting::Default, Waiting::Busy]
            .into_iter()
            .find(|w| w.id() == text)
    }
}

impl Write {
    fn id(self) -> &'static str {
        match self {
            Write::Loan => "loan",
            Write::CopyIn => "copy-in",
        }
    }

    fn parse(text: &str) -> Option<Write> {
        [Write::Loan, Write::CopyIn]
            .into_iter()
            .find(|w| w.id() == text)
    }
}

/// `4096` as `4KiB`, `1 << 20` as `1MiB`.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// Parses what [`size_label`] writes.
fn parse_size(text: &str) -> Option<usize> {
    let (digits, shift) = if let Some(d) = text.strip_suffix("MiB") {
        (d, 20)
    } else if let Some(d) = text.strip_suffix("KiB") {
        (d, 10)
    } else {
        (text.strip_suffix('B')?, 0)
    };
    digits.parse::<usize>().ok()?.checked_shl(shift)
}

impl Cell {
    /// Every cell, in table order.
    pub fn all() -> Vec<Cell> {
        let mut cells = Vec::new();
        for payload in THROUGHPUT_PAYLOADS {
            for write in [Write::Loan, Write::CopyIn] {
                for waiting in [Waiting::Default, Waiting::Busy] {
                    cells.push(Cell::Throughput {
                        payload,
                        write,
                        waiting,
                    });
                }
            }
        }
        for waiting in [Waiting::Default, Waiting::Busy] {
            cells.push(Cell::Latency { waiting });
        }
        for runs in [false, true] {
            for waiting in [Waiting::Default, Waiting::Busy] {
                cells.push(Cell::Rate { waiting, runs });
            }
        }
        cells
    }

    /// The cell's id: `throughput-64KiB-loan-busy`, `latency-default`, `rate-busy`.
    pub fn id(self) -> String {
        match self {
            Cell::Throughput {
                payload,
                write,
                waiting,
            } => format!(
                "throughput-{}-{}-{}",
                size_label(payload),
                write.id(),
                waiting.id()
            ),
            Cell::Latency { waiting } => format!("latency-{}", waiting.id()),
            Cell::Rate {
                waiting,
                runs: false,
            } => format!("rate-{}", waiting.id()),
            Cell::Rate {
                waiting,
                runs: true,
            } => format!("rate-runs-{}", waiting.id()),
        }
    }

    /// The cell with id `id`, as [`id`](Self::id) writes it.
    pub fn parse(id: &str) -> Option<Cell> {
        if let Some(rest) = id.strip_prefix("latency-") {
            return Some(Cell::Latency {
                waiting: Waiting::parse(rest)?,
            });
        }
        if let Some(rest) = id.strip_prefix("rate-") {
            let (runs, rest) = match rest.strip_prefix("runs-") {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            return Some(Cell::Rate {
                waiting: Waiting::parse(rest)?,
                runs,
            });
        }
        let rest = id.strip_prefix("throughput-")?;
        let (size, rest) = rest.split_once('-')?;
        let (write, waiting) = rest.rsplit_once('-')?;
        Some(Cell::Throughput {
            payload: parse_size(size)?,
            write: Write::parse(write)?,
            waiting: Waiting::parse(waiting)?,
        })
    }

    /// Bytes of each message of the cell.
    pub fn payload(self) -> usize {
        match self {
            Cell::Throughput { payload, .. } => payload,
            Cell::Latency { .. } | Cell::Rate { .. } => SMALL_PAYLOAD,
        }
    }

    /// How the cell's sender writes (the small-message cells copy, as a user sends 64 bytes).
    pub fn write(self) -> Write {
        match self {
            Cell::Throughput { write, .. } => write,
            Cell::Latency { .. } | Cell::Rate { .. } => Write::CopyIn,
        }
    }

    /// How both sides of the cell wait.
    pub fn waiting(self) -> Waiting {
        match self {
            Cell::Throughput { waiting, .. }
            | Cell::Latency { waiting }
            | Cell::Rate { waiting, .. } => waiting,
        }
    }
}

impl fmt::Display for Cell {
    /// The cell as the table's first column names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cell::Throughput {
                payload,
                write,
                waiting,
            } => write!(
                f,
                "throughput {} {} {}",
                size_label(payload),
                write.id(),
                waiting.id()
            ),
            Cell::Latency { waiting } => write!(f, "latency 64 B one way {}", waiting.id()),
            Cell::Rate { waiting, runs } => write!(
                f,
                "rate 64 B 1→1 {}{}",
                if runs { "runs " } else { "" },
                waiting.id()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_parses_back() {
        for cell in Cell::all() {
            assert_eq!(Cell::parse(&cell.id()), Some(cell), "{}", cell.id());
        }
        assert_eq!(Cell::parse("throughput-3KiB-loan"), None);
        assert_eq!(
            Cell::parse("rate-runs-busy"),
            Some(Cell::Rate {
                waiting: Waiting::Busy,
                runs: true
            })
        );
    }
}
