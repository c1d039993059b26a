//! The server side of a SecAgg+ round: a state machine over the stages advertise keys →
//! share keys → masked input → unmasking. It stores public keys, ciphertexts it cannot
//! open, masked vectors and, at the end, the shares clients reveal; never an update.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::client::ordered;
use super::config::{Quantiser, SecAggConfig};
use super::crypto::{self, KeyPair, Purpose};
use super::graph::neighbourhoods;
use super::messages::{
    AdvertiseKeys, EncryptedShare, ForwardedShares, MaskedInput, PublicKeys, Roster, ShareKeys,
    UnmaskRequest, UnmaskResponse,
};
use super::shamir::{self, Share};
use super::{share_point, SecAggError};
use crate::update::ClientId;

/// Where the server is in the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerStage {
    /// Collecting [`AdvertiseKeys`].
    AdvertiseKeys,
    /// Collecting [`ShareKeys`].
    ShareKeys,
    /// Collecting [`MaskedInput`]s.
    MaskedInput,
    /// Collecting [`UnmaskResponse`]s.
    Unmasking,
}

impl ServerStage {
    fn name(self) -> &'static str {
        match self {
            ServerStage::AdvertiseKeys => "advertise keys",
            ServerStage::ShareKeys => "share keys",
            ServerStage::MaskedInput => "masked input",
            ServerStage::Unmasking => "unmasking",
        }
    }
}

/// The result of a round: the weighted mean of the survivors' clipped updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecAggOutcome {
    /// `Σ w_k q(x_k) / Σ w_k`, mapped back to values (length: the update's).
    pub mean: Vec<f32>,
    /// `Σ w_k` over the survivors (capped weights).
    pub total_weight: u64,
    /// Clients whose update is in the mean.
    pub survivors: Vec<ClientId>,
    /// Clients that shared keys but sent no masked input (their masks were removed).
    pub dropped: Vec<ClientId>,
    /// Clients that advertised keys but did not share them.
    pub dropped_before_sharing: Vec<ClientId>,
    /// Clients selected that never advertised keys.
    pub absent: Vec<ClientId>,
    /// The per-value error bound of `mean` against the exact weighted mean of the clipped
    /// updates ([`Quantiser::error_bound`]).
    pub error_bound: f64,
}

/// The server's whole state: everything it has received. Serialisable so tests (and an
/// auditor) can check that nothing in it reveals an individual update.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecAggServer {
    cfg: SecAggConfig,
    round: u64,
    graph_seed: u64,
    vector_len: usize,
    stage: ServerStage,
    selected: BTreeSet<ClientId>,
    /// U1: clients that advertised keys.
    keys: BTreeMap<ClientId, PublicKeys>,
    /// Neighbourhoods over U1 (set when stage 1 closes).
    neighbours: BTreeMap<ClientId, BTreeSet<ClientId>>,
    /// U2: clients that shared keys, with the ciphertexts they sent.
    shares: BTreeMap<ClientId, Vec<EncryptedShare>>,
    /// U3: masked vectors.
    masked: BTreeMap<ClientId, Vec<u32>>,
    /// Revealed self-mask shares, by owner (survivors only).
    self_mask_shares: BTreeMap<ClientId, Vec<Share>>,
    /// Revealed mask-key shares, by owner (dropped clients only).
    mask_key_shares: BTreeMap<ClientId, Vec<Share>>,
    /// Clients that answered the unmask request.
    responded: BTreeSet<ClientId>,
}

impl SecAggServer {
    /// A round over the `selected` clients for updates of `dim` values.
    pub fn new(
        cfg: &SecAggConfig,
        round: u64,
        graph_seed: u64,
        selected: &[ClientId],
        dim: usize,
    ) -> Result<Self, SecAggError> {
        cfg.validate()?;
        if dim == 0 {
            return Err(SecAggError::Malformed("the update has no values".into()));
        }
        Ok(Self {
            cfg: cfg.clone(),
            round,
            graph_seed,
            vector_len: dim + 1,
            stage: ServerStage::AdvertiseKeys,
            selected: selected.iter().cloned().collect(),
            keys: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            responded: BTreeSet::new(),
        })
    }

    /// The current stage.
    pub fn stage(&self) -> ServerStage {
        self.stage
    }

    fn expect(&self, stage: ServerStage) -> Result<(), SecAggError> {
        if self.stage != stage {
            return Err(SecAggError::WrongStage {
                expected: stage.name(),
                actual: self.stage.name(),
            });
        }
        Ok(())
    }

    fn check_new(
        &self,
        client: &str,
        among: &BTreeSet<&ClientId>,
        done: bool,
    ) -> Result<(), SecAggError> {
        if !among.contains(&client.to_string()) {
            return Err(SecAggError::UnknownClient {
                client_id: client.to_string(),
                stage: self.stage.name(),
            });
        }
        if done {
            return Err(SecAggError::Duplicate {
                client_id: client.to_string(),
                stage: self.stage.name(),
            });
        }
        Ok(())
    }

