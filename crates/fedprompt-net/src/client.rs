//! The client: registers, polls for tasks, trains locally, submits, and
//! reconnects with backoff when the server goes away.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fedprompt_fl::{Metrics, Params};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{info, warn};

use crate::config::{secs, JoinConfig, ModelSpec};
use crate::error::{NetError, Result};
use crate::proto::{
    self, federation_client::FederationClient, task_message, update_message, TaskKind,
    PROTOCOL_VERSION,
};
use crate::server::MESSAGE_OVERHEAD;
use crate::transfer::{self, Reassembly, TransferError};
use fedprompt_train::client::{EvalResult, FitResult, LocalTrainer, Task};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl BearerAuth {
    /// Checks that the token is printable ASCII.
    pub fn new(token: &str) -> Result<Self> {
        let v = format!("Bearer {}", token.trim());
        tonic::metadata::MetadataValue::try_from(v.as_str())
            .map(Self)
            .map_err(|_| NetError::Config("the token must be printable ASCII".into()))
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A generated client with the bearer token attached (for tools and tests).
pub type RawClient = FederationClient<InterceptedService<Channel, BearerAuth>>;

/// Largest message a client accepts (the server's chunk limit is at most 64 MiB).
const CLIENT_MESSAGE_LIMIT: usize = (64 * 1024 * 1024 + MESSAGE_OVERHEAD) as usize;

fn endpoint(cfg: &JoinConfig) -> Result<Endpoint> {
    let ep = Endpoint::from_shared(cfg.server.clone())
        .map_err(|e| NetError::Config(format!("server URL `{}`: {e}", cfg.server)))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if cfg.server.starts_with("https://") {
        ep.tls_config(crate::tls::client_config(&cfg.tls)?)
            .map_err(|e| NetError::Tls(crate::error::error_chain(&e)))
    } else {
        Ok(ep)
    }
}

/// Connects (TLS as the URL says) and returns a raw client; no registration.
pub async fn raw_client(cfg: &JoinConfig) -> Result<RawClient> {
    cfg.validate()?;
    let ep = endpoint(cfg)?;
    let channel = ep.connect().await.map_err(|e| {
        if let Some(f) = crate::tls::tls_failure(&e) {
            return crate::tls::client_error(&cfg.server, &cfg.tls, &f);
        }
        let mut msg = format!(
            "cannot connect to {}: {}",
            cfg.server,
            crate::error::error_chain(&e)
        );
        if cfg.server.starts_with("http://") {
            msg.push_str(" (if the server uses TLS, use an https:// URL)");
        }
        NetError::Transport(msg)
    })?;
    Ok(
        FederationClient::with_interceptor(channel, BearerAuth::new(&cfg.token)?)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
    )
}

/// What a join run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinSummary {
    /// The identity the server gave our token.
    pub client_id: String,
    /// Training rounds whose update the server accepted.
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

enum Failure {
    Fatal(NetError),
    Retry(String),
}

fn classify(what: &str, s: &Status) -> Failure {
    let msg = format!("{what}: {} ({:?})", s.message(), s.code());
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            Failure::Fatal(NetError::Refused(s.message().to_string()))
        }
        Code::FailedPrecondition if what == "register" => {
            Failure::Fatal(NetError::Refused(s.message().to_string()))
        }
        _ => Failure::Retry(msg),
    }
}

/// A failed registration: a TLS failure that surfaced only now (a server refusing our client
/// certificate says so after the handshake, and HTTP/2 keeps only the text of that error), a
/// plaintext URL for a TLS server, or [`classify`].
async fn register_failure(cfg: &JoinConfig, st: &Status) -> Failure {
    if let Some(f) = crate::tls::tls_failure(st) {
        return Failure::Fatal(crate::tls::client_error(&cfg.server, &cfg.tls, &f));
    }
    // A status with a source is a local transport failure, not the server's answer: ask the
    // server directly what it makes of our TLS.
    if std::error::Error::source(st).is_none() {
        return classify("register", st);
    }
    let Ok(ep) = Endpoint::from_shared(cfg.server.clone()) else {
        return classify("register", st);
    };
    let host = ep.uri().host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if cfg.server.starts_with("https://") {
        let port = ep.uri().port_u16().unwrap_or(443);
        if let Some(f) = crate::tls::handshake_refusal(host, port, &cfg.tls).await {
            return Failure::Fatal(crate::tls::client_error(&cfg.server, &cfg.tls, &f));
        }
    } else if crate::tls::speaks_tls(host, ep.uri().port_u16().unwrap_or(80)).await {
        return Failure::Fatal(NetError::Tls(format!(
            "{} speaks TLS, and this client spoke plaintext to it: use {}",
            cfg.server,
            cfg.server.replacen("http://", "https://", 1)
        )));
    }
    classify("register", st)
}

