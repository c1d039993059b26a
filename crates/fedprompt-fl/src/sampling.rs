//! Seeded client sampling: `m = max(⌊C·K⌋, min_clients)` of the `K` available clients.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::{FlError, Result};
use crate::update::ClientId;

/// Which of the two per-round samplings a stream belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Local training.
    Fit,
    /// Evaluation of the global parameters.
    Evaluate,
}

/// How many clients to sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Fraction `C ∈ (0, 1]` of available clients.
    pub fraction: f64,
    /// Lower bound on the number sampled (`≥ 1`).
    pub min_clients: usize,
    /// Refuse to sample when fewer clients are available.
    pub min_available: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            fraction: 1.0,
            min_clients: 1,
            min_available: 1,
        }
    }
}

impl Sampling {
    /// Checks the static ranges (`C ∈ (0,1]`, minimums `≥ 1`).
    pub fn validate(&self) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(FlError::Config(format!(
                "client fraction must be in (0, 1], got {}",
                self.fraction
            )));
        }
        if self.min_clients == 0 {
            return Err(FlError::Config("min_clients must be at least 1".into()));
        }
        if self.min_available == 0 {
            return Err(FlError::Config("min_available must be at least 1".into()));
        }
        Ok(())
    }

    /// Number sampled out of `k` available: `max(⌊C·k⌋, min_clients)`.
    pub fn num_sampled(&self, k: usize) -> Result<usize> {
        self.validate()?;
        if k == 0 {
            return Err(FlError::Config("no clients available (K = 0)".into()));
        }
        let required = self.min_available.max(self.min_clients);
        if required > k {
            return Err(FlError::NotEnoughClients {
                available: k,
                required,
            });
        }
        // The epsilon absorbs products like 0.29 * 100 = 28.999999999999996.
        let m = (self.fraction * k as f64 + 1e-9).floor() as usize;
        Ok(m.clamp(self.min_clients, k))
    }

    /// Samples without replacement, deterministically per `(seed, round, phase)`.
    ///
    /// The order of `available` does not matter (it is sorted and deduplicated);
    /// the result is sorted.
    pub fn sample(
        &self,
        available: &[ClientId],
        seed: u64,
        round: u64,
        phase: Phase,
    ) -> Result<Vec<ClientId>> {
        let mut pool: Vec<&ClientId> = available.iter().collect();
        pool.sort();
        pool.dedup();
        let m = self.num_sampled(pool.len())?;
        let mut rng = round_rng(seed, round, phase);
        let mut idx = rand::seq::index::sample(&mut rng, pool.len(), m).into_vec();
        idx.sort_unstable();
        Ok(idx.into_iter().map(|i| pool[i].clone()).collect())
    }
}

/// The RNG for one round's sampling: ChaCha20 seeded by `seed`, stream by round and phase.
pub fn round_rng(seed: u64, round: u64, phase: Phase) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let phase_bit = match phase {
        Phase::Fit => 0,
        Phase::Evaluate => 1u64 << 63,
    };
    rng.set_stream(round ^ phase_bit);
    rng
}
