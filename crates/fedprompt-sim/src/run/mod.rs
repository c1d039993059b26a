//! Running an experiment: every paradigm against one shared frozen backbone.
//!
//! - `plan`: each run's settings resolved once from the file's defaults and its overrides;
//! - `local`: monolingual and centralized runs;
//! - `federated`: federated runs, the shared round loop over in-process clients;
//! - `privacy`: DP accounting, weight caps and the clients' local-DP step of a federated run;
//! - `state`: what `--resume` finds (finished runs; a federated run's state per round);
//! - `results`: rows, curves, distances and notes of the results folder;
//! - `schedule`: several runs side by side, each on its own compute threads;
//! - `transport`: how an update reaches the server (plain, compressed, securely aggregated).

mod federated;
mod local;
mod plan;
mod privacy;
mod results;
mod schedule;
mod state;
mod transport;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use fedprompt_data::Example;
use fedprompt_model::Backbone;
use fedprompt_report::{DataEffPoint, RunResults};
use fedprompt_train::{encode_examples, EncodedExample};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{ExperimentConfig, Paradigm};
use crate::error::{Result, SimError};

pub(crate) use plan::{text_max_len, RunPlan};
pub use results::method_label;
use state::{read_json, write_json, RunFiles, RunOutcome};

/// How to run an experiment.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the checkpoints of an earlier, interrupted run of the same file.
    pub resume: bool,
    /// Show progress bars.
    pub progress: bool,
    /// Results folder (overrides the file's `output`).
    pub output: Option<PathBuf>,
    /// Stop (as if killed) after this many federated rounds in total; for tests of resume
    /// (runs then go one at a time).
    pub stop_after_rounds: Option<u64>,
    /// Runs at once (default: one per compute thread, at most 4), each with an even share of
    /// the compute threads; the numbers do not depend on it.
    pub jobs: Option<NonZeroUsize>,
}

/// A run label as a file name: lower-case ASCII words joined by `-`.
pub(crate) fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// What every run of an experiment shares: the backbone, the encoded data, progress bars.
struct Ctx<'a> {
    cfg: &'a ExperimentConfig,
    backbone: &'a Backbone,
    labels: Vec<String>,
    train_raw: Vec<Example>,
    train: Vec<EncodedExample>,
    eval: Vec<EncodedExample>,
    pad_id: u32,
    use_types: bool,
    ckpt_dir: PathBuf,
    opts: &'a RunOptions,
    mp: MultiProgress,
    /// Federated rounds finished in this process, all runs together (for `stop_after_rounds`).
    rounds_done: &'a AtomicU64,
    /// `seed N` when the experiment runs several seeds (for progress bars).
    tag: Option<String>,
}

impl Ctx<'_> {
    /// A progress bar's prefix: the run's label, with the seed when several run.
    fn bar_label(&self, label: &str) -> String {
        match &self.tag {
            Some(t) => format!("{label} ({t})"),
            None => label.to_string(),
        }
    }

    fn bar(&self, len: u64, prefix: String) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>22} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(prefix);
        pb
    }

    fn steps_per_epoch(&self, n: usize) -> u64 {
        let per = n.div_ceil(self.cfg.train.batch_size);
        self.cfg
            .train
            .max_steps_per_epoch
            .map_or(per, |m| per.min(m)) as u64
    }

    /// Runs `plan` (with a per-client cap for the data-efficiency ablation), or reads its
    /// outcome when a resumed experiment finished it before.
    fn run_or_resume(
        &self,
        plan: &RunPlan<'_>,
        cap: Option<usize>,
        key: &str,
    ) -> Result<RunOutcome> {
        let files = RunFiles::new(&self.ckpt_dir, key);
        if self.opts.resume && files.done.is_file() {
            return read_json(&files.done);
        }
        let outcome = match plan.spec.paradigm {
            Paradigm::Federated => self.run_federated(plan, cap, &files)?,
            _ => self.run_local(plan, cap)?,
        };
        write_json(&files.done, &outcome)?;
        Ok(outcome)
    }
}

/// Loads the model named by the experiment (`default` = the built-in model), its frozen
/// matrices in `dtype`.
pub fn load_backbone(path: &str, dtype: fedprompt_model::WeightDtype) -> Result<Backbone> {
    let dir = if path == "default" {
        fedprompt_hub::default_model_dir()?
    } else {
        PathBuf::from(path)
    };
    Ok(Backbone::load_with(&dir, dtype)?)
}

