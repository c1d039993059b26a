//! A securely aggregated training round over gRPC (`[secure_aggregation]`).
//!
//! The round's FIT task asks the selected clients to train and then advertise keys (their
//! update stays with them); each later stage is a `TASK_KIND_SECAGG` task carrying the
//! server's message, answered by an upload tagged with the same stage. Each stage waits
//! until every client expected in it answered, or its deadline: a client that does not
//! answer in time (or leaves, or falls silent, or sends a message the core refuses) is
//! dropped for the rest of the round, and the core's threshold rules decide whether the
//! round can go on ([`SecAggServer`]). The server holds only masked vectors; at the end it
//! learns the weighted mean of the survivors' updates, which every survivor then counts as
//! having submitted, so that the strategy's average is exactly that mean.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedprompt_fl::secagg::{
    AdvertiseKeys, SecAggConfig, SecAggError, SecAggOutcome, SecAggServer, ShareKeys,
    UnmaskResponse,
};
use fedprompt_fl::{ClientUpdate, FitRound, Metrics, Params};
use tokio::sync::watch;
use tonic::Status;
use tracing::{info, warn};

use super::state::{Collector, Current, Payload, Shared};
use super::RefusalKind;
use crate::error::{NetError, Result};
use crate::events::Event;
use crate::proto::SecAggStage;
use crate::secagg_wire::{from_json, masked_from_bytes, to_json, unflatten};
use crate::transfer::sha256;

/// The secure-aggregation state of the open training round.
pub(super) struct SecAggRound {
    /// The stage whose answers are awaited.
    pub(super) stage: SecAggStage,
    server: SecAggServer,
    /// Clients expected to answer this stage and that have not yet.
    pub(super) pending: BTreeSet<String>,
    /// The server's message of this stage for each client (none for advertise keys: that
    /// stage's task is the FIT task).
    pub(super) outbox: BTreeMap<String, Arc<Payload>>,
    /// Clients dropped from the round, with why.
    dropped: BTreeMap<String, String>,
    /// Clients that missed a stage deadline or fell silent.
    late: usize,
    /// Example counts and metrics the clients declared with their keys.
    declared: BTreeMap<String, (u64, Metrics)>,
    /// Bytes received from each client, all stages.
    bytes_up: BTreeMap<String, u64>,
}

fn stage_name(s: SecAggStage) -> &'static str {
    match s {
        SecAggStage::AdvertiseKeys => "advertise keys",
        SecAggStage::ShareKeys => "share keys",
        SecAggStage::MaskedInput => "masked input",
        SecAggStage::Unmask => "unmask",
        SecAggStage::Unspecified => "unspecified",
    }
}

impl SecAggRound {
    /// Drops a client expected in this stage.
    pub(super) fn fail(&mut self, id: &str, why: &str) {
        if self.pending.remove(id) {
            self.dropped.insert(
                id.to_string(),
                format!(
                    "dropped from secure aggregation at stage `{}`: {why}",
                    stage_name(self.stage)
                ),
            );
        }
    }

