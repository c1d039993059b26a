//! The coordinator: a gRPC service in front of `fedprompt_fl::Server`.
//!
//! One driver task runs the rounds with the federated core (sampling,
//! quorum, aggregation, checkpoints); the gRPC handlers only authenticate,
//! move bytes and hand results to the open [`fedprompt_fl::FitRound`] or
//! [`fedprompt_fl::EvalRound`].

//!
//! * `state`: what the handlers and the driver share (clients, the open round);
//! * `service`: the gRPC handlers;
//! * `driver`: the rounds (wait for clients, run a phase, checkpoint);
//! * `privacy`: DP accounting, local-DP round keys and caps on claimed example counts;
//! * `tls_accept`: the TLS listener.

mod driver;
mod privacy;
mod secagg;
mod service;
mod state;
mod tls_accept;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedprompt_fl::{EvalOutcome, Params, RoundOutcome, Server, ServerState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::auth::TokenStore;
use crate::config::{secs, ServeConfig};
use crate::error::{NetError, Result};
use crate::events::{Event, EventSink};
use crate::proto::federation_server::FederationServer;

use driver::{drive, load_initial};
use service::Service;
use state::{Shared, State};
use tls_accept::tls_incoming;

/// Room for headers and metrics beside a full chunk.
pub(crate) const MESSAGE_OVERHEAD: u64 = 64 * 1024;

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
    /// Not an encoding in the round's codec (`[compression]`), or a malformed one.
    BadEncoding,
    /// A secure-aggregation message the core refused (malformed, wrong sender, out of
    /// turn), or plain parameters in a securely aggregated round.
    SecAgg,
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
            RefusalKind::BadEncoding => "bad_encoding",
            RefusalKind::SecAgg => "secagg",
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
    /// Whether it stopped before `rounds` (shutdown requested, or the privacy budget).
    pub stopped_early: bool,
    /// DP: `(ε, δ)` spent by the completed rounds, when the run has DP noise.
    pub epsilon: Option<(f64, f64)>,
    /// Why the privacy budget stopped the run, when it did.
    pub budget_stop: Option<String>,
    /// Training rounds run by this process.
    pub outcomes: Vec<RoundOutcome>,
    /// Evaluation rounds run by this process.
    pub evaluations: Vec<EvalOutcome>,
    /// The final global parameters.
    pub global: Params,
    /// Counters.
    pub stats: ServerStats,
    /// How the clients uploaded (`int8-rows`, `topk 10%+ef`, `secagg 32 bits`); `None`: plain
    /// f32 parameters.
    pub uploads: Option<String>,
}

/// Refuses a quorum that the clients of the tokens file can never meet (the server would wait
/// forever without a word).
fn check_quorum(
    policy: &fedprompt_fl::RoundPolicy,
    known: usize,
    tokens: &std::path::Path,
) -> Result<()> {
    for (key, need) in [
        ("min_available_clients", policy.min_available_clients),
        ("min_fit_clients", policy.min_fit_clients),
        ("min_fit_results", policy.min_fit_results),
        ("min_evaluate_clients", policy.min_evaluate_clients),
        ("min_evaluate_results", policy.min_evaluate_results),
    ] {
        if need > known {
            return Err(NetError::Config(format!(
                "`{key} = {need}` can never be met: the tokens file `{}` knows {known} client{}; \
                 lower it or add clients with `fedprompt devcerts` / the tokens file",
                tokens.display(),
                if known == 1 { "" } else { "s" }
            )));
        }
    }
    Ok(())
}

