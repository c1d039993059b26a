//! Error type of the report crate.

use std::path::PathBuf;

/// Everything that can go wrong while writing or loading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or folder could not be read, written or renamed.
    #[error("I/O error on {path}: {cause}")]
    Io {
        /// The path being accessed.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// `results.json` could not be parsed or serialised.
    #[error("invalid results JSON in {path}: {cause}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The underlying error (with line and column).
        cause: serde_json::Error,
    },
    /// A CSV file could not be written.
    #[error("CSV error writing {path}: {cause}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The underlying error.
        cause: csv::Error,
    },
    /// Plotters failed while drawing a plot.
    #[error("plotting {path} failed: {message}")]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
    /// The path given to [`crate::load`] holds no results.
    #[error("no results at {path}: expected a results.json file or a folder containing one")]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// The results are inconsistent (e.g. an accuracy given in percent).
    #[error("invalid results: {0}")]
    Invalid(String),
    /// The embedded plot font could not be registered.
    #[error("the embedded plot font could not be registered")]
    Font,
}

/// Result alias for this crate.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReportError {
    let path = path.into();
    move |cause| ReportError::Io { path, cause }
}
