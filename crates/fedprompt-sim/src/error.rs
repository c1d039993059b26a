//! Errors of the simulator.

use std::path::PathBuf;

/// Result alias.
pub type Result<T> = std::result::Result<T, SimError>;

/// What can stop an experiment.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file or folder could not be read or written.
    #[error("cannot read or write {path}: {cause}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// The experiment file is not valid TOML or fails [`ExperimentConfig::validate`].
    ///
    /// [`ExperimentConfig::validate`]: crate::config::ExperimentConfig::validate
    #[error("invalid experiment file {path}: {msg}")]
    Config {
        /// The experiment file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Reading, selecting or sampling the examples failed.
    #[error("data: {0}")]
    Data(fedprompt_data::DataError),
    /// A data problem found by the simulator itself (e.g. a missing data file); holds the message.
    #[error("data: {0}")]
    DataMsg(String),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] fedprompt_model::ModelError),
    /// Local training or evaluation failed.
    #[error(transparent)]
    Train(#[from] fedprompt_train::TrainError),
    /// The federated core (strategy, rounds) failed.
    #[error("federation: {0}")]
    Fl(fedprompt_fl::FlError),
    /// Converting or aggregating parameters failed.
    #[error("parameters: {0}")]
    Params(fedprompt_fl::ParamsError),
    /// Writing or reading the results folder failed.
    #[error("results: {0}")]
    Report(fedprompt_report::ReportError),
    /// Fetching or preparing the default model or the demo data failed.
    #[error("assets: {0}")]
    Hub(fedprompt_hub::HubError),
    /// Computing language distances failed.
    #[error("language distance: {0}")]
    Lang(fedprompt_lang::LangError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
    /// A run could not be planned, resumed or finished.
    #[error("run `{run}`: {msg}")]
    Run {
        /// Label of the run (for an unreadable checkpoint, the checkpoint file instead).
        run: String,
        /// What went wrong.
        msg: String,
    },
    /// `--resume` found checkpoints of another experiment (another file, or other flags).
    #[error("cannot resume from {path}: {msg}")]
    Resume {
        /// The record of the experiment the checkpoints belong to.
        path: PathBuf,
        /// What differs, and what to do.
        msg: String,
    },
    /// Runs could not be scheduled side by side (e.g. no thread could be started).
    #[error("running runs side by side: {0}")]
    Schedule(String),
}

// The wrappers above print their inner error after a prefix, so their `From` impls are
// written here rather than with `#[from]`, which would also return it as the source and have
// it printed twice by an error chain.
macro_rules! wrap_without_source {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for SimError {
            fn from(e: $ty) -> Self {
                SimError::$variant(e)
            }
        }
    )*};
}

wrap_without_source!(
    Data(fedprompt_data::DataError),
    Fl(fedprompt_fl::FlError),
    Params(fedprompt_fl::ParamsError),
    Report(fedprompt_report::ReportError),
    Hub(fedprompt_hub::HubError),
    Lang(fedprompt_lang::LangError),
    Candle(candle_core::Error),
);
