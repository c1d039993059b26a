//! The client contract: what one client does with a round's task, below every transport.
//!
//! The simulator's in-process clients, `fedprompt join` (gRPC) and `fedprompt flower-node`
//! (Flower) all run the same local step: [`local_fit`] (apply the global trainable set,
//! train from it with FedProx's anchor when the round asks, return the trained set and its
//! metrics) and [`local_evaluate`]. The round configuration is read once into a typed
//! [`RoundConfig`] and applied by [`local_train_config`]; the text length left beside the soft
//! prompt is [`text_max_len`], the one rule every path encodes with.
//!
//! A transport drives a [`LocalTrainer`]: [`ModelTrainer`] trains the real model on a local
//! data file; [`DeterministicTrainer`] is a cheap stand-in for tests and load runs.

mod deterministic;
mod model_trainer;

use fedprompt_fl::{client_round_seed, ClientConfig, Metrics, Params, RoundConfig};
use fedprompt_model::{Classifier, MethodConfig};
use serde::{Deserialize, Serialize};

use crate::encode::EncodedExample;
use crate::metrics::{evaluate, EvalReport};
use crate::params::{assign_params, params_to_tensors, to_params};
use crate::trainer::{train, Proximal, TrainConfig, TrainError};

pub use deterministic::DeterministicTrainer;
pub use model_trainer::{ModelTrainer, ModelTrainerConfig};

/// What the clients build locally: the PEFT method, the label set and the sequence length.
/// Sent to every client with the run (no data, only this description).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The PEFT method (`type = "prompt"`, `"lora"`, ...).
    pub method: MethodConfig,
    /// Label names, in index order.
    pub labels: Vec<String>,
    /// Maximum sequence length in tokens, special and virtual tokens included (the model's
    /// own limit when absent). See [`text_max_len`].
    #[serde(default)]
    pub max_len: Option<usize>,
}

/// Error of a local trainer (shown to the client's user; never sent to the server).
pub type TrainerError = Box<dyn std::error::Error + Send + Sync>;

/// One round's instructions.
#[derive(Clone, Debug)]
pub struct Task<'a> {
    /// Fit: the round being trained. Evaluate: training rounds behind the global.
    pub round: u64,
    /// The round's configuration (see [`fedprompt_fl::keys`]).
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
    /// Training metrics (`train_loss`, `steps`).
    pub metrics: Metrics,
}

/// A local evaluation result.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Examples evaluated.
    pub num_examples: u64,
    /// Metrics (`accuracy`, `macro_f1`, `loss`).
    pub metrics: Metrics,
}

/// Trains and evaluates on local data. Only what it returns leaves the machine.
pub trait LocalTrainer {
    /// Trains from `task.global` and returns the new trainable set.
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError>;
    /// Evaluates `task.global` on local data.
    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError>;
    /// Loads and checks what the run needs (model, data, labels) as soon as the run's model
    /// description is known, before the first task, so a bad local setup fails early.
    fn prepare(&mut self, model: Option<&ModelSpec>) -> Result<(), TrainerError> {
        let _ = model;
        Ok(())
    }
}

/// Tokens left for the text beside `virtual_tokens` soft-prompt tokens: a sequence holds
/// `min(max_len, model_max)` tokens, virtual tokens included (`model_max` is the model's
/// position table, [`fedprompt_model::EncoderConfig::max_sequence_len`]). Every path (simulator,
/// CLI, network and Flower clients) encodes its texts with this length, so none can overflow
/// the position table.
pub fn text_max_len(
    model_max: usize,
    max_len: Option<usize>,
    virtual_tokens: usize,
) -> Result<usize, TrainError> {
    let total = max_len.unwrap_or(model_max).min(model_max);
    let text = total.saturating_sub(virtual_tokens);
    if text < 4 {
        return Err(TrainError::Config(format!(
            "{virtual_tokens} virtual tokens leave {text} of {total} tokens for text (at least 4 are \
             needed): raise max_len or use fewer virtual tokens"
        )));
    }
    Ok(text)
}

/// The settings of one client's local training in round `round`: `base` with the round
/// configuration's values over it, a seed of its own for this client and round
/// ([`fedprompt_fl::client_round_seed`] with the client's name; `seed + round` without one),
/// no early stopping, and the last step's values kept (Algorithm 1's ClientUpdate).
pub fn local_train_config(
    base: &TrainConfig,
    round_cfg: &RoundConfig,
    client: Option<&str>,
    round: u64,
) -> TrainConfig {
    let mut t = base.clone();
    if let Some(v) = round_cfg.epochs {
        t.epochs = v;
    }
    if let Some(v) = round_cfg.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = round_cfg.max_steps_per_epoch {
        t.max_steps_per_epoch = Some(v);
    }
    if let Some(v) = round_cfg.learning_rate {
        t.learning_rate = v;
    }
    let seed = round_cfg.seed.unwrap_or(t.seed);
    t.seed = match client {
        Some(name) => client_round_seed(seed, name, round),
        None => seed.wrapping_add(round),
    };
    t.restore_best = false;
    t.patience = usize::MAX;
    t
}

