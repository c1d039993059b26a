//! Errors of the simulator.

use std::path::PathBuf;

/// Result alias.
pub type Result<T> = std::result::Result<T, SimError>;

/// What can stop an experiment.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid experiment file {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("data: {0}")]
    Data(#[from] fedprompt_data::DataError),
    #[error("data: {0}")]
    DataMsg(String),
    #[error(transparent)]
    Model(#[from] fedprompt_model::ModelError),
    #[error(transparent)]
    Train(#[from] fedprompt_train::TrainError),
    #[error("federation: {0}")]
    Fl(#[from] fedprompt_fl::FlError),
    #[error("parameters: {0}")]
    Params(#[from] fedprompt_fl::ParamsError),
    #[error("results: {0}")]
    Report(#[from] fedprompt_report::ReportError),
    #[error("assets: {0}")]
    Hub(#[from] fedprompt_hub::HubError),
    #[error("language distance: {0}")]
    Lang(#[from] fedprompt_lang::LangError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("run `{run}`: {msg}")]
    Run { run: String, msg: String },
}
