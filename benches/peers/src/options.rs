//! The command line of a run: `[--quick] [--cells ID|PREFIX,...] [--list]`.

use crate::cell::Cell;
use crate::error::BoxResult;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Small counts, for a smoke test.
    pub quick: bool,
    /// The cells to run, in table order.
    pub cells: Vec<Cell>,
    /// Print the cell ids and exit.
    pub list: bool,
    /// Print [`USAGE`] and exit.
    pub help: bool,
}

/// The usage text of `--help`.
pub const USAGE: &str = "\
usage: shmq-peers [--quick] [--cells SELECTION[,SELECTION...]] [--list]

Compares shmq with iceoryx2 between two processes and prints a markdown table.

  --quick          small counts: a smoke test, not a measurement
  --cells SEL,...  only the cells whose id starts with one of the selections
                   (e.g. `rate`, `latency-busy`, `throughput-1MiB`, `throughput-4KiB-loan-busy`)
  --list           print every cell id and exit";

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> BoxResult<Options> {
        let mut quick = false;
        let mut list = false;
        let mut help = false;
        let mut selections: Vec<String> = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--list" => list = true,
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
            cells,
            list,
            help,
        })
    }
}
