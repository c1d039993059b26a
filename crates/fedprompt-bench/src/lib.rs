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

pub mod randmodel;
pub mod sizes;
pub mod torch;
pub mod worker;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use worker::{maybe_run_worker, Job, JobKind, JobResult, MethodBytes};

/// Which model a workload runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Random-weight XLM-R base shape.
    Base,
    /// The default model (`fedprompt_hub::default_model_dir()`).
    Small,
}

impl ModelKind {
    pub fn describe(self) -> &'static str {
        match self {
            ModelKind::Base => "XLM-R-base shape (random)",
            ModelKind::Small => "multilingual-e5-small (default)",
        }
    }
}

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    BaseTrain,
    BaseInfer,
    SmallTrain,
    SmallInfer,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::BaseTrain,
        Workload::BaseInfer,
        Workload::SmallTrain,
        Workload::SmallInfer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::BaseTrain => "base-train",
            Workload::BaseInfer => "base-infer",
            Workload::SmallTrain => "small-train",
            Workload::SmallInfer => "small-infer",
        }
    }
    pub fn model(self) -> ModelKind {
        match self {
            Workload::BaseTrain | Workload::BaseInfer => ModelKind::Base,
            Workload::SmallTrain | Workload::SmallInfer => ModelKind::Small,
        }
    }
    pub fn kind(self) -> JobKind {
        match self {
            Workload::BaseTrain | Workload::SmallTrain => JobKind::Train,
            Workload::BaseInfer | Workload::SmallInfer => JobKind::Infer,
        }
    }
    /// `(batch, tokens)`.
    pub fn shape(self) -> (usize, usize) {
        match self {
            Workload::BaseTrain => (8, 148),
            Workload::BaseInfer => (32, 148),
            Workload::SmallTrain => (16, 16),
            Workload::SmallInfer => (64, 16),
        }
    }
    /// `(warmup, iters)` when not given: few on the base shape (seconds per step), more on
    /// the small model (milliseconds).
    fn default_iters(self, quick: bool) -> (usize, usize) {
        match (self.model(), quick) {
            (ModelKind::Base, true) => (1, 2),
            (ModelKind::Base, false) => (1, 5),
            (ModelKind::Small, true) => (2, 10),
            (ModelKind::Small, false) => (3, 30),
        }
    }
}

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
    /// Skip the bytes-per-round table.
    #[arg(long)]
    pub no_bytes: bool,
    /// The random XLM-R-base folder (default: <fedprompt cache>/bench/<shape>, written once).
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

/// One side's measurement of a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SideResult {
    /// Seconds per timed iteration, all rounds.
    pub times_s: Vec<f64>,
    pub median_s: f64,
    pub examples_per_s: f64,
    /// Largest `VmHWM` over its processes.
    pub peak_rss_bytes: Option<u64>,
    pub load_s: f64,
    pub trainable_params: usize,
    pub last_loss: Option<f64>,
    pub threads: usize,
}

/// One workload's row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub workload: Workload,
    pub model: ModelKind,
    pub kind: JobKind,
    pub batch: usize,
    pub tokens: usize,
    pub warmup: usize,
    pub iters: usize,
    pub fedprompt: Option<SideResult>,
    pub torch: Option<SideResult>,
    /// fedprompt examples/s ÷ PyTorch examples/s (> 1: fedprompt faster).
    pub speed_ratio: Option<f64>,
    /// fedprompt peak RSS ÷ PyTorch peak RSS (< 1: fedprompt leaner).
    pub memory_ratio: Option<f64>,
}

/// Bytes per round of one method on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BytesRow {
    pub model: ModelKind,
    pub method: String,
    pub fedprompt_params: Option<usize>,
    pub fedprompt_bytes: Option<u64>,
    pub peft_params: Option<usize>,
    pub peft_bytes: Option<u64>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub workloads: Vec<WorkloadResult>,
    pub bytes: Vec<BytesRow>,
    /// torch / transformers / peft versions, if available.
    pub torch_versions: Option<serde_json::Value>,
    pub notes: Vec<String>,
    pub cpu: String,
    pub cores: usize,
    pub threads: usize,
    pub rounds: usize,
    /// 1-minute load average before and after.
    pub loadavg: (Option<f64>, Option<f64>),
    pub wall_s: f64,
    pub markdown: String,
}

