//! The client: registers, polls for tasks, trains locally, submits, and
//! reconnects with backoff when the server goes away.

mod backoff;
mod secagg;
mod session;

use std::time::Duration;

use tonic::Request;
use tracing::{info, warn};

use crate::config::{secs, JoinConfig};
use crate::error::{NetError, Result};
use crate::proto::{self, TaskKind};
use backoff::Backoff;
use fedprompt_io::signals::StopSignals;
use fedprompt_train::client::{LocalTrainer, Task};
use session::{connect, deliver, get_task, Delivery, Failure, Outgoing, Received, Session};
pub use session::{raw_client, update_messages, BearerAuth, RawClient};

/// What a join run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinSummary {
    /// The identity the server gave our token.
    pub client_id: String,
    /// Training rounds whose update the server accepted (with secure aggregation: whose
    /// masked input it accepted; the round may still fail if too many others drop).
    pub rounds_trained: Vec<u64>,
    /// Evaluation rounds whose result the server accepted.
    pub evaluations: Vec<u64>,
    /// Server refusals of our submissions (status messages).
    pub refused: Vec<String>,
    /// Reconnections after the first registration.
    pub reconnects: u32,
    /// Bytes of updates sent.
    pub bytes_up: u64,
    /// Bytes of global parameters received.
    pub bytes_down: u64,
    /// Whether the server said the run is over.
    pub finished: bool,
    /// What stopped the client before the end (`Ctrl-C`, `SIGTERM`), if anything did.
    pub stopped: Option<String>,
}

fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Takes part in a federation until the server says it is over.
///
/// Only the trainer's returned parameters, example counts and metrics leave
/// this machine. Transport failures are retried with backoff; a refused
/// token, an unsupported protocol, a permanent TLS failure or a failing
/// trainer end the run.
///
/// Run it on a multi-thread Tokio runtime (as [`join`] does): the trainer then runs in
/// `block_in_place` while a heartbeat task tells the server this client is still alive. On
/// a current-thread runtime training blocks the heartbeats, and a local step longer than
/// the server's `liveness_s` counts as a lost client.
pub async fn join_async<T: LocalTrainer + ?Sized>(
    cfg: JoinConfig,
    trainer: &mut T,
) -> Result<JoinSummary> {
    join_until(cfg, trainer, std::future::pending()).await
}

/// [`join_async`] until `stop` resolves with a reason: then the task at hand is abandoned
/// (a local training step already running finishes first), the server is told that this
/// client leaves, and the summary is returned with [`JoinSummary::stopped`] set.
async fn join_until<T: LocalTrainer + ?Sized>(
    cfg: JoinConfig,
    trainer: &mut T,
    stop: impl std::future::Future<Output = String>,
) -> Result<JoinSummary> {
    cfg.validate()?;
    let mut summary = JoinSummary::default();
    let mut session: Option<Session> = None;
    let outcome = tokio::select! {
        r = join_loop(&cfg, trainer, &mut summary, &mut session) => Ok(r),
        why = stop => Err(why),
    };
    let why = match outcome {
        Ok(r) => return r.map(|()| summary),
        Err(why) => why,
    };
    if let Some(s) = session.as_mut() {
        let mut req = Request::new(proto::LeaveRequest {
            reason: format!("stopped ({why})"),
        });
        req.set_timeout(Duration::from_secs(5));
        match s.client.leave(req).await {
            Ok(_) => info!("{why}: left the federation"),
            Err(st) => warn!(
                "{why}: could not tell the server that we leave: {}",
                st.message()
            ),
        }
    } else {
        info!("{why}: stopped while not connected");
    }
    summary.stopped = Some(why);
    Ok(summary)
}