fn io_err(path: &Path, cause: std::io::Error) -> SimError {
    SimError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Runs every run of the experiment (once per seed) and writes the results folder. Returns
/// the results: with several seeds, means ± standard deviations with each seed's numbers.
/// Runs go side by side as `opts.jobs` says (see `schedule`); the numbers do not depend on it.
pub fn run_experiment(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<(RunResults, PathBuf)> {
    cfg.validate().map_err(|msg| SimError::Config {
        path: PathBuf::from(&cfg.name),
        msg,
    })?;
    for spec in &cfg.runs {
        RunPlan::resolve(cfg, spec)?;
    }
    let out = opts.output.clone().unwrap_or_else(|| cfg.output_dir());
    let ckpt_root = out.join("checkpoints");
    if !opts.resume && ckpt_root.exists() {
        std::fs::remove_dir_all(&ckpt_root).map_err(|e| io_err(&ckpt_root, e))?;
    }
    pin_experiment(&ckpt_root, cfg, opts.resume)?;
    let started = Instant::now();
    let backbone = load_backbone(&cfg.model.path, cfg.model.dtype)?;
    let mp = MultiProgress::new();
    if !opts.progress {
        mp.set_draw_target(ProgressDrawTarget::hidden());
    }
    let seeds = cfg.run_seeds();
    let seed_cfgs: Vec<ExperimentConfig> = seeds
        .iter()
        .map(|&seed| {
            let mut c = cfg.clone();
            c.seed = seed;
            c
        })
        .collect();
    let rounds_done = AtomicU64::new(0);
    let prepared = seed_cfgs
        .iter()
        .map(|c| {
            let ckpt_dir = if seeds.len() > 1 {
                ckpt_root.join(format!("seed-{}", c.seed))
            } else {
                ckpt_root.clone()
            };
            let tag = (seeds.len() > 1).then(|| format!("seed {}", c.seed));
            prepare_seed(c, opts, &backbone, ckpt_dir, &mp, tag, &rounds_done)
        })
        .collect::<Result<Vec<_>>>()?;
    let jobs = list_jobs(&prepared);
    // The resume tests' "killed after N rounds in total" needs one run at a time.
    let asked = if opts.stop_after_rounds.is_some() {
        NonZeroUsize::new(1)
    } else {
        opts.jobs
    };
    let schedule = schedule::Schedule::new(asked, jobs.len(), rayon::current_num_threads());
    let costs: Vec<f64> = jobs.iter().map(|j| j.cost).collect();
    let mut outcomes = schedule::run_all(&costs, schedule, |i| {
        let j = &jobs[i];
        let seed = &prepared[j.seed];
        let plan = &seed.plans[j.plan];
        let outcome = seed.ctx.run_or_resume(plan, j.cap, &j.key)?;
        tracing::info!(run = %plan.spec.label, cap = ?j.cap, seed = seed.ctx.cfg.seed, avg = outcome.row.average, "run finished");
        Ok(outcome)
    })?
    .into_iter();

    let mut per_seed = Vec::new();
    let mut times: BTreeMap<String, f64> = BTreeMap::new();
    for seed in &prepared {
        let (r, t) = seed_results(seed, &mut outcomes);
        for (k, v) in t {
            *times.entry(k).or_default() += v;
        }
        per_seed.push(r);
    }
    let mut results = fedprompt_report::combine_seeds(per_seed, &seeds)?;
    let timings: Vec<String> = cfg
        .runs
        .iter()
        .filter_map(|r| {
            times
                .get(&r.label)
                .map(|t| format!("{}: {t:.0} s", r.label))
        })
        .collect();
    let meta = &mut results.meta;
    meta.insert(
        "run times".into(),
        if seeds.len() > 1 {
            format!("{} (all seeds)", timings.join("; "))
        } else {
            timings.join("; ")
        },
    );
    meta.insert(
        "wall time".into(),
        format!(
            "{:.0} s ({} at once, {} compute thread{} each)",
            started.elapsed().as_secs_f64(),
            if schedule.jobs == 1 {
                "one run".to_string()
            } else {
                format!("{} runs", schedule.jobs)
            },
            schedule.threads,
            if schedule.threads == 1 { "" } else { "s" }
        ),
    );
    fedprompt_report::write_all(&results, &out)?;
    Ok((results, out))
}

/// One seed of the experiment, ready to run: its data sample loaded and encoded, its runs'
/// plans resolved.
struct Seed<'a> {
    ctx: Ctx<'a>,
    plans: Vec<RunPlan<'a>>,
    data: crate::data::ExperimentData,
    max_len: usize,
}

/// Loads and encodes one seed's data sample and resolves its plans.
fn prepare_seed<'a>(
    cfg: &'a ExperimentConfig,
    opts: &'a RunOptions,
    backbone: &'a Backbone,
    ckpt_dir: PathBuf,
    mp: &MultiProgress,
    tag: Option<String>,
    rounds_done: &'a AtomicU64,
) -> Result<Seed<'a>> {
    let plans = cfg
        .runs
        .iter()
        .map(|spec| RunPlan::resolve(cfg, spec))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| io_err(&ckpt_dir, e))?;
    let data = crate::data::load(&cfg.data, cfg.seed)?;
    check_data(cfg, &data)?;
    let max_len = text_max_len(cfg, backbone)?;
    let text = backbone.text_encoder().clone().with_max_len(max_len)?;
    let ctx = Ctx {
        cfg,
        backbone,
        labels: data.labels.names().to_vec(),
        train_raw: data.train.clone(),
        train: encode_examples(&text, &data.train)?,
        eval: encode_examples(&text, &data.eval)?,
        pad_id: backbone.config().pad_token_id,
        use_types: backbone.config().family == fedprompt_model::Family::Bert,
        ckpt_dir,
        opts,
        mp: mp.clone(),
        rounds_done,
        tag,
    };
    Ok(Seed {
        ctx,
        plans,
        data,
        max_len,
    })
}

