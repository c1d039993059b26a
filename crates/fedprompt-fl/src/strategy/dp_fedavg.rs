//! DP-FedAvg: the [`Strategy`] built on the Gaussian mechanism of [`crate::dp`].

use super::{RoundPolicy, Strategy};
use crate::dp::{add_gaussian_noise, clip_to_norm, GaussianDp};
use crate::error::{FlError, Result};
use crate::params::Params;
use crate::sampling::{round_rng, Phase};
use crate::update::{ClientUpdate, Failure};

/// DP-FedAvg: uniform average of clipped deltas plus Gaussian noise on their sum.
///
/// Noise is drawn from a ChaCha stream determined by `(policy.seed, round)`.
#[derive(Clone, Debug)]
pub struct DpFedAvg {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
    /// Mechanism parameters.
    pub dp: GaussianDp,
}

impl DpFedAvg {
    /// Validates and builds.
    pub fn new(policy: RoundPolicy, dp: GaussianDp) -> Result<Self> {
        policy.validate()?;
        dp.validate()?;
        Ok(Self { policy, dp })
    }
}

impl Strategy for DpFedAvg {
    fn name(&self) -> &'static str {
        "dpfedavg"
    }
    fn policy(&self) -> &RoundPolicy {
        &self.policy
    }
    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[ClientUpdate],
        _failures: &[Failure],
    ) -> Result<Params> {
        if results.is_empty() {
            return Err(FlError::NoResults { round });
        }
        let layout = global.layout();
        for u in results {
            u.validate(&layout)?;
        }
        let mut sum = global.zeros_like();
        for u in results {
            let mut delta = u.params.sub(global)?;
            clip_to_norm(&mut delta, self.dp.clip_norm);
            sum.add_scaled(&delta, 1.0)?;
        }
        // A distinct stream from sampling: flip the seed.
        let mut rng = round_rng(!self.policy.seed, round, Phase::Fit);
        add_gaussian_noise(
            &mut sum,
            self.dp.noise_multiplier * self.dp.clip_norm,
            &mut rng,
        )?;
        let mut out = global.clone();
        out.add_scaled(&sum, 1.0 / results.len() as f32)?;
        out.check_finite()?;
        Ok(out)
    }
}
