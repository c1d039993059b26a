//! `fedprompt experiment`: run every paradigm of an experiment file and write the results.

use std::path::PathBuf;

use anyhow::Context;
use fedprompt_sim::{run_experiment, ExperimentConfig, RunOptions};

use crate::common::Globals;

const AFTER_HELP: &str = "\
Examples:
  fedprompt experiment experiments/demo.toml             # the demo: minutes on 2 cores
  fedprompt experiment experiments/demo.toml --dtype f32 # the demo in exact mode
  fedprompt experiment experiments/paper-nc.toml --resume
  fedprompt experiment my.toml --output results/try2

The file names the model, the data, the training budget and the runs to compare
(monolingual, centralized, federated; prompt, prompt-encoder, LoRA, head or full). The file
plus its seed determines the run. After each federated round a checkpoint is written under
<output>/checkpoints; --resume continues a stopped run and ends with the same numbers as an
uninterrupted one. Results: tables.md (the paper's table shapes), results.json, CSV files and
SVG/PNG plots in the output folder (default results/<name>).";

/// Arguments of `fedprompt experiment`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Continue from the checkpoints of an interrupted run of the same file.
    #[arg(long)]
    pub resume: bool,
    /// Results folder (default: the file's `output`, else `results/<name>`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Load and check everything (the model, the data files, every run's settings and
    /// clients), print examples per language and label and the plan, and stop: no training.
    #[arg(long)]
    pub check: bool,
    /// Runs at once (every run of every seed is independent): default one per compute thread,
    /// at most 4, each with an even share of the threads (`RAYON_NUM_THREADS`, else the
    /// cores). The numbers are the same for any value; `--jobs 1` runs one at a time on all
    /// threads (less memory: each run holds its own activations).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<std::num::NonZeroUsize>,
    /// Overrides the file's `[model] dtype`: f32 (exact mode) or bf16 (fast mode: the frozen
    /// backbone's matrices in bf16, bf16 products with f32 sums on CPUs with AMX). The results
    /// name the one used (`backbone` in tables.md).
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<fedprompt_model::WeightDtype>,
}

/// Runs the command.
pub fn run(args: Args, g: &Globals) -> anyhow::Result<()> {
    let mut cfg = ExperimentConfig::from_file(&args.file)?;
    if let Some(dtype) = args.dtype {
        cfg.model.dtype = dtype;
    }
    if args.check {
        let report = fedprompt_sim::check_experiment(&cfg)
            .with_context(|| format!("checking {}", args.file.display()))?;
        print!("{report}");
        println!(
            "Results would go to {}",
            args.output
                .clone()
                .unwrap_or_else(|| cfg.output_dir())
                .display()
        );
        return Ok(());
    }
    let opts = RunOptions {
        resume: args.resume,
        progress: !g.quiet,
        output: args.output,
        stop_after_rounds: None,
        jobs: args.jobs,
    };
    let (results, out) = run_experiment(&cfg, &opts)
        .with_context(|| format!("experiment {}", args.file.display()))?;
    println!("{}", fedprompt_report::render_summary(&results));
    println!("Results: {}", out.display());
    println!(
        "  tables: {}\n  plots:  {}/*.svg, *.png\n  data:   {}, {}",
        out.join("tables.md").display(),
        out.display(),
        out.join("results.json").display(),
        out.join("accuracy.csv").display()
    );
    Ok(())
}
