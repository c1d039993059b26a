//! The rounds: wait for clients, open a training (and evaluation) phase,
//! close it at completion or the deadline, aggregate, checkpoint.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedprompt_fl::{ClientConfig, Params, Phase, Server};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::state::{Collector, Current, Payload, Shared};
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
    fedprompt_io::write_atomic(path, bytes).map_err(|source| NetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn human(bytes: u64) -> String {
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
    config: &ClientConfig,
    deadline: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<Closed> {
    let until = tokio::time::Instant::now() + deadline;
    shared.events.emit(Event::RoundStarted {
        round: collector.round(),
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
        });
    }
    shared.bump();
    let mut rx = shared.epoch.subscribe();
    let mut stopped = false;
    loop {
        rx.borrow_and_update();
        if *stop.borrow() {
            stopped = true;
            break;
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

/// Runs the rounds until the last one or a stop; then writes the output and lingers.
pub(super) async fn drive(
    shared: Arc<Shared>,
    mut server: Server,
    cfg: ServeConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<ServeSummary> {
    let resumed_at = server.round();
    let deadline = secs("round_deadline_s", cfg.round_deadline_s)?;
    let gather = secs("gather_s", cfg.gather_s)?;
    let known = shared.tokens.client_ids().len();
    let policy = server.strategy().policy().clone();
    let min = policy
        .min_available_clients
        .max(policy.min_fit_results)
        .max(1);
    let mut outcomes = Vec::new();
    let mut evaluations = Vec::new();
    let mut stopped = false;
    let mut failed_attempts = 0u32;
    while server.round() < cfg.rounds {
        let Some(available) = wait_available(&shared, min, known, gather, &mut stop).await else {
            stopped = true;
            break;
        };
        let fit = match server.begin_fit(&available) {
            Ok(f) => f,
            Err(e) => {
                warn!("round {} cannot start: {e}", server.round() + 1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let round = fit.plan().round;
        let asked = fit.plan().clients.len();
        let mut config = cfg.client_config.clone();
        config.extend(fit.plan().config.clone());
        info!(
            "round {round}/{}: training with {asked} of {} connected clients",
            cfg.rounds,
            available.len()
        );
        let t0 = Instant::now();
        let closed = run_phase(
            &shared,
            Collector::Fit(fit),
            payload_of(server.global())?,
            &config,
            deadline,
            &mut stop,
        )
        .await?;
        if closed.stopped {
            stopped = true;
            break;
        }
        let Collector::Fit(fit) = closed.collector else {
            return Err(NetError::Transport("round state mixed up".into()));
        };
        let outcome = match server.finish_fit(fit) {
            Ok(o) => o,
            Err(e) => {
                failed_attempts += 1;
                error!("round {round} could not be aggregated: {e}");
                if failed_attempts >= 3 {
                    return Err(e.into());
                }
                continue;
            }
        };
        failed_attempts = 0;
        let metrics_text = outcome
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        info!(
            "round {round}/{}: asked {asked}, answered {}, accepted {}, late {}, refused {}, up {}, down {}, {}{}{}",
            cfg.rounds,
            asked - closed.late.len(),
            outcome.n_ok,
            closed.late.len(),
            closed.refused,
            human(outcome.traffic.up),
            human(outcome.traffic.down),
            match &outcome.skipped {
                None => "aggregated".to_string(),
                Some(why) => format!("not aggregated ({why})"),
            },
            if metrics_text.is_empty() { "" } else { ", " },
            metrics_text
        );
        shared.lock().stats.bytes_up += outcome.traffic.up;
        shared.events.emit(Event::Round {
            round,
            asked,
            ok: outcome.n_ok,
            late: closed.late.len(),
            refused: closed.refused,
            bytes_up: outcome.traffic.up,
            bytes_down: outcome.traffic.down,
            aggregated: outcome.aggregated,
            skipped: outcome.skipped.clone(),
            num_examples: outcome.num_examples,
            metrics: outcome.metrics.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        });
        outcomes.push(outcome);

        if cfg.evaluate_every > 0 && (round % cfg.evaluate_every == 0 || round == cfg.rounds) {
            let available = shared.available();
            match server.begin_evaluate(&available) {
                Err(e) => warn!("evaluation after round {round} skipped: {e}"),
                Ok(ev) => {
                    let asked = ev.plan().clients.len();
                    let mut config = cfg.client_config.clone();
                    config.extend(ev.plan().config.clone());
                    let closed = run_phase(
                        &shared,
                        Collector::Eval(ev),
                        payload_of(server.global())?,
                        &config,
                        deadline,
                        &mut stop,
                    )
                    .await?;
                    if closed.stopped {
                        stopped = true;
                    } else if let Collector::Eval(ev) = closed.collector {
                        match server.finish_evaluate(ev) {
                            Ok(o) => {
                                match &o.aggregate {
                                    Some(a) => info!(
                                        "evaluation after round {round}: {} clients, {} examples, {}",
                                        a.n_results,
                                        a.num_examples,
                                        a.metrics
                                            .iter()
                                            .map(|(k, v)| format!("{k}={v:.4}"))
                                            .collect::<Vec<_>>()
                                            .join(" ")
                                    ),
                                    None => warn!(
                                        "evaluation after round {round} not aggregated: {}",
                                        o.skipped.as_deref().unwrap_or("?")
                                    ),
                                }
                                shared.events.emit(Event::Evaluation {
                                    round,
                                    asked,
                                    late: closed.late.len(),
                                    aggregate: o.aggregate.clone(),
                                    skipped: o.skipped.clone(),
                                });
                                evaluations.push(o);
                            }
                            Err(e) => warn!("evaluation after round {round} failed: {e}"),
                        }
                    }
                }
            }
        }

        server.state().save_checkpoint(&cfg.checkpoint)?;
        shared.events.emit(Event::Checkpoint {
            round,
            path: cfg.checkpoint.display().to_string(),
        });
        shared.lock().completed_rounds = round;
        if stopped {
            break;
        }
    }
    let completed = server.round();
    let reason = if stopped { "shutdown" } else { "completed" };
    if !stopped {
        if let Some(out) = &cfg.output {
            write_atomic(out, &server.global().to_safetensors()?)?;
            info!("final global parameters written to {}", out.display());
        }
        // Tell the connected clients that the run is over.
        shared.lock().finished = true;
        shared.bump();
        linger(&shared, secs("linger_s", cfg.linger_s)?).await;
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
        stopped_early: stopped,
        outcomes,
        evaluations,
        global: server.global().clone(),
        stats,
    })
}

/// Waits (at most `limit`) until every connected client has been told that the run is over.
async fn linger(shared: &Shared, limit: Duration) {
    let until = tokio::time::Instant::now() + limit;
    let mut rx = shared.epoch.subscribe();
    loop {
        rx.borrow_and_update();
        let waiting: BTreeSet<String> = {
            let live: BTreeSet<String> = shared.available().into_iter().collect();
            let st = shared.lock();
            live.into_iter()
                .filter(|id| st.clients.get(id).is_some_and(|c| !c.told_finished))
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
