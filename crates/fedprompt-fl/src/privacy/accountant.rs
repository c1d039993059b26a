//! [`RdpAccountant`]: `ε` spent after `T` rounds of the subsampled Gaussian mechanism.

use serde::{Deserialize, Serialize};

use super::conversion::{rdp_to_epsilon, EpsilonAt};
use super::rdp::{default_orders, subsampled_gaussian_rdp};
use crate::error::{FlError, Result};

/// Composes `T` identical rounds of the Poisson-subsampled Gaussian mechanism in RDP
/// (RDP composes additively: `T · ε(α)` at every order) and converts to `(ε, δ)`.
///
/// Client-level DP: the protected unit is one client's whole contribution to a round
/// (its clipped update), sampled with probability `q = m / K`.
#[derive(Clone, Debug, PartialEq)]
pub struct RdpAccountant {
    sampling_rate: f64,
    noise_multiplier: f64,
    orders: Vec<f64>,
    rdp_per_round: Vec<f64>,
}

impl RdpAccountant {
    /// An accountant for sampling rate `q ∈ (0, 1]` and noise multiplier `z > 0`, over
    /// `dp-accounting`'s default orders.
    pub fn new(sampling_rate: f64, noise_multiplier: f64) -> Result<Self> {
        if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
            return Err(FlError::Config(format!(
                "the DP sampling rate q = m/K must be in (0, 1], got {sampling_rate}"
            )));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(FlError::Config(format!(
                "privacy accounting needs a noise_multiplier > 0 (with 0 there is no \
                 privacy guarantee: epsilon is infinite), got {noise_multiplier}"
            )));
        }
        let orders = default_orders();
        let rdp_per_round = orders
            .iter()
            .map(|&a| subsampled_gaussian_rdp(sampling_rate, noise_multiplier, a))
            .collect();
        Ok(Self {
            sampling_rate,
            noise_multiplier,
            orders,
            rdp_per_round,
        })
    }

    /// The sampling rate `q`.
    pub fn sampling_rate(&self) -> f64 {
        self.sampling_rate
    }

    /// The noise multiplier `z`.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// `ε` (and its optimal order) after `rounds` rounds at `delta ∈ (0, 1)`.
    pub fn epsilon_at(&self, rounds: u64, delta: f64) -> EpsilonAt {
        if rounds == 0 {
            return EpsilonAt {
                epsilon: 0.0,
                order: 0.0,
            };
        }
        let t = rounds as f64;
        let rdp: Vec<f64> = self.rdp_per_round.iter().map(|r| t * r).collect();
        rdp_to_epsilon(&self.orders, &rdp, delta)
    }

    /// `ε` after `rounds` rounds at `delta`.
    pub fn epsilon(&self, rounds: u64, delta: f64) -> f64 {
        self.epsilon_at(rounds, delta).epsilon
    }
}

/// Where the noise is added, and so whom DP protects against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpMode {
    /// The server clips each update and noises the sum (strategy `dpfedavg`): protects
    /// each client's data from whoever sees the global models, not from the server.
    Central,
    /// Each client clips its own delta and adds noise before sending: protects it from
    /// the server too. Accounted per client with `q = 1` (no amplification: the server
    /// knows who was sampled) over every round (worst case: sampled each time).
    Local,
}

/// A run's privacy accounting: the accountant, the target `δ` and the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyAccounting {
    /// Central or local.
    pub mode: DpMode,
    /// The accountant for this run's `q` and `z`.
    pub accountant: RdpAccountant,
    /// Target `δ` of the reported `(ε, δ)`.
    pub target_delta: f64,
    /// Stop before a round whose `ε` would exceed this.
    pub max_epsilon: Option<f64>,
}

impl PrivacyAccounting {
    /// Validates `δ` and the budget, and builds the accountant for `q` and `z`.
    ///
    /// For [`DpMode::Local`], `sampling_rate` is ignored and `q = 1` is used.
    pub fn new(
        mode: DpMode,
        sampling_rate: f64,
        noise_multiplier: f64,
        target_delta: f64,
        max_epsilon: Option<f64>,
    ) -> Result<Self> {
        if !(target_delta > 0.0 && target_delta < 1.0) {
            return Err(FlError::Config(format!(
                "target_delta must be in (0, 1) (usually below 1/number of clients), got \
                 {target_delta}"
            )));
        }
        if let Some(m) = max_epsilon {
            if !(m.is_finite() && m > 0.0) {
                return Err(FlError::Config(format!(
                    "max_epsilon must be a positive number, got {m}"
                )));
            }
        }
        let q = match mode {
            DpMode::Central => sampling_rate,
            DpMode::Local => 1.0,
        };
        Ok(Self {
            mode,
            accountant: RdpAccountant::new(q, noise_multiplier)?,
            target_delta,
            max_epsilon,
        })
    }

    /// `ε` spent after `rounds` rounds.
    pub fn epsilon(&self, rounds: u64) -> f64 {
        self.accountant.epsilon(rounds, self.target_delta)
    }

    /// Why round `round` must not run (its `ε` would exceed `max_epsilon`), if so.
    pub fn stop_before(&self, round: u64) -> Option<String> {
        let max = self.max_epsilon?;
        let next = self.epsilon(round);
        (next > max).then(|| {
            format!(
                "privacy budget reached: round {round} would bring epsilon to {next:.4} > \
                 max_epsilon {max} (delta {}); stopped after round {} at epsilon {:.4}",
                self.target_delta,
                round.saturating_sub(1),
                self.epsilon(round.saturating_sub(1))
            )
        })
    }

    /// A one-line description: mode, `q`, `z`, `δ`.
    pub fn describe(&self) -> String {
        format!(
            "{} DP, q = {:.4}, noise multiplier {}, delta {}",
            match self.mode {
                DpMode::Central => "central",
                DpMode::Local => "local",
            },
            self.accountant.sampling_rate(),
            self.accountant.noise_multiplier(),
            self.target_delta
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_grows_with_rounds_and_budget_stops_before_exceeding() {
        let acc = PrivacyAccounting::new(DpMode::Central, 1.0, 1.0, 1e-5, Some(5.0)).unwrap();
        let eps: Vec<f64> = (0..=20).map(|t| acc.epsilon(t)).collect();
        assert_eq!(eps[0], 0.0);
        assert!(eps.windows(2).all(|w| w[1] > w[0]));
        let first_over = (1..=20).find(|&t| eps[t as usize] > 5.0).unwrap();
        assert!(acc.stop_before(first_over).is_some());
        assert!(acc.stop_before(first_over - 1).is_none());
        assert!(acc
            .stop_before(first_over)
            .unwrap()
            .contains("max_epsilon 5"));
    }

    #[test]
    fn bad_settings_are_config_errors() {
        assert!(RdpAccountant::new(0.0, 1.0).is_err());
        assert!(RdpAccountant::new(1.5, 1.0).is_err());
        assert!(RdpAccountant::new(0.5, 0.0).is_err());
        assert!(PrivacyAccounting::new(DpMode::Central, 0.5, 1.0, 0.0, None).is_err());
        assert!(PrivacyAccounting::new(DpMode::Central, 0.5, 1.0, 1e-5, Some(-1.0)).is_err());
    }

    #[test]
    fn local_mode_ignores_sampling() {
        let l = PrivacyAccounting::new(DpMode::Local, 0.1, 1.0, 1e-5, None).unwrap();
        assert_eq!(l.accountant.sampling_rate(), 1.0);
    }
}