    /// Feeds one client's answer to the core. On a refusal the client is dropped.
    pub(super) fn receive(
        &mut self,
        id: &str,
        stage: SecAggStage,
        bytes: &[u8],
        num_examples: u64,
        metrics: &Metrics,
    ) -> std::result::Result<(), (RefusalKind, Status)> {
        if let Some(d) = self.dropped.get(id) {
            return Err((
                RefusalKind::Duplicate,
                Status::already_exists(format!("client `{id}` is out of this round: {d}")),
            ));
        }
        if stage != self.stage {
            return Err((
                RefusalKind::StaleRound,
                Status::failed_precondition(format!(
                    "secure-aggregation stage `{}` is not open: the round is at stage `{}`",
                    stage_name(stage),
                    stage_name(self.stage)
                )),
            ));
        }
        if !self.pending.contains(id) {
            return Err((
                RefusalKind::Duplicate,
                Status::already_exists(format!(
                    "client `{id}` already answered, or is not part of, stage `{}`",
                    stage_name(stage)
                )),
            ));
        }
        let same = |sender: &str| -> std::result::Result<(), String> {
            if sender == id {
                Ok(())
            } else {
                Err(format!("the message names `{sender}` as its sender"))
            }
        };
        let result: std::result::Result<(), String> = match stage {
            SecAggStage::AdvertiseKeys => from_json::<AdvertiseKeys>(bytes, "advertise keys")
                .and_then(|m| {
                    same(&m.client_id)?;
                    self.server.receive_keys(m).map_err(|e| e.to_string())
                }),
            SecAggStage::ShareKeys => from_json::<ShareKeys>(bytes, "share keys").and_then(|m| {
                same(&m.client_id)?;
                self.server.receive_shares(m).map_err(|e| e.to_string())
            }),
            SecAggStage::MaskedInput => masked_from_bytes(id, bytes)
                .and_then(|m| self.server.receive_masked(m).map_err(|e| e.to_string())),
            SecAggStage::Unmask => from_json::<UnmaskResponse>(bytes, "unmask").and_then(|m| {
                same(&m.client_id)?;
                self.server.receive_unmask(m).map_err(|e| e.to_string())
            }),
            SecAggStage::Unspecified => Err("no stage given".into()),
        };
        *self.bytes_up.entry(id.to_string()).or_default() += bytes.len() as u64;
        if let Err(why) = result {
            self.fail(id, &format!("its message was refused: {why}"));
            return Err((
                RefusalKind::SecAgg,
                Status::invalid_argument(format!(
                    "secure-aggregation message of stage `{}` refused: {why}",
                    stage_name(stage)
                )),
            ));
        }
        if stage == SecAggStage::AdvertiseKeys {
            self.declared
                .insert(id.to_string(), (num_examples, metrics.clone()));
        }
        self.pending.remove(id);
        Ok(())
    }
}

/// What the driver needs to run one securely aggregated round.
pub(super) struct SecAggRun<'a> {
    pub(super) rt: &'a tokio::runtime::Handle,
    pub(super) shared: &'a Shared,
    pub(super) stop: &'a mut watch::Receiver<bool>,
    pub(super) cfg: &'a SecAggConfig,
    pub(super) graph_seed: u64,
    pub(super) round_deadline: Duration,
    pub(super) stage_deadline: Duration,
}

/// How a securely aggregated round ended, for the driver's report.
pub(super) struct SecAggClosed {
    pub(super) fit: FitRound,
    pub(super) late: usize,
    pub(super) refused: usize,
    pub(super) stopped: bool,
}

/// One stage's message as a task payload.
fn payload(bytes: Vec<u8>) -> Arc<Payload> {
    let bytes = Bytes::from(bytes);
    Arc::new(Payload {
        sha256: sha256(&bytes),
        bytes,
    })
}

