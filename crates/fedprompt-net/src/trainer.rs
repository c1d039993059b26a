//! What a client does with a task: the [`LocalTrainer`] trait, and
//! [`ModelTrainer`], which trains the real model on a local data file.

use std::path::PathBuf;

use fedprompt_data::{read_generic, GenericFormat, LabelMap, ReadOptions};
use fedprompt_fl::{ClientConfig, ConfigValue, Metrics, Params};
use fedprompt_model::{Backbone, Classifier, Family};
use fedprompt_train::{
    assign_params, encode_examples, evaluate, params_to_tensors, to_params, train, EncodedExample,
    Proximal, TrainConfig,
};

use crate::config::ModelSpec;

/// Error of a local trainer (shown to the client's user; never sent to the server).
pub type TrainerError = Box<dyn std::error::Error + Send + Sync>;

/// One round's instructions.
#[derive(Clone, Debug)]
pub struct Task<'a> {
    /// Fit: the round being trained. Evaluate: training rounds behind the global.
    pub round: u64,
    /// The round's configuration (round, epochs, learning_rate, proximal_mu...).
    pub config: &'a ClientConfig,
    /// The global trainable set.
    pub global: &'a Params,
    /// The run's model description, when the server gives one.
    pub model: Option<&'a ModelSpec>,
}

/// A local training result.
#[derive(Clone, Debug, PartialEq)]
pub struct FitResult {
    /// The locally trained trainable set (same names and shapes as the global).
    pub params: Params,
    /// Examples trained on (the aggregation weight).
    pub num_examples: u64,
    /// Training metrics.
    pub metrics: Metrics,
}

/// A local evaluation result.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Examples evaluated.
    pub num_examples: u64,
    /// Metrics (accuracy, macro_f1, loss).
    pub metrics: Metrics,
}

/// Trains and evaluates on local data. Only what it returns leaves the machine.
pub trait LocalTrainer {
    /// Trains from `task.global` and returns the new trainable set.
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError>;
    /// Evaluates `task.global` on local data.
    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError>;
}

