//! The crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, sampling or partitioning data.
///
/// File errors name the file and, where there is one, the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: invalid UTF-8", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// A line could not be parsed (wrong field count, bad JSON, empty text, ...).
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A required column is absent from the header (or a JSON record).
    #[error("{}: missing column `{column}` (found: {found})", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column that was asked for.
        column: String,
        /// The columns that are there.
        found: String,
    },
    /// A label is not in the label map.
    #[error("{}:{line}: unknown label `{label}` (known: {known})", path.display())]
    UnknownLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The label as written.
        label: String,
        /// The labels the map knows.
        known: String,
    },
    /// A file holds no examples.
    #[error("{}: no examples", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A language that was asked for has no examples.
    #[error("language `{language}` has no examples")]
    EmptyLanguage {
        /// The language code.
        language: String,
    },
    /// A YAML file could not be parsed or has the wrong shape.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A label map is malformed (duplicate or empty names, no labels).
    #[error("invalid label map: {0}")]
    InvalidLabelMap(String),
    /// A sample asks for more examples than a language has.
    #[error("language `{language}`: asked for {requested} examples, only {available} available")]
    NotEnoughExamples {
        /// The language code.
        language: String,
        /// How many were asked for.
        requested: usize,
        /// How many there are.
        available: usize,
    },
    /// A partition asked for zero clients.
    #[error("a partition needs at least one client")]
    NoClients,
    /// A partition asked for more clients than there are examples.
    #[error("cannot give {clients} clients at least one example each from {examples} examples")]
    TooFewExamples {
        /// Clients asked for.
        clients: usize,
        /// Examples available.
        examples: usize,
    },
    /// An α parameter is outside its range.
    #[error("alpha {alpha} out of range: expected {expected}")]
    AlphaOutOfRange {
        /// The value given.
        alpha: f64,
        /// The valid range in words.
        expected: &'static str,
    },
    /// Dirichlet sampling could not give every client enough examples.
    #[error("Dirichlet partition: no draw in {tries} tries gave every client at least {min_per_client} examples; raise alpha or lower min_per_client")]
    DirichletFailed {
        /// Draws tried.
        tries: usize,
        /// The minimum asked for.
        min_per_client: usize,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DataError {
    /// Whether this error concerns a single line (and so may be skipped with
    /// `skip_bad_lines`).
    pub fn is_line_error(&self) -> bool {
        matches!(
            self,
            DataError::InvalidUtf8 { .. }
                | DataError::BadLine { .. }
                | DataError::UnknownLabel { .. }
        )
    }
}
