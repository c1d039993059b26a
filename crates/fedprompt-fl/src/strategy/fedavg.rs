//! Weighted FedAvg: the example-weighted average every averaging strategy builds on.

use std::collections::BTreeMap;

use super::{RoundPolicy, Strategy};
use crate::error::{FlError, ParamsError, Result};
use crate::params::{Params, Tensor};
use crate::update::{ClientUpdate, Failure};

/// Weighted average `Σ_k |D_k| h_k / Σ_k |D_k|` in f64, per tensor.
///
/// Validates every update against `global` (layout and finiteness) first.
pub fn weighted_average_f64(
    round: u64,
    global: &Params,
    results: &[ClientUpdate],
) -> Result<BTreeMap<String, Vec<f64>>> {
    if results.is_empty() {
        return Err(FlError::NoResults { round });
    }
    let layout = global.layout();
    for u in results {
        u.validate(&layout)?;
    }
    let total: u128 = results.iter().map(|u| u128::from(u.num_examples)).sum();
    if total == 0 {
        return Err(FlError::ZeroExamples { round });
    }
    let total = total as f64;
    let mut acc: BTreeMap<String, Vec<f64>> = global
        .iter()
        .map(|(k, t)| (k.to_string(), vec![0.0; t.len()]))
        .collect();
    for u in results {
        let w = u.num_examples as f64;
        if w == 0.0 {
            continue;
        }
        for (name, t) in u.params.iter() {
            // Layout was validated above, so the entry exists with the same length.
            if let Some(a) = acc.get_mut(name) {
                for (s, &x) in a.iter_mut().zip(t.data()) {
                    *s += w * f64::from(x);
                }
            }
        }
    }
    for a in acc.values_mut() {
        for s in a.iter_mut() {
            *s /= total;
        }
    }
    Ok(acc)
}

fn to_params(global: &Params, values: BTreeMap<String, Vec<f64>>) -> Result<Params> {
    let mut out = Params::new();
    for (name, v) in values {
        let shape = global
            .get(&name)
            .map(|t| t.shape().to_vec())
            .ok_or_else(|| ParamsError::Missing(name.clone()))?;
        out.insert(
            name,
            Tensor::new(shape, v.into_iter().map(|x| x as f32).collect())?,
        );
    }
    Ok(out)
}

/// Weighted FedAvg: Federated Prompt Averaging (Algorithm 1 of Zhao et al.).
pub fn fedavg(round: u64, global: &Params, results: &[ClientUpdate]) -> Result<Params> {
    let avg = weighted_average_f64(round, global, results)?;
    let out = to_params(global, avg)?;
    out.check_finite()?;
    Ok(out)
}

/// Weighted federated averaging.
#[derive(Clone, Debug, Default)]
pub struct FedAvg {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
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
        fedavg(round, global, results)
    }
}
