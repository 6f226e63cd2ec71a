//! The command line of a run: `[--quick] [--rounds N] [--no-pin] [--each] [--cells ID|PREFIX,...]
//! [--list]`.

use crate::cell::Cell;
use crate::error::BoxResult;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Small counts, for a smoke test.
    pub quick: bool,
    /// Rounds per cell: each round measures both contenders once, in alternating order, and
    /// the table pools the rounds' samples.
    pub rounds: u32,
    /// Pin the two processes of each measurement to two CPUs (see pinning.rs).
    pub pin: bool,
    /// Print each repetition of the stream cells to stderr (see `Plan::print_each`).
    pub each: bool,
    /// The cells to run, in table order.
    pub cells: Vec<Cell>,
    /// Print the cell ids and exit.
    pub list: bool,
    /// Print [`USAGE`] and exit.
    pub help: bool,
}

/// Rounds per cell unless `--rounds` says otherwise: the fewest whose median is not one
/// round's luck, on a machine whose placement of two processes changes from minute to minute.
const DEFAULT_ROUNDS: u32 = 3;

/// The usage text of `--help`.
pub const USAGE: &str = "\
usage: shmq-peers [--quick] [--rounds N] [--no-pin] [--each] [--cells SELECTION[,SELECTION...]]
                  [--list]

Compares shmq with iceoryx2 between two processes and prints a markdown table.

  --quick          small counts: a smoke test, not a measurement
  --rounds N       rounds per cell (default 3, 1 with --quick): each measures both
                   contenders once, the first of them alternating; the table pools them
  --no-pin         leave both processes of a measurement to the scheduler (by default
                   the parent runs on the first CPU it may use, the child on the second)
  --each           print each repetition of the throughput and rate cells to stderr: its
                   time and both processes' voluntary and involuntary context switches
  --cells SEL,...  only the cells whose id starts with one of the selections
                   (e.g. `rate`, `latency-busy`, `throughput-1MiB`, `throughput-4KiB-loan-busy`)
  --list           print every cell id and exit";

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> BoxResult<Options> {
        let mut quick = false;
        let mut rounds = None;
        let mut pin = true;
        let mut each = false;
        let mut list = false;
        let mut help = false;
        let mut selections: Vec<String> = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--list" => list = true,
                "--no-pin" => pin = false,
                "--each" => each = true,
                "--rounds" => {
                    let value = args.next().ok_or("--rounds needs a value")?;
                    match value.parse::<u32>() {
                        Ok(n) if n > 0 => rounds = Some(n),
                        _ => {
                            return Err(
                                format!("--rounds {value:?}: expected a count above 0").into()
                            )
                        }
                    }
                }
                "--cells" => {
                    let value = args.next().ok_or("--cells needs a value")?;
                    selections.extend(value.split(',').map(str::to_owned));
                }
                "-h" | "--help" => help = true,
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        let all = Cell::all();
        let cells: Vec<Cell> = if selections.is_empty() {
            all
        } else {
            for selection in &selections {
                if !all.iter().any(|c| c.id().starts_with(selection.as_str())) {
                    return Err(format!("no cell id starts with {selection:?} (see --list)").into());
                }
            }
            all.into_iter()
                .filter(|c| selections.iter().any(|s| c.id().starts_with(s.as_str())))
                .collect()
        };
        Ok(Options {
            quick,
            pin,
            each,
            rounds: rounds.unwrap_or(if quick { 1 } else { DEFAULT_ROUNDS }),
            cells,
            list,
            help,
        })
    }
}
