//! Transport-free federated core of fedprompt.
//!
//! [`Params`] (named f32 tensors, safetensors on the wire), [`ClientUpdate`]s,
//! [`Strategy`]s (weighted FedAvg = Federated Prompt Averaging, FedProx,
//! FedAdam/FedYogi/FedAdagrad, DP-FedAvg, coordinate-wise median and trimmed mean),
//! [`ClientWeights`] caps, [`privacy`] accounting, seeded client [`Sampling`], a [`CommLedger`],
//! and a [`Server`] round state machine with checkpoints. The only I/O is
//! [`ServerState::save_checkpoint`] and [`ServerState::load_checkpoint`]. [`secagg`] is
//! secure aggregation (SecAgg+); [`codec`] the update encodings.

#![warn(missing_docs)]

mod checkpoint;
pub use checkpoint::Annex;
pub mod codec;
mod comm;
pub mod dp;
pub mod driver;
mod error;
mod params;
pub mod privacy;
pub mod round_config;
mod sampling;
pub mod secagg;
pub mod seed;
mod server;
mod strategy;
mod update;

pub use comm::{CommEntry, CommLedger, Traffic};
pub use driver::{run_rounds, Collected, Flow, RoundClients, RunReport, RunRules};
pub use error::{FlError, ParamsError, Result};
pub use params::{Layout, Params, Tensor};
pub use round_config::{keys, merge_config, ClientConfig, ConfigValue, RoundConfig};
pub use sampling::{round_rng, Phase, Sampling};
pub use seed::{client_round_seed, derive_seed};
pub use server::{
    EvalOutcome, EvalRound, FitRound, RoundCollector, RoundOutcome, Server, ServerState,
};
pub use strategy::{
    add_proximal_grad, fedavg, proximal_term, weighted_average_f64, ClientWeights, DpFedAvg,
    EvalAggregate, FedAvg, FedOpt, FedOptKind, FedOptParams, FedOptState, FedProx, Median,
    RoundPlan, RoundPolicy, Strategy, StrategyConfig, StrategyState, TrimmedMean,
};
pub use update::{
    screen_updates, weighted_metrics, ClientId, ClientUpdate, EvaluateResult, Failure, Metrics,
};
