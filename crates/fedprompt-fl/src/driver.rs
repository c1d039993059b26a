//! The round loop, written once: the simulator and the network server both run
//! [`run_rounds`] over their own [`RoundClients`].
//!
//! Like Flower's `Grid` beside `Strategy.start`: the transport only says which clients are
//! there and carries one phase (training or evaluation) to the selected clients and back; the
//! loop decides what happens between phases — sampling, round configuration, quorum,
//! aggregation, evaluation schedule, what counts as a failed run — so both follow the same
//! rules.

use crate::error::FlError;
use crate::params::Params;
use crate::privacy::PrivacyAccounting;
use crate::round_config::{merge_config, ClientConfig};
use crate::server::{EvalOutcome, EvalRound, FitRound, RoundOutcome, Server};
use crate::update::ClientId;

/// Whether the run goes on after a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop after this round (as if interrupted; the state saved so far stays).
    Stop,
}

/// A phase carried out by the transport.
#[derive(Debug)]
pub struct Collected<R> {
    /// The round with every answer the transport received in it.
    pub round: R,
    /// The run was asked to stop while the phase was open; the round is abandoned.
    pub stopped: bool,
}

/// The clients of a federation as the round loop sees them.
///
/// The transport carries one phase at a time: [`RoundClients::fit`] hands the global
/// parameters and the round configuration to the selected clients and records their answers
/// (or failures) in the [`FitRound`]; the loop closes the round. The hooks let the
/// transport report, evaluate centrally and checkpoint between rounds.
pub trait RoundClients {
    /// The transport's error; the federated core's errors convert into it.
    type Error: From<FlError>;

    /// Waits until at least `min` clients are available and returns them; `None` when the
    /// run is to stop.
    fn wait_available(&mut self, min: usize) -> Result<Option<Vec<ClientId>>, Self::Error>;

    /// The clients available now (for evaluation, which does not wait).
    fn available(&mut self) -> Vec<ClientId>;

    /// A round could not be planned (for example fewer clients than the strategy needs).
    /// Return `true` to wait and plan again, `false` to end the run with the error.
    fn retry_plan(&mut self, error: &FlError) -> Result<bool, Self::Error> {
        let _ = error;
        Ok(false)
    }

