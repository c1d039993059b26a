//! `fedprompt data`: what a reader parsed, before any training.

use std::path::PathBuf;

use anyhow::{bail, Context};
use fedprompt_data::{read_generic, scan_labels, GenericFormat, ReadOptions};
use fedprompt_sim::{count_table, describe_data, first_examples, ExperimentConfig};

use crate::common::Globals;

const AFTER_HELP: &str = "\
Examples:
  fedprompt data experiments/demo.toml                  # the experiment's [data], as it trains
  fedprompt data experiments/paper-nc.toml --examples 10
  fedprompt data my.tsv --text premise --label label --language-column lang
  fedprompt data xnli-mt.tsv --text premise --no-quoting

With an experiment file, the data section is read and sampled exactly as `fedprompt
experiment` does for its first seed. With a CSV/TSV/JSONL file, the file is read with the
given columns. Either way it prints examples per label and language and the first
examples, and stops with the line number and the fix at the first bad line (a wrong column
count, an unknown label, an unclosed quote that merged rows...); --skip-bad-lines reports
them as warnings instead.";

/// Arguments of `fedprompt data`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// An experiment file (.toml) or a data file (.csv, .tsv, .jsonl).
    pub file: PathBuf,
    /// How many examples of each split to print.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Data file: the column (or JSON key) of the text.
    #[arg(long, default_value = "text")]
    pub text: String,
    /// Data file: the column of the second text of a pair task.
    #[arg(long)]
    pub text_pair: Option<String>,
    /// Data file: the column of the label.
    #[arg(long, default_value = "label")]
    pub label: String,
    /// Data file: the column of the language code.
    #[arg(long)]
    pub language_column: Option<String>,
    /// Data file: the language of every row (or of rows with an empty language cell).
    #[arg(long)]
    pub language: Option<String>,
    /// Data file: labels are integer indices, not names.
    #[arg(long)]
    pub label_is_index: bool,
    /// Data file: read `"` as an ordinary character (TSV files with bare quotes in texts).
    #[arg(long)]
    pub no_quoting: bool,
    /// Data file: report bad lines as warnings and go on.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

/// Runs the command.
pub fn run(args: Args, _g: &Globals) -> anyhow::Result<()> {
    let ext = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() == Some("toml") {
        let cfg = ExperimentConfig::from_file(&args.file)?;
        let (_, report) = describe_data(&cfg, args.examples)
            .with_context(|| format!("reading the data of {}", args.file.display()))?;
        print!("{report}");
        return Ok(());
    }
    if !args.file.is_file() {
        bail!(
            "{} is not a file; give an experiment file (.toml) or a data file (.csv, .tsv, .jsonl)",
            args.file.display()
        );
    }
    let fmt = GenericFormat {
        text: args.text.clone(),
        text_pair: args.text_pair.clone(),
        label: args.label.clone(),
        language_column: args.language_column.clone(),
        fixed_language: args.language.clone(),
        label_is_index: args.label_is_index,
        quoting: !args.no_quoting,
        ..GenericFormat::default()
    };
    let labels = scan_labels(&[args.file.as_path()], &fmt)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let out = read_generic(
        &args.file,
        &fmt,
        &labels,
        &ReadOptions {
            skip_bad_lines: args.skip_bad_lines,
        },
    )
    .with_context(|| format!("reading {}", args.file.display()))?;
    println!(
        "{}: {} examples, {} labels: {}\n",
        args.file.display(),
        out.examples.len(),
        labels.len(),
        labels.names().join(", ")
    );
    print!("{}", count_table(&out.examples, &labels));
    if args.examples > 0 {
        print!(
            "\nFirst {}:\n{}",
            args.examples,
            first_examples(&out.examples, &labels, args.examples)
        );
    }
    if !out.warnings.is_empty() {
        println!("\n{} bad line(s) skipped:", out.warnings.len());
        for w in out.warnings.iter().take(20) {
            println!("  {w}");
        }
    }
    Ok(())
}
