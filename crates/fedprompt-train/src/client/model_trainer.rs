//! [`ModelTrainer`]: the real client: a local model folder, the run's PEFT method and labels,
//! and local data files.

use std::path::PathBuf;

use fedprompt_data::{read_generic, GenericFormat, LabelMap, ReadOptions};
use fedprompt_fl::RoundConfig;
use fedprompt_model::{Backbone, Classifier};

use super::{
    eval_metrics, local_evaluate, local_fit, local_train_config, text_max_len, EvalResult,
    FitResult, LocalModel, LocalTrainer, ModelSpec, Task, TrainerError,
};
use crate::encode::{encode_examples, EncodedExample};
use crate::trainer::TrainConfig;

/// Where [`ModelTrainer`] finds its model and data.
#[derive(Clone, Debug)]
pub struct ModelTrainerConfig {
    /// Hugging Face model folder (the same backbone as the federation's).
    pub model_dir: PathBuf,
    /// Float type of the frozen backbone's matrices (f32, the default, or bf16: fast mode).
    pub dtype: fedprompt_model::WeightDtype,
    /// Local training data: JSONL/CSV/TSV with text and label columns.
    pub data: PathBuf,
    /// Local evaluation data (same format); the training data when absent.
    pub eval_data: Option<PathBuf>,
    /// Column mapping of the data files.
    pub format: GenericFormat,
    /// Local training settings; the round configuration overrides `epochs`,
    /// `learning_rate`, `batch_size`, `max_steps_per_epoch` and `seed`.
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
            dtype: fedprompt_model::WeightDtype::default(),
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
}

/// The real trainer: the local model folder, the run's PEFT method and labels, local data.
/// The model and data are loaded by [`ModelTrainer::prepare`] (or on the first task).
pub struct ModelTrainer {
    cfg: ModelTrainerConfig,
    backbone: Option<Backbone>,
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

fn file_error(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> TrainerError {
    format!("{what} `{}`: {e}", path.display()).into()
}

impl ModelTrainer {
    /// A trainer that loads its model and data on [`ModelTrainer::prepare`] or the first task.
    pub fn new(cfg: ModelTrainerConfig) -> Self {
        Self {
            cfg,
            backbone: None,
            loaded: None,
        }
    }

    /// Checks what can be checked before the run's model description is known: the model
    /// folder loads and the data files exist. Call it before connecting to a server.
    pub fn check_local(&mut self) -> Result<(), TrainerError> {
        self.backbone()?;
        let mut files = vec![&self.cfg.data];
        files.extend(self.cfg.eval_data.as_ref());
        for f in files {
            if !f.is_file() {
                return Err(file_error(
                    "local data file",
                    f,
                    "not found (pass the path of a JSONL/CSV/TSV file with text and label columns)",
                ));
            }
        }
        Ok(())
    }

    fn backbone(&mut self) -> Result<&Backbone, TrainerError> {
        if self.backbone.is_none() {
            let bb = Backbone::load_with(&self.cfg.model_dir, self.cfg.dtype)
                .map_err(|e| file_error("model folder", &self.cfg.model_dir, e))?;
            self.backbone = Some(bb);
        }
        Ok(self.backbone.as_ref().expect("just loaded"))
    }

    fn load(&mut self, spec: Option<&ModelSpec>) -> Result<&Loaded, TrainerError> {
        let spec = spec.ok_or(
            "the server did not describe the model (its federation.toml has no [model] section)",
        )?;
        if self.loaded.as_ref().is_some_and(|l| &l.spec != spec) {
            self.loaded = None;
        }
        if self.loaded.is_none() {
            let cfg = self.cfg.clone();
            let bb = self.backbone()?;
            let len = text_max_len(
                bb.config().max_sequence_len(),
                spec.max_len,
                spec.method.virtual_tokens(),
            )?;
            let text = bb.text_encoder().clone().with_max_len(len)?;
            let labels = LabelMap::new(spec.labels.clone())?;
            let read = |p: &PathBuf| -> Result<Vec<EncodedExample>, TrainerError> {
                let out = read_generic(p, &cfg.format, &labels, &ReadOptions::default())
                    .map_err(|e| file_error("local data file", p, e))?;
                Ok(encode_examples(&text, &out.examples)?)
            };
            let train = read(&cfg.data)?;
            let eval = match &cfg.eval_data {
                Some(p) => read(p)?,
                None => train.clone(),
            };
            let clf = Classifier::new(bb, &spec.method, &spec.labels, cfg.train.seed)?;
            self.loaded = Some(Loaded {
                spec: spec.clone(),
                clf,
                train,
                eval,
            });
        }
        self.loaded
            .as_ref()
            .ok_or_else(|| "the model could not be loaded".into())
    }
}

impl LocalTrainer for ModelTrainer {
    fn prepare(&mut self, model: Option<&ModelSpec>) -> Result<(), TrainerError> {
        self.load(model).map(|_| ())
    }

    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        let rc = RoundConfig::parse(task.config)?;
        let tc = local_train_config(
            &self.cfg.train,
            &rc,
            self.cfg.client_name.as_deref(),
            task.round,
        );
        let l = self.load(task.model)?;
        let model = LocalModel::new(&l.clf);
        Ok(local_fit(
            &model,
            &l.train,
            task.global,
            &tc,
            rc.proximal_mu,
            None,
        )?)
    }

    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        let bs = self.cfg.eval_batch_size;
        let l = self.load(task.model)?;
        let r = local_evaluate(&LocalModel::new(&l.clf), &l.eval, task.global, bs)?;
        Ok(EvalResult {
            num_examples: l.eval.len() as u64,
            metrics: eval_metrics(&r),
        })
    }
}
