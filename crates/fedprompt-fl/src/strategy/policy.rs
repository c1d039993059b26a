//! [`RoundPolicy`]: who is sampled each round, the quorum, and the deadline hint.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RoundPlan;
use crate::error::{FlError, Result};
use crate::round_config::ClientConfig;
use crate::sampling::{Phase, Sampling};
use crate::update::ClientId;

/// Sampling, quorum and timing rules shared by every strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundPolicy {
    /// Fraction `C` of available clients that train each round.
    pub fraction_fit: f64,
    /// Fraction of available clients that evaluate each round.
    pub fraction_evaluate: f64,
    /// Lower bound on clients sampled for training.
    pub min_fit_clients: usize,
    /// Lower bound on clients sampled for evaluation.
    pub min_evaluate_clients: usize,
    /// Do not start a round with fewer clients available.
    pub min_available_clients: usize,
    /// Quorum: fewest successful training results that still aggregate.
    pub min_fit_results: usize,
    /// Quorum for evaluation.
    pub min_evaluate_results: usize,
    /// Whether a round with failures may still aggregate.
    pub accept_failures: bool,
    /// Suggested time a client has to answer, in seconds.
    pub round_timeout_s: Option<f64>,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for RoundPolicy {
    fn default() -> Self {
        Self {
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_clients: 1,
            min_evaluate_clients: 1,
            min_available_clients: 1,
            min_fit_results: 1,
            min_evaluate_results: 1,
            accept_failures: true,
            round_timeout_s: None,
            seed: 0,
        }
    }
}

impl RoundPolicy {
    /// Checks every range.
    pub fn validate(&self) -> Result<()> {
        self.sampling(Phase::Fit).validate()?;
        self.sampling(Phase::Evaluate).validate()?;
        if self.min_fit_results == 0 || self.min_evaluate_results == 0 {
            return Err(FlError::Config("minimum results must be at least 1".into()));
        }
        if let Some(t) = self.round_timeout_s {
            if !(t > 0.0 && Duration::try_from_secs_f64(t).is_ok()) {
                return Err(FlError::Config(format!(
                    "round_timeout_s must be positive, got {t}"
                )));
            }
        }
        Ok(())
    }

    /// The sampling rule for `phase`.
    pub fn sampling(&self, phase: Phase) -> Sampling {
        match phase {
            Phase::Fit => Sampling {
                fraction: self.fraction_fit,
                min_clients: self.min_fit_clients,
                min_available: self.min_available_clients,
            },
            Phase::Evaluate => Sampling {
                fraction: self.fraction_evaluate,
                min_clients: self.min_evaluate_clients,
                min_available: self.min_available_clients,
            },
        }
    }

    /// Quorum for `phase`.
    pub fn min_results(&self, phase: Phase) -> usize {
        match phase {
            Phase::Fit => self.min_fit_results,
            Phase::Evaluate => self.min_evaluate_results,
        }
    }

    /// Why a round with `n_ok` results and `n_failed` failures must not aggregate, if it must not.
    pub fn quorum_shortfall(&self, phase: Phase, n_ok: usize, n_failed: usize) -> Option<String> {
        let need = self.min_results(phase);
        if n_ok < need {
            Some(format!("{n_ok} successful results, quorum is {need}"))
        } else if n_failed > 0 && !self.accept_failures {
            Some(format!("{n_failed} failures and accept_failures is false"))
        } else {
            None
        }
    }

    /// Builds the plan for `round` and `phase` by seeded sampling from `available`.
    pub fn plan(
        &self,
        round: u64,
        phase: Phase,
        available: &[ClientId],
        config: ClientConfig,
    ) -> Result<RoundPlan> {
        self.validate()?;
        let clients = self
            .sampling(phase)
            .sample(available, self.seed, round, phase)?;
        if clients.len() < self.min_results(phase) {
            return Err(FlError::Config(format!(
                "round {round}: {} clients sampled but the quorum needs {}",
                clients.len(),
                self.min_results(phase)
            )));
        }
        Ok(RoundPlan {
            round,
            phase,
            clients,
            config,
            deadline_hint: self
                .round_timeout_s
                .and_then(|t| Duration::try_from_secs_f64(t).ok()),
            min_results: self.min_results(phase),
        })
    }
}
