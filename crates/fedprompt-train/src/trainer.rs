//! The local trainer: AdamW on the trainable set, early stopping on eval accuracy.

use std::collections::BTreeMap;

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fedprompt_data::{batch_indices, BatchOrder};
use fedprompt_model::{Classifier, ForwardCtx};
use serde::{Deserialize, Serialize};

use crate::encode::{make_batch, EncodedExample};
use crate::metrics::{evaluate, EvalReport};

/// Errors of training and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model failed (tokenising, forward pass, restoring parameters).
    #[error(transparent)]
    Model(#[from] fedprompt_model::ModelError),
    /// A tensor operation (loss, optimiser step) failed.
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
    /// Batching the examples failed.
    #[error(transparent)]
    Data(#[from] fedprompt_data::DataError),
    /// A required example set is empty; holds its name (e.g. `training set`).
    #[error("the {0} is empty")]
    Empty(String),
    /// A [`TrainConfig`] value is out of range; holds what is wrong.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The training loss became NaN or infinite.
    /// Printed counted from 1, as progress bars and reports count epochs.
    #[error(
        "training diverged: the loss became {loss} at epoch {}, step {}; lower the learning rate",
        .epoch + 1,
        .step + 1
    )]
    NonFinite {
        /// The non-finite loss value.
        loss: f32,
        /// Epoch it happened in, counted from 0.
        epoch: usize,
        /// Step within that epoch, counted from 0.
        step: usize,
    },
}

// `Candle` prints its inner error after a prefix, so its `From` is written by hand
// rather than with `#[from]`, which would also return it as the source and have it printed
// twice by an error chain.
impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(e)
    }
}

fn d_lr() -> f64 {
    1e-3
}
fn d_bs() -> usize {
    16
}
fn d_epochs() -> usize {
    3
}
fn d_patience() -> usize {
    5
}
fn d_wd() -> f64 {
    0.01
}
fn d_true() -> bool {
    true
}

/// Hyperparameters of local training (the paper: AdamW, lr 1e-3, early stopping patience 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// AdamW learning rate (default 1e-3, must be positive).
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    /// Examples per optimiser step (default 16, at least 1).
    #[serde(default = "d_bs")]
    pub batch_size: usize,
    /// Maximum number of passes over the training set (default 3, at least 1).
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Stop after this many epochs without a better eval accuracy.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// AdamW decoupled weight decay (default 0.01).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Cap on optimiser steps per epoch (none: a full pass).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// Restore the best-eval-accuracy values at the end.
    #[serde(default = "d_true")]
    pub restore_best: bool,
    /// Seed of batch shuffling and dropout masks (default 0).
    #[serde(default)]
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: d_lr(),
            batch_size: d_bs(),
            epochs: d_epochs(),
            patience: d_patience(),
            weight_decay: d_wd(),
            max_steps_per_epoch: None,
            restore_best: true,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(TrainError::Config("learning_rate must be positive".into()));
        }
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be at least 1".into()));
        }
        if self.epochs == 0 {
            return Err(TrainError::Config("epochs must be at least 1".into()));
        }
        if self.patience == 0 {
            return Err(TrainError::Config("patience must be at least 1".into()));
        }
        Ok(())
    }
}

/// FedProx's proximal term μ/2·‖w − w_global‖² added to the local loss.
pub struct Proximal {
    /// The proximal coefficient μ (0 disables the term's effect).
    pub mu: f64,
    /// Global model values by trainable-parameter name; parameters not listed get no term.
    pub global: BTreeMap<String, Tensor>,
}

/// One epoch's statistics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochStat {
    /// Epoch number, counted from 1.
    pub epoch: usize,
    /// Optimiser steps taken in this epoch.
    pub steps: usize,
    /// Mean cross-entropy over the epoch's steps (proximal term excluded).
    pub train_loss: f64,
    /// Evaluation after the epoch; `None` without a (non-empty) eval set.
    pub eval: Option<EvalReport>,
}