/// The client-side DP step the round asks for: with `clipping_norm`, clips the trained set's
/// delta from the global to that L2 norm (Flower's `fixedclipping_mod`); with
/// `dp_noise_multiplier` too, adds Gaussian noise to it (local DP). The noise comes from the
/// operating system's randomness, so the server cannot regenerate and remove it.
pub fn apply_client_dp(task: &Task<'_>, result: &mut FitResult) -> Result<(), TrainerError> {
    let rc = RoundConfig::parse(task.config)?;
    if let Some(dp) = rc.client_dp() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let norm =
            fedprompt_fl::dp::privatize_update(task.global, &mut result.params, &dp, &mut rng)?;
        result.metrics.insert("update_norm".into(), norm);
    }
    Ok(())
}

/// A classifier and what batching needs to know about its model.
#[derive(Clone, Copy)]
pub struct LocalModel<'a> {
    /// The classifier whose trainable set the round loads and trains.
    pub clf: &'a Classifier,
    /// Padding token id.
    pub pad_id: u32,
    /// Whether the model takes token type ids (BERT family).
    pub use_types: bool,
}

impl<'a> LocalModel<'a> {
    /// The classifier with its backbone's padding id and token-type rule.
    pub fn new(clf: &'a Classifier) -> Self {
        let cfg = clf.encoder().config();
        Self {
            clf,
            pad_id: cfg.pad_token_id,
            use_types: cfg.family == fedprompt_model::Family::Bert,
        }
    }
}

/// The local step of a training round: loads `global` into the trainable set, trains it on
/// `data` with `cfg` (FedProx's proximal term anchored at `global` when `proximal_mu` > 0) and
/// returns the trained set, the example count and the training metrics.
pub fn local_fit(
    model: &LocalModel<'_>,
    data: &[EncodedExample],
    global: &Params,
    cfg: &TrainConfig,
    proximal_mu: Option<f64>,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<FitResult, TrainError> {
    assign_params(model.clf.trainable(), global)?;
    let proximal = match proximal_mu {
        Some(mu) if mu > 0.0 => Some(Proximal {
            mu,
            global: params_to_tensors(global)?,
        }),
        _ => None,
    };
    let report = train(
        model.clf,
        data,
        None,
        cfg,
        model.pad_id,
        model.use_types,
        proximal.as_ref(),
        progress,
    )?;
    let mut metrics = Metrics::new();
    if let Some(last) = report.epochs.last() {
        metrics.insert("train_loss".into(), last.train_loss);
    }
    metrics.insert("steps".into(), report.steps as f64);
    Ok(FitResult {
        params: to_params(model.clf.trainable())?,
        num_examples: data.len() as u64,
        metrics,
    })
}

/// Loads `global` into the trainable set and evaluates it on `data`.
pub fn local_evaluate(
    model: &LocalModel<'_>,
    data: &[EncodedExample],
    global: &Params,
    batch_size: usize,
) -> Result<EvalReport, TrainError> {
    assign_params(model.clf.trainable(), global)?;
    evaluate(model.clf, data, batch_size, model.pad_id, model.use_types)
}

/// An evaluation as the metrics a client reports: `accuracy`, `macro_f1`, `loss`.
pub fn eval_metrics(report: &EvalReport) -> Metrics {
    Metrics::from([
        ("accuracy".to_string(), report.overall.accuracy),
        ("macro_f1".to_string(), report.overall.macro_f1),
        ("loss".to_string(), report.loss),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_length_leaves_room_for_virtual_tokens() {
        assert_eq!(text_max_len(512, None, 1).unwrap(), 511);
        assert_eq!(text_max_len(512, Some(128), 8).unwrap(), 120);
        assert_eq!(text_max_len(64, Some(128), 8).unwrap(), 56);
        assert_eq!(text_max_len(64, None, 0).unwrap(), 64);
        let e = text_max_len(16, None, 14).unwrap_err().to_string();
        assert!(e.contains("14 virtual tokens leave 2 of 16"), "{e}");
    }

    #[test]
    fn round_config_over_base_settings() {
        let base = TrainConfig {
            epochs: 7,
            learning_rate: 0.1,
            seed: 5,
            ..TrainConfig::default()
        };
        let rc = RoundConfig {
            epochs: Some(2),
            learning_rate: Some(0.01),
            batch_size: Some(4),
            ..RoundConfig::default()
        };
        let t = local_train_config(&base, &rc, Some("sw"), 3);
        assert_eq!((t.epochs, t.batch_size), (2, 4));
        assert_eq!(t.learning_rate, 0.01);
        assert_eq!(t.seed, client_round_seed(5, "sw", 3));
        assert!(!t.restore_best);
        let seeded = RoundConfig {
            seed: Some(9),
            ..RoundConfig::default()
        };
        assert_eq!(local_train_config(&base, &seeded, None, 3).seed, 12);
        assert_eq!(local_train_config(&base, &seeded, None, 3).epochs, 7);
    }
}
