//! Transport-free federated core of fedprompt.
//!
//! [`Params`] (named f32 tensors, safetensors on the wire), [`ClientUpdate`]s,
//! [`Strategy`]s (weighted FedAvg = Federated Prompt Averaging, FedProx,
//! FedAdam/FedYogi/FedAdagrad), seeded client [`Sampling`], a [`CommLedger`],
//! and a [`Server`] round state machine with checkpoints. The only I/O is
//! [`ServerState::save_checkpoint`] and [`ServerState::load_checkpoint`].

#![warn(missing_docs)]

mod checkpoint;
pub mod codec;
mod comm;
#[path = "dp.rs"]
mod dp_mechanism;
mod error;
mod params;
pub mod round_config;
mod sampling;
pub mod seed;
mod server;
mod strategy;
mod update;

/// Central Gaussian differential privacy with fixed clipping (DP-FedAvg).
///
/// Each client's delta `Δ_k = h_k − h_g` is clipped to L2 norm `S`; the server
/// adds `N(0, σ²S²)` noise to the *sum* of clipped deltas and divides by the
/// number of clients: `h_g' = h_g + (Σ_k clip(Δ_k) + N(0, σ²S²I)) / m`.
/// Weights are uniform so that one client changes the sum by at most `S`.
///
/// This module only re-exports: the mechanism (`dp.rs`, which knows no
/// strategy) and the [`DpFedAvg`](dp::DpFedAvg) strategy built on it
/// (`strategy/dp_fedavg.rs`).
pub mod dp {
    pub use crate::dp_mechanism::{add_gaussian_noise, clip_to_norm, GaussianDp};
    pub use crate::strategy::DpFedAvg;
}

pub use comm::{CommEntry, CommLedger, Traffic};
pub use error::{FlError, ParamsError, Result};
pub use params::{Layout, Params, Tensor};
pub use round_config::{keys, merge_config, ClientConfig, ConfigValue, RoundConfig};
pub use sampling::{round_rng, Phase, Sampling};
pub use seed::{client_round_seed, derive_seed};
pub use server::{
    EvalOutcome, EvalRound, FitRound, RoundCollector, RoundOutcome, Server, ServerState,
};
pub use strategy::{
    add_proximal_grad, fedavg, proximal_term, weighted_average_f64, EvalAggregate, FedAvg, FedOpt,
    FedOptKind, FedOptParams, FedOptState, FedProx, RoundPlan, RoundPolicy, Strategy,
    StrategyConfig, StrategyState,
};
pub use update::{
    screen_updates, weighted_metrics, ClientId, ClientUpdate, EvaluateResult, Failure, Metrics,
};
