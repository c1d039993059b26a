//! `fedprompt report`: re-render tables and plots from a results.json.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::common::Globals;

const AFTER_HELP: &str = "\
Examples:
  fedprompt report results/                  # rewrite tables.md, CSVs and plots in place
  fedprompt report results/results.json --output paper-figures/

Writes results.json, the CSV files, tables.md (shaped like the paper's Tables 1–4) and the
plots (SVG and PNG), then prints a short summary.";

/// Arguments of `fedprompt report`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// A results folder (holding results.json) or a results JSON file.
    #[arg(value_name = "RESULTS_DIR_OR_JSON")]
    pub results: PathBuf,

    /// Folder to write into (default: the results folder, or the JSON file's folder).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// Runs `fedprompt report`.
pub fn run(a: Args, _g: &Globals) -> Result<()> {
    let results = fedprompt_report::load(&a.results)?;
    let out = match a.output {
        Some(d) => d,
        None if a.results.is_dir() => a.results.clone(),
        None => a
            .results
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
    };
    let files = fedprompt_report::write_all(&results, &out)
        .with_context(|| format!("writing the report to {}", out.display()))?;
    print!("{}", fedprompt_report::render_summary(&results));
    println!("\n{} files written to {}:", files.len(), out.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
