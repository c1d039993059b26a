//! `fedprompt bench`: fedprompt beside PyTorch + PEFT on the same machine, interleaved in one
//! run, reported as ratios: examples/s, peak memory (each side in its own process, `VmHWM`),
//! and bytes per round (the trainable set as safetensors) for prompt, LoRA and full fine-tuning.
//!
//! Workloads (prompt tuning, 1 virtual token, RoBERTa head, 10 labels, AdamW lr 1e-3):
//! * `base-train`  — one training step, XLM-R-base shape (random weights), batch 8 × 148 tokens
//! * `base-infer`  — inference, same model, batch 32 × 148
//! * `small-train` — one training step, the default model (multilingual-e5-small), 16 × 16
//! * `small-infer` — inference, the default model, 64 × 16
//!
//! The fedprompt side re-executes the current binary (or `--worker-exe`) as a worker; a binary
//! that calls [`run`] must call [`maybe_run_worker`] first thing in `main`. The PyTorch side is
//! `python scripts/bench_torch.py --json ...` (python from `--python` / `$FEDPROMPT_PYTHON`,
//! default `python3`; the script is embedded and written to the output folder when it is not
//! found on disk). Without torch, fedprompt is reported alone.
//!
//! A run, in the crate's modules: [`BenchOptions`] → `plan` (workloads, shapes, model folders
//! and both sides, resolved and checked once) → `execute` (both sides interleaved, round by
//! round, then bytes per round) → `report` (medians, ratios, [`BenchReport`], the files) with
//! `markdown` ([`render_markdown`]). The sides themselves: [`worker`] (fedprompt) and
//! [`torch`] (PyTorch + PEFT).

#![warn(missing_docs)]

mod execute;
pub mod flops;
mod markdown;
mod plan;
pub mod randmodel;
mod report;
pub mod sizes;
pub mod torch;
pub mod worker;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

pub use markdown::render_markdown;
pub use plan::{default_base_model_dir, ModelKind, Workload};
pub use report::{median, BenchReport, BytesRow, SideResult, WorkloadResult};
pub use worker::{maybe_run_worker, Job, JobKind, JobResult, MethodBytes};

/// Options of `fedprompt bench`.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct BenchOptions {
    /// Output folder for bench.md and bench.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Quick settings (fewer iterations; about 3 minutes on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Warm-up iterations per process (default: 1 on the base shape, 3 on the small model).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Timed iterations per process (default: 5 base / 30 small; quick: 2 / 10).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Rounds: each round runs every workload once per side, alternating which side goes
    /// first; medians are over all rounds' timed iterations.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Compute threads for both sides (torch.set_num_threads, RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python with torch, transformers and peft (default: $FEDPROMPT_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<String>,
    /// The PyTorch script (default: scripts/bench_torch.py if found, else an embedded copy).
    #[arg(long)]
    pub torch_script: Option<PathBuf>,
    /// fedprompt alone.
    #[arg(long)]
    pub no_torch: bool,
    /// Skip the bf16 variants (fedprompt's bf16 backbone, PyTorch's bf16 autocast).
    #[arg(long)]
    pub no_bf16: bool,
    /// Skip the bytes-per-round table.
    #[arg(long)]
    pub no_bytes: bool,
    /// The random XLM-R-base folder (default: `<fedprompt cache>/bench/<shape>`, written once).
    #[arg(long)]
    pub base_model_dir: Option<PathBuf>,
    /// The small model folder (default: fedprompt_hub::default_model_dir()).
    #[arg(long)]
    pub small_model_dir: Option<PathBuf>,
    /// Binary to run as the fedprompt worker (default: the current executable).
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Run fedprompt in this process (peak memory is then the whole process's).
    #[arg(long)]
    pub in_process: bool,
    /// Labels of the classification head.
    #[arg(long, default_value_t = 10)]
    pub num_labels: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl BenchOptions {
    /// The Python to run: `--python`, else `$FEDPROMPT_PYTHON`, else `python3`.
    pub fn python(&self) -> String {
        self.python
            .clone()
            .or_else(|| {
                std::env::var("FEDPROMPT_PYTHON")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "python3".into())
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            out: PathBuf::from("bench-results"),
            workloads: Vec::new(),
            quick: false,
            warmup: None,
            iters: None,
            rounds: 1,
            threads: 2,
            python: None,
            torch_script: None,
            no_torch: false,
            no_bf16: false,
            no_bytes: false,
            base_model_dir: None,
            small_model_dir: None,
            worker_exe: None,
            in_process: false,
            num_labels: 10,
            seed: 0,
        }
    }
}

/// Runs the benchmark, writes `bench.md` and `bench.json` into `opts.out`, prints the table.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let started = Instant::now();
    let load_before = report::loadavg();
    let plan = plan::Plan::new(opts)?;
    let measured = execute::execute(&plan);
    let peak = flops::MachinePeak::detect(plan.threads);
    let report = BenchReport::new(&plan, measured, peak, load_before, started);
    report.write(&plan.out)?;
    Ok(report)
}