async fn join_loop<T: LocalTrainer + ?Sized>(
    cfg: &JoinConfig,
    trainer: &mut T,
    summary: &mut JoinSummary,
    session: &mut Option<Session>,
) -> Result<()> {
    let wait = secs("poll_wait_s", cfg.poll_wait_s)?;
    let mut backoff = Backoff::new(cfg)?;
    let mut pending: Option<(Outgoing, u32)> = None;
    let mut encoder = crate::upload::Encoder::default();
    // The securely aggregated round this client is in, if any.
    let mut secagg: Option<secagg::Pending> = None;
    loop {
        if session.is_none() {
            match connect(cfg).await {
                Ok(s) => {
                    if summary.client_id.is_empty() {
                        info!(
                            "joined as `{}` (run {}, {} of {} rounds done)",
                            s.reg.client_id,
                            s.reg.run_id,
                            s.reg.completed_rounds,
                            s.reg.total_rounds
                        );
                        // The run's labels and method are known now: check the local data
                        // against them before the first task, not in the middle of a round.
                        let mut s = s;
                        if let Err(e) = run_blocking(|| trainer.prepare(s.spec.as_ref())) {
                            let _ = s
                                .client
                                .leave(proto::LeaveRequest {
                                    reason: "the local data or model does not fit this run".into(),
                                })
                                .await;
                            return Err(NetError::Trainer(e.to_string()));
                        }
                        summary.client_id = s.reg.client_id.clone();
                        backoff.reset();
                        *session = Some(s);
                        continue;
                    } else {
                        summary.reconnects += 1;
                        info!("reconnected as `{}`", s.reg.client_id);
                    }
                    summary.client_id = s.reg.client_id.clone();
                    backoff.reset();
                    *session = Some(s);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(m)) => {
                    backoff.wait(&m).await?;
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else {
            continue;
        };
        if let Some((out, tries)) = pending.take() {
            let (phase, round) = match &out {
                Outgoing::Fit { round, .. } => ("update", *round),
                Outgoing::Eval { round, .. } => ("evaluation", *round),
                Outgoing::SecAgg { round, .. } => ("secure-aggregation message", *round),
            };
            match deliver(s, &out).await {
                Delivery::Accepted(n) => {
                    info!("{phase} for round {round} accepted");
                    summary.bytes_up += n;
                    match out {
                        Outgoing::Fit { .. } => summary.rounds_trained.push(round),
                        Outgoing::Eval { .. } => summary.evaluations.push(round),
                        // The masked input is the update: from now on it is in the sum.
                        Outgoing::SecAgg { stage, .. } => {
                            if stage == proto::SecAggStage::MaskedInput {
                                summary.rounds_trained.push(round);
                            }
                        }
                    }
                }
                Delivery::Refused(m) => {
                    warn!("the server refused our {phase} for round {round}: {m}");
                    summary.refused.push(m);
                    if matches!(out, Outgoing::SecAgg { .. }) {
                        // This client is out of the round.
                        secagg = None;
                    }
                }
                Delivery::Fatal(e) => return Err(e),
                Delivery::Retry(m) => {
                    if tries < 3 {
                        pending = Some((out, tries + 1));
                    }
                    *session = None;
                    backoff.wait(&m).await?;
                }
            }
            continue;
        }
        match get_task(s, wait).await {
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(m)) => {
                *session = None;
                backoff.wait(&m).await?;
            }
            Ok(Received::Wait(ms)) => {
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            Ok(Received::Finished) => {
                info!("the server says the run is over");
                summary.finished = true;
                return Ok(());
            }
            Ok(Received::SecAgg {
                round,
                stage,
                message,
            }) => {
                let Some(state) = secagg.as_mut().filter(|p| p.round == round) else {
                    warn!(
                        "round {round}: a secure-aggregation task of stage {stage:?} for a \
                         round this client is not in (restarted?); not answering"
                    );
                    continue;
                };
                match secagg::answer(state, stage, &message) {
                    Ok(bytes) => {
                        pending = Some((
                            Outgoing::SecAgg {
                                round,
                                stage,
                                bytes: bytes::Bytes::from(bytes),
                                num_examples: 0,
                                metrics: Default::default(),
                            },
                            0,
                        ));
                        if stage == proto::SecAggStage::Unmask {
                            secagg = None;
                        }
                    }
                    Err(why) => {
                        warn!(
                            "round {round}: secure aggregation stage {stage:?} failed here: \
                             {why}; this client drops out of the round"
                        );
                        secagg = None;
                    }
                }
            }
            Ok(Received::Work {
                kind,
                round,
                config,
                global,
                bytes,
            }) => {
                summary.bytes_down += bytes;
                let spec = s.spec.clone();
                let task = Task {
                    round,
                    config: &config,
                    global: &global,
                    model: spec.as_ref(),
                };
                let out = if kind == TaskKind::Fit {
                    let asked = crate::upload::requested(&config)
                        .and_then(|e| Ok((e, crate::secagg_wire::requested(&config)?)));
                    let (encoding, secure) = match asked {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = s
                                .client
                                .leave(proto::LeaveRequest {
                                    reason: "unsupported round settings".into(),
                                })
                                .await;
                            return Err(e);
                        }
                    };
                    info!("round {round}: training locally");
                    let result = run_blocking(
                        || -> std::result::Result<_, fedprompt_train::TrainerError> {
                            // Client-side clipping / local DP, when the round asks for it.
                            let mut r = trainer.fit(&task)?;
                            fedprompt_train::apply_client_dp(&task, &mut r)?;
                            Ok(r)
                        },
                    );
                    let result = match result {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = s
                                .client
                                .leave(proto::LeaveRequest {
                                    reason: "local training failed".into(),
                                })
                                .await;
                            return Err(NetError::Trainer(e.to_string()));
                        }
                    };
                    result
                        .params
                        .check_same_layout(&global)
                        .and_then(|()| result.params.check_finite())
                        .map_err(|e| {
                            NetError::Trainer(format!(
                                "the trainer returned unusable parameters: {e}"
                            ))
                        })?;
                    if let Some(task) = &secure {
                        // Securely aggregated: the update stays here until it is masked.
                        let (state, msg) = secagg::start(
                            &s.reg.client_id,
                            task,
                            round,
                            &result.params,
                            &global,
                            result.num_examples,
                        )?;
                        secagg = Some(state);
                        pending = Some((
                            Outgoing::SecAgg {
                                round,
                                stage: proto::SecAggStage::AdvertiseKeys,
                                bytes: bytes::Bytes::from(msg),
                                num_examples: result.num_examples,
                                metrics: result.metrics,
                            },
                            0,
                        ));
                        continue;
                    }
                    // The delta from the global, encoded as the round asks.
                    let encoded = match &encoding {
                        Some(c) => Some(bytes::Bytes::from(encoder.encode(
                            c,
                            &result.params,
                            &global,
                        )?)),
                        None => None,
                    };
                    Outgoing::Fit {
                        round,
                        result,
                        encoded,
                    }
                } else {
                    info!("evaluating the global parameters of round {round}");
                    let result = run_blocking(|| trainer.evaluate(&task))
                        .map_err(|e| NetError::Trainer(e.to_string()))?;
                    Outgoing::Eval { round, result }
                };
                pending = Some((out, 0));
            }
        }
    }
}

/// [`join_async`] on a fresh Tokio runtime (the trainer runs on this thread) until the run
/// ends or Ctrl-C or (on unix) SIGTERM: the first one abandons the task at hand (after a
/// training step already running), tells the server that this client leaves, and returns
/// the summary; a second one exits at once.
pub fn join(cfg: JoinConfig, trainer: &mut dyn LocalTrainer) -> Result<JoinSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| NetError::Transport(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let mut signals = StopSignals::install();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let (name, _) = signals.next().await;
            warn!("{name}: leaving the federation ({name} again to quit now)");
            let _ = tx.send(name.to_string());
            let (_, status) = signals.next().await;
            std::process::exit(status);
        });
        let stop = async move {
            match rx.await {
                Ok(why) => why,
                Err(_) => std::future::pending().await,
            }
        };
        join_until(cfg, trainer, stop).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::update_message;
    use crate::transfer;
    use bytes::Bytes;
    use fedprompt_fl::Metrics;

    #[test]
    fn updates_are_inline_when_small_and_chunked_when_large() {
        let small = update_messages(3, 7, Metrics::new(), Bytes::from(vec![1u8; 100]), 1024);
        assert_eq!(small.len(), 1);
        let big: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let msgs = update_messages(3, 7, Metrics::new(), Bytes::from(big.clone()), 1024);
        assert_eq!(msgs.len(), 3);
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            match (&m.body, i) {
                (Some(update_message::Body::Header(h)), 0) => {
                    assert_eq!((h.round, h.num_examples, h.total_len), (3, 7, 2500));
                    assert_eq!(h.sha256, transfer::sha256(&big));
                    joined.extend_from_slice(&h.inline);
                }
                (Some(update_message::Body::Chunk(c)), i) if i > 0 => {
                    assert!(c.len() <= 1024);
                    joined.extend_from_slice(c);
                }
                _ => panic!("message {i} out of order"),
            }
        }
        assert_eq!(joined, big);
    }

    #[test]
    fn config_values_survive_the_wire() {
        use fedprompt_fl::ConfigValue as V;
        let c = fedprompt_fl::ClientConfig::from([
            ("round".to_string(), V::Int(3)),
            ("proximal_mu".to_string(), V::Float(0.01)),
            ("tag".to_string(), V::Str("x".into())),
            ("flag".to_string(), V::Bool(true)),
        ]);
        assert_eq!(proto::config_from_wire(&proto::config_to_wire(&c)), c);
    }

    #[test]
    fn bad_join_configs_are_refused() {
        assert!(JoinConfig::new("localhost:1", "t").validate().is_err());
        assert!(JoinConfig::new("https://localhost:1", " ")
            .validate()
            .is_err());
        let mut c = JoinConfig::new("https://localhost:1", "t");
        c.backoff_max_s = f64::NAN;
        assert!(c.validate().is_err());
        assert!(BearerAuth::new("tok\nen").is_err());
    }
}