/// What a local training run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// Statistics of each epoch run, in order.
    pub epochs: Vec<EpochStat>,
    /// Optimiser steps over all epochs.
    pub steps: usize,
    /// Epoch (from 1) with the best eval accuracy; `None` without an eval set.
    pub best_epoch: Option<usize>,
    /// Best eval accuracy reached, in `[0, 1]`; `None` without an eval set.
    pub best_accuracy: Option<f64>,
    /// Whether training stopped before `epochs` because `patience` ran out.
    pub stopped_early: bool,
}

/// Trains the classifier's trainable set on `train` with AdamW; evaluates on `eval` after
/// each epoch (if given) for early stopping.
#[allow(clippy::too_many_arguments)]
pub fn train(
    clf: &Classifier,
    train: &[EncodedExample],
    eval: Option<&[EncodedExample]>,
    cfg: &TrainConfig,
    pad_id: u32,
    use_types: bool,
    proximal: Option<&Proximal>,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<TrainReport, TrainError> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(TrainError::Empty("training set".into()));
    }
    let set = clf.trainable();
    let mut opt = AdamW::new(
        set.vars(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let mut report = TrainReport {
        epochs: Vec::new(),
        steps: 0,
        best_epoch: None,
        best_accuracy: None,
        stopped_early: false,
    };
    let mut best: Option<BTreeMap<String, Tensor>> = None;
    let mut since_best = 0usize;
    for epoch in 0..cfg.epochs {
        let batches = batch_indices(
            &lengths,
            cfg.batch_size,
            BatchOrder::Bucketed { pool_batches: 8 },
            cfg.seed,
            epoch as u64,
        )?;
        let take = cfg.max_steps_per_epoch.unwrap_or(usize::MAX);
        let mut loss_sum = 0.0;
        let mut steps = 0usize;
        for (step, idx) in batches.iter().take(take).enumerate() {
            let batch = make_batch(train, idx, pad_id, use_types)?;
            let ctx = ForwardCtx::train(
                cfg.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((epoch * 100_000 + step) as u64),
            );
            let logits = clf.forward(&batch, &ctx)?;
            let labels: Vec<u32> = idx.iter().map(|&i| train[i].label as u32).collect();
            let labels = Tensor::new(labels.as_slice(), &candle_core::Device::Cpu)?;
            let mut loss = fedprompt_model::nn::cross_entropy(&logits, &labels)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::NonFinite {
                    loss: l,
                    epoch,
                    step,
                });
            }
            if let Some(p) = proximal {
                let mut term: Option<Tensor> = None;
                for (name, var) in set.iter() {
                    if let Some(g) = p.global.get(name) {
                        let d = (var.as_tensor() - g)?.sqr()?.sum_all()?;
                        term = Some(match term {
                            None => d,
                            Some(t) => (t + d)?,
                        });
                    }
                }
                if let Some(t) = term {
                    loss = (loss + (t * (p.mu / 2.0))?)?;
                }
            }
            opt.backward_step(&loss)?;
            loss_sum += l as f64;
            steps += 1;
            report.steps += 1;
            if let Some(pb) = progress {
                pb.inc(1);
                pb.set_message(format!("epoch {} loss {:.3}", epoch + 1, l));
            }
        }
        let eval_report = match eval {
            Some(ev) if !ev.is_empty() => Some(evaluate(clf, ev, 64, pad_id, use_types)?),
            _ => None,
        };
        let acc = eval_report.as_ref().map(|r| r.overall.accuracy);
        report.epochs.push(EpochStat {
            epoch: epoch + 1,
            steps,
            train_loss: loss_sum / steps.max(1) as f64,
            eval: eval_report,
        });
        if let Some(a) = acc {
            if report.best_accuracy.is_none_or(|b| a > b) {
                report.best_accuracy = Some(a);
                report.best_epoch = Some(epoch + 1);
                since_best = 0;
                if cfg.restore_best {
                    best = Some(set.snapshot()?);
                }
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    report.stopped_early = true;
                    break;
                }
            }
        }
    }
    if let Some(b) = best {
        set.assign(&b, std::path::Path::new("<best epoch>"))?;
    }
    Ok(report)
}