struct Session {
    client: RawClient,
    reg: proto::RegisterReply,
    spec: Option<ModelSpec>,
}

async fn connect(cfg: &JoinConfig) -> std::result::Result<Session, Failure> {
    let mut client = match raw_client(cfg).await {
        Ok(c) => c,
        Err(NetError::Transport(m)) => return Err(Failure::Retry(m)),
        Err(e) => return Err(Failure::Fatal(e)),
    };
    let reg = client
        .register(proto::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            agent: format!("fedprompt-net {}", env!("CARGO_PKG_VERSION")),
        })
        .await;
    let reg = match reg {
        Ok(r) => r.into_inner(),
        Err(st) => return Err(register_failure(cfg, &st).await),
    };
    let spec = if reg.model_spec_json.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<ModelSpec>(&reg.model_spec_json).map_err(|e| {
                Failure::Fatal(NetError::Protocol(format!(
                    "the server's model description is not understood ({e}); are both sides the same fedprompt version?"
                )))
            })?,
        )
    };
    Ok(Session { client, reg, spec })
}

enum Received {
    Wait(u64),
    Finished,
    Work {
        kind: TaskKind,
        round: u64,
        config: fedprompt_fl::ClientConfig,
        global: Params,
        bytes: u64,
    },
}

async fn get_task(s: &mut Session, wait: Duration) -> std::result::Result<Received, Failure> {
    let mut req = Request::new(proto::TaskRequest {
        wait_ms: wait.as_millis() as u64,
    });
    req.set_timeout(wait + Duration::from_secs(60));
    let mut stream = s
        .client
        .get_task(req)
        .await
        .map_err(|st| classify("get task", &st))?
        .into_inner();
    let header = match stream.message().await {
        Ok(Some(proto::TaskMessage {
            body: Some(task_message::Body::Header(h)),
        })) => h,
        Ok(_) => return Err(Failure::Retry("task stream without a header".into())),
        Err(st) => return Err(classify("get task", &st)),
    };
    let kind = TaskKind::try_from(header.kind).unwrap_or(TaskKind::Unspecified);
    match kind {
        TaskKind::Wait => return Ok(Received::Wait(header.retry_after_ms)),
        TaskKind::Finished => return Ok(Received::Finished),
        TaskKind::Fit | TaskKind::Evaluate => {}
        TaskKind::Unspecified => {
            return Err(Failure::Fatal(NetError::Protocol(format!(
                "unknown task kind {}",
                header.kind
            ))))
        }
    }
    let bound = s.reg.max_update_bytes.saturating_mul(4).max(1 << 30);
    let broken = |e: TransferError| match e {
        TransferError::Oversized { declared, .. } => Failure::Fatal(NetError::Protocol(format!(
            "the server announced {declared} bytes of parameters"
        ))),
        TransferError::Checksum => {
            Failure::Retry("the downloaded parameters failed their checksum".into())
        }
        TransferError::Overlong { .. } | TransferError::Truncated { .. } => {
            Failure::Retry("the parameter download was cut short".into())
        }
    };
    let total = header.params_len;
    let mut download = Reassembly::new(total, Some(header.params_sha256), bound).map_err(broken)?;
    download.push(&header.params_inline).map_err(broken)?;
    while !download.is_complete() {
        match stream.message().await {
            Ok(Some(proto::TaskMessage {
                body: Some(task_message::Body::Chunk(c)),
            })) => download.push(&c).map_err(broken)?,
            Ok(_) => return Err(broken(download.truncated())),
            Err(st) => return Err(classify("download", &st)),
        }
    }
    let buf = download.finish().map_err(broken)?;
    let global = Params::from_safetensors(&buf).map_err(|e| {
        Failure::Fatal(NetError::Protocol(format!(
            "the global parameters are unreadable: {e}"
        )))
    })?;
    Ok(Received::Work {
        kind,
        round: header.round,
        config: proto::config_from_wire(&header.config),
        global,
        bytes: total,
    })
}

enum Outgoing {
    Fit { round: u64, result: FitResult },
    Eval { round: u64, result: EvalResult },
}

