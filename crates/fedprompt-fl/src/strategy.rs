//! Strategies in the spirit of Flower's: who trains each round, with what
//! configuration, and how results are combined.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ParamsError;
use crate::error::{FlError, Result};
use crate::params::{Params, Tensor};
use crate::round_config::{keys, ClientConfig, ConfigValue};
use crate::sampling::{Phase, Sampling};
use crate::update::{weighted_metrics, ClientId, ClientUpdate, EvaluateResult, Failure, Metrics};

/// Sampling, quorum and timing rules shared by every strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundPolicy {
    /// Fraction `C` of available clients that train each round.
    pub fraction_fit: f64,
    /// Fraction of available clients that evaluate each round.
    pub fraction_evaluate: f64,
    /// Lower bound on clients sampled for training.
    pub min_fit_clients: usize,
    /// Lower bound on clients sampled for evaluation.
    pub min_evaluate_clients: usize,
    /// Do not start a round with fewer clients available.
    pub min_available_clients: usize,
    /// Quorum: fewest successful training results that still aggregate.
    pub min_fit_results: usize,
    /// Quorum for evaluation.
    pub min_evaluate_results: usize,
    /// Whether a round with failures may still aggregate.
    pub accept_failures: bool,
    /// Suggested time a client has to answer, in seconds.
    pub round_timeout_s: Option<f64>,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for RoundPolicy {
    fn default() -> Self {
        Self {
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_clients: 1,
            min_evaluate_clients: 1,
            min_available_clients: 1,
            min_fit_results: 1,
            min_evaluate_results: 1,
            accept_failures: true,
            round_timeout_s: None,
            seed: 0,
        }
    }
}

impl RoundPolicy {
    /// Checks every range.
    pub fn validate(&self) -> Result<()> {
        self.sampling(Phase::Fit).validate()?;
        self.sampling(Phase::Evaluate).validate()?;
        if self.min_fit_results == 0 || self.min_evaluate_results == 0 {
            return Err(FlError::Config("minimum results must be at least 1".into()));
        }
        if let Some(t) = self.round_timeout_s {
            if !(t > 0.0 && Duration::try_from_secs_f64(t).is_ok()) {
                return Err(FlError::Config(format!(
                    "round_timeout_s must be positive, got {t}"
                )));
            }
        }
        Ok(())
    }

    /// The sampling rule for `phase`.
    pub fn sampling(&self, phase: Phase) -> Sampling {
        match phase {
            Phase::Fit => Sampling {
                fraction: self.fraction_fit,
                min_clients: self.min_fit_clients,
                min_available: self.min_available_clients,
            },
            Phase::Evaluate => Sampling {
                fraction: self.fraction_evaluate,
                min_clients: self.min_evaluate_clients,
                min_available: self.min_available_clients,
            },
        }
    }

    /// Quorum for `phase`.
    pub fn min_results(&self, phase: Phase) -> usize {
        match phase {
            Phase::Fit => self.min_fit_results,
            Phase::Evaluate => self.min_evaluate_results,
        }
    }

    /// Why a round with `n_ok` results and `n_failed` failures must not aggregate, if it must not.
    pub fn quorum_shortfall(&self, phase: Phase, n_ok: usize, n_failed: usize) -> Option<String> {
        let need = self.min_results(phase);
        if n_ok < need {
            Some(format!("{n_ok} successful results, quorum is {need}"))
        } else if n_failed > 0 && !self.accept_failures {
            Some(format!("{n_failed} failures and accept_failures is false"))
        } else {
            None
        }
    }

    /// Builds the plan for `round` and `phase` by seeded sampling from `available`.
    pub fn plan(
        &self,
        round: u64,
        phase: Phase,
        available: &[ClientId],
        config: ClientConfig,
    ) -> Result<RoundPlan> {
        self.validate()?;
        let clients = self
            .sampling(phase)
            .sample(available, self.seed, round, phase)?;
        if clients.len() < self.min_results(phase) {
            return Err(FlError::Config(format!(
                "round {round}: {} clients sampled but the quorum needs {}",
                clients.len(),
                self.min_results(phase)
            )));
        }
        Ok(RoundPlan {
            round,
            phase,
            clients,
            config,
            deadline_hint: self
                .round_timeout_s
                .and_then(|t| Duration::try_from_secs_f64(t).ok()),
            min_results: self.min_results(phase),
        })
    }
}

/// What one round asks of whom.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// Round number (the first is 1).
    pub round: u64,
    /// Training or evaluation.
    pub phase: Phase,
    /// Selected clients, sorted.
    pub clients: Vec<ClientId>,
    /// Configuration sent to each of them.
    pub config: ClientConfig,
    /// Suggested time to wait for answers.
    pub deadline_hint: Option<Duration>,
    /// Fewest successful results that still aggregate.
    pub min_results: usize,
}

/// Aggregated evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalAggregate {
    /// Total examples evaluated.
    pub num_examples: u64,
    /// Clients that reported.
    pub n_results: usize,
    /// Clients that failed.
    pub n_failures: usize,
    /// Example-weighted mean of each metric.
    pub metrics: Metrics,
}

/// Serialisable server-side optimiser state kept by a strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StrategyState {
    /// No state (FedAvg, FedProx).
    #[default]
    Stateless,
    /// Moments of an adaptive server optimiser.
    FedOpt(FedOptState),
}

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