/// Median of a sample (mean of the two middle values for even sizes).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The random XLM-R-base folder's default place: `<fedprompt cache>/bench/<shape>`.
pub fn default_base_model_dir(num_labels: usize) -> Result<PathBuf> {
    let hub = fedprompt_hub::Hub::from_env()?;
    Ok(hub
        .cache_dir()
        .join("bench")
        .join(randmodel::XlmrShape::base(num_labels).slug()))
}

fn aggregate(results: &[JobResult], batch: usize) -> Option<SideResult> {
    let first = results.first()?;
    let times: Vec<f64> = results.iter().flat_map(|r| r.times_s.clone()).collect();
    let med = median(&times);
    Some(SideResult {
        median_s: med,
        examples_per_s: batch as f64 / med,
        peak_rss_bytes: results.iter().filter_map(|r| r.peak_rss_bytes).max(),
        load_s: median(&results.iter().map(|r| r.load_s).collect::<Vec<_>>()),
        trainable_params: first.trainable_params,
        last_loss: results.last().and_then(|r| r.last_loss),
        threads: first.threads,
        times_s: times,
    })
}

/// Runs the benchmark, writes `bench.md` and `bench.json` into `opts.out`, prints the table.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let t_start = Instant::now();
    let load_before = loadavg();
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let workloads: Vec<Workload> = if opts.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        opts.workloads.clone()
    };
    let mut notes = Vec::new();

    // The PyTorch side.
    let torch = if opts.no_torch {
        notes.push("PyTorch side skipped (--no-torch): fedprompt alone.".to_string());
        None
    } else {
        match torch::TorchSide::probe(opts) {
            Ok(t) => Some(t),
            Err(e) => {
                notes.push(format!(
                    "PyTorch + PEFT unavailable with `{}` ({e:#}): fedprompt alone. Set \
                     FEDPROMPT_PYTHON or --python to a Python with torch, transformers and peft.",
                    opts.python()
                ));
                None
            }
        }
    };

    // Models.
    let needs_base = workloads.iter().any(|w| w.model() == ModelKind::Base);
    let needs_small = workloads.iter().any(|w| w.model() == ModelKind::Small);
    let base_dir = if needs_base {
        let dir = match &opts.base_model_dir {
            Some(d) => d.clone(),
            None => default_base_model_dir(opts.num_labels)?,
        };
        Some(randmodel::ensure_random_xlmr(
            &dir,
            &randmodel::XlmrShape::base(opts.num_labels),
        )?)
    } else {
        None
    };
    let small_dir = if needs_small {
        Some(match &opts.small_model_dir {
            Some(d) => d.clone(),
            None => fedprompt_hub::default_model_dir()
                .context("getting the default model (fedprompt_hub::default_model_dir)")?,
        })
    } else {
        None
    };
    let model_dir = |m: ModelKind| -> &Path {
        match m {
            ModelKind::Base => base_dir.as_deref().expect("base model prepared"),
            ModelKind::Small => small_dir.as_deref().expect("small model prepared"),
        }
    };

    let exe = match &opts.worker_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("locating the current executable")?,
    };
    let run_fp = |job: &Job| -> Result<JobResult> {
        if opts.in_process {
            worker::execute(job)
        } else {
            worker::run_worker_job(&exe, job, Some(opts.threads))
        }
    };
    if opts.in_process {
        notes.push(
            "fedprompt ran in-process (--in-process): its peak memory is the whole bench process's."
                .into(),
        );
    }

    let plan: Vec<(Workload, Job)> = workloads
        .iter()
        .map(|&w| {
            let (dw, di) = w.default_iters(opts.quick);
            let (batch, seq_len) = w.shape();
            (
                w,
                Job {
                    kind: w.kind(),
                    model_dir: model_dir(w.model()).to_path_buf(),
                    batch,
                    seq_len,
                    warmup: opts.warmup.unwrap_or(dw),
                    iters: opts.iters.unwrap_or(di).max(1),
                    num_labels: opts.num_labels,
                    seed: opts.seed,
                    lr: 1e-3,
                },
            )
        })
        .collect();

    let mut fp_runs: Vec<Vec<JobResult>> = vec![Vec::new(); plan.len()];
    let mut th_runs: Vec<Vec<JobResult>> = vec![Vec::new(); plan.len()];
    for round in 0..opts.rounds {
        for (k, (w, job)) in plan.iter().enumerate() {
            // Alternate which side goes first, so slow drifts in machine load hit both.
            let torch_first = (round + k) % 2 == 1;
            for side in 0..2 {
                let is_torch = (side == 0) == torch_first;
                let label = if is_torch { "PyTorch" } else { "fedprompt" };
                eprintln!(
                    "fedprompt bench: round {}/{} {} {} ...",
                    round + 1,
                    opts.rounds,
                    w.name(),
                    label
                );
                let r = if is_torch {
                    match &torch {
                        Some(t) => t.run_job(job, opts.threads),
                        None => continue,
                    }
                } else {
                    run_fp(job)
                };
                match r {
                    Ok(r) => {
                        eprintln!(
                            "fedprompt bench:   {label} median {:.3} s/iter",
                            median(&r.times_s)
                        );
                        if is_torch {
                            th_runs[k].push(r)
                        } else {
                            fp_runs[k].push(r)
                        }
                    }
                    Err(e) => notes.push(format!("{} {label} failed: {e:#}", w.name())),
                }
            }
        }
    }

    let mut results = Vec::new();
    for (k, (w, job)) in plan.iter().enumerate() {
        let fp = aggregate(&fp_runs[k], job.batch);
        let th = aggregate(&th_runs[k], job.batch);
        let speed_ratio = match (&fp, &th) {
            (Some(a), Some(b)) => Some(a.examples_per_s / b.examples_per_s),
            _ => None,
        };
        let memory_ratio = match (&fp, &th) {
            (Some(a), Some(b)) => match (a.peak_rss_bytes, b.peak_rss_bytes) {
                (Some(x), Some(y)) if y > 0 => Some(x as f64 / y as f64),
                _ => None,
            },
            _ => None,
        };
        results.push(WorkloadResult {
            workload: *w,
            model: w.model(),
            kind: job.kind,
            batch: job.batch,
            tokens: job.seq_len,
            warmup: job.warmup,
            iters: job.iters,
            fedprompt: fp,
            torch: th,
            speed_ratio,
            memory_ratio,
        });
    }

    // Bytes per round.
    let mut bytes = Vec::new();
    if !opts.no_bytes {
        let mut models = Vec::new();
        if needs_base {
            models.push(ModelKind::Base);
        }
        if needs_small {
            models.push(ModelKind::Small);
        }
        for m in models {
            eprintln!("fedprompt bench: bytes per round, {}", m.describe());
            let job = Job {
                kind: JobKind::Bytes,
                model_dir: model_dir(m).to_path_buf(),
                batch: 1,
                seq_len: 1,
                warmup: 0,
                iters: 0,
                num_labels: opts.num_labels,
                seed: opts.seed,
                lr: 1e-3,
            };
            let fp = run_fp(&job)
                .map_err(|e| {
                    notes.push(format!("bytes ({}) fedprompt failed: {e:#}", m.describe()))
                })
                .ok();
            let th = torch.as_ref().and_then(|t| {
                t.run_job(&job, opts.threads)
                    .map_err(|e| {
                        notes.push(format!("bytes ({}) PyTorch failed: {e:#}", m.describe()))
                    })
                    .ok()
            });
            for method in ["prompt", "lora", "full"] {
                let f = fp
                    .as_ref()
                    .and_then(|r| r.bytes.iter().find(|b| b.method == method));
                let t = th
                    .as_ref()
                    .and_then(|r| r.bytes.iter().find(|b| b.method == method));
                bytes.push(BytesRow {
                    model: m,
                    method: method.to_string(),
                    fedprompt_params: f.map(|b| b.params),
                    fedprompt_bytes: f.map(|b| b.bytes),
                    peft_params: t.map(|b| b.params),
                    peft_bytes: t.map(|b| b.bytes),
                });
            }
        }
    }

    let mut report = BenchReport {
        workloads: results,
        bytes,
        torch_versions: torch.as_ref().map(|t| t.versions.clone()),
        notes,
        cpu: cpu_name(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        threads: opts.threads,
        rounds: opts.rounds,
        loadavg: (load_before, loadavg()),
        wall_s: t_start.elapsed().as_secs_f64(),
        markdown: String::new(),
    };
    report.markdown = render_markdown(&report);
    std::fs::write(opts.out.join("bench.md"), &report.markdown)?;
    std::fs::write(
        opts.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", report.markdown);
    println!(
        "(written to {} and {})",
        opts.out.join("bench.md").display(),
        opts.out.join("bench.json").display()
    );
    Ok(report)
}

fn gib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "—".into(),
    }
}

