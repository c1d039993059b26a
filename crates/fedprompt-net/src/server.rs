//! The coordinator: a gRPC service in front of `fedprompt_fl::Server`.
//!
//! One driver task runs the rounds with the federated core (sampling,
//! quorum, aggregation, checkpoints); the gRPC handlers only authenticate,
//! move bytes and hand results to the open [`fedprompt_fl::FitRound`] or
//! [`fedprompt_fl::EvalRound`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fedprompt_fl::{
    ClientConfig, EvalOutcome, EvalRound, EvaluateResult, FitRound, FlError, Metrics, Params,
    Phase, RoundOutcome, Server, ServerState,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tracing::{error, info, warn};

use crate::auth::TokenStore;
use crate::config::{secs, InitialParams, ServeConfig};
use crate::error::{NetError, Result};
use crate::events::{Event, EventSink};
use crate::proto::{
    self, federation_server::FederationServer, task_message, update_message, TaskHeader, TaskKind,
    TaskMessage, PROTOCOL_VERSION,
};

/// Longest a task poll is held open.
const MAX_POLL: Duration = Duration::from_secs(60);
/// Room for headers and metrics beside a full chunk.
pub(crate) const MESSAGE_OVERHEAD: u64 = 64 * 1024;
/// Most metrics one result may carry.
const MAX_METRICS: usize = 64;
/// Longest metric name.
const MAX_METRIC_NAME: usize = 64;

/// Why a submission was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// For a round that is not open (stale, future, or already closed).
    StaleRound,
    /// From a client not sampled for the round.
    NotSelected,
    /// A second answer from the same client in one round.
    Duplicate,
    /// Larger than the server accepts (declared length or one message).
    Oversized,
    /// The upload ended before its declared length.
    Truncated,
    /// Out of protocol order (no header, extra bytes...).
    Malformed,
    /// The SHA-256 of the bytes differs from the declared one.
    Checksum,
    /// Wrong tensor names, shapes or dtypes, non-finite values, or not safetensors.
    InvalidParams,
    /// Too many, too long or non-finite metrics.
    BadMetrics,
}

impl RefusalKind {
    /// Snake-case name, as in the events file.
    pub fn name(self) -> &'static str {
        match self {
            RefusalKind::StaleRound => "stale_round",
            RefusalKind::NotSelected => "not_selected",
            RefusalKind::Duplicate => "duplicate",
            RefusalKind::Oversized => "oversized",
            RefusalKind::Truncated => "truncated",
            RefusalKind::Malformed => "malformed",
            RefusalKind::Checksum => "checksum",
            RefusalKind::InvalidParams => "invalid_params",
            RefusalKind::BadMetrics => "bad_metrics",
        }
    }
}

/// Counters over the whole run (this process).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Successful registrations.
    pub registrations: u64,
    /// Calls refused for a missing or unknown token.
    pub auth_refused: u64,
    /// Connections that failed the TLS handshake.
    pub tls_refused: u64,
    /// Training updates accepted.
    pub accepted_updates: u64,
    /// Evaluations accepted.
    pub accepted_evaluations: u64,
    /// Refused submissions by kind.
    pub refused: BTreeMap<RefusalKind, u64>,
    /// Selected clients that did not answer before a round closed.
    pub late: u64,
    /// Bytes received in submissions (as counted by the federated core).
    pub bytes_up: u64,
    /// Bytes of global parameters sent.
    pub bytes_down: u64,
}

