//! What a run does, decided and checked once from [`BenchOptions`]: the workloads and their
//! shapes, the model folders (the random XLM-R-base one written if missing), the
//! bytes-per-round jobs, and the two sides (the PyTorch one probed, `None` when unavailable).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::execute::FedpromptSide;
use crate::randmodel;
use crate::torch::TorchSide;
use crate::worker::{Job, JobKind};
use crate::BenchOptions;

/// AdamW learning rate of every job (the PyTorch side gets the same).
const LEARNING_RATE: f64 = 1e-3;

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
    /// The model as the report names it.
    pub fn describe(self) -> &'static str {
        match self {
            ModelKind::Base => "XLM-R-base shape (random)",
            ModelKind::Small => "multilingual-e5-small (default)",
        }
    }
}

/// One benchmark workload: `base-train` / `base-infer` (one training step / inference on the
/// XLM-R-base shape), `small-train` / `small-infer` (the same on the default model); see
/// [`Workload::shape`] for the batch sizes.
// Doc comments on the variants would become clap's help for each value and change `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    BaseTrain,
    BaseInfer,
    SmallTrain,
    SmallInfer,
}

impl Workload {
    /// Every workload, in the order a run without `--workloads` runs them.
    pub const ALL: [Workload; 4] = [
        Workload::BaseTrain,
        Workload::BaseInfer,
        Workload::SmallTrain,
        Workload::SmallInfer,
    ];

    /// The name on the command line and in the report, e.g. `base-train`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::BaseTrain => "base-train",
            Workload::BaseInfer => "base-infer",
            Workload::SmallTrain => "small-train",
            Workload::SmallInfer => "small-infer",
        }
    }
    /// The model it runs on.
    pub fn model(self) -> ModelKind {
        match self {
            Workload::BaseTrain | Workload::BaseInfer => ModelKind::Base,
            Workload::SmallTrain | Workload::SmallInfer => ModelKind::Small,
        }
    }
    /// Training steps or inference.
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

/// The random XLM-R-base folder's default place: `<fedprompt cache>/bench/<shape>`.
pub fn default_base_model_dir(num_labels: usize) -> Result<PathBuf> {
    let hub = fedprompt_hub::Hub::from_env()?;
    Ok(hub
        .cache_dir()
        .join("bench")
        .join(randmodel::XlmrShape::base(num_labels).slug()))
}

/// One timed workload and the job both sides run for it, once per round.
pub(crate) struct PlannedWorkload {
    pub workload: Workload,
    pub job: Job,
    /// FLOP of one iteration, counted from the shapes (`None`: the model's config.json could
    /// not be read; the run reports no FLOP/s then).
    pub flops: Option<f64>,
}

/// The bytes-per-round job of one model, run once per side after the rounds.
pub(crate) struct BytesJob {
    pub model: ModelKind,
    pub job: Job,
}

/// A run, resolved and checked once from [`BenchOptions`].
pub(crate) struct Plan {
    /// The timed workloads, in the order each round runs them.
    pub workloads: Vec<PlannedWorkload>,
    /// One per model the workloads use (base first); empty with `--no-bytes`.
    pub bytes_jobs: Vec<BytesJob>,
    pub fedprompt: FedpromptSide,
    /// `None` with `--no-torch` or when the Python lacks torch, transformers or peft.
    pub torch: Option<TorchSide>,
    pub rounds: usize,
    /// Whether the bf16 variants run too (fedprompt `--dtype bf16`, PyTorch autocast).
    pub bf16: bool,
    /// Compute threads per side.
    pub threads: usize,
    /// The output folder (created).
    pub out: PathBuf,
    /// For the report: what planning left out or changed (no PyTorch, in-process fedprompt).
    pub notes: Vec<String>,
}

impl Plan {
    /// Checks the options, creates the output folder, probes the PyTorch side, prepares the
    /// model folders and builds every job.
    pub fn new(opts: &BenchOptions) -> Result<Plan> {
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
        let torch = probe_torch(opts, &mut notes);
        let models = ModelDirs::prepare(opts, &workloads)?;
        let fedprompt = FedpromptSide::new(opts)?;
        if opts.in_process {
            notes.push(
                "fedprompt ran in-process (--in-process): its peak memory is the whole bench process's."
                    .into(),
            );
        }
        let timed = workloads
            .iter()
            .map(|&workload| {
                let dir = models.dir(workload.model());
                PlannedWorkload {
                    workload,
                    job: timed_job(opts, workload, dir),
                    flops: crate::flops::workload_flops(workload, dir, opts.num_labels),
                }
            })
            .collect();
        let bytes_jobs = if opts.no_bytes {
            Vec::new()
        } else {
            models
                .used()
                .map(|(model, dir)| BytesJob {
                    model,
                    job: bytes_job(opts, dir),
                })
                .collect()
        };
        Ok(Plan {
            workloads: timed,
            bytes_jobs,
            fedprompt,
            torch,
            rounds: opts.rounds,
            bf16: !opts.no_bf16,
            threads: opts.threads,
            out: opts.out.clone(),
            notes,
        })
    }
}

