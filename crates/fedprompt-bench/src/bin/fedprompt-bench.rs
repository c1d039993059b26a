//! Standalone `fedprompt bench` (the same options), and the bench's worker binary.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "fedprompt-bench",
    about = "fedprompt beside PyTorch + PEFT: examples/s, peak memory, bytes per round"
)]
struct Cli {
    #[command(flatten)]
    opts: fedprompt_bench::BenchOptions,
}

fn main() -> anyhow::Result<()> {
    // Reuse freed activation buffers instead of mapping fresh pages every step.
    fedprompt_model::alloc::keep_freed_memory();
    fedprompt_bench::maybe_run_worker();
    let cli = Cli::parse();
    fedprompt_bench::run(&cli.opts)?;
    Ok(())
}