impl ServerStats {
    /// Refusals of every kind.
    pub fn total_refused(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// What a finished (or stopped) serve run did.
#[derive(Clone, Debug)]
pub struct ServeSummary {
    /// Completed training rounds (including those before a resume).
    pub rounds_completed: u64,
    /// Rounds the checkpoint had when this process started.
    pub resumed_at: u64,
    /// Whether it stopped before `rounds` (shutdown requested).
    pub stopped_early: bool,
    /// Training rounds run by this process.
    pub outcomes: Vec<RoundOutcome>,
    /// Evaluation rounds run by this process.
    pub evaluations: Vec<EvalOutcome>,
    /// The final global parameters.
    pub global: Params,
    /// Counters.
    pub stats: ServerStats,
}

struct Payload {
    bytes: Bytes,
    sha256: Bytes,
}

enum Collector {
    Fit(FitRound),
    Eval(EvalRound),
}

impl Collector {
    fn phase(&self) -> Phase {
        match self {
            Collector::Fit(_) => Phase::Fit,
            Collector::Eval(_) => Phase::Evaluate,
        }
    }
    fn round(&self) -> u64 {
        match self {
            Collector::Fit(c) => c.plan().round,
            Collector::Eval(c) => c.plan().round,
        }
    }
    fn selected(&self) -> &[String] {
        match self {
            Collector::Fit(c) => &c.plan().clients,
            Collector::Eval(c) => &c.plan().clients,
        }
    }
    fn pending(&self) -> Vec<String> {
        match self {
            Collector::Fit(c) => c.pending(),
            Collector::Eval(c) => c.pending(),
        }
    }
    fn is_complete(&self) -> bool {
        match self {
            Collector::Fit(c) => c.is_complete(),
            Collector::Eval(c) => c.is_complete(),
        }
    }
    fn record_sent(&mut self, id: &str, bytes: u64) {
        let _ = match self {
            Collector::Fit(c) => c.record_sent(id, bytes),
            Collector::Eval(c) => c.record_sent(id, bytes),
        };
    }
    fn fail(&mut self, id: &str, why: &str) {
        let _ = match self {
            Collector::Fit(c) => c.fail(id, why),
            Collector::Eval(c) => c.fail(id, why),
        };
    }
}

struct Current {
    collector: Collector,
    payload: Arc<Payload>,
    config: BTreeMap<String, proto::ConfigValue>,
    deadline: Instant,
    refused: usize,
}

#[derive(Default)]
struct ClientInfo {
    last_seen: Option<Instant>,
    polling: usize,
    away: bool,
    told_finished: bool,
}

#[derive(Default)]
struct State {
    clients: BTreeMap<String, ClientInfo>,
    current: Option<Current>,
    completed_rounds: u64,
    finished: bool,
    stopping: bool,
    stats: ServerStats,
}

struct Shared {
    tokens: TokenStore,
    state: Mutex<State>,
    epoch: watch::Sender<u64>,
    events: EventSink,
    run_id: String,
    model_spec_json: String,
    total_rounds: u64,
    max_chunk: u64,
    max_update: u64,
    liveness: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked cannot leave the state half-written in a
        // way later code relies on, so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    fn touch(&self, id: &str) {
        let mut st = self.lock();
        let c = st.clients.entry(id.to_string()).or_default();
        c.last_seen = Some(Instant::now());
        c.away = false;
    }

    fn available(&self) -> Vec<String> {
        let now = Instant::now();
        let st = self.lock();
        st.clients
            .iter()
            .filter(|(_, c)| {
                c.polling > 0
                    || (!c.away
                        && c.last_seen
                            .is_some_and(|t| now.duration_since(t) < self.liveness))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn refuse(&self, id: &str, round: u64, kind: RefusalKind, status: Status) -> Status {
        warn!(
            client = id,
            round,
            kind = kind.name(),
            "refused: {}",
            status.message()
        );
        {
            let mut st = self.lock();
            *st.stats.refused.entry(kind).or_default() += 1;
            if let Some(cur) = st.current.as_mut() {
                cur.refused += 1;
            }
        }
        self.events.emit(Event::Refused {
            client_id: id.to_string(),
            round,
            kind: kind.name().to_string(),
            code: format!("{:?}", status.code()),
            reason: status.message().to_string(),
        });
        status
    }
}

fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn sha256(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(bytes))
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

struct PollGuard<'a> {
    shared: &'a Shared,
    id: String,
    done: bool,
}

impl<'a> PollGuard<'a> {
    fn new(shared: &'a Shared, id: &str) -> Self {
        {
            let mut st = shared.lock();
            let c = st.clients.entry(id.to_string()).or_default();
            c.polling += 1;
            c.last_seen = Some(Instant::now());
            c.away = false;
        }
        shared.bump();
        Self {
            shared,
            id: id.to_string(),
            done: false,
        }
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(c) = st.clients.get_mut(&self.id) {
            c.polling = c.polling.saturating_sub(1);
            c.last_seen = Some(Instant::now());
            if !self.done {
                // The client hung up while waiting: do not sample it until it is back.
                c.away = true;
            }
        }
    }
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
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
        if let Some(id) = token.and_then(|t| self.shared.tokens.verify(t)) {
            return Ok(id.to_string());
        }
        let peer = peer_of(req);
        let reason = if token.is_none() {
            "missing bearer token"
        } else {
            "unknown token"
        };
        warn!(peer = %peer, "refused a call: {reason}");
        self.shared.lock().stats.auth_refused += 1;
        self.shared.events.emit(Event::AuthRefused {
            peer,
            reason: reason.into(),
        });
        Err(Status::unauthenticated(
            "invalid or missing token: use the token the coordinator gave you",
        ))
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
        if !cur.collector.pending().iter().any(|p| p == id) {
            return None;
        }
        let payload = cur.payload.clone();
        cur.collector.record_sent(id, payload.bytes.len() as u64);
        let kind = match cur.collector.phase() {
            Phase::Fit => TaskKind::Fit,
            Phase::Evaluate => TaskKind::Evaluate,
        };
        let total = payload.bytes.len();
        let first = total.min(max_chunk);
        let header = TaskHeader {
            kind: kind as i32,
            round: cur.collector.round(),
            config: cur.config.clone(),
            params_len: total as u64,
            params_sha256: payload.sha256.clone(),
            params_inline: payload.bytes.slice(..first),
            deadline_ms: cur
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            retry_after_ms: 0,
        };
        st.stats.bytes_down += total as u64;
        let mut out = vec![TaskMessage {
            body: Some(task_message::Body::Header(header)),
        }];
        let mut at = first;
        while at < total {
            let end = (at + max_chunk).min(total);
            out.push(TaskMessage {
                body: Some(task_message::Body::Chunk(payload.bytes.slice(at..end))),
            });
            at = end;
        }
        Some(out)
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
        if r.protocol_version != PROTOCOL_VERSION {
            warn!(client = %id, "refused protocol version {}", r.protocol_version);
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported: this server speaks version {PROTOCOL_VERSION}; upgrade fedprompt",
                r.protocol_version
            )));
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
            protocol_version: PROTOCOL_VERSION,
            run_id: self.shared.run_id.clone(),
            max_chunk_bytes: self.shared.max_chunk,
            max_update_bytes: self.shared.max_update,
            model_spec_json: self.shared.model_spec_json.clone(),
            total_rounds: self.shared.total_rounds,
            completed_rounds: completed,
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
        self.shared.touch(&id);
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
        if let Err((kind, status)) = self.precheck(&id, round, Phase::Fit) {
            return Err(sh.refuse(&id, round, kind, status));
        }
        if let Err(why) = check_metrics(&header.metrics) {
            return Err(sh.refuse(
                &id,
                round,
                RefusalKind::BadMetrics,
                Status::invalid_argument(why),
            ));
        }
        if header.total_len > sh.max_update {
            return Err(sh.refuse(
                &id,
                round,
                RefusalKind::Oversized,
                Status::resource_exhausted(format!(
                    "update of {} bytes exceeds the limit of {} bytes",
                    header.total_len, sh.max_update
                )),
            ));
        }
        let total = header.total_len as usize;
        if header.inline.len() > total {
            return Err(sh.refuse(
                &id,
                round,
                RefusalKind::Malformed,
                Status::invalid_argument("more bytes than the declared total_len"),
            ));
        }
        let mut buf = BytesMut::with_capacity(total);
        buf.extend_from_slice(&header.inline);
        while buf.len() < total {
            match stream.message().await {
                Ok(Some(proto::UpdateMessage {
                    body: Some(update_message::Body::Chunk(c)),
                })) => {
                    if buf.len() + c.len() > total {
                        return Err(sh.refuse(
                            &id,
                            round,
                            RefusalKind::Malformed,
                            Status::invalid_argument("more bytes than the declared total_len"),
                        ));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(Some(_)) => {
                    return Err(sh.refuse(
                        &id,
                        round,
                        RefusalKind::Malformed,
                        Status::invalid_argument("expected a chunk after the UpdateHeader"),
                    ))
                }
                Ok(None) => {
                    return Err(sh.refuse(
                        &id,
                        round,
                        RefusalKind::Truncated,
                        Status::data_loss(format!(
                            "upload ended after {} of {total} bytes",
                            buf.len()
                        )),
                    ))
                }
                Err(s) => return Err(stream_error(s, round)),
            }
        }
        match stream.message().await {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(sh.refuse(
                    &id,
                    round,
                    RefusalKind::Malformed,
                    Status::invalid_argument("data after the declared total_len"),
                ))
            }
            Err(s) => return Err(stream_error(s, round)),
        }
        if !header.sha256.is_empty() && sha256(&buf) != header.sha256 {
            return Err(sh.refuse(
                &id,
                round,
                RefusalKind::Checksum,
                Status::data_loss("SHA-256 of the update differs from the declared one"),
            ));
        }
        // Submit to the open round, if it is still the same one.
        let result = {
            let mut st = sh.lock();
            match st.current.as_mut() {
                Some(Current {
                    collector: Collector::Fit(fit),
                    ..
                }) if fit.plan().round == round => {
                    Some(fit.submit_bytes(&id, &buf, header.num_examples, header.metrics.clone()))
                }
                _ => None,
            }
        };
        let result = match result {
            Some(r) => r,
            None => {
                return Err(sh.refuse(
                    &id,
                    round,
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
                    bytes: total as u64,
                    num_examples: header.num_examples,
                });
                Ok(Response::new(proto::SubmitReply {
                    accepted: true,
                    message: format!("update for round {round} accepted"),
                }))
            }
            Err(FlError::InvalidUpdate { source, .. }) => Err(sh.refuse(
                &id,
                round,
                RefusalKind::InvalidParams,
                Status::invalid_argument(format!("update refused: {source}")),
            )),
            Err(FlError::DuplicateClient { .. }) => Err(sh.refuse(
                &id,
                round,
                RefusalKind::Duplicate,
                Status::already_exists(format!("client `{id}` already answered round {round}")),
            )),
            Err(FlError::UnknownClient { .. }) => Err(sh.refuse(
                &id,
                round,
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
        if let Err((kind, status)) = self.precheck(&id, r.round, Phase::Evaluate) {
            return Err(sh.refuse(&id, r.round, kind, status));
        }
        if let Err(why) = check_metrics(&r.metrics) {
            return Err(sh.refuse(
                &id,
                r.round,
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
            Some(Err(e)) => Err(sh.refuse(
                &id,
                r.round,
                RefusalKind::Duplicate,
                Status::already_exists(e.to_string()),
            )),
            None => Err(sh.refuse(
                &id,
                r.round,
                RefusalKind::StaleRound,
                Status::failed_precondition(format!(
                    "evaluation round {} closed before the result arrived",
                    r.round
                )),
            )),
        }
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
                if cur.collector.pending().iter().any(|p| p == &id) {
                    cur.collector.fail(&id, &format!("left: {reason}"));
                }
            }
        }
        self.shared.bump();
        Ok(Response::new(proto::LeaveReply {}))
    }
}

/// A server started by [`start`]: its address, events, and a way to stop it.
pub struct RunningServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    driver: tokio::task::JoinHandle<Result<ServeSummary>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Stops a running server from elsewhere (a signal handler, a test).
#[derive(Clone, Debug)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Asks the server to stop: the open round is abandoned, the last checkpoint stays.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// A handle that stops the server.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Waits for the run to end.
    pub async fn wait(self) -> Result<ServeSummary> {
        match self.driver.await {
            Ok(r) => r,
            Err(e) => Err(NetError::Transport(format!("server task failed: {e}"))),
        }
    }
}

fn load_initial(cfg: &ServeConfig) -> Result<Params> {
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

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(NetError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(NetError::io(path))
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

/// Starts serving: binds, then runs the rounds in the background.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer> {
    cfg.validate()?;
    let tokens = TokenStore::load(&cfg.tokens)?;
    let strategy = cfg.strategy.build(cfg.policy.clone())?;
    let server = if cfg.resume {
        if !cfg.checkpoint.exists() {
            return Err(NetError::Config(format!(
                "resume: no checkpoint at `{}`",
                cfg.checkpoint.display()
            )));
        }
        let state = ServerState::load_checkpoint(&cfg.checkpoint)?;
        Server::from_state(state, strategy)?
    } else {
        let c = cfg.clone();
        let initial = tokio::task::spawn_blocking(move || load_initial(&c))
            .await
            .map_err(|e| NetError::Config(format!("loading the initial parameters: {e}")))??;
        Server::new(initial, strategy)?
    };
    let wire = server.global().wire_len()? as u64;
    let max_update = cfg.max_update_bytes.unwrap_or(2 * wire + MESSAGE_OVERHEAD);
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::server_config(t)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&cfg.address)
        .await
        .map_err(|e| NetError::Transport(format!("cannot listen on {}: {e}", cfg.address)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let events = EventSink::open(cfg.events.as_deref())?;
    let model_spec_json = match &cfg.model {
        Some(m) => serde_json::to_string(m).map_err(|e| NetError::Config(e.to_string()))?,
        None => String::new(),
    };
    let run_id = {
        let mut h = Sha256::new();
        h.update(model_spec_json.as_bytes());
        h.update(cfg.policy.seed.to_le_bytes());
        h.update(cfg.strategy.name().as_bytes());
        hex::encode(&h.finalize()[..8])
    };
    let (epoch, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            completed_rounds: server.round(),
            ..Default::default()
        }),
        epoch,
        events,
        run_id,
        model_spec_json,
        total_rounds: cfg.rounds,
        max_chunk: cfg.max_chunk_bytes,
        max_update,
        liveness: secs("liveness_s", cfg.liveness_s)?,
        tokens,
    });
    let known = shared.tokens.client_ids().len();
    shared.events.emit(Event::Started {
        address: addr.to_string(),
        rounds: cfg.rounds,
        resumed_at: server.round(),
        known_clients: known,
        tls: tls.is_some(),
        mutual_tls: cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
    });
    info!(
        "serving on {addr} ({}), {known} known clients, rounds {}..={}",
        if tls.is_some() { "TLS" } else { "PLAINTEXT" },
        server.round() + 1,
        cfg.rounds
    );
    if tls.is_none() {
        warn!("serving without TLS: tokens and parameters travel in clear text");
    }

    let (stop, stop_rx) = watch::channel(false);
    let limit = (cfg.max_chunk_bytes + MESSAGE_OVERHEAD) as usize;
    let svc = FederationServer::new(Service {
        shared: shared.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let (grpc_stop_tx, grpc_stop_rx) = watch::channel(false);
    let grpc = {
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(svc);
        let mut grpc_stop = grpc_stop_rx.clone();
        let signal = async move {
            let _ = grpc_stop.wait_for(|v| *v).await;
        };
        match tls {
            Some(tls) => {
                let incoming = tls_incoming(listener, tls, shared.clone(), grpc_stop_rx);
                tokio::spawn(
                    async move { router.serve_with_incoming_shutdown(incoming, signal).await },
                )
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(
                    async move { router.serve_with_incoming_shutdown(incoming, signal).await },
                )
            }
        }
    };
    let driver = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = drive(shared.clone(), server, cfg, stop_rx).await;
            {
                let mut st = shared.lock();
                st.stopping = true;
            }
            shared.bump();
            grpc_stop_tx.send_replace(true);
            match tokio::time::timeout(Duration::from_secs(5), grpc).await {
                Ok(Ok(Ok(()))) | Err(_) => {}
                Ok(Ok(Err(e))) => warn!("gRPC server: {e}"),
                Ok(Err(e)) => warn!("gRPC task: {e}"),
            }
            result
        })
    };
    Ok(RunningServer {
        addr,
        shared,
        stop,
        driver,
    })
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> impl Stream<Item = std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { let _ = stop.wait_for(|v| *v).await; } => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let why = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "TLS handshake timed out".to_string(),
                };
                warn!(peer = %peer, "refused a connection: TLS handshake failed: {why}");
                shared.lock().stats.tls_refused += 1;
                shared.events.emit(Event::TlsRefused {
                    peer: peer.to_string(),
                    reason: why,
                });
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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

async fn drive(
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

/// Runs a federation to the end (or until Ctrl-C) on a fresh Tokio runtime.
pub fn serve(cfg: ServeConfig) -> Result<ServeSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Transport(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let running = start(cfg).await?;
        let stop = running.stop_handle();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                warn!("interrupted: stopping; the last checkpoint is kept for --resume");
                stop.stop();
            }
        });
        running.wait().await
    })
}
