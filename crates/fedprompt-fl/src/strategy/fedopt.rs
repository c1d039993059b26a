//! Adaptive server optimisers (FedAdam, FedYogi, FedAdagrad) over the averaged
//! pseudo-gradient, with their checkpointable moments.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{weighted_average_f64, RoundPolicy, Strategy, StrategyState};
use crate::error::{FlError, Result};
use crate::params::{Params, Tensor};
use crate::update::{ClientUpdate, Failure};

/// Moments of FedAdam/FedYogi/FedAdagrad, per tensor, in f64.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FedOptState {
    /// Server steps taken.
    pub t: u64,
    /// First moment `m`.
    pub m: BTreeMap<String, Vec<f64>>,
    /// Second moment `v`.
    pub v: BTreeMap<String, Vec<f64>>,
}

/// Which adaptive server optimiser (Reddi et al. 2021).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FedOptKind {
    /// `v ← β2 v + (1−β2) Δ²`.
    Adam,
    /// `v ← v − (1−β2) Δ² sign(v − Δ²)`.
    Yogi,
    /// `v ← v + Δ²`.
    Adagrad,
}

/// Hyperparameters of the adaptive server optimisers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FedOptParams {
    /// Server learning rate `η`.
    pub eta: f64,
    /// First-moment decay `β1 ∈ [0, 1)`.
    pub beta1: f64,
    /// Second-moment decay `β2 ∈ [0, 1)` (unused by Adagrad).
    pub beta2: f64,
    /// Adaptivity `τ > 0`.
    pub tau: f64,
    /// Adam-style bias correction `η·√(1−β2^t)/(1−β1^t)` (Flower's FedAdam does this; Reddi et al. do not).
    pub bias_correction: bool,
}

impl FedOptParams {
    fn validate(&self) -> Result<()> {
        let bad =
            |what: &str, v: f64| Err(FlError::Config(format!("fedopt {what} out of range: {v}")));
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return bad("eta", self.eta);
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1);
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2);
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return bad("tau", self.tau);
        }
        Ok(())
    }
}

/// FedAdam / FedYogi / FedAdagrad: the averaged update is a pseudo-gradient
/// `Δ = avg − global` fed to a server-side adaptive optimiser.
#[derive(Clone, Debug)]
pub struct FedOpt {
    /// Sampling and quorum rules.
    pub policy: RoundPolicy,
    /// Which optimiser.
    pub kind: FedOptKind,
    /// Hyperparameters.
    pub params: FedOptParams,
    state: FedOptState,
}

impl FedOpt {
    /// A fresh optimiser (zero moments).
    pub fn new(policy: RoundPolicy, kind: FedOptKind, params: FedOptParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            policy,
            kind,
            params,
            state: FedOptState::default(),
        })
    }

    /// Current moments.
    pub fn opt_state(&self) -> &FedOptState {
        &self.state
    }
}

fn sign0(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &'static str {
        match self.kind {
            FedOptKind::Adam => "fedadam",
            FedOptKind::Yogi => "fedyogi",
            FedOptKind::Adagrad => "fedadagrad",
        }
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
        let avg = weighted_average_f64(round, global, results)?;
        let p = self.params;
        // Moments restored from a checkpoint must match the global layout.
        for (name, t) in global.iter() {
            for (mom, which) in [(&self.state.m, "m"), (&self.state.v, "v")] {
                if let Some(x) = mom.get(name) {
                    if x.len() != t.len() {
                        return Err(FlError::StrategyState(format!(
                            "moment {which} of `{name}` has {} values, tensor has {}",
                            x.len(),
                            t.len()
                        )));
                    }
                }
            }
        }
        let mut m = self.state.m.clone();
        let mut v = self.state.v.clone();
        let t_next = self.state.t + 1;
        let eta = if p.bias_correction {
            let t = t_next as f64;
            p.eta * (1.0 - p.beta2.powf(t)).sqrt() / (1.0 - p.beta1.powf(t))
        } else {
            p.eta
        };
        let mut out = Params::new();
        for (name, x) in global.iter() {
            let a = &avg[name];
            let mt = m
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; x.len()]);
            let vt = v
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; x.len()]);
            let mut data = Vec::with_capacity(x.len());
            for i in 0..x.len() {
                let xi = f64::from(x.data()[i]);
                let d = a[i] - xi;
                let d2 = d * d;
                mt[i] = p.beta1 * mt[i] + (1.0 - p.beta1) * d;
                vt[i] = match self.kind {
                    FedOptKind::Adam => p.beta2 * vt[i] + (1.0 - p.beta2) * d2,
                    FedOptKind::Yogi => vt[i] - (1.0 - p.beta2) * d2 * sign0(vt[i] - d2),
                    FedOptKind::Adagrad => vt[i] + d2,
                };
                data.push((xi + eta * mt[i] / (vt[i].max(0.0).sqrt() + p.tau)) as f32);
            }
            out.insert(name.to_string(), Tensor::new(x.shape().to_vec(), data)?);
        }
        // Drop moments of tensors the global no longer has.
        m.retain(|k, _| global.get(k).is_some());
        v.retain(|k, _| global.get(k).is_some());
        out.check_finite()?;
        self.state = FedOptState { t: t_next, m, v };
        Ok(out)
    }
    fn state(&self) -> StrategyState {
        StrategyState::FedOpt(self.state.clone())
    }
    fn load_state(&mut self, state: StrategyState) -> Result<()> {
        match state {
            StrategyState::FedOpt(s) => {
                if s.m.keys().ne(s.v.keys())
                    || s.m
                        .values()
                        .zip(s.v.values())
                        .any(|(a, b)| a.len() != b.len())
                {
                    return Err(FlError::StrategyState(
                        "first and second moments differ in layout".into(),
                    ));
                }
                if s.m
                    .values()
                    .chain(s.v.values())
                    .flatten()
                    .any(|x| !x.is_finite())
                {
                    return Err(FlError::StrategyState("non-finite moment".into()));
                }
                self.state = s;
                Ok(())
            }
            StrategyState::Stateless => {
                self.state = FedOptState::default();
                Ok(())
            }
        }
    }
}
