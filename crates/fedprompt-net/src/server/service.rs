//! The gRPC handlers: authenticate, move bytes, and hand results to the
//! open round in [`Shared`]; the driver decides everything else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedprompt_fl::{EvaluateResult, FlError, Metrics, Phase};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use super::state::{Collector, Current, PollGuard, Shared, UploadGuard};
use super::RefusalKind;
use crate::events::Event;
use crate::proto::{
    self, task_message, update_message, SecAggStage, TaskHeader, TaskKind, TaskMessage,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::transfer::{self, Reassembly, TransferError};

/// Longest a task poll is held open.
const MAX_POLL: Duration = Duration::from_secs(60);
/// Most metrics one result may carry.
const MAX_METRICS: usize = 64;
/// Longest metric name.
const MAX_METRIC_NAME: usize = 64;

fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// With mutual TLS, the token names the client and the client certificate
/// (subject CN or a DNS name) must name the same one.
fn certificate_agrees<T>(req: &Request<T>, id: &str) -> std::result::Result<(), String> {
    let certs = req.peer_certs();
    let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
        return Ok(());
    };
    let names = crate::tls::certificate_names(leaf)
        .map_err(|e| format!("the token is client `{id}`'s but {e}"))?;
    if names.iter().any(|n| n == id) {
        return Ok(());
    }
    let cert = if names.is_empty() {
        "names no client (no subject CN or DNS name)".to_string()
    } else {
        format!("is client `{}`'s", names.join("`, `"))
    };
    Err(format!(
        "the client certificate {cert} but the token is client `{id}`'s: \
         connect with `{id}`'s certificate and key, or with the token of the certificate's client"
    ))
}

fn check_metrics(m: &Metrics) -> std::result::Result<(), String> {
    if m.len() > MAX_METRICS {
        return Err(format!("{} metrics, at most {MAX_METRICS}", m.len()));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METRIC_NAME {
            return Err(format!(
                "metric names must have 1 to {MAX_METRIC_NAME} characters"
            ));
        }
        if !v.is_finite() {
            return Err(format!("metric `{k}` is {v}"));
        }
    }
    Ok(())
}

/// The `fedprompt.v1.Federation` service.
#[derive(Clone)]
pub(super) struct Service {
    pub(super) shared: Arc<Shared>,
}

type TaskStream = Pin<Box<dyn Stream<Item = std::result::Result<TaskMessage, Status>> + Send>>;

