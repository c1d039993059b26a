//! The messages of one SecAgg+ round, as plain serde structs (any transport may carry them).
//!
//! Stage 1, advertise keys: client → server [`AdvertiseKeys`]; server → clients [`Roster`].
//! Stage 2, share keys: client → server [`ShareKeys`]; server → each client its
//! [`ForwardedShares`]. Stage 3, masked input: client → server [`MaskedInput`]. Stage 4,
//! unmasking: server → clients [`UnmaskRequest`]; client → server [`UnmaskResponse`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::shamir::Share;
use crate::update::ClientId;

/// A client's two public keys: one for encrypting shares, one for pairwise masks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// X25519 public key for the share encryption keys.
    pub cipher: [u8; 32],
    /// X25519 public key for the pairwise mask seeds.
    pub mask: [u8; 32],
}

/// Stage 1, client → server: the client's public keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Who sends.
    pub client_id: ClientId,
    /// Its public keys.
    pub keys: PublicKeys,
}

/// Stage 1, server → clients: who takes part (those who advertised keys in time), with
/// their keys, and the public seed of the masking graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Round number (part of every derived key).
    pub round: u64,
    /// Seed of the masking graph (part of every derived key).
    pub graph_seed: u64,
    /// Length of the masked vector: the update's values plus one weight.
    pub vector_len: usize,
    /// The participants and their keys.
    pub keys: BTreeMap<ClientId, PublicKeys>,
}

/// A share pair encrypted by `from` for `to`; only `to` can open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// The client whose secrets are shared.
    pub from: ClientId,
    /// The neighbour that holds the share.
    pub to: ClientId,
    /// ChaCha20-Poly1305 ciphertext of a [`SharePair`].
    pub ciphertext: Vec<u8>,
}

/// What an [`EncryptedShare`] holds: `from`'s shares of its self-mask seed and of its
/// masking secret key, for holder `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePair {
    /// The client whose secrets are shared.
    pub from: ClientId,
    /// The holder.
    pub to: ClientId,
    /// Share of the self-mask seed `b`.
    pub self_mask: Share,
    /// Share of the masking secret key.
    pub mask_key: Share,
}

/// Stage 2, client → server: one encrypted share pair per neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// Who sends.
    pub client_id: ClientId,
    /// One per neighbour.
    pub shares: Vec<EncryptedShare>,
}

/// Stage 2, server → one client: the share pairs addressed to it by the neighbours that
/// sent theirs (those, and only those, are the neighbours it masks with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedShares {
    /// The recipient.
    pub to: ClientId,
    /// The encrypted share pairs.
    pub shares: Vec<EncryptedShare>,
}

/// Stage 3, client → server: the masked, quantised, weighted update modulo `2^bits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Who sends.
    pub client_id: ClientId,
    /// `w·q(x) ‖ w`, plus the self-mask and the pairwise masks.
    pub vector: Vec<u32>,
}

/// Stage 4, server → clients: who sent a masked input (survivors) and who shared keys but
/// did not (dropped). The lists are disjoint; a client reveals a self-mask share only for
/// survivors and a mask-key share only for dropped clients, never both for one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Clients whose masked input is in the sum.
    pub survivors: Vec<ClientId>,
    /// Clients that shared keys but sent no masked input.
    pub dropped: Vec<ClientId>,
}

/// Stage 4, client → server: the shares the request asks for, by owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// Who sends.
    pub client_id: ClientId,
    /// Shares of survivors' self-mask seeds.
    pub self_mask_shares: BTreeMap<ClientId, Share>,
    /// Shares of dropped clients' masking secret keys.
    pub mask_key_shares: BTreeMap<ClientId, Share>,
}

/// Payload bytes of a message on a compact binary wire (ids as UTF-8, keys 32 bytes, mask
/// words 4 bytes, share values 8 bytes; no framing): what the simulator counts as traffic.
pub trait WireLen {
    /// The payload size in bytes.
    fn wire_len(&self) -> u64;
}

fn share_len(s: &Share) -> u64 {
    8 + 8 * s.y.len() as u64
}

impl WireLen for AdvertiseKeys {
    fn wire_len(&self) -> u64 {
        self.client_id.len() as u64 + 64
    }
}

impl WireLen for Roster {
    fn wire_len(&self) -> u64 {
        24 + self.keys.keys().map(|c| c.len() as u64 + 64).sum::<u64>()
    }
}

impl WireLen for EncryptedShare {
    fn wire_len(&self) -> u64 {
        (self.from.len() + self.to.len() + self.ciphertext.len()) as u64
    }
}

impl WireLen for ShareKeys {
    fn wire_len(&self) -> u64 {
        self.client_id.len() as u64 + self.shares.iter().map(WireLen::wire_len).sum::<u64>()
    }
}

impl WireLen for ForwardedShares {
    fn wire_len(&self) -> u64 {
        self.to.len() as u64 + self.shares.iter().map(WireLen::wire_len).sum::<u64>()
    }
}

impl WireLen for MaskedInput {
    fn wire_len(&self) -> u64 {
        self.client_id.len() as u64 + 4 * self.vector.len() as u64
    }
}

impl WireLen for UnmaskRequest {
    fn wire_len(&self) -> u64 {
        self.survivors
            .iter()
            .chain(&self.dropped)
            .map(|c| c.len() as u64)
            .sum()
    }
}

impl WireLen for UnmaskResponse {
    fn wire_len(&self) -> u64 {
        self.client_id.len() as u64
            + self
                .self_mask_shares
                .iter()
                .chain(&self.mask_key_shares)
                .map(|(c, s)| c.len() as u64 + share_len(s))
                .sum::<u64>()
    }
}