    /// Carries a training round to its selected clients and collects their answers.
    fn fit(
        &mut self,
        round: FitRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<FitRound>, Self::Error>;

    /// Carries an evaluation round to its selected clients and collects their answers.
    fn evaluate(
        &mut self,
        round: EvalRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<EvalRound>, Self::Error>;

    /// A training round was closed (aggregated or not).
    fn on_fit(&mut self, server: &Server, outcome: &RoundOutcome) -> Result<(), Self::Error> {
        let _ = (server, outcome);
        Ok(())
    }

    /// A round could not be aggregated (`attempt` in a row); the same round is tried again.
    fn on_fit_error(&mut self, round: u64, error: &FlError, attempt: u32) {
        let _ = (round, error, attempt);
    }

    /// An evaluation round was closed, or could not be planned or aggregated.
    fn on_evaluate(
        &mut self,
        server: &Server,
        round: u64,
        outcome: Result<&EvalOutcome, &FlError>,
    ) -> Result<(), Self::Error> {
        let _ = (server, round, outcome);
        Ok(())
    }

    /// The round is over (after its evaluation): report, evaluate centrally, checkpoint.
    fn on_round_end(&mut self, server: &Server) -> Result<Flow, Self::Error> {
        let _ = server;
        Ok(Flow::Continue)
    }
}

/// The rules of a run.
#[derive(Clone, Debug, Default)]
pub struct RunRules {
    /// Train until the server has completed this many rounds.
    pub rounds: u64,
    /// Federated evaluation after every this many rounds and after the last (0: never).
    pub evaluate_every: u64,
    /// The operator's round configuration (epochs, learning rate...); the strategy's keys
    /// (`round`, `proximal_mu`) go over it.
    pub client_config: ClientConfig,
    /// DP accounting: with a `max_epsilon`, the run stops before the round that would
    /// exceed it.
    pub privacy: Option<PrivacyAccounting>,
}

/// Rounds in a row whose aggregation may fail before the run ends with the error.
pub const MAX_AGGREGATION_ATTEMPTS: u32 = 3;

/// What a run of [`run_rounds`] did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Training rounds closed by this call.
    pub outcomes: Vec<RoundOutcome>,
    /// Evaluation rounds closed by this call.
    pub evaluations: Vec<EvalOutcome>,
    /// Whether the run was stopped before `rounds`.
    pub stopped: bool,
    /// Why the privacy budget stopped the run, when it did (then `stopped` is true).
    pub budget_stop: Option<String>,
}

/// Runs training rounds until `server.round() == rules.rounds`, a stop, or the privacy budget
/// (`rules.privacy`'s `max_epsilon`, checked before each round): plan the round over
/// the available clients, carry it, close it (quorum, aggregation), evaluate when due, and
/// call the hooks.
///
/// A round whose quorum is not met, or whose answering clients all claimed zero examples, is a
/// failed round: the global stays as it was and the run goes on. A round whose aggregation
/// fails [`MAX_AGGREGATION_ATTEMPTS`] times in a row ends the run with the error. A run that
/// closed rounds without aggregating any of them ends with [`FlError::NothingAggregated`]
/// (unless it was stopped: a stop is a shutdown, not a failure).
pub fn run_rounds<C: RoundClients>(
    server: &mut Server,
    clients: &mut C,
    rules: &RunRules,
) -> Result<RunReport, C::Error> {
    let policy = server.strategy().policy().clone();
    let min = policy
        .min_available_clients
        .max(policy.min_fit_results)
        .max(1);
    let mut report = RunReport::default();
    let mut attempts = 0u32;
    while server.round() < rules.rounds {
        // Every closed round counts (aggregated or not): the bound stays conservative.
        if let Some(why) = rules
            .privacy
            .as_ref()
            .and_then(|p| p.stop_before(server.round() + 1))
        {
            report.budget_stop = Some(why);
            report.stopped = true;
            break;
        }
        let Some(available) = clients.wait_available(min)? else {
            report.stopped = true;
            break;
        };
        let fit = match server.begin_fit(&available) {
            Ok(f) => f,
            Err(e) => {
                if clients.retry_plan(&e)? {
                    continue;
                }
                return Err(e.into());
            }
        };
        let round = fit.plan().round;
        let config = merge_config(&rules.client_config, &fit.plan().config);
        let global = server.global().clone();
        let collected = clients.fit(fit, &global, &config)?;
        if collected.stopped {
            report.stopped = true;
            break;
        }
        let outcome = match server.finish_fit(collected.round) {
            Ok(o) => o,
            Err(e) => {
                attempts += 1;
                clients.on_fit_error(round, &e, attempts);
                if attempts >= MAX_AGGREGATION_ATTEMPTS {
                    return Err(e.into());
                }
                continue;
            }
        };
        attempts = 0;
        clients.on_fit(server, &outcome)?;
        report.outcomes.push(outcome);

        let due = rules.evaluate_every > 0
            && (round % rules.evaluate_every == 0 || round == rules.rounds);
        if due && !evaluate(server, clients, rules, &mut report)? {
            report.stopped = true;
        }
        if clients.on_round_end(server)? == Flow::Stop {
            report.stopped = true;
        }
        if report.stopped {
            break;
        }
    }
    // A run stopped by its operator is a shutdown, whatever it had aggregated so far.
    if !report.stopped
        && !report.outcomes.is_empty()
        && report.outcomes.iter().all(|o| !o.aggregated)
    {
        let last = report.outcomes.last().expect("not empty");
        let mut last_reason = last
            .skipped
            .clone()
            .unwrap_or_else(|| "unknown".to_string());
        // The clients' own reasons are what an operator needs to fix the run.
        if let Some(f) = last.failures.first() {
            last_reason.push_str(&format!("; client `{}` failed: {}", f.client_id, f.reason));
            if last.failures.len() > 1 {
                last_reason.push_str(&format!(" (and {} more)", last.failures.len() - 1));
            }
        }
        return Err(FlError::NothingAggregated {
            rounds: report.outcomes.len() as u64,
            last_reason,
        }
        .into());
    }
    Ok(report)
}

/// One federated evaluation of the current global; `false` when stopped meanwhile.
fn evaluate<C: RoundClients>(
    server: &mut Server,
    clients: &mut C,
    rules: &RunRules,
    report: &mut RunReport,
) -> Result<bool, C::Error> {
    let round = server.round();
    let available = clients.available();
    let ev = match server.begin_evaluate(&available) {
        Ok(ev) => ev,
        Err(e) => {
            clients.on_evaluate(server, round, Err(&e))?;
            return Ok(true);
        }
    };
    let config = merge_config(&rules.client_config, &ev.plan().config);
    let global = server.global().clone();
    let collected = clients.evaluate(ev, &global, &config)?;
    if collected.stopped {
        return Ok(false);
    }
    match server.finish_evaluate(collected.round) {
        Ok(o) => {
            clients.on_evaluate(server, round, Ok(&o))?;
            report.evaluations.push(o);
        }
        Err(e) => clients.on_evaluate(server, round, Err(&e))?,
    }
    Ok(true)
}
