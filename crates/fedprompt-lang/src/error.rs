//! Errors of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading URIEL data or computing a distance.
#[derive(Debug, thiserror::Error)]
pub enum LangError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// An `.npz` file is not a readable zip archive.
    #[error("{path} is not a readable .npz (zip) archive: {cause}")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The underlying error.
        cause: zip::result::ZipError,
    },
    /// An `.npy` array is malformed or of an unsupported type.
    #[error("bad .npy array {name}: {reason}")]
    Npy {
        /// Archive and member name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An `.npz` archive lacks an array or its arrays disagree in shape.
    #[error("unexpected layout in {path}: {reason}")]
    Layout {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A language code matches neither ISO 639-1 nor ISO 639-3.
    #[error("unknown language code {code:?}{}", suggest(.suggestions))]
    UnknownLanguage {
        /// The code as given.
        code: String,
        /// Close matches, formatted as `code (Name)`.
        suggestions: Vec<String>,
    },
    /// The language is known but URIEL has no feature vector for it.
    #[error("language {code:?} (ISO 639-3 {iso3}) is not in the URIEL database")]
    NotInUriel {
        /// The code as given.
        code: String,
        /// Its ISO 639-3 code.
        iso3: String,
    },
    /// The language's vector has no usable (known, non-zero) features.
    #[error("language {iso3} has no known non-zero features in the selected feature sets; try source = predicted or missing = fill_predicted")]
    NoFeatures {
        /// ISO 639-3 code.
        iso3: String,
    },
    /// No pre-training language contributed a usable vector.
    #[error("the pre-training language vector is empty: no CC-100 language has usable features")]
    EmptyPretraining,
    /// The options are inconsistent.
    #[error("invalid distance options: {0}")]
    InvalidOptions(String),
    /// An embedded CSV table is malformed (a build defect, reported rather than panicking).
    #[error("embedded table {table} is malformed: {reason}")]
    EmbeddedTable {
        /// Which table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

/// Result with [`LangError`].
pub type Result<T, E = LangError> = std::result::Result<T, E>;
