//! Round state machine shared by the in-process simulator and the network server.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::comm::{CommLedger, Traffic};
use crate::error::{FlError, Result};
use crate::params::{Layout, Params};
use crate::sampling::Phase;
use crate::strategy::{ClientWeights, EvalAggregate, RoundPlan, Strategy, StrategyState};
use crate::update::{weighted_metrics, ClientId, ClientUpdate, EvaluateResult, Failure, Metrics};

/// Everything needed to resume a run: written by [`ServerState::save_checkpoint`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServerState {
    /// Completed training rounds.
    pub round: u64,
    /// Strategy `type` name that produced this state.
    pub strategy: String,
    /// Sampling seed (sampling is a pure function of seed, round and phase).
    pub seed: u64,
    /// Current global parameters.
    pub global: Params,
    /// Server optimiser state.
    pub strategy_state: StrategyState,
    /// Communication so far.
    pub ledger: CommLedger,
}

/// What one training round produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundOutcome {
    /// Round number.
    pub round: u64,
    /// Whether new global parameters were adopted (false: quorum not met, global unchanged).
    pub aggregated: bool,
    /// Why aggregation was skipped, when it was.
    pub skipped: Option<String>,
    /// Successful results.
    pub n_ok: usize,
    /// Failed, missing or rejected clients.
    pub n_failed: usize,
    /// The failures.
    pub failures: Vec<Failure>,
    /// Examples behind the aggregate.
    pub num_examples: u64,
    /// Example-weighted training metrics.
    pub metrics: Metrics,
    /// Bytes this round.
    pub traffic: Traffic,
}

/// What one evaluation round produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOutcome {
    /// Round number (evaluates the global after that many training rounds).
    pub round: u64,
    /// Aggregate, or `None` when the quorum was not met.
    pub aggregate: Option<EvalAggregate>,
    /// Why aggregation was skipped, when it was.
    pub skipped: Option<String>,
    /// The failures.
    pub failures: Vec<Failure>,
    /// Bytes this round.
    pub traffic: Traffic,
}

/// Collects one round's answers. Create with [`Server::begin_fit`] or [`Server::begin_evaluate`].
#[derive(Debug)]
pub struct RoundCollector<R> {
    plan: RoundPlan,
    layout: Layout,
    selected: BTreeSet<ClientId>,
    answered: BTreeSet<ClientId>,
    results: Vec<R>,
    failures: Vec<Failure>,
    ledger: CommLedger,
}

/// A training round in progress.
pub type FitRound = RoundCollector<ClientUpdate>;
/// An evaluation round in progress.
pub type EvalRound = RoundCollector<EvaluateResult>;

impl<R> RoundCollector<R> {
    fn new(plan: RoundPlan, layout: Layout) -> Self {
        Self {
            selected: plan.clients.iter().cloned().collect(),
            plan,
            layout,
            answered: BTreeSet::new(),
            results: Vec::new(),
            failures: Vec::new(),
            ledger: CommLedger::new(),
        }
    }

    /// The plan: round, selected clients, config, deadline hint.
    pub fn plan(&self) -> &RoundPlan {
        &self.plan
    }

    fn check_client(&self, client_id: &str) -> Result<()> {
        if !self.selected.contains(client_id) {
            return Err(FlError::UnknownClient {
                client_id: client_id.to_string(),
                round: self.plan.round,
            });
        }
        if self.answered.contains(client_id) {
            return Err(FlError::DuplicateClient {
                client_id: client_id.to_string(),
                round: self.plan.round,
            });
        }
        Ok(())
    }

    /// Records `bytes` sent to a selected client (instructions and global parameters).
    pub fn record_sent(&mut self, client_id: &str, bytes: u64) -> Result<()> {
        if !self.selected.contains(client_id) {
            return Err(FlError::UnknownClient {
                client_id: client_id.to_string(),
                round: self.plan.round,
            });
        }
        self.ledger
            .record_down(self.plan.round, self.plan.phase, client_id, bytes);
        Ok(())
    }

