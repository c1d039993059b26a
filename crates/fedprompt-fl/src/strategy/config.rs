//! [`StrategyConfig`]: a strategy chosen by `type = "..."` in a config file.

use serde::{Deserialize, Serialize};

use super::{
    DpFedAvg, FedAvg, FedOpt, FedOptKind, FedOptParams, FedProx, Median, RoundPolicy, Strategy,
    TrimmedMean,
};
use crate::dp::GaussianDp;
use crate::error::{FlError, Result};

fn default_eta() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-9
}
fn default_yogi_eta() -> f64 {
    0.01
}
fn default_yogi_tau() -> f64 {
    1e-3
}
fn default_adagrad_beta1() -> f64 {
    0.0
}

/// A strategy chosen by `type = "..."` in a config file (defaults follow Flower).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Weighted FedAvg (Federated Prompt Averaging).
    FedAvg,
    /// FedProx.
    FedProx {
        /// Proximal coefficient `μ ≥ 0`.
        proximal_mu: f64,
    },
    /// FedAdam.
    FedAdam {
        /// Server learning rate.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity.
        #[serde(default = "default_tau")]
        tau: f64,
        /// Adam bias correction.
        #[serde(default)]
        bias_correction: bool,
    },
    /// FedYogi.
    FedYogi {
        /// Server learning rate.
        #[serde(default = "default_yogi_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity.
        #[serde(default = "default_yogi_tau")]
        tau: f64,
    },
    /// FedAdagrad.
    FedAdagrad {
        /// Server learning rate.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_adagrad_beta1")]
        beta1: f64,
        /// Adaptivity.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// DP-FedAvg: clipped deltas, Gaussian noise on their sum (see [`crate::dp`]).
    DpFedAvg {
        /// Clipping norm `S`.
        clip_norm: f64,
        /// Noise multiplier `σ`.
        noise_multiplier: f64,
    },
    /// Coordinate-wise median of the updates (unweighted; robust to lying clients).
    Median,
    /// Coordinate-wise trimmed mean (unweighted; robust to lying clients).
    #[serde(rename = "trimmed-mean")]
    TrimmedMean {
        /// `β ∈ [0, 0.5)`: fraction of values dropped from each end of every coordinate.
        trim_fraction: f64,
    },
}

impl StrategyConfig {
    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::FedAvg => "fedavg",
            StrategyConfig::FedProx { .. } => "fedprox",
            StrategyConfig::FedAdam { .. } => "fedadam",
            StrategyConfig::FedYogi { .. } => "fedyogi",
            StrategyConfig::FedAdagrad { .. } => "fedadagrad",
            StrategyConfig::DpFedAvg { .. } => "dpfedavg",
            StrategyConfig::Median => "median",
            StrategyConfig::TrimmedMean { .. } => "trimmed-mean",
        }
    }

    /// Whether aggregation weighs updates by their (capped) example counts; `false` for
    /// DP-FedAvg, median and trimmed mean, which ignore them.
    pub fn uses_weights(&self) -> bool {
        !matches!(
            self,
            StrategyConfig::DpFedAvg { .. }
                | StrategyConfig::Median
                | StrategyConfig::TrimmedMean { .. }
        )
    }

    /// The central DP mechanism (`dpfedavg`'s clipping and noise), if this strategy has one.
    pub fn central_dp(&self) -> Option<GaussianDp> {
        match *self {
            StrategyConfig::DpFedAvg {
                clip_norm,
                noise_multiplier,
            } => Some(GaussianDp {
                clip_norm,
                noise_multiplier,
            }),
            _ => None,
        }
    }

    /// Validates and builds the strategy.
    pub fn build(&self, policy: RoundPolicy) -> Result<Box<dyn Strategy>> {
        policy.validate()?;
        Ok(match *self {
            StrategyConfig::FedAvg => Box::new(FedAvg { policy }),
            StrategyConfig::FedProx { proximal_mu } => {
                if !(proximal_mu.is_finite() && proximal_mu >= 0.0) {
                    return Err(FlError::Config(format!(
                        "proximal_mu must be finite and >= 0, got {proximal_mu}"
                    )));
                }
                Box::new(FedProx {
                    policy,
                    proximal_mu,
                })
            }
            StrategyConfig::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
                bias_correction,
            } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Adam,
                FedOptParams {
                    eta,
                    beta1,
                    beta2,
                    tau,
                    bias_correction,
                },
            )?),
            StrategyConfig::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Yogi,
                FedOptParams {
                    eta,
                    beta1,
                    beta2,
                    tau,
                    bias_correction: false,
                },
            )?),
            StrategyConfig::FedAdagrad { eta, beta1, tau } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Adagrad,
                FedOptParams {
                    eta,
                    beta1,
                    beta2: 0.0,
                    tau,
                    bias_correction: false,
                },
            )?),
            StrategyConfig::DpFedAvg {
                clip_norm,
                noise_multiplier,
            } => Box::new(DpFedAvg::new(
                policy,
                GaussianDp {
                    clip_norm,
                    noise_multiplier,
                },
            )?),
            StrategyConfig::Median => Box::new(Median { policy }),
            StrategyConfig::TrimmedMean { trim_fraction } => {
                Box::new(TrimmedMean::new(policy, trim_fraction)?)
            }
        })
    }
}
