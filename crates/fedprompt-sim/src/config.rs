//! The experiment file: one TOML file (plus its seed) determines a run.

use std::path::{Path, PathBuf};

use fedprompt_data::{GenericFormat, PartitionSpec};
use fedprompt_fl::codec::Compression;
use fedprompt_fl::privacy::PrivacyConfig;
use fedprompt_fl::secagg::SecAggConfig;
use fedprompt_fl::StrategyConfig;
use fedprompt_model::MethodConfig;
use fedprompt_train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};

/// A whole experiment: model, data, training budget and the runs to compare.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name, used for the results folder.
    pub name: String,
    /// What the task is (shown in the tables).
    #[serde(default)]
    pub task: String,
    /// Master seed: data sampling, initialisation, batches, dropout, client sampling.
    #[serde(default)]
    pub seed: u64,
    /// Several master seeds: the whole experiment runs once per seed and the tables report
    /// mean ± standard deviation (each seed's numbers are kept in `results.json` and
    /// `seeds.csv`). Replaces `seed` when given.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Results folder (default `results/<name>`), relative to the current directory.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// The frozen backbone (`[model]`).
    pub model: ModelSection,
    /// The data set, languages and sample sizes (`[data]`).
    pub data: DataSection,
    /// Local training hyperparameters shared by every run (a run may override epochs).
    #[serde(default)]
    pub train: TrainConfig,
    /// Federation defaults for federated runs.
    #[serde(default)]
    pub federation: FederationSection,
    /// The runs (rows of the results table).
    #[serde(rename = "run")]
    pub runs: Vec<RunSpec>,
    /// The data-efficiency ablation (the paper's Figure 4).
    #[serde(default)]
    pub data_efficiency: Option<DataEfficiency>,
    /// Compute language distances φ for the languages (needs lang2vec data).
    #[serde(default)]
    pub language_distance: bool,
}

/// The model folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face folder, or `"default"` for the built-in multilingual-e5-small.
    #[serde(default = "default_model")]
    pub path: String,
    /// Maximum tokens per example (virtual tokens included); longer inputs are truncated.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Float type of the frozen backbone's matrices: `"f32"` (exact, the default) or `"bf16"`
    /// (fast mode: half the weight memory; bf16 products with f32 sums on CPUs with AMX; the
    /// trainable set and the optimizer stay f32). See docs/performance.md.
    #[serde(default)]
    pub dtype: fedprompt_model::WeightDtype,
}

fn default_model() -> String {
    "default".into()
}
fn default_max_len() -> usize {
    512
}

/// Where the examples come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Which data set to read and where its files are (`[data.source]`, tagged by `type`).
    pub source: DataSource,
    /// Languages (clients in the non-IID setting), as the data names them.
    pub languages: Vec<String>,
    /// Training examples per language (sampled with the seed); all if absent.
    #[serde(default)]
    pub train_per_language: Option<usize>,
    /// Training examples of particular languages, overriding `train_per_language` for them
    /// (e.g. `train_sizes = { tr = 24, bn = 24 }` makes Turkish and Bengali low-resource
    /// clients beside richer ones).
    #[serde(default)]
    pub train_sizes: std::collections::BTreeMap<String, usize>,
    /// Evaluation examples per language; all if absent.
    #[serde(default)]
    pub eval_per_language: Option<usize>,
    /// Topics (labels) for the chatterbot demo data; its ten shared topics if absent.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Turn bad lines into counted warnings instead of errors.
    #[serde(default)]
    pub skip_bad_lines: bool,
}

/// The data sets fedprompt reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// The embedded real demo data (PyPI chatterbot-corpus 1.3.3), split by conversation.
    Chatterbot {
        /// Fraction of each (language, topic) file's conversations held out for evaluation,
        /// in `[0, 1)` (default 0.2).
        #[serde(default = "default_eval_fraction")]
        eval_fraction: f64,
        /// Let a language lack some of the topics (a small language's label skew) instead of
        /// failing; the missing (language, topic) pairs are listed as warnings.
        #[serde(default)]
        allow_missing_topics: bool,
    },
    /// XNLI: `dir/xnli.dev.tsv` (eval; or `eval_file`) and `train_dir/multinli.train.<lang>.tsv`.
    Xnli {
        /// Folder of the XNLI evaluation file.
        dir: PathBuf,
        /// Folder of the translated MultiNLI training files `multinli.train.<lang>.tsv`.
        train_dir: PathBuf,
        /// Evaluation file name inside `dir` (default `xnli.dev.tsv`).
        #[serde(default)]
        eval_file: Option<String>,
    },
    /// XGLUE news classification: `dir/xglue.nc.<lang>.<split>`.
    ///
    /// The real release has a training file for English only (`xglue.nc.en.train`) and
    /// `dev` / `test` files for every language, so a per-language setup takes both sides
    /// from one split: `train_split = "dev"`, `eval_split = "dev"` draws disjoint training and
    /// evaluation samples of `train_per_language` / `eval_per_language` from each language's
    /// dev file (label-stratified, seeded).
    XglueNc {
        /// Folder holding the `xglue.nc.<lang>.<split>` files.
        dir: PathBuf,
        /// The split training examples come from (default `train`).
        #[serde(default = "split_train")]
        train_split: String,
        /// The split evaluation examples come from (default `dev`); the same as `train_split`
        /// splits that file disjointly.
        #[serde(default = "split_dev")]
        eval_split: String,
    },
    /// MasakhaNEWS: `dir/<lang>/<split>.tsv` (`train`, `dev`, `test`).
    Masakhanews {
        /// Folder with one sub-folder per language code.
        dir: PathBuf,
        /// The split training examples come from (default `train`).
        #[serde(default = "split_train")]
        train_split: String,
        /// The split evaluation examples come from (default `dev`; the paper's 411 per
        /// language match `test`); the same as `train_split` splits that file disjointly.
        #[serde(default = "split_dev")]
        eval_split: String,
    },
    /// Generic CSV/TSV/JSONL files with a language column.
    Files {
        /// The training file.
        train: PathBuf,
        /// The evaluation file.
        eval: PathBuf,
        /// Column layout of both files; default: the default layout with a `language` column.
        #[serde(default)]
        format: Option<GenericFormat>,
    },
}