/// The update messages for `bytes`: a header with the first chunk, then chunks.
pub fn update_messages(
    round: u64,
    num_examples: u64,
    metrics: Metrics,
    bytes: Bytes,
    max_chunk: usize,
) -> Vec<proto::UpdateMessage> {
    let total = bytes.len() as u64;
    let sha256 = transfer::sha256(&bytes);
    let mut pieces = transfer::split(&bytes, max_chunk);
    let header = proto::UpdateHeader {
        round,
        num_examples,
        metrics,
        total_len: total,
        sha256,
        inline: pieces.next().unwrap_or_default(),
    };
    std::iter::once(update_message::Body::Header(header))
        .chain(pieces.map(update_message::Body::Chunk))
        .map(|body| proto::UpdateMessage { body: Some(body) })
        .collect()
}

enum Delivery {
    Accepted(u64),
    Refused(String),
    Retry(String),
    Fatal(NetError),
}

async fn deliver(s: &mut Session, out: &Outgoing) -> Delivery {
    let result = match out {
        Outgoing::Fit { round, result } => {
            let bytes = match result.params.to_safetensors() {
                Ok(b) => Bytes::from(b),
                Err(e) => return Delivery::Fatal(e.into()),
            };
            let n = bytes.len() as u64;
            let msgs = update_messages(
                *round,
                result.num_examples,
                result.metrics.clone(),
                bytes,
                s.reg.max_chunk_bytes as usize,
            );
            s.client
                .submit_update(tokio_stream::iter(msgs))
                .await
                .map(|_| n)
        }
        Outgoing::Eval { round, result } => s
            .client
            .submit_evaluation(proto::EvaluationResult {
                round: *round,
                num_examples: result.num_examples,
                metrics: result.metrics.clone(),
            })
            .await
            .map(|_| 0),
    };
    match result {
        Ok(n) => Delivery::Accepted(n),
        Err(st) => match st.code() {
            Code::Unauthenticated => Delivery::Fatal(NetError::Refused(st.message().into())),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Delivery::Retry(format!("submit: {} ({:?})", st.message(), st.code()))
            }
            _ => Delivery::Refused(format!("{:?}: {}", st.code(), st.message())),
        },
    }
}

struct Backoff {
    initial: Duration,
    max: Duration,
    give_up: Duration,
    next: Duration,
    since: Option<Instant>,
    attempts: u32,
}

impl Backoff {
    fn new(cfg: &JoinConfig) -> Result<Self> {
        let initial = secs("backoff_initial_s", cfg.backoff_initial_s)?;
        Ok(Self {
            initial,
            max: secs("backoff_max_s", cfg.backoff_max_s)?,
            give_up: secs("give_up_after_s", cfg.give_up_after_s)?,
            next: initial,
            since: None,
            attempts: 0,
        })
    }

    fn reset(&mut self) {
        self.next = self.initial;
        self.since = None;
        self.attempts = 0;
    }

    async fn wait(&mut self, why: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if since.elapsed() >= self.give_up {
            return Err(NetError::Unreachable {
                attempts: self.attempts,
                last: why.to_string(),
            });
        }
        let jitter = 0.5 + rand::random::<f64>() * 0.5;
        let d = self.next.mul_f64(jitter);
        warn!("{why}; retrying in {:.1} s", d.as_secs_f64());
        tokio::time::sleep(d).await;
        self.next = (self.next * 2).min(self.max).max(self.initial);
        Ok(())
    }
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
            };
            match deliver(s, &out).await {
                Delivery::Accepted(n) => {
                    info!("{phase} for round {round} accepted");
                    summary.bytes_up += n;
                    match out {
                        Outgoing::Fit { .. } => summary.rounds_trained.push(round),
                        Outgoing::Eval { .. } => summary.evaluations.push(round),
                    }
                }
                Delivery::Refused(m) => {
                    warn!("the server refused our {phase} for round {round}: {m}");
                    summary.refused.push(m);
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
                    info!("round {round}: training locally");
                    let result = run_blocking(|| trainer.fit(&task));
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
                    Outgoing::Fit { round, result }
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

/// Ctrl-C and (on unix) SIGTERM, the stop signals of a terminal, systemd and docker.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers (from then on these signals no longer kill the process).
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| warn!("cannot catch SIGTERM: {e}"))
                .ok();
            Self { term }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal: its name and the exit status of a process it kills (128 + number).
    async fn next(&mut self) -> (&'static str, i32) {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            return tokio::select! {
                () = ctrl_c => ("Ctrl-C", 130),
                _ = term.recv() => ("SIGTERM", 143),
            };
        }
        ctrl_c.await;
        ("Ctrl-C", 130)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
