//! [`DeterministicTrainer`]: a cheap, exactly predictable client for tests and load runs.

use std::time::Duration;

use fedprompt_fl::{Metrics, Params};

use super::{EvalResult, FitResult, LocalTrainer, Task, TrainerError};

/// A cheap deterministic trainer for tests and load runs: every value moves
/// halfway to a client-specific target, `x ← x/2 + c·((i mod 7) − 3) + r/1000`
/// with `c = (seed + 1)/100` and `r` the round.
#[derive(Clone, Debug)]
pub struct DeterministicTrainer {
    /// Makes this client's update distinct.
    pub seed: u64,
    /// Reported example count (the aggregation weight).
    pub num_examples: u64,
    /// Simulated training time.
    pub delay: Duration,
}

impl DeterministicTrainer {
    /// A trainer with no delay.
    pub fn new(seed: u64, num_examples: u64) -> Self {
        Self {
            seed,
            num_examples,
            delay: Duration::ZERO,
        }
    }

    /// The update this trainer returns for `global` in `round`.
    pub fn apply(&self, global: &Params, round: u64) -> Params {
        let c = (self.seed + 1) as f32 / 100.0;
        let r = round as f32 / 1000.0;
        let mut out = global.clone();
        for (_, t) in out.iter_mut() {
            for (i, x) in t.data_mut().iter_mut().enumerate() {
                *x = *x * 0.5 + c * ((i % 7) as f32 - 3.0) + r;
            }
        }
        out
    }
}

impl LocalTrainer for DeterministicTrainer {
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(FitResult {
            params: self.apply(task.global, task.round),
            num_examples: self.num_examples,
            metrics: Metrics::from([("train_loss".to_string(), 1.0 / (1.0 + self.seed as f64))]),
        })
    }

    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        Ok(EvalResult {
            num_examples: self.num_examples,
            metrics: Metrics::from([("accuracy".to_string(), 1.0 / (1.0 + task.global.l2_norm()))]),
        })
    }
}
