//! Coordinate-wise trimmed mean (Yin et al. 2018).

use super::coordinatewise::{aggregate_coordinatewise, trimmed_mean_sorted};
use super::{RoundPolicy, Strategy};
use crate::error::{FlError, Result};
use crate::params::Params;
use crate::update::{ClientUpdate, Failure};

/// Each value of the new global is the mean of that value over the round's updates after
/// dropping the `⌊β·n⌋` largest and `⌊β·n⌋` smallest (unweighted: example counts are
/// ignored). Up to `⌊β·n⌋` lying clients cannot move it outside the honest values' range.
#[derive(Clone, Debug)]
pub struct TrimmedMean {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
    /// `β ∈ [0, 0.5)`: fraction trimmed from each end.
    pub trim_fraction: f64,
}

impl TrimmedMean {
    /// Validates `trim_fraction` and builds.
    pub fn new(policy: RoundPolicy, trim_fraction: f64) -> Result<Self> {
        if !(0.0..0.5).contains(&trim_fraction) {
            return Err(FlError::Config(format!(
                "trim_fraction must be in [0, 0.5) (the fraction of values dropped from each \
                 end), got {trim_fraction}"
            )));
        }
        Ok(Self {
            policy,
            trim_fraction,
        })
    }

    /// Values dropped from each end with `n` updates.
    pub fn trimmed(&self, n: usize) -> usize {
        (self.trim_fraction * n as f64).floor() as usize
    }
}

impl Strategy for TrimmedMean {
    fn name(&self) -> &'static str {
        "trimmed-mean"
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
        let k = self.trimmed(results.len());
        aggregate_coordinatewise(round, global, results, |v| trimmed_mean_sorted(v, k))
    }
}