    /// Records `bytes` received from a selected client outside a submission (the messages of
    /// a multi-stage exchange such as secure aggregation), so the ledger counts them.
    pub fn record_received(&mut self, client_id: &str, bytes: u64) -> Result<()> {
        if !self.selected.contains(client_id) {
            return Err(FlError::UnknownClient {
                client_id: client_id.to_string(),
                round: self.plan.round,
            });
        }
        self.ledger
            .record_up(self.plan.round, self.plan.phase, client_id, bytes);
        Ok(())
    }

    /// Records that a selected client failed (timeout, disconnect, error).
    pub fn fail(&mut self, client_id: &str, reason: impl Into<String>) -> Result<()> {
        self.check_client(client_id)?;
        self.answered.insert(client_id.to_string());
        self.failures.push(Failure::new(client_id, reason));
        Ok(())
    }

    /// Selected clients that have neither reported nor failed.
    pub fn pending(&self) -> Vec<ClientId> {
        self.selected.difference(&self.answered).cloned().collect()
    }

    /// Whether every selected client has answered.
    pub fn is_complete(&self) -> bool {
        self.answered.len() == self.selected.len()
    }

    /// Results accepted so far.
    pub fn results(&self) -> &[R] {
        &self.results
    }

    /// Failures so far.
    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    fn close(&mut self) {
        for c in self.pending() {
            self.failures
                .push(Failure::new(c.clone(), "no answer before the round closed"));
            self.answered.insert(c);
        }
    }
}

impl FitRound {
    /// Accepts an update whose upload took `bytes_up` bytes.
    ///
    /// A malformed update is recorded as a failure and returned as
    /// [`FlError::InvalidUpdate`] (the round goes on). Unknown or duplicate
    /// clients are errors and change nothing.
    pub fn submit(&mut self, update: ClientUpdate, bytes_up: u64) -> Result<()> {
        self.check_client(&update.client_id)?;
        self.answered.insert(update.client_id.clone());
        self.ledger.record_up(
            self.plan.round,
            self.plan.phase,
            &update.client_id,
            bytes_up,
        );
        if let Err(e) = update.validate(&self.layout) {
            self.failures
                .push(Failure::new(update.client_id.clone(), e.to_string()));
            return Err(e);
        }
        self.results.push(update);
        Ok(())
    }

    /// Accepts an update as it came over the wire (safetensors bytes), counting its length.
    pub fn submit_bytes(
        &mut self,
        client_id: &str,
        bytes: &[u8],
        num_examples: u64,
        metrics: Metrics,
    ) -> Result<()> {
        self.check_client(client_id)?;
        let params =
            Params::from_safetensors(bytes).map_err(|e| FlError::invalid_update(client_id, e));
        self.settle(client_id, bytes.len() as u64, params, num_examples, metrics)
    }

    /// Accepts a compressed update as it came over the wire: `bytes` is the client's delta
    /// from `global` encoded with `codec` (see [`crate::codec`]); the update submitted is
    /// `global + decode(bytes)`, and `bytes.len()` is counted as the upload.
    ///
    /// Bytes that are not a valid `codec` encoding of the round's layout (another codec's
    /// tag, plain parameters, a wrong tensor...) are recorded as the client's failure and
    /// returned as [`FlError::Codec`] naming the client and the codec expected.
    pub fn submit_encoded(
        &mut self,
        client_id: &str,
        bytes: &[u8],
        codec: &Codec,
        global: &Params,
        num_examples: u64,
        metrics: Metrics,
    ) -> Result<()> {
        self.check_client(client_id)?;
        let params = codec
            .decode(bytes, &self.layout)
            .and_then(|delta| {
                let mut params = global.clone();
                params.add_scaled(&delta, 1.0)?;
                Ok(params)
            })
            .map_err(|e| {
                let why = match e {
                    FlError::Codec(m) => m,
                    e => e.to_string(),
                };
                FlError::Codec(format!(
                    "client `{client_id}` sent an update that is not a `{}` encoding of the \
                     round's delta ({why}); this round's uploads must be encoded with `{}`",
                    codec.name(),
                    codec.name()
                ))
            });
        self.settle(client_id, bytes.len() as u64, params, num_examples, metrics)
    }