/// The server-side federated algorithm.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// Config `type` name (`"fedavg"`, ...).
    fn name(&self) -> &'static str;

    /// Sampling and quorum rules.
    fn policy(&self) -> &RoundPolicy;

    /// Configuration sent with training instructions (default: the round number).
    fn fit_config(&self, round: u64) -> ClientConfig {
        ClientConfig::from([(keys::ROUND.to_string(), ConfigValue::Int(round as i64))])
    }

    /// Which clients train in `round`, and with what configuration.
    fn configure_fit(&self, round: u64, available: &[ClientId]) -> Result<RoundPlan> {
        self.policy()
            .plan(round, Phase::Fit, available, self.fit_config(round))
    }

    /// Combines the round's updates into new global parameters.
    ///
    /// Every update is validated against `global` first; a malformed one is an
    /// [`FlError::InvalidUpdate`] naming client and tensor (drop it with
    /// [`crate::screen_updates`] and call again).
    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[ClientUpdate],
        failures: &[Failure],
    ) -> Result<Params>;

    /// Which clients evaluate in `round`.
    fn configure_evaluate(&self, round: u64, available: &[ClientId]) -> Result<RoundPlan> {
        let config =
            ClientConfig::from([(keys::ROUND.to_string(), ConfigValue::Int(round as i64))]);
        self.policy()
            .plan(round, Phase::Evaluate, available, config)
    }

    /// Example-weighted metrics over evaluation results.
    fn aggregate_evaluate(
        &self,
        round: u64,
        results: &[EvaluateResult],
        failures: &[Failure],
    ) -> Result<EvalAggregate> {
        if results.is_empty() {
            return Err(FlError::NoResults { round });
        }
        Ok(EvalAggregate {
            num_examples: results.iter().map(|r| r.num_examples).sum(),
            n_results: results.len(),
            n_failures: failures.len(),
            metrics: weighted_metrics(results.iter().map(|r| (r.num_examples, &r.metrics))),
        })
    }

    /// Server-side state for checkpoints.
    fn state(&self) -> StrategyState {
        StrategyState::Stateless
    }

    /// Restores state from a checkpoint.
    fn load_state(&mut self, state: StrategyState) -> Result<()> {
        match state {
            StrategyState::Stateless => Ok(()),
            other => Err(FlError::StrategyState(format!(
                "{} keeps no state but the checkpoint has {:?}",
                self.name(),
                state_kind(&other)
            ))),
        }
    }
}

fn state_kind(s: &StrategyState) -> &'static str {
    match s {
        StrategyState::Stateless => "stateless",
        StrategyState::FedOpt(_) => "fedopt",
    }
}

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

fn default_eta() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-9
}
fn default_yogi_eta() -> f64 {
    0.01
}
fn default_yogi_tau() -> f64 {
    1e-3
}
fn default_adagrad_beta1() -> f64 {
    0.0
}

/// A strategy chosen by `type = "..."` in a config file (defaults follow Flower).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Weighted FedAvg (Federated Prompt Averaging).
    FedAvg,
    /// FedProx.
    FedProx {
        /// Proximal coefficient `μ ≥ 0`.
        proximal_mu: f64,
    },
    /// FedAdam.
    FedAdam {
        /// Server learning rate.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity.
        #[serde(default = "default_tau")]
        tau: f64,
        /// Adam bias correction.
        #[serde(default)]
        bias_correction: bool,
    },
    /// FedYogi.
    FedYogi {
        /// Server learning rate.
        #[serde(default = "default_yogi_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity.
        #[serde(default = "default_yogi_tau")]
        tau: f64,
    },
    /// FedAdagrad.
    FedAdagrad {
        /// Server learning rate.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay.
        #[serde(default = "default_adagrad_beta1")]
        beta1: f64,
        /// Adaptivity.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// DP-FedAvg: clipped deltas, Gaussian noise on their sum (see [`crate::dp`]).
    DpFedAvg {
        /// Clipping norm `S`.
        clip_norm: f64,
        /// Noise multiplier `σ`.
        noise_multiplier: f64,
    },
}

impl StrategyConfig {
    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::FedAvg => "fedavg",
            StrategyConfig::FedProx { .. } => "fedprox",
            StrategyConfig::FedAdam { .. } => "fedadam",
            StrategyConfig::FedYogi { .. } => "fedyogi",
            StrategyConfig::FedAdagrad { .. } => "fedadagrad",
            StrategyConfig::DpFedAvg { .. } => "dpfedavg",
        }
    }

    /// Validates and builds the strategy.
    pub fn build(&self, policy: RoundPolicy) -> Result<Box<dyn Strategy>> {
        policy.validate()?;
        Ok(match *self {
            StrategyConfig::FedAvg => Box::new(FedAvg { policy }),
            StrategyConfig::FedProx { proximal_mu } => {
                if !(proximal_mu.is_finite() && proximal_mu >= 0.0) {
                    return Err(FlError::Config(format!(
                        "proximal_mu must be finite and >= 0, got {proximal_mu}"
                    )));
                }
                Box::new(FedProx {
                    policy,
                    proximal_mu,
                })
            }
            StrategyConfig::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
                bias_correction,
            } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Adam,
                FedOptParams {
                    eta,
                    beta1,
                    beta2,
                    tau,
                    bias_correction,
                },
            )?),
            StrategyConfig::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Yogi,
                FedOptParams {
                    eta,
                    beta1,
                    beta2,
                    tau,
                    bias_correction: false,
                },
            )?),
            StrategyConfig::FedAdagrad { eta, beta1, tau } => Box::new(FedOpt::new(
                policy,
                FedOptKind::Adagrad,
                FedOptParams {
                    eta,
                    beta1,
                    beta2: 0.0,
                    tau,
                    bias_correction: false,
                },
            )?),
            StrategyConfig::DpFedAvg {
                clip_norm,
                noise_multiplier,
            } => Box::new(crate::dp::DpFedAvg::new(
                policy,
                crate::dp::GaussianDp {
                    clip_norm,
                    noise_multiplier,
                },
            )?),
        })
    }
}
