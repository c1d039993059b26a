//! Secure aggregation in the style of SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020): the
//! server learns the weighted sum of the clients' updates and nothing else about any one.
//!
//! Each client masks its quantised update (see [`config`]) with a self-mask (from a
//! random seed `b`) and one pairwise mask per neighbour in a sparse random graph
//! ([`graph`]); a pair's masks are equal and of opposite signs, derived from X25519 key
//! agreement, so they cancel in the sum modulo `2^bits`. Each client shares `b` and its
//! masking secret key `t`-of-`k` among its neighbours ([`shamir`]), encrypted so that the
//! server, which relays them, cannot read them. When clients drop after sharing keys, the
//! survivors reveal shares of the dropped clients' keys (to remove their pairwise masks) and
//! of the survivors' seeds (to remove their self-masks), never both for one client.
//!
//! - `config`: [`SecAggConfig`] and the fixed-point [`Quantiser`];
//! - `crypto`: key agreement, key derivation, the mask generator, share encryption;
//! - `graph`: the masking graph; `shamir`: secret sharing;
//! - `messages`: the messages of the four stages; `client` / `server`: the state machines;
//! - [`run_in_process`]: one whole round with every client in this process (the simulator).

mod client;
pub mod config;
mod crypto;
pub mod graph;
mod messages;
mod server;
pub mod shamir;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use rand::{CryptoRng, RngCore};

pub use client::SecAggClient;
pub use config::{suggested_neighbours, Quantiser, Rounding, SecAggConfig, SimulatedDropouts};
pub use messages::{
    AdvertiseKeys, EncryptedShare, ForwardedShares, MaskedInput, PublicKeys, Roster, ShareKeys,
    SharePair, UnmaskRequest, UnmaskResponse, WireLen,
};
pub use server::{SecAggOutcome, SecAggServer, ServerStage};

use crate::update::ClientId;

/// Why a secure-aggregation round could not go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The settings are inconsistent.
    #[error("secure aggregation settings: {0}")]
    Config(String),
    /// Too few clients are left at a stage for the threshold.
    #[error("secure aggregation failed at stage `{stage}`: {have} client(s), {need} needed ({why}); lower the threshold or the dropouts")]
    TooFewClients {
        /// The stage.
        stage: &'static str,
        /// How many there are.
        have: usize,
        /// How many are needed.
        need: usize,
        /// The rule that failed.
        why: String,
    },
    /// Too few shares came back to recover a secret.
    #[error("secure aggregation failed: {have} share(s) of `{client_id}`'s {what} came back, {need} needed (too many clients dropped during unmasking)")]
    TooFewShares {
        /// Whose secret.
        client_id: ClientId,
        /// Which secret.
        what: &'static str,
        /// Shares received.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// A message arrived at the wrong stage.
    #[error("secure aggregation: message for stage `{expected}` while at stage `{actual}`")]
    WrongStage {
        /// The stage the message belongs to.
        expected: &'static str,
        /// The current stage.
        actual: &'static str,
    },
    /// A client that is not part of this stage sent a message.
    #[error("secure aggregation: `{client_id}` is not part of stage `{stage}`")]
    UnknownClient {
        /// The client.
        client_id: ClientId,
        /// The stage.
        stage: &'static str,
    },
    /// A client sent twice in one stage.
    #[error("secure aggregation: `{client_id}` already answered stage `{stage}`")]
    Duplicate {
        /// The client.
        client_id: ClientId,
        /// The stage.
        stage: &'static str,
    },
    /// A message is malformed or inconsistent.
    #[error("secure aggregation: {0}")]
    Malformed(String),
}

/// The Shamir evaluation point of `holder`: its position in the sorted roster, plus one.
pub(crate) fn share_point(roster: &[ClientId], holder: &str) -> Result<u64, SecAggError> {
    roster
        .iter()
        .position(|c| c == holder)
        .map(|i| i as u64 + 1)
        .ok_or_else(|| SecAggError::Malformed(format!("`{holder}` is not in the roster")))
}

/// The stage after which a client stops answering (a simulated dropout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropStage {
    /// Never advertises keys.
    BeforeAdvertising,
    /// Advertises keys, never shares them.
    AfterAdvertising,
    /// Shares keys, never sends its masked input.
    AfterSharing,
    /// Sends its masked input, never answers the unmask request.
    AfterMasking,
}

