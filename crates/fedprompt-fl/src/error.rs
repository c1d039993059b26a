//! Error types.

use std::path::PathBuf;

/// An error about a set of parameters: layout, values or wire bytes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// A tensor's data length does not match its shape.
    #[error("tensor `{name}`: shape {shape:?} holds {expected} values but {actual} were given")]
    DataLength {
        /// Tensor name (empty when the tensor is not yet named).
        name: String,
        /// Declared shape.
        shape: Vec<usize>,
        /// Number of values the shape holds.
        expected: usize,
        /// Number of values given.
        actual: usize,
    },
    /// The product of a shape's dimensions overflows `usize`.
    #[error("tensor `{name}`: shape {shape:?} overflows")]
    ShapeOverflow {
        /// Tensor name.
        name: String,
        /// Offending shape.
        shape: Vec<usize>,
    },
    /// An expected tensor is absent.
    #[error("missing tensor `{0}`")]
    Missing(String),
    /// A tensor that the expected layout does not have.
    #[error("unexpected tensor `{0}`")]
    Unexpected(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: shape {actual:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// A value is NaN or infinite.
    #[error("tensor `{name}`: non-finite value {value} at flat index {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first offending value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A tensor on the wire has a dtype other than the one required.
    #[error("tensor `{name}`: dtype {actual}, expected {expected}")]
    Dtype {
        /// Tensor name.
        name: String,
        /// Required dtype.
        expected: String,
        /// Dtype found.
        actual: String,
    },
    /// The bytes are not a valid safetensors buffer (truncated, bad header, ...).
    #[error("invalid safetensors data: {0}")]
    Safetensors(String),
}

impl From<safetensors::SafeTensorError> for ParamsError {
    fn from(e: safetensors::SafeTensorError) -> Self {
        ParamsError::Safetensors(e.to_string())
    }
}

/// Any error of the federated core.
#[derive(Debug, thiserror::Error)]
pub enum FlError {
    /// A parameter-set error not tied to a client.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A client's update was malformed; the round may drop it and continue.
    #[error("update from client `{client_id}` rejected: {cause}")]
    InvalidUpdate {
        /// The client that sent it.
        client_id: String,
        /// What was wrong (names the tensor; printed in the message, so not a `source()`).
        cause: ParamsError,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Fewer clients are available than the configuration requires.
    #[error("not enough clients: {available} available, {required} required")]
    NotEnoughClients {
        /// Clients available.
        available: usize,
        /// Clients required.
        required: usize,
    },
    /// Aggregation was asked for with no results.
    #[error("round {round}: no results to aggregate")]
    NoResults {
        /// Round number.
        round: u64,
    },
    /// The reporting clients trained on zero examples in total.
    #[error("round {round}: reporting clients have zero examples in total")]
    ZeroExamples {
        /// Round number.
        round: u64,
    },
    /// Rounds were run but none of them changed the global model.
    #[error(
        "{rounds} round(s) ran and none was aggregated (last: {last_reason}); nothing was learned: \
         check the clients' logs and the quorum settings"
    )]
    NothingAggregated {
        /// Rounds run.
        rounds: u64,
        /// Why the last one was not aggregated.
        last_reason: String,
    },
    /// A client that was not selected for this round reported.
    #[error("client `{client_id}` is not part of round {round}")]
    UnknownClient {
        /// The client.
        client_id: String,
        /// Round number.
        round: u64,
    },
    /// A client reported twice in one round.
    #[error("client `{client_id}` already reported in round {round}")]
    DuplicateClient {
        /// The client.
        client_id: String,
        /// Round number.
        round: u64,
    },
    /// A round object does not belong to the server's current round.
    #[error("round mismatch: server expects round {expected}, got {got}")]
    RoundMismatch {
        /// Round the server expects.
        expected: u64,
        /// Round given.
        got: u64,
    },
    /// Strategy state does not fit the strategy (wrong kind or layout).
    #[error("strategy state: {0}")]
    StrategyState(String),
    /// A checkpoint could not be read or written.
    #[error("checkpoint `{path}`: {cause}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// What the operating system said (printed in the message, so not a `source()`).
        cause: std::io::Error,
    },
    /// A checkpoint's contents are invalid.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    /// An encoded update could not be produced or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A secure-aggregation round failed.
    #[error(transparent)]
    SecAgg(#[from] crate::secagg::SecAggError),
}

impl FlError {
    /// Wraps a parameter error as a rejected update from `client_id`.
    pub fn invalid_update(client_id: impl Into<String>, cause: ParamsError) -> Self {
        FlError::InvalidUpdate {
            client_id: client_id.into(),
            cause,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = FlError> = std::result::Result<T, E>;
