//! Errors of the model crate: every variant names the file or tensor at fault and says what to do.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// What can go wrong when loading, running or saving a model or adapter.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model folder, file or adapter path does not exist.
    #[error("{what} not found at {path}: {hint}")]
    NotFound {
        /// What was looked for (e.g. `config.json`, `adapter folder`).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// An I/O error on a named file.
    #[error("cannot read or write {path}: {cause}")]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// `config.json` (or `adapter_config.json`) is not valid.
    #[error("invalid {path}: {msg}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The folder holds an architecture fedprompt cannot run.
    #[error("unsupported architecture in {path}: {arch}; fedprompt runs XLM-RoBERTa, RoBERTa and BERT encoders (model_type xlm-roberta, roberta or bert)")]
    UnknownArchitecture {
        /// The `config.json` that names it.
        path: PathBuf,
        /// Its `model_type`, or the first of `architectures` when `model_type` is absent.
        arch: String,
    },
    /// A weight file is corrupt or not safetensors.
    #[error("cannot read safetensors file {path}: {msg}; the file may be truncated or corrupt, download or convert it again")]
    Safetensors {
        /// The weight file (or, for sharded weights, the index) that could not be read.
        path: PathBuf,
        /// The safetensors error.
        msg: String,
    },
    /// A tensor the model needs is absent from the weights.
    #[error("tensor `{name}` is missing from {path}; the weights do not match config.json (wrong model folder?)")]
    MissingTensor {
        /// Full name of the missing tensor.
        name: String,
        /// The weight file (or shard index) it was looked up in.
        path: PathBuf,
    },
    /// A tensor has another shape than the configuration implies.
    #[error(
        "tensor `{name}` in {path} has shape {got:?} but the configuration needs {expected:?}"
    )]
    ShapeMismatch {
        /// Full name of the tensor.
        name: String,
        /// The weight file (or shard index) it comes from.
        path: PathBuf,
        /// Dimensions the configuration implies.
        expected: Vec<usize>,
        /// Dimensions found in the file.
        got: Vec<usize>,
    },
    /// `tokenizer.json` is missing or unreadable.
    #[error("tokenizer problem with {path}: {msg}")]
    Tokenizer {
        /// The tokenizer file (or model folder).
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An adapter does not fit the model or method it is loaded into.
    #[error("adapter {path} does not fit this model: {msg}")]
    Adapter {
        /// The adapter folder or file.
        path: PathBuf,
        /// Why it does not fit.
        msg: String,
    },
    /// The PEFT method configuration is invalid.
    #[error("invalid PEFT method configuration: {0}")]
    Method(String),
    /// Input to a forward pass is invalid (empty batch, too long...).
    #[error("invalid input: {0}")]
    Input(String),
    /// An error inside the tensor library.
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            cause,
        }
    }
}

// `Candle` prints its inner error after a prefix, so its `From` is written by hand
// rather than with `#[from]`, which would also return it as the source and have it printed
// twice by an error chain.
impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e)
    }
}
