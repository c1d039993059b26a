//! A real federation over gRPC (tonic + rustls), built on the same federated
//! core as the simulator (`fedprompt-fl`): the round logic exists once.
//!
//! * [`serve`] runs the coordinator from a [`ServeConfig`] (`federation.toml`):
//!   per-client tokens stored hashed, TLS (optionally mutual), a quorum and a
//!   deadline per round, refusal of bad updates, atomic checkpoints and
//!   `resume`, a log line per round and a JSON-lines events file.
//! * [`join`] takes part from a community's machine with a [`LocalTrainer`]
//!   ([`ModelTrainer`] for the real model): only the trainable set, the
//!   example count and metrics leave the machine.
//! * [`devcerts::generate`] makes a development CA, certificates and tokens.
//! * Optional: compressed uploads (`[compression]`: clients send their delta encoded with a
//!   `fedprompt_fl::codec` codec) and secure aggregation (`[secure_aggregation]`: each
//!   training round runs SecAgg+ over four stages, the server learns only the weighted mean).
//!
//! The wire protocol is `proto/fedprompt.proto` (package `fedprompt.v1`).

#![warn(missing_docs)]

pub mod auth;
mod client;
mod config;
pub mod devcerts;
mod error;
mod events;
pub mod proto;
mod secagg_wire;
mod server;
pub mod tls;
mod transfer;
mod upload;

pub use client::{
    join, join_async, raw_client, update_messages, BearerAuth, JoinSummary, RawClient,
};
pub use config::{InitialParams, JoinConfig, ServeConfig, DEFAULT_CHUNK_BYTES};
pub use error::{error_chain, NetError, Result};
pub use events::Event;
/// The client contract, shared with the simulator and the Flower node (`fedprompt-train`).
pub use fedprompt_train::client::{
    DeterministicTrainer, EvalResult, FitResult, LocalTrainer, ModelTrainer, ModelTrainerConfig,
    Task, TrainerError,
};
pub use fedprompt_train::ModelSpec;
pub use secagg_wire::SECURE_AGGREGATION;
pub use server::{serve, start, RefusalKind, RunningServer, ServeSummary, ServerStats, StopHandle};
pub use tls::{ClientTlsConfig, ServerTlsConfig};
pub use upload::UPDATE_ENCODING;
