//! The client side of a SecAgg+ round: a state machine that answers each of the server's
//! four stages once, in order.

use std::collections::{BTreeMap, BTreeSet};

use rand::{CryptoRng, RngCore};

use super::config::{Quantiser, SecAggConfig};
use super::crypto::{self, KeyPair, Purpose};
use super::graph::neighbourhoods;
use super::messages::{
    AdvertiseKeys, EncryptedShare, ForwardedShares, MaskedInput, PublicKeys, Roster, ShareKeys,
    SharePair, UnmaskRequest, UnmaskResponse,
};
use super::{shamir, share_point, SecAggError};
use crate::update::ClientId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Advertised,
    Shared,
    Masked,
    Done,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Advertised => "advertise keys",
            Stage::Shared => "share keys",
            Stage::Masked => "masked input",
            Stage::Done => "unmasking",
        }
    }
}

/// What a client learnt from the roster.
struct Session {
    roster: Roster,
    session: Vec<u8>,
    neighbours: BTreeSet<ClientId>,
    quantiser: Quantiser,
}

/// One client's part in one round. Secrets never leave it except as Shamir shares
/// encrypted for its neighbours.
pub struct SecAggClient {
    id: ClientId,
    cfg: SecAggConfig,
    stage: Stage,
    cipher: KeyPair,
    mask: KeyPair,
    self_seed: [u8; 32],
    session: Option<Session>,
    /// Share pairs received from neighbours that shared keys, by owner.
    held: BTreeMap<ClientId, SharePair>,
}