    /// Stage 1: a client's public keys.
    pub fn receive_keys(&mut self, msg: AdvertiseKeys) -> Result<(), SecAggError> {
        self.expect(ServerStage::AdvertiseKeys)?;
        let among: BTreeSet<&ClientId> = self.selected.iter().collect();
        self.check_new(
            &msg.client_id,
            &among,
            self.keys.contains_key(&msg.client_id),
        )?;
        if self.keys.values().any(|k| k == &msg.keys) {
            return Err(SecAggError::Malformed(format!(
                "`{}` advertised keys another client already uses",
                msg.client_id
            )));
        }
        self.keys.insert(msg.client_id, msg.keys);
        Ok(())
    }

    /// Closes stage 1: the roster to broadcast to every client that advertised keys.
    /// Errors when too few did for the threshold.
    pub fn roster(&mut self) -> Result<Roster, SecAggError> {
        self.expect(ServerStage::AdvertiseKeys)?;
        let ids: Vec<ClientId> = self.keys.keys().cloned().collect();
        self.cfg.validate_for(ids.len())?;
        self.neighbours = neighbourhoods(&ids, self.cfg.degree(ids.len()), self.graph_seed);
        self.stage = ServerStage::ShareKeys;
        Ok(self.current_roster())
    }

    fn current_roster(&self) -> Roster {
        Roster {
            round: self.round,
            graph_seed: self.graph_seed,
            vector_len: self.vector_len,
            keys: self.keys.clone(),
        }
    }

    /// Stage 2: a client's encrypted shares, one for each of its neighbours.
    pub fn receive_shares(&mut self, msg: ShareKeys) -> Result<(), SecAggError> {
        self.expect(ServerStage::ShareKeys)?;
        let among: BTreeSet<&ClientId> = self.keys.keys().collect();
        self.check_new(
            &msg.client_id,
            &among,
            self.shares.contains_key(&msg.client_id),
        )?;
        let expected = &self.neighbours[&msg.client_id];
        let to: BTreeSet<&ClientId> = msg.shares.iter().map(|s| &s.to).collect();
        if msg.shares.iter().any(|s| s.from != msg.client_id)
            || to.len() != msg.shares.len()
            || to != expected.iter().collect::<BTreeSet<_>>()
        {
            return Err(SecAggError::Malformed(format!(
                "`{}` must send exactly one share from itself to each of its {} neighbours",
                msg.client_id,
                expected.len()
            )));
        }
        self.shares.insert(msg.client_id, msg.shares);
        Ok(())
    }

    /// Closes stage 2: for each client that shared keys, the shares addressed to it by the
    /// others that did. Errors when a client's secrets could no longer be recovered.
    pub fn forward_shares(&mut self) -> Result<BTreeMap<ClientId, ForwardedShares>, SecAggError> {
        self.expect(ServerStage::ShareKeys)?;
        self.check_recoverable("share keys", self.shares.keys().collect())?;
        let mut out: BTreeMap<ClientId, ForwardedShares> = self
            .shares
            .keys()
            .map(|c| {
                (
                    c.clone(),
                    ForwardedShares {
                        to: c.clone(),
                        shares: Vec::new(),
                    },
                )
            })
            .collect();
        for e in self.shares.values().flatten() {
            if let Some(f) = out.get_mut(&e.to) {
                f.shares.push(e.clone());
            }
        }
        self.stage = ServerStage::MaskedInput;
        Ok(out)
    }