fn default_eval_fraction() -> f64 {
    0.2
}
fn split_train() -> String {
    "train".into()
}
fn split_dev() -> String {
    "dev".into()
}

/// Federation defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// Communication rounds.
    #[serde(default = "default_rounds")]
    pub rounds: u64,
    /// Fraction C of clients per round, in (0, 1].
    #[serde(default = "one")]
    pub fraction: f64,
    /// Aggregation strategy (`type = "fedavg"`: the paper's Federated Prompt Averaging).
    #[serde(default = "default_strategy")]
    pub strategy: StrategyConfig,
    /// Local epochs per round.
    #[serde(default = "one_usize")]
    pub local_epochs: usize,
    /// Early stopping: stop after this many rounds without a better average eval accuracy
    /// (default: `[train] patience`, the paper's 5); `rounds` is then the maximum.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Cap on the example count each client claims (its FedAvg weight); see
    /// `docs/privacy.md` (robust aggregation).
    #[serde(default)]
    pub max_examples_per_client: Option<u64>,
    /// Differential privacy (`[federation.privacy]`): `target_delta`, `max_epsilon`, and
    /// `[federation.privacy.local]` for local DP; central DP is strategy `dpfedavg`.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// Compressed uploads (`[federation.compression]`: `codec = { type = "f16" | "int8" |
    /// "int8-rows" | "int4-rows" | "topk", fraction = … }`, `error_feedback = true|false`): each client
    /// sends its encoded delta from the global. Absent: plain f32 parameters. See
    /// docs/compression.md.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Secure aggregation (`[federation.secure_aggregation]`: `threshold`, `neighbours`,
    /// `clip_range`, `bits`, `max_weight`, `rounding`, `simulate_dropouts`): the server
    /// only sees masked updates and their sum. Absent: plain uploads. Cannot be combined
    /// with `compression`. See docs/secure-aggregation.md.
    #[serde(default)]
    pub secure_aggregation: Option<SecAggConfig>,
}

fn default_rounds() -> u64 {
    10
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn default_strategy() -> StrategyConfig {
    StrategyConfig::FedAvg
}

impl Default for FederationSection {
    fn default() -> Self {
        FederationSection {
            rounds: default_rounds(),
            fraction: 1.0,
            strategy: default_strategy(),
            local_epochs: 1,
            patience: None,
            max_examples_per_client: None,
            privacy: None,
            compression: None,
            secure_aggregation: None,
        }
    }
}

/// How a run uses the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Paradigm {
    /// One model per language, trained on that language only.
    Monolingual,
    /// One model on all the data pooled.
    Centralized,
    /// Federated: clients train locally, the server averages.
    Federated,
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Row label (e.g. `PE_FL (non-IID)`).
    pub label: String,
    /// Monolingual, centralized or federated.
    pub paradigm: Paradigm,
    /// The method (`type = "prompt" | "prompt-encoder" | "lora" | "head" | "full"`).
    pub method: MethodConfig,
    /// Epochs for monolingual / centralized runs (default: `train.epochs`).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Client partition for federated runs (default: one client per language).
    #[serde(default)]
    pub partition: Option<PartitionSpec>,
    /// Communication rounds for this run (default: `federation.rounds`).
    #[serde(default)]
    pub rounds: Option<u64>,
    /// Fraction C of clients per round, in (0, 1] (default: `federation.fraction`).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Aggregation strategy for this run (default: `federation.strategy`).
    #[serde(default)]
    pub strategy: Option<StrategyConfig>,
    /// Local epochs per round for this run (default: `federation.local_epochs`).
    #[serde(default)]
    pub local_epochs: Option<usize>,
    /// Cap on each client's claimed example count (default:
    /// `federation.max_examples_per_client`).
    #[serde(default)]
    pub max_examples_per_client: Option<u64>,
    /// Differential privacy of this run (default: `federation.privacy`).
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// Learning rate override (full fine-tuning usually wants a smaller one).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Early-stopping patience for this run, in epochs or rounds (default: `[federation]
    /// patience` for federated runs, `[train] patience` otherwise).
    #[serde(default)]
    pub patience: Option<usize>,
    /// Compressed uploads for this run (default: `federation.compression`).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Secure aggregation for this run (default: `federation.secure_aggregation`).
    #[serde(default)]
    pub secure_aggregation: Option<SecAggConfig>,
    /// Derive this run's randomness (initialisation, batch order, client sampling, noise)
    /// from this key instead of its label. Runs that share a key start from the same model
    /// and see the same batches, so they differ only in the settings the file sets apart
    /// (a codec, secure aggregation, DP): a controlled comparison. Default: the label.
    #[serde(default)]
    pub seed_key: Option<String>,
}

