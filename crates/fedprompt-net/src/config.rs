//! `federation.toml` (the coordinator's [`ServeConfig`]) and the client's [`JoinConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedprompt_fl::codec::Compression;
use fedprompt_fl::privacy::PrivacyConfig;
use fedprompt_fl::secagg::SecAggConfig;
use fedprompt_fl::{ClientConfig, ClientWeights, RoundPolicy, StrategyConfig};
pub use fedprompt_train::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::error::{NetError, Result};
use crate::tls::{ClientTlsConfig, ServerTlsConfig};

/// Default largest inline payload or chunk: 4 MiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

fn d_deadline() -> f64 {
    600.0
}
fn d_gather() -> f64 {
    5.0
}
fn d_linger() -> f64 {
    5.0
}
fn d_liveness() -> f64 {
    60.0
}
fn d_stage_deadline() -> f64 {
    60.0
}
fn d_chunk() -> u64 {
    DEFAULT_CHUNK_BYTES
}

/// Where the initial global parameters come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InitialParams {
    /// A safetensors file holding the trainable set (F32).
    File {
        /// The file.
        path: PathBuf,
    },
    /// Built from a model folder with `[model]`'s method and labels.
    Model {
        /// Hugging Face model folder.
        dir: PathBuf,
        /// Seed of the trainable set's initialisation.
        #[serde(default)]
        seed: u64,
    },
}

/// The coordinator's configuration: `fedprompt serve federation.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Listen address, e.g. `0.0.0.0:50051` (port 0 picks a free port).
    pub address: String,
    /// TLS certificate and key (and client CA for mutual TLS).
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Serve without TLS; only for tests on one machine. Requires `tls` to be absent.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The hashed tokens file (see [`crate::auth::TokensFile`]).
    pub tokens: PathBuf,
    /// Training rounds in total (a resumed run continues up to this number).
    pub rounds: u64,
    /// Aggregation strategy.
    #[serde(default = "default_strategy")]
    pub strategy: StrategyConfig,
    /// Sampling, quorum and seed.
    #[serde(default)]
    pub policy: RoundPolicy,
    /// Seconds a round waits for answers before closing without the late clients.
    #[serde(default = "d_deadline")]
    pub round_deadline_s: f64,
    /// Once `min_available_clients` are connected, seconds to wait for the others before starting a round.
    #[serde(default = "d_gather")]
    pub gather_s: f64,
    /// Evaluate the global parameters every this many rounds (0: never).
    #[serde(default)]
    pub evaluate_every: u64,
    /// Extra configuration sent to clients each round (epochs, learning_rate, batch_size...).
    #[serde(default)]
    pub client_config: ClientConfig,
    /// The model the clients train (method and labels); optional with `initial.type = "file"`.
    #[serde(default)]
    pub model: Option<ModelSpec>,
    /// Initial global parameters.
    pub initial: InitialParams,
    /// Checkpoint written atomically after every round.
    pub checkpoint: PathBuf,
    /// Continue from `checkpoint` instead of starting afresh.
    #[serde(default)]
    pub resume: bool,
    /// JSON-lines events file (appended to).
    #[serde(default)]
    pub events: Option<PathBuf>,
    /// Where to write the final global parameters (safetensors).
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Largest message payload: updates and parameters beyond it are chunked.
    #[serde(default = "d_chunk")]
    pub max_chunk_bytes: u64,
    /// Largest accepted update in bytes (default: twice the global's size plus 64 KiB).
    #[serde(default)]
    pub max_update_bytes: Option<u64>,
    /// Seconds after its last contact (poll, heartbeat, upload) that a client still counts
    /// as connected; a selected client silent this long fails its round at once. Clients
    /// are asked for a heartbeat every quarter of it.
    #[serde(default = "d_liveness")]
    pub liveness_s: f64,
    /// Seconds to keep serving after the last round so clients learn that the run is over.
    #[serde(default = "d_linger")]
    pub linger_s: f64,
    /// Differential privacy (`[privacy]`): `target_delta`, `max_epsilon`, and
    /// `[privacy.local]` (clients clip and noise their own updates); central DP is strategy
    /// `dpfedavg`. See `docs/privacy.md`.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// Caps on the example counts clients claim (`[weights]`: `max_examples_per_client`,
    /// `declared = { client = examples }` for clients of the tokens file, `uniform`).
    #[serde(default)]
    pub weights: ClientWeights,
    /// Compressed uploads (`[compression]`: `codec = { type = "f16" | "int8" | "int8-rows" |
    /// "topk", fraction = … }`, `error_feedback`), as the simulator's
    /// `[federation.compression]`: each selected client uploads its delta from the global
    /// encoded with this codec. See docs/compression.md.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Secure aggregation (`[secure_aggregation]`: `threshold`, `neighbours`, `clip_range`,
    /// `bits`, `max_weight`, `rounding`), as the simulator's
    /// `[federation.secure_aggregation]`: the server learns only the weighted sum of each
    /// round's updates. Not with `[compression]`, nor with the `median`, `trimmed-mean` or
    /// `dpfedavg` strategies. See docs/secure-aggregation.md.
    #[serde(default)]
    pub secure_aggregation: Option<SecAggConfig>,
    /// With `[secure_aggregation]`: seconds each stage after the first (share keys, masked
    /// input, unmask) waits for its clients; one that does not answer in time is dropped
    /// for the rest of the round. The first stage (training, then advertising keys) has
    /// `round_deadline_s`.
    #[serde(default = "d_stage_deadline")]
    pub secagg_stage_deadline_s: f64,
}