/// Reads an integer from the round configuration.
pub fn config_int(config: &ClientConfig, key: &str) -> Option<i64> {
    match config.get(key)? {
        ConfigValue::Int(i) => Some(*i),
        ConfigValue::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// Reads a float from the round configuration.
pub fn config_float(config: &ClientConfig, key: &str) -> Option<f64> {
    match config.get(key)? {
        ConfigValue::Float(f) => Some(*f),
        ConfigValue::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// Where [`ModelTrainer`] finds its model and data.
#[derive(Clone, Debug)]
pub struct ModelTrainerConfig {
    /// Hugging Face model folder (the same backbone as the federation's).
    pub model_dir: PathBuf,
    /// Local training data: JSONL/CSV/TSV with text and label columns.
    pub data: PathBuf,
    /// Local evaluation data (same format); the training data when absent.
    pub eval_data: Option<PathBuf>,
    /// Column mapping of the data files.
    pub format: GenericFormat,
    /// Local training settings; the server's round configuration overrides
    /// `epochs`, `learning_rate`, `batch_size`, `max_steps_per_epoch` and `seed`.
    pub train: TrainConfig,
    /// Batch size of evaluation.
    pub eval_batch_size: usize,
    /// This client's name. With it, each round's local seed is
    /// [`fedprompt_fl::client_round_seed`]`(seed, name, round)`, the simulator's own rule, so a
    /// networked run reproduces a simulated one; without it, `seed + round`.
    pub client_name: Option<String>,
}

impl ModelTrainerConfig {
    /// Defaults for a model folder and a data file.
    pub fn new(model_dir: impl Into<PathBuf>, data: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            data: data.into(),
            eval_data: None,
            format: GenericFormat::default(),
            train: TrainConfig::default(),
            eval_batch_size: 32,
            client_name: None,
        }
    }
}

struct Loaded {
    spec: ModelSpec,
    clf: Classifier,
    train: Vec<EncodedExample>,
    eval: Vec<EncodedExample>,
    pad_id: u32,
    use_types: bool,
}

/// The real trainer: the local model folder, the run's PEFT method and labels, local data.
pub struct ModelTrainer {
    cfg: ModelTrainerConfig,
    loaded: Option<Loaded>,
}

impl std::fmt::Debug for ModelTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTrainer")
            .field("cfg", &self.cfg)
            .field("loaded", &self.loaded.is_some())
            .finish()
    }
}

impl ModelTrainer {
    /// A trainer that loads its model and data on the first task.
    pub fn new(cfg: ModelTrainerConfig) -> Self {
        Self { cfg, loaded: None }
    }

    fn load(&mut self, spec: Option<&ModelSpec>) -> Result<&Loaded, TrainerError> {
        let spec = spec.ok_or(
            "the server did not describe the model (its federation.toml has no [model] section)",
        )?;
        if let Some(l) = &self.loaded {
            if &l.spec != spec {
                self.loaded = None;
            }
        }
        if self.loaded.is_none() {
            let bb = Backbone::load(&self.cfg.model_dir)?;
            let mut text = bb.text_encoder().clone();
            if let Some(n) = spec.max_len {
                text = text.with_max_len(n)?;
            }
            let labels = LabelMap::new(spec.labels.clone())?;
            let read = |p: &PathBuf| -> Result<Vec<EncodedExample>, TrainerError> {
                let out = read_generic(p, &self.cfg.format, &labels, &ReadOptions::default())?;
                Ok(encode_examples(&text, &out.examples)?)
            };
            let train = read(&self.cfg.data)?;
            let eval = match &self.cfg.eval_data {
                Some(p) => read(p)?,
                None => train.clone(),
            };
            let clf = Classifier::new(&bb, &spec.method, &spec.labels, self.cfg.train.seed)?;
            let cfg = bb.config();
            self.loaded = Some(Loaded {
                spec: spec.clone(),
                clf,
                train,
                eval,
                pad_id: cfg.pad_token_id,
                use_types: cfg.family == Family::Bert,
            });
        }
        self.loaded
            .as_ref()
            .ok_or_else(|| "the model could not be loaded".into())
    }

    fn round_config(&self, task: &Task<'_>) -> TrainConfig {
        let mut t = self.cfg.train.clone();
        let c = task.config;
        let pos = |k: &str| config_int(c, k).and_then(|v| usize::try_from(v).ok());
        if let Some(v) = pos("epochs") {
            t.epochs = v;
        }
        if let Some(v) = pos("batch_size") {
            t.batch_size = v;
        }
        if let Some(v) = pos("max_steps_per_epoch") {
            t.max_steps_per_epoch = Some(v);
        }
        if let Some(v) = config_float(c, "learning_rate") {
            t.learning_rate = v;
        }
        if let Some(v) = config_int(c, "seed") {
            t.seed = v as u64;
        }
        // A different shuffle each round, reproducible from the seed.
        t.seed = match &self.cfg.client_name {
            Some(name) => fedprompt_fl::client_round_seed(t.seed, name, task.round),
            None => t.seed.wrapping_add(task.round),
        };
        // Local training in a federation: no early stopping, the last step's weights.
        t.restore_best = false;
        t
    }
}

impl LocalTrainer for ModelTrainer {
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        let tc = self.round_config(task);
        let l = self.load(task.model)?;
        assign_params(l.clf.trainable(), task.global)?;
        let proximal = match config_float(task.config, "proximal_mu") {
            Some(mu) if mu > 0.0 => Some(Proximal {
                mu,
                global: params_to_tensors(task.global)?,
            }),
            _ => None,
        };
        let report = train(
            &l.clf,
            &l.train,
            None,
            &tc,
            l.pad_id,
            l.use_types,
            proximal.as_ref(),
            None,
        )?;
        let mut metrics = Metrics::new();
        if let Some(last) = report.epochs.last() {
            metrics.insert("train_loss".into(), last.train_loss);
        }
        metrics.insert("steps".into(), report.steps as f64);
        Ok(FitResult {
            params: to_params(l.clf.trainable())?,
            num_examples: l.train.len() as u64,
            metrics,
        })
    }

    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        let bs = self.cfg.eval_batch_size;
        let l = self.load(task.model)?;
        assign_params(l.clf.trainable(), task.global)?;
        let r = evaluate(&l.clf, &l.eval, bs, l.pad_id, l.use_types)?;
        let metrics = Metrics::from([
            ("accuracy".to_string(), r.overall.accuracy),
            ("macro_f1".to_string(), r.overall.macro_f1),
            ("loss".to_string(), r.loss),
        ]);
        Ok(EvalResult {
            num_examples: l.eval.len() as u64,
            metrics,
        })
    }
}

/// A cheap deterministic trainer for tests and load runs: every value moves
/// halfway to a client-specific target, `x ← x/2 + c·((i mod 7) − 3) + r/1000`
/// with `c = (seed + 1)/100` and `r` the round.
#[derive(Clone, Debug)]
pub struct DeterministicTrainer {
    /// Makes this client's update distinct.
    pub seed: u64,
    /// Reported example count (the aggregation weight).
    pub num_examples: u64,
    /// Simulated training time.
    pub delay: std::time::Duration,
}

impl DeterministicTrainer {
    /// A trainer with no delay.
    pub fn new(seed: u64, num_examples: u64) -> Self {
        Self {
            seed,
            num_examples,
            delay: std::time::Duration::ZERO,
        }
    }

    /// The update this trainer returns for `global` in `round`.
    pub fn apply(&self, global: &Params, round: u64) -> Params {
        let c = (self.seed + 1) as f32 / 100.0;
        let r = round as f32 / 1000.0;
        let mut out = global.clone();
        for (_, t) in out.iter_mut() {
            for (i, x) in t.data_mut().iter_mut().enumerate() {
                *x = *x * 0.5 + c * ((i % 7) as f32 - 3.0) + r;
            }
        }
        out
    }
}

impl LocalTrainer for DeterministicTrainer {
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(FitResult {
            params: self.apply(task.global, task.round),
            num_examples: self.num_examples,
            metrics: Metrics::from([("train_loss".to_string(), 1.0 / (1.0 + self.seed as f64))]),
        })
    }

    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        Ok(EvalResult {
            num_examples: self.num_examples,
            metrics: Metrics::from([("accuracy".to_string(), 1.0 / (1.0 + task.global.l2_norm()))]),
        })
    }
}