fn human_bytes(b: Option<u64>) -> String {
    match b {
        None => "—".into(),
        Some(b) if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) if b < 1 << 30 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "—".into(),
    }
}

/// The report as Markdown.
pub fn render_markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# fedprompt vs PyTorch + PEFT\n");
    let tv = r
        .torch_versions
        .as_ref()
        .map(|v| {
            format!(
                "torch {}, transformers {}, peft {}",
                v["torch"].as_str().unwrap_or("?"),
                v["transformers"].as_str().unwrap_or("?"),
                v["peft"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "PyTorch: not measured".into());
    let _ = writeln!(
        s,
        "{} ({} cores), {} threads per side, {} round(s) interleaved; {}. Load average {} → {}; \
         wall {:.0} s.\n",
        r.cpu,
        r.cores,
        r.threads,
        r.rounds,
        tv,
        opt_f(r.loadavg.0, 2),
        opt_f(r.loadavg.1, 2),
        r.wall_s
    );
    let _ = writeln!(
        s,
        "Prompt tuning (1 virtual token, RoBERTa head, 10 labels, AdamW lr 1e-3); medians of the \
         timed iterations; peak memory is each process's VmHWM.\n"
    );
    let _ = writeln!(
        s,
        "| workload | model | batch × tokens | iters | fedprompt s/iter | PyTorch s/iter | fedprompt ex/s | PyTorch ex/s | ratio (fp/pt) | peak RSS fedprompt | peak RSS PyTorch | memory ratio |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in &r.workloads {
        let f = w.fedprompt.as_ref();
        let t = w.torch.as_ref();
        let _ = writeln!(
            s,
            "| {} | {} | {} × {} | {}+{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.workload.name(),
            w.model.describe(),
            w.batch,
            w.tokens,
            w.warmup,
            w.iters,
            opt_f(f.map(|x| x.median_s), 3),
            opt_f(t.map(|x| x.median_s), 3),
            opt_f(f.map(|x| x.examples_per_s), 1),
            opt_f(t.map(|x| x.examples_per_s), 1),
            opt_f(w.speed_ratio, 2),
            gib(f.and_then(|x| x.peak_rss_bytes)),
            gib(t.and_then(|x| x.peak_rss_bytes)),
            opt_f(w.memory_ratio, 2),
        );
    }
    if !r.bytes.is_empty() {
        let _ = writeln!(
            s,
            "\nBytes per round (trainable set as safetensors; PEFT: adapter_model.safetensors with \
             the head as modules_to_save, full: the whole state dict).\n"
        );
        let _ = writeln!(
            s,
            "| model | method | fedprompt params | fedprompt bytes | PEFT params | PEFT bytes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for b in &r.bytes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                b.model.describe(),
                b.method,
                b.fedprompt_params
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "—".into()),
                human_bytes(b.fedprompt_bytes),
                b.peft_params
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "—".into()),
                human_bytes(b.peft_bytes),
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(worker::parse_vm_hwm(s), Some(2048 * 1024));
        assert!(worker::vm_hwm_bytes().unwrap() > 0);
    }

    #[test]
    fn token_rows_shape() {
        let rows = worker::token_rows(3, 5, 100);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.len() == 5 && r[0] == 0 && r[4] == 2));
        assert!(rows.iter().flatten().all(|&t| t < 100));
    }
}