/// One client's input to [`run_in_process`].
#[derive(Clone, Debug)]
pub struct ClientInput {
    /// The client.
    pub client_id: ClientId,
    /// Its update, flattened (the delta from the global model).
    pub update: Vec<f32>,
    /// Its example count (the weight, capped at `max_weight`).
    pub num_examples: u64,
}

/// What [`run_in_process`] produced: the outcome, every client's traffic, and the server's
/// final state (for inspection; it holds only masked data).
#[derive(Debug)]
pub struct InProcessRound {
    /// The aggregate.
    pub outcome: SecAggOutcome,
    /// Payload bytes each client sent ([`WireLen`]), all stages.
    pub bytes_up: BTreeMap<ClientId, u64>,
    /// Payload bytes each client received, all stages.
    pub bytes_down: BTreeMap<ClientId, u64>,
    /// The server's state before it unmasked.
    pub server_state: SecAggServer,
}

/// Runs one round with every client in this process, the clients in `drops` stopping after
/// the stage given. `rng` draws every client's keys and seeds (a simulation; a deployed
/// client draws its own from the operating system).
pub fn run_in_process<R: RngCore + CryptoRng + ?Sized>(
    cfg: &SecAggConfig,
    round: u64,
    graph_seed: u64,
    inputs: &[ClientInput],
    drops: &BTreeMap<ClientId, DropStage>,
    rng: &mut R,
) -> Result<InProcessRound, SecAggError> {
    let dim = inputs.first().map_or(0, |i| i.update.len());
    let ids: Vec<ClientId> = inputs.iter().map(|i| i.client_id.clone()).collect();
    let mut server = SecAggServer::new(cfg, round, graph_seed, &ids, dim)?;
    let mut up: BTreeMap<ClientId, u64> = ids.iter().map(|c| (c.clone(), 0)).collect();
    let mut down = up.clone();
    let alive = |c: &ClientId, stage: DropStage| drops.get(c).is_none_or(|d| *d > stage);

    let mut clients = BTreeMap::new();
    for input in inputs {
        if !alive(&input.client_id, DropStage::BeforeAdvertising) {
            continue;
        }
        let (client, msg) = SecAggClient::new(input.client_id.clone(), cfg, rng)?;
        *up.entry(input.client_id.clone()).or_default() += msg.wire_len();
        server.receive_keys(msg)?;
        clients.insert(input.client_id.clone(), (client, input));
    }
    let roster = server.roster()?;
    for (id, (client, _)) in clients.iter_mut() {
        *down.entry(id.clone()).or_default() += roster.wire_len();
        if !alive(id, DropStage::AfterAdvertising) {
            continue;
        }
        let msg = client.share_keys(&roster, rng)?;
        *up.entry(id.clone()).or_default() += msg.wire_len();
        server.receive_shares(msg)?;
    }
    let forwarded = server.forward_shares()?;
    for (id, fwd) in &forwarded {
        *down.entry(id.clone()).or_default() += fwd.wire_len();
        if !alive(id, DropStage::AfterSharing) {
            continue;
        }
        let (client, input) = clients
            .get_mut(id)
            .ok_or_else(|| SecAggError::Malformed(format!("no client `{id}`")))?;
        let msg = client.masked_input(fwd, &input.update, input.num_examples, rng)?;
        *up.entry(id.clone()).or_default() += msg.wire_len();
        server.receive_masked(msg)?;
    }
    let req = server.unmask_request()?;
    for id in &req.survivors {
        *down.entry(id.clone()).or_default() += req.wire_len();
        if !alive(id, DropStage::AfterMasking) {
            continue;
        }
        let (client, _) = clients
            .get_mut(id)
            .ok_or_else(|| SecAggError::Malformed(format!("no client `{id}`")))?;
        let msg = client.unmask(&req)?;
        *up.entry(id.clone()).or_default() += msg.wire_len();
        server.receive_unmask(msg)?;
    }
    let state = server.clone();
    let outcome = server.finish()?;
    Ok(InProcessRound {
        outcome,
        bytes_up: up,
        bytes_down: down,
        server_state: state,
    })
}
