//! FedProx: FedAvg aggregation plus a proximal term in each client's loss.

use super::{fedavg, RoundPolicy, Strategy};
use crate::error::Result;
use crate::params::Params;
use crate::round_config::{keys, ClientConfig, ConfigValue};
use crate::update::{ClientUpdate, Failure};

/// FedProx: FedAvg aggregation; clients add `μ/2 ‖w − w_global‖²` to their loss.
#[derive(Clone, Debug, Default)]
pub struct FedProx {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
    /// Proximal coefficient `μ ≥ 0`, sent to clients as `proximal_mu`.
    pub proximal_mu: f64,
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }
    fn policy(&self) -> &RoundPolicy {
        &self.policy
    }
    fn fit_config(&self, round: u64) -> ClientConfig {
        ClientConfig::from([
            (keys::ROUND.to_string(), ConfigValue::Int(round as i64)),
            (
                keys::PROXIMAL_MU.to_string(),
                ConfigValue::Float(self.proximal_mu),
            ),
        ])
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

/// The proximal term `μ/2 ‖w − w_global‖²`, in f64.
pub fn proximal_term(local: &Params, global: &Params, mu: f64) -> Result<f64> {
    local.check_same_layout(global)?;
    let mut s = 0.0f64;
    for (name, t) in local.iter() {
        if let Some(g) = global.get(name) {
            for (&a, &b) in t.data().iter().zip(g.data()) {
                let d = f64::from(a) - f64::from(b);
                s += d * d;
            }
        }
    }
    Ok(0.5 * mu * s)
}

/// Adds the proximal term's gradient `μ (w − w_global)` to `grads` in place.
pub fn add_proximal_grad(
    grads: &mut Params,
    local: &Params,
    global: &Params,
    mu: f64,
) -> Result<()> {
    local.check_same_layout(global)?;
    grads.check_same_layout(global)?;
    for (name, g) in grads.iter_mut() {
        if let (Some(w), Some(w0)) = (local.get(name), global.get(name)) {
            for ((gi, &a), &b) in g.data_mut().iter_mut().zip(w.data()).zip(w0.data()) {
                *gi = (f64::from(*gi) + mu * (f64::from(a) - f64::from(b))) as f32;
            }
        }
    }
    Ok(())
}
