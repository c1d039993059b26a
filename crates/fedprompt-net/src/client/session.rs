//! One connection to the server: TLS and the bearer token, registration, a task download,
//! an update upload, and how each failure is classed (retry or fatal).

use std::time::Duration;

use bytes::Bytes;
use fedprompt_fl::{Metrics, Params};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{JoinConfig, ModelSpec};
use crate::error::{NetError, Result};
use crate::proto::{
    self, federation_client::FederationClient, task_message, update_message, TaskKind,
    PROTOCOL_VERSION,
};
use crate::server::MESSAGE_OVERHEAD;
use crate::transfer::{self, Reassembly, TransferError};
use fedprompt_train::client::{EvalResult, FitResult};

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

pub(super) enum Failure {
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

pub(super) struct Session {
    pub(super) client: RawClient,
    pub(super) reg: proto::RegisterReply,
    pub(super) spec: Option<ModelSpec>,
    /// Says "still here" every `reg.heartbeat_ms` while the session lives.
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// Heartbeats every `every` on a clone of the session's channel, until aborted. A failed beat
/// is only logged: the main loop notices a lost server on its own calls.
fn spawn_heartbeat(client: &RawClient, every: Duration) -> tokio::task::JoinHandle<()> {
    let mut client = client.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut req = Request::new(proto::HeartbeatRequest {});
            req.set_timeout(every.max(Duration::from_secs(5)));
            if let Err(st) = client.heartbeat(req).await {
                tracing::debug!("heartbeat failed: {}", st.message());
            }
        }
    })
}

pub(super) async fn connect(cfg: &JoinConfig) -> std::result::Result<Session, Failure> {
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
    let heartbeat = (reg.heartbeat_ms > 0)
        .then(|| spawn_heartbeat(&client, Duration::from_millis(reg.heartbeat_ms)));
    Ok(Session {
        client,
        reg,
        spec,
        heartbeat,
    })
}

pub(super) enum Received {
    Wait(u64),
    Finished,
    Work {
        kind: TaskKind,
        round: u64,
        config: fedprompt_fl::ClientConfig,
        global: Params,
        bytes: u64,
    },
    /// A secure-aggregation stage: the server's message of `stage`.
    SecAgg {
        round: u64,
        stage: proto::SecAggStage,
        message: Vec<u8>,
    },
}

pub(super) async fn get_task(
    s: &mut Session,
    wait: Duration,
) -> std::result::Result<Received, Failure> {
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
        TaskKind::Fit | TaskKind::Evaluate | TaskKind::Secagg => {}
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
    if kind == TaskKind::Secagg {
        let stage = proto::SecAggStage::try_from(header.secagg_stage).map_err(|_| {
            Failure::Fatal(NetError::Protocol(format!(
                "unknown secure-aggregation stage {}",
                header.secagg_stage
            )))
        })?;
        return Ok(Received::SecAgg {
            round: header.round,
            stage,
            message: buf.to_vec(),
        });
    }
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

pub(super) enum Outgoing {
    Fit {
        round: u64,
        result: FitResult,
        /// The delta encoded as the round asked; `None`: plain f32 parameters.
        encoded: Option<Bytes>,
    },
    Eval {
        round: u64,
        result: EvalResult,
    },
    /// A secure-aggregation answer: this client's message of `stage`.
    SecAgg {
        round: u64,
        stage: proto::SecAggStage,
        bytes: Bytes,
        num_examples: u64,
        metrics: Metrics,
    },
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
        secagg_stage: 0,
    };
    std::iter::once(update_message::Body::Header(header))
        .chain(pieces.map(update_message::Body::Chunk))
        .map(|body| proto::UpdateMessage { body: Some(body) })
        .collect()
}

pub(super) enum Delivery {
    Accepted(u64),
    Refused(String),
    Retry(String),
    Fatal(NetError),
}

pub(super) async fn deliver(s: &mut Session, out: &Outgoing) -> Delivery {
    let result = match out {
        Outgoing::Fit {
            round,
            result,
            encoded,
        } => {
            let bytes = match encoded {
                Some(b) => b.clone(),
                None => match result.params.to_safetensors() {
                    Ok(b) => Bytes::from(b),
                    Err(e) => return Delivery::Fatal(e.into()),
                },
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
        Outgoing::SecAgg {
            round,
            stage,
            bytes,
            num_examples,
            metrics,
        } => {
            let n = bytes.len() as u64;
            let mut msgs = update_messages(
                *round,
                *num_examples,
                metrics.clone(),
                bytes.clone(),
                s.reg.max_chunk_bytes as usize,
            );
            if let Some(proto::UpdateMessage {
                body: Some(update_message::Body::Header(h)),
            }) = msgs.first_mut()
            {
                h.secagg_stage = *stage as i32;
            }
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
