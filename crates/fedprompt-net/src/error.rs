//! Error type of the network federation.

use std::path::PathBuf;

/// Any error of `serve`, `join` and their helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A configuration value is missing or out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration file could not be parsed.
    #[error("configuration `{path}`: {msg}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("`{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said (printed in the message, so not a `source()`).
        cause: std::io::Error,
    },
    /// A certificate, key or TLS setting is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The federated core refused something (configuration, checkpoint, aggregation).
    #[error(transparent)]
    Fl(#[from] fedprompt_fl::FlError),
    /// A parameter set is malformed.
    #[error(transparent)]
    Params(#[from] fedprompt_fl::ParamsError),
    /// The server could not bind or serve.
    #[error("transport: {0}")]
    Transport(String),
    /// The server refused this client for good (bad token, protocol mismatch...).
    #[error("the server refused this client: {0}")]
    Refused(String),
    /// The server could not be reached for too long.
    #[error("gave up reaching the server after {attempts} attempts: {last}")]
    Unreachable {
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Local training or evaluation failed.
    #[error("local trainer: {0}")]
    Trainer(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    CertGen(String),
}

impl NetError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NetError {
        let path = path.into();
        move |cause| NetError::Io { path, cause }
    }
}

/// Result alias for this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

pub use fedprompt_io::error_chain;