impl Service {
    fn authenticate<T>(&self, req: &Request<T>) -> std::result::Result<String, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(str::trim);
        let refuse = |reason: String, status: Status| {
            let peer = peer_of(req);
            warn!(peer = %peer, "refused a call: {reason}");
            self.shared.lock().stats.auth_refused += 1;
            self.shared.events.emit(Event::AuthRefused { peer, reason });
            status
        };
        let Some(id) = token.and_then(|t| self.shared.tokens.verify(t)) else {
            let reason = if token.is_none() {
                "missing bearer token"
            } else {
                "unknown token"
            };
            return Err(refuse(
                reason.into(),
                Status::unauthenticated(
                    "invalid or missing token: use the token the coordinator gave you",
                ),
            ));
        };
        if let Err(why) = certificate_agrees(req, id) {
            return Err(refuse(why.clone(), Status::permission_denied(why)));
        }
        Ok(id.to_string())
    }

    /// Checks that `id` may answer `round` in `phase` now.
    fn precheck(
        &self,
        id: &str,
        round: u64,
        phase: Phase,
    ) -> std::result::Result<(), (RefusalKind, Status)> {
        let st = self.shared.lock();
        let what = match phase {
            Phase::Fit => "training",
            Phase::Evaluate => "evaluation",
        };
        match &st.current {
            Some(cur) if cur.collector.round() == round && cur.collector.phase() == phase => {
                if cur
                    .collector
                    .selected()
                    .binary_search(&id.to_string())
                    .is_err()
                {
                    Err((
                        RefusalKind::NotSelected,
                        Status::permission_denied(format!(
                            "client `{id}` was not sampled for {what} round {round}"
                        )),
                    ))
                } else if !cur.collector.pending().iter().any(|p| p == id) {
                    Err((
                        RefusalKind::Duplicate,
                        Status::already_exists(format!(
                            "client `{id}` already answered {what} round {round}"
                        )),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err((
                RefusalKind::StaleRound,
                Status::failed_precondition(format!(
                    "{what} round {round} is not open (the server has completed {} rounds)",
                    st.completed_rounds
                )),
            )),
        }
    }

    /// The messages of `id`'s task, if it has one now.
    fn task_for(&self, id: &str) -> Option<Vec<TaskMessage>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let max_chunk = self.shared.max_chunk as usize;
        let cur = st.current.as_mut()?;
        let phase_kind = match cur.collector.phase() {
            Phase::Fit => TaskKind::Fit,
            Phase::Evaluate => TaskKind::Evaluate,
        };
        // Securely aggregated: the FIT task first, then each stage's message.
        let (kind, payload, secagg_stage) = match &cur.secagg {
            Some(sa) if !sa.pending.contains(id) => return None,
            Some(sa) if sa.stage != SecAggStage::AdvertiseKeys => (
                TaskKind::Secagg,
                sa.outbox.get(id)?.clone(),
                sa.stage as i32,
            ),
            Some(_) => (phase_kind, cur.payload.clone(), 0),
            None if !cur.collector.pending().iter().any(|p| p == id) => return None,
            None => (phase_kind, cur.payload.clone(), 0),
        };
        cur.collector.record_sent(id, payload.bytes.len() as u64);
        let total = payload.bytes.len();
        let mut pieces = transfer::split(&payload.bytes, max_chunk);
        let header = TaskHeader {
            kind: kind as i32,
            round: cur.collector.round(),
            config: cur.config.clone(),
            params_len: total as u64,
            params_sha256: payload.sha256.clone(),
            params_inline: pieces.next().unwrap_or_default(),
            deadline_ms: cur
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            retry_after_ms: 0,
            secagg_stage,
        };
        st.stats.bytes_down += total as u64;
        let out = std::iter::once(task_message::Body::Header(header))
            .chain(pieces.map(task_message::Body::Chunk))
            .map(|body| TaskMessage { body: Some(body) })
            .collect();
        Some(out)
    }
}

impl Service {
    /// A client's answer to a secure-aggregation stage, fed to the open round's core.
    fn secagg_answer(
        &self,
        id: &str,
        header: &proto::UpdateHeader,
        buf: &[u8],
    ) -> std::result::Result<Response<proto::SubmitReply>, Status> {
        let sh = &self.shared;
        let round = header.round;
        let stage = SecAggStage::try_from(header.secagg_stage).unwrap_or(SecAggStage::Unspecified);
        let result = {
            let mut st = sh.lock();
            match st.current.as_mut() {
                Some(Current {
                    collector: Collector::Fit(fit),
                    secagg: Some(sa),
                    ..
                }) if fit.plan().round == round => {
                    sa.receive(id, stage, buf, header.num_examples, &header.metrics)
                }
                _ => Err((
                    RefusalKind::StaleRound,
                    Status::failed_precondition(format!(
                        "no securely aggregated round {round} is open (the server has \
                         completed {} rounds)",
                        st.completed_rounds
                    )),
                )),
            }
        };
        sh.bump();
        match result {
            Ok(()) => Ok(Response::new(proto::SubmitReply {
                accepted: true,
                message: format!("secure-aggregation message of round {round} accepted"),
            })),
            Err((kind, status)) => Err(sh.refuse(id, round, kind, status)),
        }
    }
}

fn header_only(kind: TaskKind, round: u64, retry_after_ms: u64) -> TaskStream {
    let msg = TaskMessage {
        body: Some(task_message::Body::Header(TaskHeader {
            kind: kind as i32,
            round,
            retry_after_ms,
            ..Default::default()
        })),
    };
    Box::pin(tokio_stream::iter([Ok::<_, Status>(msg)]))
}

#[tonic::async_trait]
impl proto::federation_server::Federation for Service {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> std::result::Result<Response<proto::RegisterReply>, Status> {
        let id = self.authenticate(&req)?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        let v = r.protocol_version;
        let refusal = if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) {
            Some(format!(
                "protocol version {v} is not supported: this server speaks versions \
                 {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; use the same fedprompt version as the server"
            ))
        } else if v < PROTOCOL_VERSION {
            self.shared.needs_current_protocol.as_ref().map(|feature| {
                format!(
                    "this run uses {feature}, which needs protocol version {PROTOCOL_VERSION}; \
                     this client speaks version {v}: upgrade fedprompt"
                )
            })
        } else {
            None
        };
        if let Some(why) = refusal {
            warn!(client = %id, "refused protocol version {v}");
            return Err(Status::failed_precondition(why));
        }
        self.shared.touch(&id);
        let completed = {
            let mut st = self.shared.lock();
            st.stats.registrations += 1;
            st.completed_rounds
        };
        info!(client = %id, peer = %peer, agent = %r.agent, "client registered");
        self.shared.events.emit(Event::Registered {
            client_id: id.clone(),
            peer,
        });
        self.shared.bump();
        Ok(Response::new(proto::RegisterReply {
            client_id: id,
            protocol_version: v,
            run_id: self.shared.run_id.clone(),
            max_chunk_bytes: self.shared.max_chunk,
            max_update_bytes: self.shared.max_update,
            model_spec_json: self.shared.model_spec_json.clone(),
            total_rounds: self.shared.total_rounds,
            completed_rounds: completed,
            heartbeat_ms: self.shared.heartbeat_interval().as_millis() as u64,
        }))
    }

    type GetTaskStream = TaskStream;

    async fn get_task(
        &self,
        req: Request<proto::TaskRequest>,
    ) -> std::result::Result<Response<TaskStream>, Status> {
        let id = self.authenticate(&req)?;
        let wait = Duration::from_millis(req.get_ref().wait_ms).min(MAX_POLL);
        let until = tokio::time::Instant::now() + wait;
        let mut guard = PollGuard::new(&self.shared, &id);
        let mut rx = self.shared.epoch.subscribe();
        loop {
            rx.borrow_and_update();
            let (finished, stopping, completed) = {
                let st = self.shared.lock();
                (st.finished, st.stopping, st.completed_rounds)
            };
            if finished {
                guard.done = true;
                if let Some(c) = self.shared.lock().clients.get_mut(&id) {
                    c.told_finished = true;
                }
                self.shared.bump();
                return Ok(Response::new(header_only(TaskKind::Finished, completed, 0)));
            }
            if stopping {
                guard.done = true;
                return Err(Status::unavailable(
                    "the server is shutting down; reconnect later",
                ));
            }
            if let Some(msgs) = self.task_for(&id) {
                guard.done = true;
                return Ok(Response::new(Box::pin(tokio_stream::iter(
                    msgs.into_iter().map(Ok::<_, Status>),
                ))));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    guard.done = true;
                    return Err(Status::unavailable("the server is shutting down"));
                },
                _ = tokio::time::sleep_until(until) => {
                    guard.done = true;
                    return Ok(Response::new(header_only(TaskKind::Wait, completed, 0)));
                }
            }
        }
    }

    async fn submit_update(
        &self,
        req: Request<tonic::Streaming<proto::UpdateMessage>>,
    ) -> std::result::Result<Response<proto::SubmitReply>, Status> {
        let id = self.authenticate(&req)?;
        let _uploading = UploadGuard::new(&self.shared, &id);
        let sh = &self.shared;
        let mut stream = req.into_inner();
        let stream_error = |s: Status, round: u64| {
            if s.code() == Code::OutOfRange || s.code() == Code::ResourceExhausted {
                sh.refuse(
                    &id,
                    round,
                    RefusalKind::Oversized,
                    Status::resource_exhausted(format!("message too large: {}", s.message())),
                )
            } else {
                sh.refuse(
                    &id,
                    round,
                    RefusalKind::Truncated,
                    Status::data_loss(format!("upload broken off: {}", s.message())),
                )
            }
        };
        let header = match stream.message().await {
            Ok(Some(proto::UpdateMessage {
                body: Some(update_message::Body::Header(h)),
            })) => h,
            Ok(Some(_)) => {
                return Err(sh.refuse(
                    &id,
                    0,
                    RefusalKind::Malformed,
                    Status::invalid_argument("the first message must be an UpdateHeader"),
                ))
            }
            Ok(None) => {
                return Err(sh.refuse(
                    &id,
                    0,
                    RefusalKind::Truncated,
                    Status::invalid_argument("empty upload"),
                ))
            }
            Err(s) => return Err(stream_error(s, 0)),
        };
        let round = header.round;
        let refuse = |kind, status| sh.refuse(&id, round, kind, status);
        let refused = |e| {
            let (kind, status) = transfer_refusal(e);
            refuse(kind, status)
        };
        if let Err((kind, status)) = self.precheck(&id, round, Phase::Fit) {
            return Err(refuse(kind, status));
        }
        if let Err(why) = check_metrics(&header.metrics) {
            return Err(refuse(
                RefusalKind::BadMetrics,
                Status::invalid_argument(why),
            ));
        }
        let total = header.total_len;
        let sha = Some(header.sha256.clone()).filter(|s| !s.is_empty());
        let mut upload = Reassembly::new(total, sha, sh.max_update).map_err(refused)?;
        upload.push(&header.inline).map_err(refused)?;
        while !upload.is_complete() {
            match stream.message().await {
                Ok(Some(proto::UpdateMessage {
                    body: Some(update_message::Body::Chunk(c)),
                })) => upload.push(&c).map_err(refused)?,
                Ok(Some(_)) => {
                    return Err(refuse(
                        RefusalKind::Malformed,
                        Status::invalid_argument("expected a chunk after the UpdateHeader"),
                    ))
                }
                Ok(None) => return Err(refused(upload.truncated())),
                Err(s) => return Err(stream_error(s, round)),
            }
        }
        match stream.message().await {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(refuse(
                    RefusalKind::Malformed,
                    Status::invalid_argument("data after the declared total_len"),
                ))
            }
            Err(s) => return Err(stream_error(s, round)),
        }
        let buf = upload.finish().map_err(refused)?;
        if header.secagg_stage != 0 {
            return self.secagg_answer(&id, &header, &buf);
        }
        // Submit to the open round, if it is still the same one.
        let result = {
            let mut st = sh.lock();
            match st.current.as_mut() {
                Some(Current {
                    secagg: Some(_), ..
                }) => {
                    drop(st);
                    return Err(refuse(
                        RefusalKind::SecAgg,
                        Status::invalid_argument(format!(
                            "round {round} is securely aggregated: answer its tasks with the \
                             secure-aggregation messages they ask for, not parameters"
                        )),
                    ));
                }
                Some(Current {
                    collector: Collector::Fit(fit),
                    decoding,
                    ..
                }) if fit.plan().round == round => Some(match decoding {
                    None => {
                        fit.submit_bytes(&id, &buf, header.num_examples, header.metrics.clone())
                    }
                    Some(d) => fit.submit_encoded(
                        &id,
                        &buf,
                        &d.codec,
                        &d.global,
                        header.num_examples,
                        header.metrics.clone(),
                    ),
                }),
                _ => None,
            }
        };
        let result = match result {
            Some(r) => r,
            None => {
                return Err(refuse(
                    RefusalKind::StaleRound,
                    Status::failed_precondition(format!(
                        "training round {round} closed before the update arrived"
                    )),
                ))
            }
        };
        sh.bump();
        match result {
            Ok(()) => {
                sh.lock().stats.accepted_updates += 1;
                sh.events.emit(Event::Accepted {
                    client_id: id.clone(),
                    round,
                    bytes: total,
                    num_examples: header.num_examples,
                });
                Ok(Response::new(proto::SubmitReply {
                    accepted: true,
                    message: format!("update for round {round} accepted"),
                }))
            }
            Err(FlError::InvalidUpdate { cause, .. }) => Err(refuse(
                RefusalKind::InvalidParams,
                Status::invalid_argument(format!("update refused: {cause}")),
            )),
            Err(FlError::Codec(why)) => Err(refuse(
                RefusalKind::BadEncoding,
                Status::invalid_argument(format!("update refused: {why}")),
            )),
            Err(FlError::DuplicateClient { .. }) => Err(refuse(
                RefusalKind::Duplicate,
                Status::already_exists(format!("client `{id}` already answered round {round}")),
            )),
            Err(FlError::UnknownClient { .. }) => Err(refuse(
                RefusalKind::NotSelected,
                Status::permission_denied(format!("client `{id}` is not part of round {round}")),
            )),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn submit_evaluation(
        &self,
        req: Request<proto::EvaluationResult>,
    ) -> std::result::Result<Response<proto::SubmitReply>, Status> {
        let id = self.authenticate(&req)?;
        self.shared.touch(&id);
        let sh = &self.shared;
        let r = req.into_inner();
        let round = r.round;
        let refuse = |kind, status| sh.refuse(&id, round, kind, status);
        if let Err((kind, status)) = self.precheck(&id, round, Phase::Evaluate) {
            return Err(refuse(kind, status));
        }
        if let Err(why) = check_metrics(&r.metrics) {
            return Err(refuse(
                RefusalKind::BadMetrics,
                Status::invalid_argument(why),
            ));
        }
        let bytes = prost::Message::encoded_len(&r) as u64;
        let result = {
            let mut guard = sh.lock();
            let st = &mut *guard;
            match st.current.as_mut() {
                Some(Current {
                    collector: Collector::Eval(ev),
                    ..
                }) if ev.plan().round == r.round => {
                    let res = ev.submit(
                        EvaluateResult {
                            client_id: id.clone(),
                            num_examples: r.num_examples,
                            metrics: r.metrics,
                        },
                        bytes,
                    );
                    if res.is_ok() {
                        st.stats.accepted_evaluations += 1;
                    }
                    Some(res)
                }
                _ => None,
            }
        };
        sh.bump();
        match result {
            Some(Ok(())) => Ok(Response::new(proto::SubmitReply {
                accepted: true,
                message: format!("evaluation of round {} accepted", r.round),
            })),
            Some(Err(e)) => Err(refuse(
                RefusalKind::Duplicate,
                Status::already_exists(e.to_string()),
            )),
            None => Err(refuse(
                RefusalKind::StaleRound,
                Status::failed_precondition(format!(
                    "evaluation round {} closed before the result arrived",
                    r.round
                )),
            )),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> std::result::Result<Response<proto::HeartbeatReply>, Status> {
        let id = self.authenticate(&req)?;
        self.shared.touch(&id);
        Ok(Response::new(proto::HeartbeatReply {}))
    }

    async fn leave(
        &self,
        req: Request<proto::LeaveRequest>,
    ) -> std::result::Result<Response<proto::LeaveReply>, Status> {
        let id = self.authenticate(&req)?;
        let reason = req.into_inner().reason;
        info!(client = %id, "client left: {reason}");
        {
            let mut st = self.shared.lock();
            if let Some(c) = st.clients.get_mut(&id) {
                c.away = true;
            }
            if let Some(cur) = st.current.as_mut() {
                if cur.pending().iter().any(|p| p == &id) {
                    cur.fail(&id, &format!("left: {reason}"));
                }
            }
        }
        self.shared.bump();
        Ok(Response::new(proto::LeaveReply {}))
    }
}

/// The refusal for a broken upload, as the protocol names it.
fn transfer_refusal(e: TransferError) -> (RefusalKind, Status) {
    match e {
        TransferError::Oversized { declared, max } => (
            RefusalKind::Oversized,
            Status::resource_exhausted(format!(
                "update of {declared} bytes exceeds the limit of {max} bytes"
            )),
        ),
        TransferError::Overlong { .. } => (
            RefusalKind::Malformed,
            Status::invalid_argument("more bytes than the declared total_len"),
        ),
        TransferError::Truncated { received, declared } => (
            RefusalKind::Truncated,
            Status::data_loss(format!("upload ended after {received} of {declared} bytes")),
        ),
        TransferError::Checksum => (
            RefusalKind::Checksum,
            Status::data_loss("SHA-256 of the update differs from the declared one"),
        ),
    }
}