fn default_strategy() -> StrategyConfig {
    StrategyConfig::FedAvg
}

pub(crate) fn secs(what: &str, s: f64) -> Result<Duration> {
    if s.is_finite() && s >= 0.0 {
        Duration::try_from_secs_f64(s).map_err(|e| NetError::Config(format!("{what}: {e}")))
    } else {
        Err(NetError::Config(format!(
            "{what} must be a finite number of seconds >= 0, got {s}"
        )))
    }
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl ServeConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| NetError::Config(e.to_string()))
    }

    /// Reads `federation.toml`; relative paths in it are taken relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(NetError::io(path))?;
        let mut cfg: Self = toml::from_str(&text).map_err(|e| NetError::ConfigFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Makes every relative path relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(t) = &mut self.tls {
            resolve(base, &mut t.cert);
            resolve(base, &mut t.key);
            if let Some(c) = &mut t.client_ca {
                resolve(base, c);
            }
        }
        resolve(base, &mut self.tokens);
        resolve(base, &mut self.checkpoint);
        match &mut self.initial {
            InitialParams::File { path } => resolve(base, path),
            InitialParams::Model { dir, .. } => resolve(base, dir),
        }
        for p in [&mut self.events, &mut self.output].into_iter().flatten() {
            resolve(base, p);
        }
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        if self.rounds == 0 {
            return Err(NetError::Config("rounds must be at least 1".into()));
        }
        match (&self.tls, self.allow_plaintext) {
            (None, false) => {
                return Err(NetError::Config(
                    "no [tls] section: give the server certificate and key (or set allow_plaintext = true for a local test)".into(),
                ))
            }
            (Some(_), true) => {
                return Err(NetError::Config(
                    "allow_plaintext = true conflicts with [tls]".into(),
                ))
            }
            _ => {}
        }
        let deadline = secs("round_deadline_s", self.round_deadline_s)?;
        if deadline.is_zero() {
            return Err(NetError::Config("round_deadline_s must be positive".into()));
        }
        secs("gather_s", self.gather_s)?;
        if secs("secagg_stage_deadline_s", self.secagg_stage_deadline_s)?.is_zero() {
            return Err(NetError::Config(
                "secagg_stage_deadline_s must be positive".into(),
            ));
        }
        secs("linger_s", self.linger_s)?;
        if secs("liveness_s", self.liveness_s)?.is_zero() {
            return Err(NetError::Config("liveness_s must be positive".into()));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_chunk_bytes) {
            return Err(NetError::Config(format!(
                "max_chunk_bytes must be between 1 KiB and 64 MiB, got {}",
                self.max_chunk_bytes
            )));
        }
        fedprompt_fl::RoundConfig::parse_strict(&self.client_config)
            .map_err(|e| NetError::Config(format!("[client_config]: {e}")))?;
        if matches!(self.initial, InitialParams::Model { .. }) && self.model.is_none() {
            return Err(NetError::Config(
                "initial.type = \"model\" needs a [model] section (method and labels)".into(),
            ));
        }
        if let Some(m) = &self.model {
            m.method
                .validate()
                .map_err(|e| NetError::Config(format!("[model.method]: {e}")))?;
            if m.labels.len() < 2 {
                return Err(NetError::Config("[model] needs at least 2 labels".into()));
            }
        }
        self.policy.validate()?;
        self.validate_transport()?;
        Ok(())
    }

    /// How clients upload their updates, for logs and the summary: `topk 10%+ef`,
    /// `secagg 32 bits`...; `None` for plain f32 parameters.
    pub fn uploads_label(&self) -> Option<String> {
        if let Some(s) = &self.secure_aggregation {
            return Some(format!("secagg {} bits", s.bits));
        }
        self.compression.map(|c| c.label())
    }

    /// Checks `[compression]` and `[secure_aggregation]` and what they may be combined with.
    fn validate_transport(&self) -> Result<()> {
        if let Some(c) = &self.compression {
            c.codec
                .validate()
                .map_err(|e| NetError::Config(format!("[compression]: {e}")))?;
        }
        let Some(s) = &self.secure_aggregation else {
            return Ok(());
        };
        s.validate()
            .map_err(|e| NetError::Config(format!("[secure_aggregation]: {e}")))?;
        if !s.simulate_dropouts.is_none() {
            return Err(NetError::Config(
                "[secure_aggregation] simulate_dropouts is for the simulator only: over the \
                 network, clients drop out for real (a stage deadline drops them)"
                    .into(),
            ));
        }
        if self.weights.max_examples_per_client.is_some() || !self.weights.declared.is_empty() {
            return Err(NetError::Config(
                "[weights] max_examples_per_client / declared cannot be applied with \
                 [secure_aggregation]: the weights travel inside the masked vectors, which the \
                 server cannot read; cap them with [secure_aggregation] max_weight instead \
                 ([weights] uniform = true is honoured)"
                    .into(),
            ));
        }
        if self.compression.is_some() {
            return Err(NetError::Config(
                "[secure_aggregation] and [compression] cannot be combined: masked vectors are \
                 uniformly random and do not compress; choose one"
                    .into(),
            ));
        }
        // The server of a securely aggregated round sees only the sum: it cannot clip each
        // update (central DP) nor take medians or trimmed means of them.
        match &self.strategy {
            StrategyConfig::DpFedAvg { .. } => Err(NetError::Config(
                "[secure_aggregation] cannot be combined with central DP (strategy dpfedavg): \
                 the server never sees the individual updates it would clip; use local DP \
                 ([privacy.local]) with secure aggregation"
                    .into(),
            )),
            StrategyConfig::Median | StrategyConfig::TrimmedMean { .. } => Err(NetError::Config(
                "[secure_aggregation] cannot be combined with the median or trimmed-mean \
                     strategies: they need the individual updates, which the server never sees"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}

fn d_wait() -> f64 {
    30.0
}
fn d_backoff_initial() -> f64 {
    0.2
}
fn d_backoff_max() -> f64 {
    10.0
}
fn d_give_up() -> f64 {
    600.0
}

/// A client's configuration: `fedprompt join --server URL --token …`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// `https://host:port` (or `http://` against a plaintext test server).
    pub server: String,
    /// This client's token (sent as a bearer token; never logged).
    pub token: String,
    /// TLS trust and identity.
    #[serde(default)]
    pub tls: ClientTlsConfig,
    /// Seconds one task poll may wait on the server.
    #[serde(default = "d_wait")]
    pub poll_wait_s: f64,
    /// First reconnect delay in seconds (doubles up to `backoff_max_s`, with jitter).
    #[serde(default = "d_backoff_initial")]
    pub backoff_initial_s: f64,
    /// Longest reconnect delay in seconds.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_s: f64,
    /// Give up after this many seconds without reaching the server.
    #[serde(default = "d_give_up")]
    pub give_up_after_s: f64,
}

impl JoinConfig {
    /// A configuration with default timings.
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            token: token.into(),
            tls: ClientTlsConfig::default(),
            poll_wait_s: d_wait(),
            backoff_initial_s: d_backoff_initial(),
            backoff_max_s: d_backoff_max(),
            give_up_after_s: d_give_up(),
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.server.starts_with("https://") || self.server.starts_with("http://")) {
            return Err(NetError::Config(format!(
                "server `{}` must start with https:// (or http:// for a plaintext test server)",
                self.server
            )));
        }
        if self.token.trim().is_empty() {
            return Err(NetError::Config("the token is empty".into()));
        }
        for (what, v) in [
            ("poll_wait_s", self.poll_wait_s),
            ("backoff_initial_s", self.backoff_initial_s),
            ("backoff_max_s", self.backoff_max_s),
            ("give_up_after_s", self.give_up_after_s),
        ] {
            secs(what, v)?;
        }
        Ok(())
    }
}