impl RunSpec {
    /// The key this run's seed is derived from: `seed_key`, else the label.
    pub fn seed_key(&self) -> &str {
        self.seed_key.as_deref().unwrap_or(&self.label)
    }
}

/// The data-efficiency ablation (the paper's Figure 4): rerun runs with every language's
/// training set reduced to each size (stratified by label, seeded).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataEfficiency {
    /// Label of one run to repeat (kept for older files; `runs` names several).
    #[serde(default)]
    pub run: Option<String>,
    /// Labels of the runs to repeat, any paradigm (a federated run's clients, a monolingual
    /// run's languages and a centralized run's pool are all cut per language).
    #[serde(default)]
    pub runs: Vec<String>,
    /// Training examples per language.
    pub sizes: Vec<usize>,
}

impl DataEfficiency {
    /// The labels of the runs to repeat, `run` first.
    pub fn labels(&self) -> Vec<String> {
        self.run.iter().chain(&self.runs).cloned().collect()
    }
}

impl ExperimentConfig {
    /// Reads and checks an experiment file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.to_path_buf(),
            cause: e,
        })?;
        let cfg: ExperimentConfig = toml::from_str(&text).map_err(|e| SimError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        cfg.validate().map_err(|msg| SimError::Config {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks what can be checked before any work starts.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        if self.runs.is_empty() {
            return Err("no `[[run]]` given".into());
        }
        if self.data.languages.is_empty() {
            return Err("`data.languages` is empty".into());
        }
        for (lang, n) in &self.data.train_sizes {
            if !self.data.languages.contains(lang) {
                return Err(format!(
                    "data.train_sizes names `{lang}`, which is not in data.languages"
                ));
            }
            if *n == 0 {
                return Err(format!("data.train_sizes.{lang} must be at least 1"));
            }
        }
        if self.model.max_len < 8 {
            return Err("`model.max_len` must be at least 8".into());
        }
        self.train.validate().map_err(|e| format!("[train]: {e}"))?;
        let mut labels = std::collections::BTreeSet::new();
        for r in &self.runs {
            if !labels.insert(r.label.clone()) {
                return Err(format!("two runs are labelled `{}`", r.label));
            }
            r.method
                .validate()
                .map_err(|e| format!("run `{}`: {e}", r.label))?;
            let c = r.fraction.unwrap_or(self.federation.fraction);
            if !(c > 0.0 && c <= 1.0) {
                return Err(format!(
                    "run `{}`: fraction C = {c} is outside (0, 1]",
                    r.label
                ));
            }
            if r.rounds.unwrap_or(self.federation.rounds) == 0 {
                return Err(format!("run `{}`: rounds must be at least 1", r.label));
            }
            if r.epochs == Some(0) || r.local_epochs == Some(0) {
                return Err(format!("run `{}`: epochs must be at least 1", r.label));
            }
            if let Some(lr) = r.learning_rate {
                if !(lr.is_finite() && lr > 0.0) {
                    return Err(format!("run `{}`: learning_rate must be positive", r.label));
                }
            }
        }
        if let Some(de) = &self.data_efficiency {
            let labels = de.labels();
            if labels.is_empty() {
                return Err("data_efficiency names no run: give `runs = [\"LABEL\", ...]`".into());
            }
            for l in &labels {
                if !self.runs.iter().any(|r| &r.label == l) {
                    return Err(format!(
                        "data_efficiency names `{l}`, which is no run's label"
                    ));
                }
            }
            if de.sizes.is_empty() || de.sizes.contains(&0) {
                return Err("data_efficiency.sizes must be positive".into());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(s) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(format!("seed {s} is listed twice in `seeds`"));
        }
        if self.federation.patience == Some(0) || self.runs.iter().any(|r| r.patience == Some(0)) {
            return Err("patience must be at least 1".into());
        }
        Ok(())
    }

    /// The master seeds the experiment runs with: `seeds`, or else `[seed]`.
    pub fn run_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }

    /// The results folder.
    pub fn output_dir(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&self.name))
    }
}
