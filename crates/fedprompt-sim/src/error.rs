//! Errors of the simulator.

use std::path::PathBuf;

/// Result alias.
pub type Result<T> = std::result::Result<T, SimError>;

/// What can stop an experiment.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file or folder could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
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
    Data(#[from] fedprompt_data::DataError),
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
    Fl(#[from] fedprompt_fl::FlError),
    /// Converting or aggregating parameters failed.
    #[error("parameters: {0}")]
    Params(#[from] fedprompt_fl::ParamsError),
    /// Writing or reading the results folder failed.
    #[error("results: {0}")]
    Report(#[from] fedprompt_report::ReportError),
    /// Fetching or preparing the default model or the demo data failed.
    #[error("assets: {0}")]
    Hub(#[from] fedprompt_hub::HubError),
    /// Computing language distances failed.
    #[error("language distance: {0}")]
    Lang(#[from] fedprompt_lang::LangError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A run could not be planned, resumed or finished.
    #[error("run `{run}`: {msg}")]
    Run {
        /// Label of the run (for an unreadable checkpoint, the checkpoint file instead).
        run: String,
        /// What went wrong.
        msg: String,
    },
}
