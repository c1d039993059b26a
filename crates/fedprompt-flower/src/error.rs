//! Errors of the Flower node.

use std::path::PathBuf;

/// Result with [`FlowerError`].
pub type Result<T> = std::result::Result<T, FlowerError>;

/// What can go wrong between a fedprompt node and a Flower SuperLink.
#[derive(Debug, thiserror::Error)]
pub enum FlowerError {
    /// No HTTP exchange happened (refused, timed out, TLS failed).
    #[error("cannot reach the SuperLink at {url}: {msg}")]
    Connect {
        /// The URL called.
        url: String,
        /// The transport's explanation.
        msg: String,
    },
    /// The TLS handshake failed for good (certificate not trusted, wrong name, no TLS on the
    /// server); never retried.
    #[error("TLS with the SuperLink at {url} failed: {msg}. {fix}")]
    Tls {
        /// The URL called.
        url: String,
        /// The TLS library's explanation.
        msg: String,
        /// What to change.
        fix: String,
    },
    /// The SuperLink answered a call with an error status.
    #[error("the SuperLink refused `{rpc}` (HTTP {status}{code}): {detail}", code = .code.map(|c| format!(", Flower error {c}")).unwrap_or_default())]
    Refused {
        /// The Fleet RPC.
        rpc: &'static str,
        /// HTTP status.
        status: u16,
        /// Flower's API error code, when the body carried one.
        code: Option<i64>,
        /// What the SuperLink said.
        detail: String,
    },
    /// The SuperLink rejected the node's signed identity (HTTP 401).
    #[error("the SuperLink refused this node's authentication on `{rpc}`: {detail}. With SuperNode authentication on (`flower-superlink --enable-supernode-auth`), the node's public key must be registered first (`flwr supernode register <node>.pub <superlink>`, OpenSSH format, as `fedprompt flower-keygen` writes it) and `--auth-key` must name the matching private key")]
    Unauthenticated {
        /// The Fleet RPC.
        rpc: &'static str,
        /// What the SuperLink said.
        detail: String,
    },
    /// The SuperLink no longer knows this node (restarted without its database?).
    #[error("the SuperLink no longer recognizes this node: {0} (was it restarted without its database?)")]
    Forgotten(String),
    /// The SuperLink runs a Flower release this node does not speak.
    #[error("the SuperLink runs an incompatible Flower version: {0} (fedprompt speaks flwr {ver}; run a SuperLink of the same major.minor release)", ver = crate::FLWR_VERSION)]
    Version(String),
    /// A reply could not be decoded.
    #[error("malformed `{rpc}` reply from the SuperLink: {msg}")]
    Decode {
        /// The Fleet RPC.
        rpc: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// An object of a message is malformed (bad hash, structure, dtype, length).
    #[error("malformed object {id}: {msg}")]
    Object {
        /// The object id.
        id: String,
        /// What is wrong.
        msg: String,
    },
    /// The node's key could not be read or used.
    #[error("node key {path}: {msg}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Invalid settings.
    #[error("{0}")]
    Config(String),
}

impl FlowerError {
    /// An [`FlowerError::Object`] error.
    pub fn object(id: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Object {
            id: id.into(),
            msg: msg.into(),
        }
    }

    /// Whether retrying the same call later may succeed (transport failures and 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Refused { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}