    /// Submits the parameters read from `len` wire bytes, or, when they could not be read,
    /// records the client as answered with a failure (its bytes still counted as uploaded).
    fn settle(
        &mut self,
        client_id: &str,
        len: u64,
        params: Result<Params>,
        num_examples: u64,
        metrics: Metrics,
    ) -> Result<()> {
        match params {
            Ok(params) => self.submit(
                ClientUpdate {
                    client_id: client_id.to_string(),
                    params,
                    num_examples,
                    metrics,
                },
                len,
            ),
            Err(e) => {
                self.answered.insert(client_id.to_string());
                self.ledger
                    .record_up(self.plan.round, self.plan.phase, client_id, len);
                self.failures.push(Failure::new(client_id, e.to_string()));
                Err(e)
            }
        }
    }
}

impl EvalRound {
    /// Accepts an evaluation result whose upload took `bytes_up` bytes.
    pub fn submit(&mut self, result: EvaluateResult, bytes_up: u64) -> Result<()> {
        self.check_client(&result.client_id)?;
        self.answered.insert(result.client_id.clone());
        self.ledger.record_up(
            self.plan.round,
            self.plan.phase,
            &result.client_id,
            bytes_up,
        );
        self.results.push(result);
        Ok(())
    }
}

/// The server side of a federation: global parameters, strategy, round counter, ledger.
#[derive(Debug)]
pub struct Server {
    round: u64,
    global: Params,
    strategy: Box<dyn Strategy>,
    ledger: CommLedger,
    weights: ClientWeights,
}

impl Server {
    /// Starts at round 0 with `initial` global parameters (`h_g`).
    pub fn new(initial: Params, strategy: Box<dyn Strategy>) -> Result<Self> {
        initial.check_finite()?;
        strategy.policy().validate()?;
        Ok(Self {
            round: 0,
            global: initial,
            strategy,
            ledger: CommLedger::new(),
            weights: ClientWeights::default(),
        })
    }

    /// Caps the example counts clients claim before every aggregation (see [`ClientWeights`]).
    pub fn with_client_weights(mut self, weights: ClientWeights) -> Self {
        self.weights = weights;
        self
    }

    /// The caps on claimed example counts.
    pub fn client_weights(&self) -> &ClientWeights {
        &self.weights
    }

    /// Resumes from a checkpoint; the strategy must be of the same type and seed.
    pub fn from_state(state: ServerState, mut strategy: Box<dyn Strategy>) -> Result<Self> {
        if state.strategy != strategy.name() {
            return Err(FlError::Checkpoint(format!(
                "checkpoint was written by strategy `{}`, configured strategy is `{}`",
                state.strategy,
                strategy.name()
            )));
        }
        if state.seed != strategy.policy().seed {
            return Err(FlError::Checkpoint(format!(
                "checkpoint seed {} differs from configured seed {}",
                state.seed,
                strategy.policy().seed
            )));
        }
        state.global.check_finite()?;
        strategy.load_state(state.strategy_state)?;
        Ok(Self {
            round: state.round,
            global: state.global,
            strategy,
            ledger: state.ledger,
            weights: ClientWeights::default(),
        })
    }

    /// A snapshot for checkpointing.
    pub fn state(&self) -> ServerState {
        ServerState {
            round: self.round,
            strategy: self.strategy.name().to_string(),
            seed: self.strategy.policy().seed,
            global: self.global.clone(),
            strategy_state: self.strategy.state(),
            ledger: self.ledger.clone(),
        }
    }

    /// Completed training rounds.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Current global parameters.
    pub fn global(&self) -> &Params {
        &self.global
    }