impl std::fmt::Debug for SecAggClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("SecAggClient")
            .field("id", &self.id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl SecAggClient {
    /// Stage 1: makes fresh keys and the self-mask seed; returns the keys to advertise.
    pub fn new<R: RngCore + CryptoRng + ?Sized>(
        id: impl Into<ClientId>,
        cfg: &SecAggConfig,
        rng: &mut R,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        cfg.validate()?;
        let id = id.into();
        let cipher = KeyPair::generate(rng);
        let mask = KeyPair::generate(rng);
        let mut self_seed = [0u8; 32];
        rng.fill_bytes(&mut self_seed);
        let msg = AdvertiseKeys {
            client_id: id.clone(),
            keys: PublicKeys {
                cipher: cipher.public,
                mask: mask.public,
            },
        };
        let client = Self {
            id,
            cfg: cfg.clone(),
            stage: Stage::Advertised,
            cipher,
            mask,
            self_seed,
            session: None,
            held: BTreeMap::new(),
        };
        Ok((client, msg))
    }

    /// This client's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn expect(&self, stage: Stage, next: &'static str) -> Result<(), SecAggError> {
        if self.stage != stage {
            return Err(SecAggError::WrongStage {
                expected: next,
                actual: self.stage.name(),
            });
        }
        Ok(())
    }

    fn session(&self) -> Result<&Session, SecAggError> {
        self.session.as_ref().ok_or(SecAggError::WrongStage {
            expected: "share keys",
            actual: self.stage.name(),
        })
    }

    /// Stage 2: checks the roster, then shares the self-mask seed and the masking secret
    /// key `t`-of-`k` among its neighbours, each share pair encrypted for its holder.
    pub fn share_keys<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        roster: &Roster,
        rng: &mut R,
    ) -> Result<ShareKeys, SecAggError> {
        self.expect(Stage::Advertised, "share keys")?;
        let mine = roster
            .keys
            .get(&self.id)
            .ok_or_else(|| SecAggError::Malformed(format!("`{}` is not in the roster", self.id)))?;
        if mine.cipher != self.cipher.public || mine.mask != self.mask.public {
            return Err(SecAggError::Malformed(format!(
                "the roster carries keys for `{}` that it did not advertise",
                self.id
            )));
        }
        let ids: Vec<ClientId> = roster.keys.keys().cloned().collect();
        self.cfg.validate_for(ids.len())?;
        let quantiser = Quantiser::new(&self.cfg, ids.len())?;
        let neighbours = neighbourhoods(&ids, self.cfg.degree(ids.len()), roster.graph_seed)
            .remove(&self.id)
            .unwrap_or_default();
        let holders: Vec<&ClientId> = neighbours.iter().collect();
        let xs: Vec<u64> = holders
            .iter()
            .map(|h| share_point(&ids, h))
            .collect::<Result<_, _>>()?;
        let t = self.cfg.threshold;
        let b_shares = shamir::split(&self.self_seed, t, &xs, rng)?;
        let s_shares = shamir::split(&self.mask.secret.to_bytes(), t, &xs, rng)?;
        let session = crypto::session(roster.round, roster.graph_seed);
        let mut shares = Vec::with_capacity(holders.len());
        for ((to, b), s) in holders.iter().zip(b_shares).zip(s_shares) {
            let pair = SharePair {
                from: self.id.clone(),
                to: (*to).clone(),
                self_mask: b,
                mask_key: s,
            };
            let key = crypto::agree(
                &self.cipher.secret,
                &roster.keys[*to].cipher,
                Purpose::Cipher,
                &session,
                &self.id,
                to,
            )?;
            let plain = serde_json::to_vec(&pair)
                .map_err(|e| SecAggError::Malformed(format!("share encoding: {e}")))?;
            shares.push(EncryptedShare {
                from: self.id.clone(),
                to: (*to).clone(),
                ciphertext: crypto::seal(&key, &aad(&self.id, to), &plain)?,
            });
        }
        self.session = Some(Session {
            roster: roster.clone(),
            session,
            neighbours,
            quantiser,
        });
        self.stage = Stage::Shared;
        Ok(ShareKeys {
            client_id: self.id.clone(),
            shares,
        })
    }

    /// Stage 3: opens the shares its neighbours sent, then masks `w·q(update) ‖ w` with its
    /// self-mask and one pairwise mask per neighbour that shared keys. `update` is the
    /// flattened delta from the global model; `num_examples` its weight (capped).
    pub fn masked_input<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        forwarded: &ForwardedShares,
        update: &[f32],
        num_examples: u64,
        rng: &mut R,
    ) -> Result<MaskedInput, SecAggError> {
        self.expect(Stage::Shared, "masked input")?;
        let s = self.session()?;
        if forwarded.to != self.id {
            return Err(SecAggError::Malformed(format!(
                "shares for `{}` were delivered to `{}`",
                forwarded.to, self.id
            )));
        }
        if update.len() + 1 != s.roster.vector_len {
            return Err(SecAggError::Malformed(format!(
                "the update has {} values, the round expects {}",
                update.len(),
                s.roster.vector_len - 1
            )));
        }
        let mut held = BTreeMap::new();
        for e in &forwarded.shares {
            if e.to != self.id || !s.neighbours.contains(&e.from) {
                return Err(SecAggError::Malformed(format!(
                    "a share from `{}` to `{}` is not for this client's neighbourhood",
                    e.from, e.to
                )));
            }
            let key = crypto::agree(
                &self.cipher.secret,
                &s.roster.keys[&e.from].cipher,
                Purpose::Cipher,
                &s.session,
                &e.from,
                &self.id,
            )?;
            let pair: SharePair = crypto::open(&key, &aad(&e.from, &self.id), &e.ciphertext)
                .and_then(|p| serde_json::from_slice(&p).ok())
                .ok_or_else(|| {
                    SecAggError::Malformed(format!("the share from `{}` does not open", e.from))
                })?;
            if pair.from != e.from || pair.to != self.id {
                return Err(SecAggError::Malformed(format!(
                    "the share from `{}` names other parties",
                    e.from
                )));
            }
            if held.insert(e.from.clone(), pair).is_some() {
                return Err(SecAggError::Malformed(format!(
                    "two shares from `{}`",
                    e.from
                )));
            }
        }
        // Its own seed is recoverable only with t neighbours alive: below that, stop now.
        if held.len() < self.cfg.threshold {
            return Err(SecAggError::TooFewClients {
                stage: "share keys",
                have: held.len(),
                need: self.cfg.threshold,
                why: format!(
                    "only {} of `{}`'s neighbours shared keys",
                    held.len(),
                    self.id
                ),
            });
        }
        let mask = s.quantiser.modulus_mask();
        let mut vector = s.quantiser.encode(update, num_examples, rng)?;
        for (v, m) in vector
            .iter_mut()
            .zip(crypto::prg(&self.self_seed, s.roster.vector_len, mask))
        {
            *v = v.wrapping_add(m) & mask;
        }
        for peer in held.keys() {
            let (lo, hi) = ordered(&self.id, peer);
            let seed = crypto::agree(
                &self.mask.secret,
                &s.roster.keys[peer].mask,
                Purpose::Mask,
                &s.session,
                lo,
                hi,
            )?;
            let add = self.id.as_str() < peer.as_str();
            for (v, m) in vector
                .iter_mut()
                .zip(crypto::prg(&seed, s.roster.vector_len, mask))
            {
                *v = if add {
                    v.wrapping_add(m)
                } else {
                    v.wrapping_sub(m)
                } & mask;
            }
        }
        self.held = held;
        self.stage = Stage::Masked;
        Ok(MaskedInput {
            client_id: self.id.clone(),
            vector,
        })
    }

    /// Stage 4: for each neighbour whose shares it holds, the self-mask share if that
    /// neighbour survived, the mask-key share if it dropped. Refuses a request whose lists
    /// overlap, or that leaves out this client or fewer than `t` survivors.
    pub fn unmask(&mut self, req: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        self.expect(Stage::Masked, "unmasking")?;
        let survivors: BTreeSet<&ClientId> = req.survivors.iter().collect();
        let dropped: BTreeSet<&ClientId> = req.dropped.iter().collect();
        if let Some(both) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::Malformed(format!(
                "the server lists `{both}` as both survivor and dropped; refusing to reveal shares"
            )));
        }
        if !survivors.contains(&self.id) {
            return Err(SecAggError::Malformed(format!(
                "the unmask request does not list `{}` as a survivor",
                self.id
            )));
        }
        if survivors.len() < self.cfg.threshold {
            return Err(SecAggError::TooFewClients {
                stage: "masked input",
                have: survivors.len(),
                need: self.cfg.threshold,
                why: "fewer survivors than the threshold".into(),
            });
        }
        let mut resp = UnmaskResponse {
            client_id: self.id.clone(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
        };
        for (owner, pair) in &self.held {
            if survivors.contains(owner) {
                resp.self_mask_shares
                    .insert(owner.clone(), pair.self_mask.clone());
            } else if dropped.contains(owner) {
                resp.mask_key_shares
                    .insert(owner.clone(), pair.mask_key.clone());
            }
        }
        self.stage = Stage::Done;
        Ok(resp)
    }
}

/// Associated data binding a share ciphertext to its sender and recipient.
fn aad(from: &str, to: &str) -> Vec<u8> {
    let mut a = from.as_bytes().to_vec();
    a.push(0xff);
    a.extend_from_slice(to.as_bytes());
    a
}

/// The pair in a fixed order, so both ends derive the same mask seed.
pub(crate) fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}