impl SecAggRun<'_> {
    /// Runs the round `fit` with `global` (sent as `global_payload`) and the round
    /// configuration `config` (which announces secure aggregation).
    pub(super) fn run(
        &mut self,
        fit: FitRound,
        global: &Params,
        global_payload: Arc<Payload>,
        config: &fedprompt_fl::ClientConfig,
    ) -> Result<SecAggClosed> {
        let round = fit.plan().round;
        let ids = fit.plan().clients.clone();
        let server = SecAggServer::new(
            self.cfg,
            round,
            self.graph_seed,
            &ids,
            global.num_elements(),
        );
        let server = match server {
            Ok(s) => s,
            Err(e) => return Ok(self.abort_unopened(fit, &e)),
        };
        self.shared.events.emit(Event::RoundStarted {
            round,
            phase: "fit".into(),
            clients: ids.clone(),
        });
        {
            let mut st = self.shared.lock();
            st.current = Some(Current {
                collector: Collector::Fit(fit),
                payload: global_payload,
                config: crate::proto::config_to_wire(config),
                deadline: Instant::now() + self.round_deadline,
                refused: 0,
                decoding: None,
                secagg: Some(SecAggRound {
                    stage: SecAggStage::AdvertiseKeys,
                    server,
                    pending: ids.iter().cloned().collect(),
                    outbox: BTreeMap::new(),
                    dropped: BTreeMap::new(),
                    late: 0,
                    declared: BTreeMap::new(),
                    bytes_up: BTreeMap::new(),
                }),
            });
        }
        self.shared.bump();
        // Stage 1 (with training): until every selected client advertised keys.
        if self.wait(round, self.round_deadline) {
            return self.close(global, None, true);
        }
        let next = self.advance(|sa| {
            let roster = sa.server.roster()?;
            let msg = payload(to_json(&roster).map_err(|e| SecAggError::Malformed(e.to_string()))?);
            Ok(roster
                .keys
                .keys()
                .map(|c| (c.clone(), msg.clone()))
                .collect())
        });
        if let Err(e) = next {
            return self.close(global, Some(e), false);
        }
        // Stages 2 to 4.
        for stage in [
            SecAggStage::ShareKeys,
            SecAggStage::MaskedInput,
            SecAggStage::Unmask,
        ] {
            if self.wait(round, self.stage_deadline) {
                return self.close(global, None, true);
            }
            let next = match stage {
                SecAggStage::ShareKeys => self.advance(|sa| {
                    let fwd = sa.server.forward_shares()?;
                    fwd.iter()
                        .map(|(c, f)| {
                            let b =
                                to_json(f).map_err(|e| SecAggError::Malformed(e.to_string()))?;
                            Ok((c.clone(), payload(b)))
                        })
                        .collect()
                }),
                SecAggStage::MaskedInput => self.advance(|sa| {
                    let req = sa.server.unmask_request()?;
                    let msg =
                        payload(to_json(&req).map_err(|e| SecAggError::Malformed(e.to_string()))?);
                    Ok(req
                        .survivors
                        .iter()
                        .map(|c| (c.clone(), msg.clone()))
                        .collect())
                }),
                _ => Ok(()),
            };
            if let Err(e) = next {
                return self.close(global, Some(e), false);
            }
        }
        self.close(global, None, false)
    }

    /// Waits until the stage's clients answered or `limit` passed; `true` when stopped.
    fn wait(&mut self, round: u64, limit: Duration) -> bool {
        let shared = self.shared;
        let stop = &mut *self.stop;
        let until = tokio::time::Instant::now() + limit;
        let stopped = self.rt.block_on(async {
            let mut rx = shared.epoch.subscribe();
            let check_every = shared.heartbeat_interval();
            loop {
                rx.borrow_and_update();
                if *stop.borrow() {
                    return true;
                }
                let gone = shared.drop_silent();
                if !gone.is_empty() {
                    warn!("round {round}: no contact with {}", gone.join(", "));
                }
                let done = shared
                    .lock()
                    .current
                    .as_ref()
                    .and_then(|c| c.secagg.as_ref())
                    .is_none_or(|s| s.pending.is_empty());
                if done {
                    return false;
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep_until(until) => return false,
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(check_every) => {}
                }
            }
        });
        if stopped {
            return true;
        }
        // Who did not answer in time is dropped for the rest of the round.
        let mut st = self.shared.lock();
        if let Some(sa) = st.current.as_mut().and_then(|c| c.secagg.as_mut()) {
            let late: Vec<String> = sa.pending.iter().cloned().collect();
            for id in &late {
                sa.fail(id, "no answer before the stage deadline");
            }
            sa.late += late.len();
            let stage = stage_name(sa.stage);
            drop(st);
            if !late.is_empty() {
                warn!(
                    "round {round}: {} did not answer secure-aggregation stage `{stage}` in time",
                    late.join(", ")
                );
            }
        }
        false
    }

    /// Closes the current stage and opens the next with the messages `make` returns
    /// (client → payload); the clients expected next are those with a message.
    fn advance(
        &mut self,
        make: impl FnOnce(
            &mut SecAggRound,
        ) -> std::result::Result<BTreeMap<String, Arc<Payload>>, SecAggError>,
    ) -> std::result::Result<(), SecAggError> {
        let (round, stage, answered, dropped) = {
            let mut st = self.shared.lock();
            let cur = st
                .current
                .as_mut()
                .ok_or_else(|| SecAggError::Malformed("the round state was lost".into()))?;
            let round = cur.collector.round();
            let sa = cur
                .secagg
                .as_mut()
                .ok_or_else(|| SecAggError::Malformed("the round state was lost".into()))?;
            let closed = sa.stage;
            let outbox = make(sa)?;
            let answered = outbox.len();
            sa.stage = match closed {
                SecAggStage::AdvertiseKeys => SecAggStage::ShareKeys,
                SecAggStage::ShareKeys => SecAggStage::MaskedInput,
                _ => SecAggStage::Unmask,
            };
            sa.pending = outbox.keys().cloned().collect();
            sa.outbox = outbox;
            cur.deadline = Instant::now() + self.stage_deadline;
            (
                round,
                closed,
                answered,
                sa.dropped.keys().cloned().collect::<Vec<_>>(),
            )
        };
        self.shared.bump();
        info!(
            "round {round}: secure aggregation stage `{}` closed, {answered} client(s) go on",
            stage_name(stage)
        );
        self.shared.events.emit(Event::SecAggStage {
            round,
            stage: stage_name(stage).into(),
            clients: answered,
            dropped,
        });
        Ok(())
    }

    /// A round whose secure aggregation could not even be set up: every client fails.
    fn abort_unopened(&self, mut fit: FitRound, e: &SecAggError) -> SecAggClosed {
        warn!("round {}: {e}", fit.plan().round);
        for id in fit.plan().clients.clone() {
            let _ = fit.fail(&id, e.to_string());
        }
        SecAggClosed {
            fit,
            late: 0,
            refused: 0,
            stopped: false,
        }
    }

    /// Ends the round: unmasks (unless `error` or `stopped`), then hands the FIT round back
    /// with the survivors' mean submitted for each survivor and every other client failed.
    fn close(
        &mut self,
        global: &Params,
        error: Option<SecAggError>,
        stopped: bool,
    ) -> Result<SecAggClosed> {
        let cur = {
            let mut st = self.shared.lock();
            st.current
                .take()
                .ok_or_else(|| NetError::Transport("round state lost".into()))?
        };
        self.shared.bump();
        let Current {
            collector,
            refused,
            secagg,
            ..
        } = cur;
        let (Collector::Fit(mut fit), Some(mut sa)) = (collector, secagg) else {
            return Err(NetError::Transport("round state mixed up".into()));
        };
        let round = fit.plan().round;
        if stopped {
            return Ok(SecAggClosed {
                fit,
                late: sa.late,
                refused,
                stopped,
            });
        }
        let result = match error {
            Some(e) => Err(e),
            None => sa.server.clone().finish(),
        };
        for (id, n) in &sa.bytes_up {
            let _ = fit.record_received(id, *n);
        }
        for (id, p) in &sa.outbox {
            let _ = fit.record_sent(id, p.bytes.len() as u64);
        }
        match result {
            Ok(out) => {
                self.shared.events.emit(Event::SecAggStage {
                    round,
                    stage: stage_name(SecAggStage::Unmask).into(),
                    clients: out.survivors.len(),
                    dropped: sa.dropped.keys().cloned().collect(),
                });
                self.submit_mean(&mut fit, &sa, &out, global)?;
                info!(
                    "round {round}: securely aggregated {} client(s) (total weight {}, error \
                     bound {:.3e} per value); dropped: {}",
                    out.survivors.len(),
                    out.total_weight,
                    out.error_bound,
                    if sa.dropped.is_empty() {
                        "none".to_string()
                    } else {
                        sa.dropped.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            Err(e) => {
                warn!("round {round}: {e}");
                for id in fit.pending() {
                    let why = sa.dropped.remove(&id).unwrap_or_else(|| e.to_string());
                    let _ = fit.fail(&id, why);
                }
            }
        }
        // Whoever is neither a survivor nor failed yet was dropped.
        for id in fit.pending() {
            let why = sa
                .dropped
                .get(&id)
                .cloned()
                .unwrap_or_else(|| "dropped from secure aggregation".into());
            let _ = fit.fail(&id, why);
        }
        sa.pending.clear();
        Ok(SecAggClosed {
            fit,
            late: sa.late,
            refused,
            stopped: false,
        })
    }

    /// Submits `global + mean` for every survivor (the strategy's average of equal
    /// parameters is that value), with the example count it declared.
    fn submit_mean(
        &self,
        fit: &mut FitRound,
        sa: &SecAggRound,
        out: &SecAggOutcome,
        global: &Params,
    ) -> Result<()> {
        let mut params = global.clone();
        let mean = unflatten(&params, &out.mean)?;
        params.add_scaled(&mean, 1.0)?;
        for id in &out.survivors {
            let (num_examples, metrics) = sa.declared.get(id).cloned().unwrap_or_default();
            let update = ClientUpdate {
                client_id: id.clone(),
                params: params.clone(),
                num_examples,
                metrics,
            };
            if fit.submit(update, 0).is_ok() {
                self.shared.lock().stats.accepted_updates += 1;
            }
        }
        Ok(())
    }
}
