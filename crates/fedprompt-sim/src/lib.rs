//! The in-process federated simulator and the paper's experiments: local monolingual,
//! centralized and federated training with any PEFT method, against one shared frozen
//! backbone, from one TOML experiment file, with checkpoints for resume and paper-shaped
//! results (Markdown tables, CSV/JSON, plots).
#![warn(missing_docs)]

pub mod check;
pub mod config;
pub mod data;
pub mod error;
pub mod export;
pub mod run;

pub use check::{check_experiment, count_table, describe_data, first_examples};
pub use config::{DataSection, DataSource, ExperimentConfig, Paradigm, RunSpec};
pub use error::{Result, SimError};
pub use export::{export_federation, FederationExport};
pub use run::{load_backbone, method_label, run_experiment, RunOptions};