/// A few lines for a person (what `fedprompt serve` prints): the rounds, traffic, the last
/// evaluation and the shape of the final global, never its values (the final parameters go
/// to the `output` file).
impl std::fmt::Display for ServeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aggregated = self.outcomes.iter().filter(|o| o.aggregated).count();
        writeln!(
            f,
            "rounds_completed: {}, resumed_at: {}, stopped_early: {}",
            self.rounds_completed, self.resumed_at, self.stopped_early
        )?;
        writeln!(
            f,
            "rounds run by this process: {} ({aggregated} aggregated)",
            self.outcomes.len()
        )?;
        if let Some((eps, delta)) = self.epsilon {
            writeln!(f, "privacy: epsilon {eps:.4} at delta {delta}")?;
        }
        if let Some(why) = &self.budget_stop {
            writeln!(f, "{why}")?;
        }
        for o in self.outcomes.iter().filter(|o| !o.aggregated) {
            writeln!(
                f,
                "  round {} not aggregated: {}",
                o.round,
                o.skipped.as_deref().unwrap_or("?")
            )?;
        }
        let st = &self.stats;
        writeln!(
            f,
            "updates accepted: {}, evaluations accepted: {}, refused: {}, late: {}",
            st.accepted_updates,
            st.accepted_evaluations,
            st.total_refused(),
            st.late
        )?;
        writeln!(
            f,
            "traffic: up {}{}, down {}; registrations: {}, refused tokens: {}, failed TLS handshakes: {}",
            driver::human(st.bytes_up),
            self.uploads
                .as_ref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default(),
            driver::human(st.bytes_down),
            st.registrations,
            st.auth_refused,
            st.tls_refused
        )?;
        match self
            .evaluations
            .iter()
            .rev()
            .find_map(|e| e.aggregate.as_ref().map(|a| (e.round, a)))
        {
            Some((round, a)) => writeln!(
                f,
                "last evaluation (round {round}): {} clients, {} examples, {}",
                a.n_results,
                a.num_examples,
                driver::metrics_text(&a.metrics)
            )?,
            None => writeln!(f, "no federated evaluation was aggregated")?,
        }
        write!(
            f,
            "global: {} tensors, {} values",
            self.global.len(),
            self.global.num_elements()
        )
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

/// Starts serving: binds, then runs the rounds in the background.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer> {
    cfg.validate()?;
    let tokens = TokenStore::load(&cfg.tokens)?;
    check_quorum(&cfg.policy, tokens.client_ids().len(), &cfg.tokens)?;
    if let Some(sa) = &cfg.secure_aggregation {
        // A threshold that cannot work with a full round would fail every round.
        let known = tokens.client_ids().len();
        let m = cfg
            .policy
            .sampling(fedprompt_fl::Phase::Fit)
            .num_sampled(known)?;
        sa.validate_for(m).map_err(|e| {
            NetError::Config(format!(
                "[secure_aggregation] does not fit a round of {m} clients (the tokens file knows \
                 {known}): {e}"
            ))
        })?;
    }
    // DP and weight rules fail here, before anything is bound (the driver builds them again).
    privacy::accounting(&cfg, tokens.client_ids().len())?;
    privacy::client_weights(&cfg, &tokens.client_ids())?;
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
        needs_current_protocol: if cfg.secure_aggregation.is_some() {
            Some("secure aggregation".into())
        } else {
            cfg.compression
                .map(|c| format!("compressed uploads ({})", c.label()))
        },
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

/// Runs a federation to the end on a fresh Tokio runtime. Ctrl-C and, on
/// Unix, SIGTERM stop it as [`StopHandle::stop`] does: the last checkpoint
/// is kept for `resume`, and the summary is returned.
pub fn serve(cfg: ServeConfig) -> Result<ServeSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Transport(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        // Installed before the server listens, so no stop request is lost.
        let signal = stop_signal();
        let running = start(cfg).await?;
        let stop = running.stop_handle();
        tokio::spawn(async move {
            if let Some(name) = signal.await {
                warn!("{name}: stopping; the last checkpoint is kept for --resume");
                stop.stop();
            }
        });
        running.wait().await
    })
}

/// Resolves with a name for the signal when the process is asked to stop (Ctrl-C, or
/// SIGTERM on Unix); the handlers are installed by the call.
fn stop_signal() -> impl std::future::Future<Output = Option<&'static str>> + Send {
    let mut signals = fedprompt_io::signals::StopSignals::install();
    async move { Some(signals.next().await.0) }
}