/// The PyTorch side, or `None` with a note saying why.
fn probe_torch(opts: &BenchOptions, notes: &mut Vec<String>) -> Option<TorchSide> {
    if opts.no_torch {
        notes.push("PyTorch side skipped (--no-torch): fedprompt alone.".to_string());
        return None;
    }
    match TorchSide::probe(opts) {
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
}

/// The folders of the models the workloads use (`None`: not used).
struct ModelDirs {
    base: Option<PathBuf>,
    small: Option<PathBuf>,
}

impl ModelDirs {
    /// Finds the folders, writing the random XLM-R-base one if it is not there yet.
    fn prepare(opts: &BenchOptions, workloads: &[Workload]) -> Result<Self> {
        let uses = |m: ModelKind| workloads.iter().any(|w| w.model() == m);
        let base = if uses(ModelKind::Base) {
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
        let small = if uses(ModelKind::Small) {
            Some(match &opts.small_model_dir {
                Some(d) => d.clone(),
                None => fedprompt_hub::default_model_dir()
                    .context("getting the default model (fedprompt_hub::default_model_dir)")?,
            })
        } else {
            None
        };
        Ok(ModelDirs { base, small })
    }

    /// The folder of a model some workload uses.
    fn dir(&self, model: ModelKind) -> &Path {
        match model {
            ModelKind::Base => self.base.as_deref().expect("base model prepared"),
            ModelKind::Small => self.small.as_deref().expect("small model prepared"),
        }
    }

    /// The models used, base first, with their folders.
    fn used(&self) -> impl Iterator<Item = (ModelKind, &Path)> {
        [
            (ModelKind::Base, &self.base),
            (ModelKind::Small, &self.small),
        ]
        .into_iter()
        .filter_map(|(m, d)| Some((m, d.as_deref()?)))
    }
}

/// The timed job of `workload`: its shape, `--warmup` / `--iters` or its defaults.
fn timed_job(opts: &BenchOptions, workload: Workload, model_dir: &Path) -> Job {
    let (default_warmup, default_iters) = workload.default_iters(opts.quick);
    let (batch, seq_len) = workload.shape();
    Job {
        kind: workload.kind(),
        model_dir: model_dir.to_path_buf(),
        batch,
        seq_len,
        warmup: opts.warmup.unwrap_or(default_warmup),
        iters: opts.iters.unwrap_or(default_iters).max(1),
        num_labels: opts.num_labels,
        seed: opts.seed,
        lr: LEARNING_RATE,
        dtype: Default::default(),
    }
}

/// The bytes-per-round job of the model in `model_dir` (nothing is timed).
fn bytes_job(opts: &BenchOptions, model_dir: &Path) -> Job {
    Job {
        kind: JobKind::Bytes,
        model_dir: model_dir.to_path_buf(),
        batch: 1,
        seq_len: 1,
        warmup: 0,
        iters: 0,
        num_labels: opts.num_labels,
        seed: opts.seed,
        lr: LEARNING_RATE,
        dtype: Default::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plan of both small workloads without PyTorch; nothing is loaded, so the small
    /// model folder need not exist.
    pub(crate) fn small_plan(dir: &Path, edit: impl FnOnce(&mut BenchOptions)) -> Result<Plan> {
        let mut opts = BenchOptions {
            out: dir.join("out"),
            workloads: vec![Workload::SmallInfer, Workload::SmallTrain],
            no_torch: true,
            small_model_dir: Some(dir.join("small")),
            ..Default::default()
        };
        edit(&mut opts);
        Plan::new(&opts)
    }

    #[test]
    fn jobs_from_options() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = small_plan(tmp.path(), |o| o.iters = Some(0)).unwrap();
        assert!(tmp.path().join("out").is_dir());
        assert!(plan.torch.is_none());
        assert_eq!(plan.notes.len(), 1);
        let order: Vec<_> = plan.workloads.iter().map(|p| p.workload).collect();
        assert_eq!(order, [Workload::SmallInfer, Workload::SmallTrain]);
        let infer = &plan.workloads[0].job;
        assert_eq!(
            (infer.kind, infer.batch, infer.seq_len),
            (JobKind::Infer, 64, 16)
        );
        // Default warm-up of the small model; at least one timed iteration.
        assert_eq!((infer.warmup, infer.iters), (3, 1));
        assert_eq!(infer.model_dir, tmp.path().join("small"));
        assert_eq!(plan.bytes_jobs.len(), 1);
        assert_eq!(plan.bytes_jobs[0].model, ModelKind::Small);
        assert_eq!(plan.bytes_jobs[0].job.kind, JobKind::Bytes);
    }

    #[test]
    fn checked_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(small_plan(tmp.path(), |o| o.rounds = 0).is_err());
        assert!(!tmp.path().join("out").exists());
        let plan = small_plan(tmp.path(), |o| o.no_bytes = true).unwrap();
        assert!(plan.bytes_jobs.is_empty());
    }
}