    /// Replaces the global parameters (same layout, finite), e.g. after server-side processing.
    pub fn set_global(&mut self, params: Params) -> Result<()> {
        params.check_same_layout(&self.global)?;
        params.check_finite()?;
        self.global = params;
        Ok(())
    }

    /// The strategy.
    pub fn strategy(&self) -> &dyn Strategy {
        self.strategy.as_ref()
    }

    /// Communication so far.
    pub fn ledger(&self) -> &CommLedger {
        &self.ledger
    }

    /// Plans training round `round() + 1` over the `available` clients.
    pub fn begin_fit(&self, available: &[ClientId]) -> Result<FitRound> {
        let plan = self.strategy.configure_fit(self.round + 1, available)?;
        Ok(RoundCollector::new(plan, self.global.layout()))
    }

    /// Closes a training round: missing clients become failures, the quorum is
    /// checked, and on success the aggregate becomes the new global.
    ///
    /// The round counter advances even when the quorum is not met or the answering
    /// clients claimed zero examples in total (global unchanged, `aggregated == false`).
    /// On `Err`, nothing changes.
    pub fn finish_fit(&mut self, mut fit: FitRound) -> Result<RoundOutcome> {
        let round = fit.plan.round;
        if round != self.round + 1 || fit.plan.phase != Phase::Fit {
            return Err(FlError::RoundMismatch {
                expected: self.round + 1,
                got: round,
            });
        }
        fit.close();
        let n_ok = fit.results.len();
        let n_failed = fit.failures.len();
        let num_examples: u64 = fit.results.iter().map(|u| u.num_examples).sum();
        let skipped = self
            .strategy
            .policy()
            .quorum_shortfall(Phase::Fit, n_ok, n_failed)
            .or_else(|| {
                // Weights are example counts: with none there is nothing to average.
                (num_examples == 0)
                    .then(|| format!("the {n_ok} answering client(s) claimed 0 training examples"))
            });
        let mut outcome = RoundOutcome {
            round,
            aggregated: false,
            skipped: None,
            n_ok,
            n_failed,
            failures: Vec::new(),
            num_examples,
            metrics: weighted_metrics(fit.results.iter().map(|u| (u.num_examples, &u.metrics))),
            traffic: fit.ledger.round_total(round),
        };
        if let Some(why) = skipped {
            outcome.skipped = Some(why);
        } else {
            // Weights are the claims capped by the coordinator's rules.
            self.weights.apply(&mut fit.results);
            let new_global =
                self.strategy
                    .aggregate_fit(round, &self.global, &fit.results, &fit.failures)?;
            self.global = new_global;
            outcome.aggregated = true;
        }
        outcome.failures = fit.failures;
        self.ledger.merge(&fit.ledger);
        self.round = round;
        Ok(outcome)
    }

    /// Plans an evaluation of the current global over the `available` clients.
    pub fn begin_evaluate(&self, available: &[ClientId]) -> Result<EvalRound> {
        let plan = self.strategy.configure_evaluate(self.round, available)?;
        Ok(RoundCollector::new(plan, self.global.layout()))
    }

    /// Closes an evaluation round and aggregates its metrics.
    pub fn finish_evaluate(&mut self, mut ev: EvalRound) -> Result<EvalOutcome> {
        let round = ev.plan.round;
        if round != self.round || ev.plan.phase != Phase::Evaluate {
            return Err(FlError::RoundMismatch {
                expected: self.round,
                got: round,
            });
        }
        ev.close();
        let skipped = self.strategy.policy().quorum_shortfall(
            Phase::Evaluate,
            ev.results.len(),
            ev.failures.len(),
        );
        let aggregate = if skipped.is_none() {
            Some(
                self.strategy
                    .aggregate_evaluate(round, &ev.results, &ev.failures)?,
            )
        } else {
            None
        };
        self.ledger.merge(&ev.ledger);
        Ok(EvalOutcome {
            round,
            aggregate,
            skipped,
            failures: ev.failures,
            traffic: ev.ledger.total(),
        })
    }
}