    /// Every client of U2 needs `t` neighbours in `alive` (who may reveal its shares).
    fn check_recoverable(
        &self,
        stage: &'static str,
        alive: BTreeSet<&ClientId>,
    ) -> Result<(), SecAggError> {
        let t = self.cfg.threshold;
        for c in self.shares.keys() {
            let holders = self.neighbours[c]
                .iter()
                .filter(|n| alive.contains(n) && self.shares.contains_key(*n))
                .count();
            if holders < t {
                return Err(SecAggError::TooFewClients {
                    stage,
                    have: holders,
                    need: t,
                    why: format!(
                        "too many clients dropped: only {holders} of `{c}`'s neighbours can \
                         reveal its shares, the threshold is {t}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Stage 3: a client's masked vector.
    pub fn receive_masked(&mut self, msg: MaskedInput) -> Result<(), SecAggError> {
        self.expect(ServerStage::MaskedInput)?;
        let among: BTreeSet<&ClientId> = self.shares.keys().collect();
        self.check_new(
            &msg.client_id,
            &among,
            self.masked.contains_key(&msg.client_id),
        )?;
        if msg.vector.len() != self.vector_len {
            return Err(SecAggError::Malformed(format!(
                "`{}` sent {} values, the round expects {}",
                msg.client_id,
                msg.vector.len(),
                self.vector_len
            )));
        }
        self.masked.insert(msg.client_id, msg.vector);
        Ok(())
    }

    /// Closes stage 3: the request to send to every survivor.
    pub fn unmask_request(&mut self) -> Result<UnmaskRequest, SecAggError> {
        self.expect(ServerStage::MaskedInput)?;
        if self.masked.is_empty() {
            return Err(SecAggError::TooFewClients {
                stage: "masked input",
                have: 0,
                need: self.cfg.threshold,
                why: "no client sent a masked input".into(),
            });
        }
        self.check_recoverable("masked input", self.masked.keys().collect())?;
        self.stage = ServerStage::Unmasking;
        Ok(self.request())
    }

    fn request(&self) -> UnmaskRequest {
        UnmaskRequest {
            survivors: self.masked.keys().cloned().collect(),
            dropped: self
                .shares
                .keys()
                .filter(|c| !self.masked.contains_key(*c))
                .cloned()
                .collect(),
        }
    }

    /// Stage 4: a survivor's revealed shares. Shares the request did not ask for are refused.
    pub fn receive_unmask(&mut self, msg: UnmaskResponse) -> Result<(), SecAggError> {
        self.expect(ServerStage::Unmasking)?;
        let among: BTreeSet<&ClientId> = self.masked.keys().collect();
        self.check_new(
            &msg.client_id,
            &among,
            self.responded.contains(&msg.client_id),
        )?;
        let holder_x = share_point(
            &self.keys.keys().cloned().collect::<Vec<_>>(),
            &msg.client_id,
        )?;
        let holds = |owner: &ClientId| {
            self.neighbours[owner].contains(&msg.client_id) && self.shares.contains_key(owner)
        };
        for (owner, share) in &msg.self_mask_shares {
            if !self.masked.contains_key(owner) || !holds(owner) || share.x != holder_x {
                return Err(SecAggError::Malformed(format!(
                    "`{}` sent a self-mask share of `{owner}` it cannot hold",
                    msg.client_id
                )));
            }
        }
        for (owner, share) in &msg.mask_key_shares {
            if self.masked.contains_key(owner) || !holds(owner) || share.x != holder_x {
                return Err(SecAggError::Malformed(format!(
                    "`{}` sent a mask-key share of `{owner}` it cannot hold",
                    msg.client_id
                )));
            }
        }
        for (owner, share) in msg.self_mask_shares {
            self.self_mask_shares.entry(owner).or_default().push(share);
        }
        for (owner, share) in msg.mask_key_shares {
            self.mask_key_shares.entry(owner).or_default().push(share);
        }
        self.responded.insert(msg.client_id);
        Ok(())
    }

    fn recover(
        &self,
        shares: &BTreeMap<ClientId, Vec<Share>>,
        owner: &ClientId,
        what: &'static str,
    ) -> Result<[u8; 32], SecAggError> {
        let got = shares.get(owner).map_or(&[][..], Vec::as_slice);
        if got.len() < self.cfg.threshold {
            return Err(SecAggError::TooFewShares {
                client_id: owner.clone(),
                what,
                have: got.len(),
                need: self.cfg.threshold,
            });
        }
        shamir::combine(got, self.cfg.threshold)
    }

    /// Closes stage 4: removes the survivors' self-masks and the dropped clients' pairwise
    /// masks from the sum of the masked vectors, and decodes the weighted mean.
    pub fn finish(self) -> Result<SecAggOutcome, SecAggError> {
        self.expect(ServerStage::Unmasking)?;
        let q = Quantiser::new(&self.cfg, self.keys.len())?;
        let mask = q.modulus_mask();
        let len = self.vector_len;
        let mut sum = vec![0u32; len];
        for v in self.masked.values() {
            for (s, &x) in sum.iter_mut().zip(v) {
                *s = s.wrapping_add(x) & mask;
            }
        }
        for owner in self.masked.keys() {
            let seed = self.recover(&self.self_mask_shares, owner, "self-mask seed")?;
            for (s, m) in sum.iter_mut().zip(crypto::prg(&seed, len, mask)) {
                *s = s.wrapping_sub(m) & mask;
            }
        }
        let session = crypto::session(self.round, self.graph_seed);
        let req = self.request();
        for gone in &req.dropped {
            let secret = KeyPair::from_secret_bytes(self.recover(
                &self.mask_key_shares,
                gone,
                "masking key",
            )?);
            // Each surviving neighbour v added +PRG(s) when v < gone, −PRG(s) otherwise.
            for v in self.neighbours[gone]
                .iter()
                .filter(|v| self.masked.contains_key(*v))
            {
                let (lo, hi) = ordered(gone, v);
                let seed = crypto::agree(
                    &secret.secret,
                    &self.keys[v].mask,
                    Purpose::Mask,
                    &session,
                    lo,
                    hi,
                )?;
                let v_added = v.as_str() < gone.as_str();
                for (s, m) in sum.iter_mut().zip(crypto::prg(&seed, len, mask)) {
                    *s = if v_added {
                        s.wrapping_sub(m)
                    } else {
                        s.wrapping_add(m)
                    } & mask;
                }
            }
        }
        let (mean, total_weight) = q.decode(&sum)?;
        Ok(SecAggOutcome {
            mean,
            total_weight,
            survivors: req.survivors,
            dropped: req.dropped,
            dropped_before_sharing: self
                .keys
                .keys()
                .filter(|c| !self.shares.contains_key(*c))
                .cloned()
                .collect(),
            absent: self
                .selected
                .iter()
                .filter(|c| !self.keys.contains_key(*c))
                .cloned()
                .collect(),
            error_bound: q.error_bound(),
        })
    }
}