/// One run to do: a plan of a seed, capped for the data-efficiency ablation.
struct Job {
    seed: usize,
    plan: usize,
    cap: Option<usize>,
    /// The run's file name (checkpoint, outcome).
    key: String,
    /// A rough cost for the schedule (passes over the data × examples): costly runs start
    /// first.
    cost: f64,
}

/// Every run of every seed in the file's order: the runs, then the data-efficiency reruns.
fn list_jobs(seeds: &[Seed<'_>]) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (s, seed) in seeds.iter().enumerate() {
        let cost = |plan: &RunPlan<'_>, cap: Option<usize>| {
            let passes = match plan.spec.paradigm {
                Paradigm::Federated => plan.rounds as f64 * plan.local_epochs as f64,
                _ => plan.epochs as f64,
            };
            let examples = cap.map_or(seed.ctx.train.len(), |n| {
                (n * seed.ctx.cfg.data.languages.len()).min(seed.ctx.train.len())
            });
            passes * examples as f64
        };
        for (p, plan) in seed.plans.iter().enumerate() {
            jobs.push(Job {
                seed: s,
                plan: p,
                cap: None,
                key: slug(&plan.spec.label),
                cost: cost(plan, None),
            });
        }
        if let Some(de) = &seed.ctx.cfg.data_efficiency {
            for label in de.labels() {
                let p = seed
                    .plans
                    .iter()
                    .position(|p| p.spec.label == label)
                    .expect("validated");
                for &n in &de.sizes {
                    jobs.push(Job {
                        seed: s,
                        plan: p,
                        cap: Some(n),
                        key: format!("{}-cap-{n}", slug(&seed.plans[p].spec.label)),
                        cost: cost(&seed.plans[p], Some(n)),
                    });
                }
            }
        }
    }
    jobs
}

/// How the frozen backbone computed: its weights' float type and, for bf16, the product path
/// this CPU took (the numbers differ between the two paths at bf16 rounding level).
pub(crate) fn backbone_note(dtype: fedprompt_model::WeightDtype) -> &'static str {
    match dtype {
        fedprompt_model::WeightDtype::F32 => "f32 weights (exact mode)",
        fedprompt_model::WeightDtype::Bf16 if fedprompt_model::ops::bf16::amx_enabled() => {
            "bf16 weights (fast mode: AMX bf16 products, f32 sums)"
        }
        fedprompt_model::WeightDtype::Bf16 => {
            "bf16 weights (fast mode without AMX: weights widened to f32, f32 products)"
        }
    }
}

