//! [`PrivacyConfig`]: the `[privacy]` table of an experiment or federation file.

use serde::{Deserialize, Serialize};

use super::accountant::{DpMode, PrivacyAccounting};
use crate::dp::GaussianDp;
use crate::error::{FlError, Result};
use crate::strategy::StrategyConfig;

fn default_target_delta() -> f64 {
    1e-5
}

/// Differential privacy of a federated run: the accounting's `δ`, the budget, and local DP.
///
/// Central DP is the strategy `type = "dpfedavg"` (its `clip_norm`, `noise_multiplier`);
/// local DP is `[privacy.local]` (each client clips and noises its own delta). One of the
/// two must be on for this table to mean anything; both at once is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `δ` of the reported `(ε, δ)` (default 1e-5; pick it below 1 / number of clients).
    #[serde(default = "default_target_delta")]
    pub target_delta: f64,
    /// Stop the run before the round whose `ε` would exceed this budget.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// Local DP: every client clips its delta to `clip_norm` and adds
    /// `N(0, (noise_multiplier·clip_norm)²)` before sending.
    #[serde(default)]
    pub local: Option<GaussianDp>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            target_delta: default_target_delta(),
            max_epsilon: None,
            local: None,
        }
    }
}

/// The accounting of a run with strategy `strategy`, `privacy` (if given) and client
/// sampling rate `sampling_rate = m / K`; `None` when the run has no DP noise to account.
///
/// Errors: DP asked both centrally and locally; a `[privacy]` table with no DP mechanism
/// on; a noise multiplier of 0 with a `[privacy]` table (no finite ε); bad `δ` or budget;
/// a budget below the ε of a single round.
pub fn privacy_accounting(
    strategy: &StrategyConfig,
    privacy: Option<&PrivacyConfig>,
    sampling_rate: f64,
) -> Result<Option<PrivacyAccounting>> {
    let central = strategy.central_dp();
    let local = privacy.and_then(|p| p.local);
    let (mode, dp) =
        match (central, local) {
            (Some(_), Some(_)) => return Err(FlError::Config(
                "DP is asked twice: strategy `dpfedavg` (central DP) and [privacy.local] (local \
                 DP); choose one"
                    .into(),
            )),
            (Some(c), None) => (DpMode::Central, c),
            (None, Some(l)) => (DpMode::Local, l),
            (None, None) => {
                return match privacy {
                    None => Ok(None),
                    Some(_) => Err(FlError::Config(
                        "[privacy] is set but no DP mechanism is on: use strategy type = \
                     \"dpfedavg\" (central DP) or add [privacy.local] (local DP)"
                            .into(),
                    )),
                }
            }
        };
    dp.validate()?;
    // dpfedavg without [privacy] and without noise is clipping only: nothing to account.
    if privacy.is_none() && dp.noise_multiplier == 0.0 {
        return Ok(None);
    }
    let p = privacy.cloned().unwrap_or_default();
    let acc = PrivacyAccounting::new(
        mode,
        sampling_rate,
        dp.noise_multiplier,
        p.target_delta,
        p.max_epsilon,
    )?;
    if let Some(max) = p.max_epsilon {
        let first = acc.epsilon(1);
        if first > max {
            return Err(FlError::Config(format!(
                "max_epsilon {max} is below the epsilon of a single round ({first:.4} at delta \
                 {}): raise the noise multiplier or max_epsilon",
                p.target_delta
            )));
        }
    }
    Ok(Some(acc))
}
