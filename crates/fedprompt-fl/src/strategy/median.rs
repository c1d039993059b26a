//! Coordinate-wise median (Yin et al. 2018): robust to a minority of lying clients.

use super::coordinatewise::{aggregate_coordinatewise, median_sorted};
use super::{RoundPolicy, Strategy};
use crate::error::Result;
use crate::params::Params;
use crate::update::{ClientUpdate, Failure};

/// Each value of the new global is the median of that value over the round's updates
/// (unweighted: example counts are ignored). Fewer than half of the clients lying cannot
/// move it outside the range of the honest values.
#[derive(Clone, Debug, Default)]
pub struct Median {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
}

impl Strategy for Median {
    fn name(&self) -> &'static str {
        "median"
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
        aggregate_coordinatewise(round, global, results, median_sorted)
    }
}
