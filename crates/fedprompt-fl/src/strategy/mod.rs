//! Strategies in the spirit of Flower's: who trains each round, with what
//! configuration, and how results are combined.
//!
//! - `policy`: [`RoundPolicy`], the sampling, quorum and timing rules all share;
//! - `fedavg`: weighted FedAvg (Federated Prompt Averaging);
//! - `fedprox`: FedProx and its proximal term;
//! - `fedopt`: FedAdam / FedYogi / FedAdagrad and their moments;
//! - `dp_fedavg`: DP-FedAvg over the Gaussian mechanism of [`crate::dp`];
//! - `median`, `trimmed_mean` (over `coordinatewise`): robust aggregation that ignores
//!   claimed example counts;
//! - `weights`: [`ClientWeights`], caps on the example counts clients claim;
//! - `config`: [`StrategyConfig`], a strategy chosen in a config file.
//!
//! This file holds the [`Strategy`] trait and the types it speaks in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{FlError, Result};
use crate::params::Params;
use crate::round_config::{keys, ClientConfig, ConfigValue};
use crate::sampling::Phase;
use crate::update::{weighted_metrics, ClientId, ClientUpdate, EvaluateResult, Failure, Metrics};

mod config;
mod coordinatewise;
mod dp_fedavg;
mod fedavg;
mod fedopt;
mod fedprox;
mod median;
mod policy;
mod trimmed_mean;
mod weights;

pub use config::StrategyConfig;
pub use dp_fedavg::DpFedAvg;
pub use fedavg::{fedavg, weighted_average_f64, FedAvg};
pub use fedopt::{FedOpt, FedOptKind, FedOptParams, FedOptState};
pub use fedprox::{add_proximal_grad, proximal_term, FedProx};
pub use median::Median;
pub use policy::RoundPolicy;
pub use trimmed_mean::TrimmedMean;
pub use weights::ClientWeights;

/// What one round asks of whom.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// Round number (the first is 1).
    pub round: u64,
    /// Training or evaluation.
    pub phase: Phase,
    /// Selected clients, sorted.
    pub clients: Vec<ClientId>,
    /// Configuration sent to each of them.
    pub config: ClientConfig,
    /// Suggested time to wait for answers.
    pub deadline_hint: Option<Duration>,
    /// Fewest successful results that still aggregate.
    pub min_results: usize,
}

/// Aggregated evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalAggregate {
    /// Total examples evaluated.
    pub num_examples: u64,
    /// Clients that reported.
    pub n_results: usize,
    /// Clients that failed.
    pub n_failures: usize,
    /// Example-weighted mean of each metric.
    pub metrics: Metrics,
}

/// Serialisable server-side optimiser state kept by a strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StrategyState {
    /// No state (FedAvg, FedProx).
    #[default]
    Stateless,
    /// Moments of an adaptive server optimiser.
    FedOpt(FedOptState),
}

/// The server-side federated algorithm.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// Config `type` name (`"fedavg"`, ...).
    fn name(&self) -> &'static str;

    /// Sampling and quorum rules.
    fn policy(&self) -> &RoundPolicy;

    /// Configuration sent with training instructions (default: the round number).
    fn fit_config(&self, round: u64) -> ClientConfig {
        ClientConfig::from([(keys::ROUND.to_string(), ConfigValue::Int(round as i64))])
    }

    /// Which clients train in `round`, and with what configuration.
    fn configure_fit(&self, round: u64, available: &[ClientId]) -> Result<RoundPlan> {
        self.policy()
            .plan(round, Phase::Fit, available, self.fit_config(round))
    }

    /// Combines the round's updates into new global parameters.
    ///
    /// Every update is validated against `global` first; a malformed one is an
    /// [`FlError::InvalidUpdate`] naming client and tensor (drop it with
    /// [`crate::screen_updates`] and call again).
    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[ClientUpdate],
        failures: &[Failure],
    ) -> Result<Params>;

    /// Which clients evaluate in `round`.
    fn configure_evaluate(&self, round: u64, available: &[ClientId]) -> Result<RoundPlan> {
        let config =
            ClientConfig::from([(keys::ROUND.to_string(), ConfigValue::Int(round as i64))]);
        self.policy()
            .plan(round, Phase::Evaluate, available, config)
    }

    /// Example-weighted metrics over evaluation results.
    fn aggregate_evaluate(
        &self,
        round: u64,
        results: &[EvaluateResult],
        failures: &[Failure],
    ) -> Result<EvalAggregate> {
        if results.is_empty() {
            return Err(FlError::NoResults { round });
        }
        Ok(EvalAggregate {
            num_examples: results.iter().map(|r| r.num_examples).sum(),
            n_results: results.len(),
            n_failures: failures.len(),
            metrics: weighted_metrics(results.iter().map(|r| (r.num_examples, &r.metrics))),
        })
    }

    /// Server-side state for checkpoints.
    fn state(&self) -> StrategyState {
        StrategyState::Stateless
    }

    /// Restores state from a checkpoint.
    fn load_state(&mut self, state: StrategyState) -> Result<()> {
        match state {
            StrategyState::Stateless => Ok(()),
            other => Err(FlError::StrategyState(format!(
                "{} keeps no state but the checkpoint has {:?}",
                self.name(),
                state_kind(&other)
            ))),
        }
    }
}

fn state_kind(s: &StrategyState) -> &'static str {
    match s {
        StrategyState::Stateless => "stateless",
        StrategyState::FedOpt(_) => "fedopt",
    }
}
