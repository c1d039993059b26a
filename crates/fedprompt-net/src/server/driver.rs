//! The rounds: wait for clients, open a training (and evaluation) phase,
//! close it at completion or the deadline, aggregate, checkpoint.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedprompt_fl::driver::MAX_AGGREGATION_ATTEMPTS;
use fedprompt_fl::privacy::{DpMode, PrivacyAccounting};
use fedprompt_fl::{
    run_rounds, ClientConfig, Collected, EvalOutcome, EvalRound, FitRound, FlError, Flow, Params,
    Phase, RoundClients, RoundOutcome, RunRules, Server,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::secagg::SecAggRun;
use super::state::{Collector, Current, Decoding, Payload, Shared};
use super::ServeSummary;
use crate::config::{secs, InitialParams, ServeConfig};
use crate::error::{NetError, Result};
use crate::events::Event;
use crate::proto;
use crate::transfer::sha256;

/// The starting global parameters (`[initial]`).
pub(super) fn load_initial(cfg: &ServeConfig) -> Result<Params> {
    match &cfg.initial {
        InitialParams::File { path } => {
            let bytes = std::fs::read(path).map_err(NetError::io(path))?;
            Ok(Params::from_safetensors(&bytes)?)
        }
        InitialParams::Model { dir, seed } => {
            let spec = cfg.model.as_ref().ok_or_else(|| {
                NetError::Config("initial.type = \"model\" needs a [model] section".into())
            })?;
            let err = |e: &dyn std::fmt::Display| {
                NetError::Config(format!("initial parameters from `{}`: {e}", dir.display()))
            };
            let bb = fedprompt_model::Backbone::load(dir).map_err(|e| err(&e))?;
            let clf = fedprompt_model::Classifier::new(&bb, &spec.method, &spec.labels, *seed)
                .map_err(|e| err(&e))?;
            fedprompt_train::to_params(clf.trainable()).map_err(|e| err(&e))
        }
    }
}

/// Writes `bytes` to `path` atomically and durably (file and folder fsynced around the rename).
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    fedprompt_io::write_atomic(path, bytes).map_err(|cause| NetError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Waits until enough clients are connected; `None` when stopped.
async fn wait_available(
    shared: &Shared,
    min: usize,
    known: usize,
    gather: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<String>> {
    let mut rx = shared.epoch.subscribe();
    let mut min_met: Option<tokio::time::Instant> = None;
    let mut logged = false;
    loop {
        rx.borrow_and_update();
        if *stop.borrow() {
            return None;
        }
        let avail = shared.available();
        let now = tokio::time::Instant::now();
        if avail.len() >= known {
            return Some(avail);
        }
        let wake = if avail.len() >= min {
            let t = *min_met.get_or_insert(now);
            if now >= t + gather {
                return Some(avail);
            }
            t + gather
        } else {
            min_met = None;
            if !logged {
                info!(
                    "waiting for clients: {} connected, {min} needed",
                    avail.len()
                );
                logged = true;
            }
            now + Duration::from_secs(1)
        };
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
    }
}

struct Closed {
    collector: Collector,
    late: Vec<String>,
    refused: usize,
    stopped: bool,
}

/// Opens a round, waits until every selected client answered or the deadline, closes it.
async fn run_phase(
    shared: &Shared,
    collector: Collector,
    payload: Arc<Payload>,
    decoding: Option<Arc<Decoding>>,
    config: &ClientConfig,
    deadline: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<Closed> {
    let until = tokio::time::Instant::now() + deadline;
    let round = collector.round();
    shared.events.emit(Event::RoundStarted {
        round,
        phase: match collector.phase() {
            Phase::Fit => "fit".into(),
            Phase::Evaluate => "evaluate".into(),
        },
        clients: collector.selected().to_vec(),
    });
    {
        let mut st = shared.lock();
        st.current = Some(Current {
            collector,
            payload,
            config: proto::config_to_wire(config),
            deadline: Instant::now() + deadline,
            refused: 0,
            decoding,
            secagg: None,
        });
    }
    shared.bump();
    let mut rx = shared.epoch.subscribe();
    let mut stopped = false;
    let check_every = shared.heartbeat_interval();
    loop {
        rx.borrow_and_update();
        if *stop.borrow() {
            stopped = true;
            break;
        }
        let gone = shared.drop_silent();
        if !gone.is_empty() {
            warn!(
                "round {round}: no contact with {} for {:.0} s, closing without {}",
                gone.join(", "),
                shared.liveness.as_secs_f64(),
                if gone.len() == 1 { "it" } else { "them" }
            );
        }
        let complete = shared
            .lock()
            .current
            .as_ref()
            .is_none_or(|c| c.collector.is_complete());
        if complete {
            break;
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(until) => break,
            _ = stop.changed() => {}
            _ = tokio::time::sleep(check_every) => {}
        }
    }
    let cur = {
        let mut st = shared.lock();
        let cur = st
            .current
            .take()
            .ok_or_else(|| NetError::Transport("round state lost".into()))?;
        let late = cur.collector.pending();
        if !stopped {
            st.stats.late += late.len() as u64;
            for id in &late {
                if let Some(c) = st.clients.get_mut(id) {
                    c.away = true;
                }
            }
        }
        Closed {
            late,
            refused: cur.refused,
            collector: cur.collector,
            stopped,
        }
    };
    shared.bump();
    Ok(cur)
}

fn payload_of(global: &Params) -> Result<Arc<Payload>> {
    let bytes = Bytes::from(global.to_safetensors()?);
    let sha = sha256(&bytes);
    Ok(Arc::new(Payload { bytes, sha256: sha }))
}

/// The clients of a gRPC federation as [`fedprompt_fl::run_rounds`] sees them: each phase is
/// opened for the handlers, waited on until every selected client answered or the deadline,
/// then closed; the hooks log, emit events and checkpoint. Runs on a blocking thread, entering
/// the server's runtime for each wait.
struct NetClients<'a> {
    rt: tokio::runtime::Handle,
    shared: &'a Shared,
    cfg: &'a ServeConfig,
    stop: watch::Receiver<bool>,
    known: usize,
    gather: Duration,
    deadline: Duration,
    /// What the phase just closed looked like, for the hooks that report it.
    last: PhaseReport,
    /// DP accounting, when the run has DP noise.
    privacy: Option<PrivacyAccounting>,
}

#[derive(Default)]
struct PhaseReport {
    asked: usize,
    late: usize,
    refused: usize,
    seconds: f64,
}

impl NetClients<'_> {
    fn phase(
        &mut self,
        collector: Collector,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<(Collector, bool)> {
        let asked = collector.selected().len();
        let t0 = Instant::now();
        let payload = payload_of(global)?;
        let decoding = match (&collector, &self.cfg.compression) {
            (Collector::Fit(_), Some(c)) => Some(Arc::new(Decoding {
                codec: c.codec,
                global: global.clone(),
            })),
            _ => None,
        };
        let closed = self.rt.block_on(run_phase(
            self.shared,
            collector,
            payload,
            decoding,
            config,
            self.deadline,
            &mut self.stop,
        ))?;
        self.last = PhaseReport {
            asked,
            late: closed.late.len(),
            refused: closed.refused,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok((closed.collector, closed.stopped))
    }
}

impl NetClients<'_> {
    /// A securely aggregated training round (see [`super::secagg`]).
    fn secagg_fit(
        &mut self,
        sa: &fedprompt_fl::secagg::SecAggConfig,
        round: FitRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<FitRound>> {
        let asked = round.plan().clients.len();
        let r = round.plan().round.to_string();
        let t0 = Instant::now();
        let payload = payload_of(global)?;
        let closed = SecAggRun {
            rt: &self.rt,
            shared: self.shared,
            stop: &mut self.stop,
            cfg: sa,
            // Public: every client derives the same masking graph from it.
            graph_seed: fedprompt_fl::derive_seed(self.cfg.policy.seed, &["secagg-graph", &r]),
            round_deadline: self.deadline,
            stage_deadline: secs("secagg_stage_deadline_s", self.cfg.secagg_stage_deadline_s)?,
        }
        .run(round, global, payload, config)?;
        if !closed.stopped {
            self.shared.lock().stats.late += closed.late as u64;
        }
        self.last = PhaseReport {
            asked,
            late: closed.late,
            refused: closed.refused,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok(Collected {
            round: closed.fit,
            stopped: closed.stopped,
        })
    }
}

pub(super) fn metrics_text(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl RoundClients for NetClients<'_> {
    type Error = NetError;

    fn wait_available(&mut self, min: usize) -> Result<Option<Vec<String>>> {
        Ok(self.rt.block_on(wait_available(
            self.shared,
            min,
            self.known,
            self.gather,
            &mut self.stop,
        )))
    }

    fn available(&mut self) -> Vec<String> {
        self.shared.available()
    }

    fn retry_plan(&mut self, error: &FlError) -> Result<bool> {
        warn!("the next round cannot start: {error}");
        self.rt
            .block_on(tokio::time::sleep(Duration::from_millis(500)));
        Ok(true)
    }

    fn fit(
        &mut self,
        round: FitRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<FitRound>> {
        info!(
            "round {}/{}: training with {} of {} connected clients",
            round.plan().round,
            self.cfg.rounds,
            round.plan().clients.len(),
            self.shared.available().len()
        );
        if let Some(sa) = &self.cfg.secure_aggregation {
            return self.secagg_fit(sa, round, global, config);
        }
        match self.phase(Collector::Fit(round), global, config)? {
            (Collector::Fit(round), stopped) => Ok(Collected { round, stopped }),
            _ => Err(NetError::Transport("round state mixed up".into())),
        }
    }

    fn evaluate(
        &mut self,
        round: EvalRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<EvalRound>> {
        match self.phase(Collector::Eval(round), global, config)? {
            (Collector::Eval(round), stopped) => Ok(Collected { round, stopped }),
            _ => Err(NetError::Transport("round state mixed up".into())),
        }
    }

    fn on_fit(&mut self, _: &Server, outcome: &RoundOutcome) -> Result<()> {
        let p = &self.last;
        let metrics = metrics_text(&outcome.metrics);
        info!(
            "round {}/{}: asked {}, answered {}, accepted {}, late {}, refused {}, up {}, down {}, {}{}{}",
            outcome.round,
            self.cfg.rounds,
            p.asked,
            p.asked - p.late,
            outcome.n_ok,
            p.late,
            p.refused,
            match self.cfg.uploads_label() {
                Some(u) => format!("{} ({u})", human(outcome.traffic.up)),
                None => human(outcome.traffic.up),
            },
            human(outcome.traffic.down),
            match &outcome.skipped {
                None => "aggregated".to_string(),
                Some(why) => format!("not aggregated ({why})"),
            },
            if metrics.is_empty() { "" } else { ", " },
            metrics
        );
        self.shared.lock().stats.bytes_up += outcome.traffic.up;
        self.shared.events.emit(Event::Round {
            round: outcome.round,
            asked: p.asked,
            ok: outcome.n_ok,
            late: p.late,
            refused: p.refused,
            bytes_up: outcome.traffic.up,
            bytes_down: outcome.traffic.down,
            aggregated: outcome.aggregated,
            skipped: outcome.skipped.clone(),
            num_examples: outcome.num_examples,
            metrics: outcome.metrics.clone(),
            seconds: p.seconds,
        });
        if let Some(acc) = &self.privacy {
            let epsilon = acc.epsilon(outcome.round);
            info!(
                "round {}: privacy spent epsilon {epsilon:.4} (delta {}{})",
                outcome.round,
                acc.target_delta,
                acc.max_epsilon
                    .map(|m| format!(", budget {m}"))
                    .unwrap_or_default()
            );
            self.shared.events.emit(Event::Privacy {
                round: outcome.round,
                epsilon,
                delta: acc.target_delta,
                mode: match acc.mode {
                    DpMode::Central => "central".into(),
                    DpMode::Local => "local".into(),
                },
            });
        }
        Ok(())
    }

    fn on_fit_error(&mut self, round: u64, error: &FlError, attempt: u32) {
        error!(
            "round {round} could not be aggregated (attempt {attempt} of {MAX_AGGREGATION_ATTEMPTS}): {error}"
        );
    }

    fn on_evaluate(
        &mut self,
        _: &Server,
        round: u64,
        outcome: std::result::Result<&EvalOutcome, &FlError>,
    ) -> Result<()> {
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                warn!("evaluation after round {round} skipped: {e}");
                return Ok(());
            }
        };
        match &o.aggregate {
            Some(a) => info!(
                "evaluation after round {round}: {} clients, {} examples, {}",
                a.n_results,
                a.num_examples,
                metrics_text(&a.metrics)
            ),
            None => warn!(
                "evaluation after round {round} not aggregated: {}",
                o.skipped.as_deref().unwrap_or("?")
            ),
        }
        self.shared.events.emit(Event::Evaluation {
            round,
            asked: self.last.asked,
            late: self.last.late,
            aggregate: o.aggregate.clone(),
            skipped: o.skipped.clone(),
        });
        Ok(())
    }

    fn on_round_end(&mut self, server: &Server) -> Result<Flow> {
        let round = server.round();
        server.state().save_checkpoint(&self.cfg.checkpoint)?;
        self.shared.events.emit(Event::Checkpoint {
            round,
            path: self.cfg.checkpoint.display().to_string(),
        });
        self.shared.lock().completed_rounds = round;
        Ok(Flow::Continue)
    }
}

/// Runs the rounds until the last one or a stop; then writes the output and lingers.
pub(super) async fn drive(
    shared: Arc<Shared>,
    server: Server,
    cfg: ServeConfig,
    stop: watch::Receiver<bool>,
) -> Result<ServeSummary> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || drive_blocking(rt, &shared, server, &cfg, stop))
        .await
        .map_err(|e| NetError::Transport(format!("the round driver failed: {e}")))?
}

/// Seconds a resumed run that is already complete keeps serving, at least, so that clients
/// in reconnect backoff (at most 10 s apart by default) learn that the run is over.
const RESUMED_COMPLETE_LINGER: Duration = Duration::from_secs(30);

fn drive_blocking(
    rt: tokio::runtime::Handle,
    shared: &Shared,
    mut server: Server,
    cfg: &ServeConfig,
    stop: watch::Receiver<bool>,
) -> Result<ServeSummary> {
    let resumed_at = server.round();
    let known = shared.tokens.client_ids();
    let privacy = super::privacy::accounting(cfg, known.len())?;
    if let Some(acc) = &privacy {
        info!("differential privacy: {}", acc.describe());
    }
    server = server.with_client_weights(super::privacy::client_weights(cfg, &known)?);
    let mut clients = NetClients {
        rt: rt.clone(),
        shared,
        cfg,
        stop,
        known: shared.tokens.client_ids().len(),
        gather: secs("gather_s", cfg.gather_s)?,
        deadline: secs("round_deadline_s", cfg.round_deadline_s)?,
        last: PhaseReport::default(),
        privacy: privacy.clone(),
    };
    let rules = RunRules {
        rounds: cfg.rounds,
        evaluate_every: cfg.evaluate_every,
        client_config: super::privacy::client_config(cfg)?,
        privacy: privacy.clone(),
    };
    let linger_for = secs("linger_s", cfg.linger_s)?;
    let result = run_rounds(&mut server, &mut clients, &rules);
    let completed = server.round();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            // A failed run is over too: tell the clients instead of leaving them to retry.
            error!("run failed after {completed} rounds: {e}");
            shared.lock().finished = true;
            shared.bump();
            rt.block_on(linger(shared, linger_for, false));
            shared.events.emit(Event::Finished {
                rounds: completed,
                reason: "failed".into(),
            });
            return Err(e);
        }
    };
    // The privacy budget ends a run as its last round would: results written, clients told.
    if let Some(why) = &report.budget_stop {
        warn!("{why}");
    }
    let stopped = report.stopped && report.budget_stop.is_none();
    let reason = match (&report.budget_stop, stopped) {
        (Some(_), _) => "privacy budget",
        (None, true) => "shutdown",
        (None, false) => "completed",
    };
    if !stopped {
        if let Some(out) = &cfg.output {
            write_atomic(out, &server.global().to_safetensors()?)?;
            info!("final global parameters written to {}", out.display());
        }
        // Tell the clients that the run is over. A resumed run that was already complete has
        // seen none of them yet: wait for every known client, for a while.
        shared.lock().finished = true;
        shared.bump();
        let already_complete = resumed_at >= cfg.rounds;
        let limit = if already_complete {
            linger_for.max(RESUMED_COMPLETE_LINGER)
        } else {
            linger_for
        };
        rt.block_on(linger(shared, limit, already_complete));
    }
    info!("run {reason} after {completed} rounds");
    shared.events.emit(Event::Finished {
        rounds: completed,
        reason: reason.into(),
    });
    let stats = shared.lock().stats.clone();
    Ok(ServeSummary {
        rounds_completed: completed,
        resumed_at,
        stopped_early: report.stopped,
        epsilon: privacy
            .as_ref()
            .map(|p| (p.epsilon(completed), p.target_delta)),
        budget_stop: report.budget_stop.clone(),
        outcomes: report.outcomes,
        evaluations: report.evaluations,
        global: server.global().clone(),
        stats,
        uploads: cfg.uploads_label(),
    })
}

/// Waits (at most `limit`) until every connected client (with `all_known`, every client in
/// the tokens file) has been told that the run is over.
async fn linger(shared: &Shared, limit: Duration, all_known: bool) {
    let until = tokio::time::Instant::now() + limit;
    let mut rx = shared.epoch.subscribe();
    loop {
        rx.borrow_and_update();
        let waiting: BTreeSet<String> = {
            let expected: BTreeSet<String> = if all_known {
                shared.tokens.client_ids().into_iter().collect()
            } else {
                shared.available().into_iter().collect()
            };
            let st = shared.lock();
            expected
                .into_iter()
                .filter(|id| st.clients.get(id).is_none_or(|c| !c.told_finished))
                .collect()
        };
        if waiting.is_empty() {
            return;
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}