/// One seed's results from its runs' outcomes (taken from `outcomes` in [`list_jobs`]'s
/// order). Returns the results and each run's seconds.
fn seed_results(
    seed: &Seed<'_>,
    outcomes: &mut impl Iterator<Item = RunOutcome>,
) -> (RunResults, Vec<(String, f64)>) {
    let (cfg, data) = (seed.ctx.cfg, &seed.data);
    let mut results = RunResults {
        experiment: cfg.name.clone(),
        task: cfg.task.clone(),
        model: seed.ctx.backbone.folder().display().to_string(),
        seed: cfg.seed,
        seeds: Vec::new(),
        languages: cfg.data.languages.clone(),
        rows: Vec::new(),
        curves: Vec::new(),
        comm: Vec::new(),
        data_efficiency: Vec::new(),
        distances: None,
        meta: BTreeMap::new(),
    };
    let mut timings = Vec::new();
    for plan in &seed.plans {
        let outcome = outcomes.next().expect("one outcome per job");
        timings.push((plan.spec.label.clone(), outcome.seconds));
        if let Some(note) = &outcome.privacy {
            results
                .meta
                .insert(format!("privacy: {}", plan.spec.label), note.clone());
        }
        results.rows.push(outcome.row);
        results.curves.push(outcome.curve);
        results.comm.extend(outcome.comm);
    }
    if let Some(de) = &cfg.data_efficiency {
        for label in de.labels() {
            for &n in &de.sizes {
                let outcome = outcomes.next().expect("one outcome per job");
                results.data_efficiency.push(DataEffPoint {
                    paradigm: label.to_string(),
                    train_size: n,
                    accuracy: outcome.row.average,
                    sd: None,
                });
            }
        }
    }
    if cfg.language_distance {
        results::add_distances(&mut results, &cfg.data.languages);
    }
    let meta = &mut results.meta;
    meta.insert("train examples".into(), results::counts(&data.train));
    meta.insert("eval examples".into(), results::counts(&data.eval));
    meta.insert("labels".into(), data.labels.names().join(", "));
    meta.insert(
        "backbone".into(),
        backbone_note(seed.ctx.backbone.dtype()).into(),
    );
    meta.insert(
        "max tokens".into(),
        format!("{} (+ virtual tokens)", seed.max_len),
    );
    meta.insert(
        "selection".into(),
        "every row reports the epoch/round with the best average eval accuracy; training stops after `patience` epochs/rounds without improvement (early stopping on eval, as the paper)".into(),
    );
    if data.warnings > 0 {
        meta.insert("skipped lines".into(), data.warnings.to_string());
    }
    (results, timings)
}

/// Every language has evaluation examples and training examples.
pub(crate) fn check_data(cfg: &ExperimentConfig, data: &crate::data::ExperimentData) -> Result<()> {
    for lang in &cfg.data.languages {
        if !data.eval.iter().any(|e| &e.language == lang) {
            return Err(SimError::DataMsg(format!(
                "language `{lang}` has no evaluation examples"
            )));
        }
        if !data.train.iter().any(|e| &e.language == lang) {
            return Err(SimError::DataMsg(format!(
                "language `{lang}` has no training examples"
            )));
        }
    }
    Ok(())
}

/// Records the experiment (the file as parsed, with any flag's override such as `--dtype`)
/// beside its checkpoints, in `checkpoints/experiment.json`; on `--resume` first compares it
/// with the one recorded, so that a resumed experiment never mixes in runs of another file or
/// other flags. Checkpoints without a record (written before this check existed) are taken as
/// they are.
fn pin_experiment(ckpt_root: &Path, cfg: &ExperimentConfig, resume: bool) -> Result<()> {
    let path = ckpt_root.join("experiment.json");
    let now = serde_json::to_value(cfg).expect("serialisable");
    if resume && path.is_file() {
        let before: serde_json::Value = read_json(&path)?;
        let mut differ = Vec::new();
        json_differences(&before, &now, String::new(), &mut differ);
        if !differ.is_empty() {
            let shown = differ
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = differ.len().saturating_sub(6);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Err(SimError::Resume {
                path,
                msg: format!(
                    "its checkpoints were made by another experiment (it differs in {shown}{more}). \
                     Resume with the same file and flags, or run without --resume to start afresh \
                     (that deletes these checkpoints)"
                ),
            });
        }
    }
    std::fs::create_dir_all(ckpt_root).map_err(|e| io_err(ckpt_root, e))?;
    write_json(&path, &now)
}

/// The dotted paths (e.g. `model.dtype`) where two JSON values differ.
fn json_differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: String,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => json_differences(va, vb, path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(if at.is_empty() {
            "the whole file".into()
        } else {
            at
        }),
        _ => {}
    }
}

/// Whether a results folder's checkpoints let `resume` continue (for messages).
pub fn has_checkpoints(out: &Path) -> bool {
    out.join("checkpoints").is_dir()
}
