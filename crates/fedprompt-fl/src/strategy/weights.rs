//! [`ClientWeights`]: what a client's claimed example count may weigh in averaging.
//!
//! FedAvg weights each update by the `num_examples` its client *claims*; one client that
//! claims 10⁹ examples becomes almost the whole next global. The coordinator can cap every
//! claim (`max_examples_per_client`), cap each client at a size declared out of band (the
//! tokens file of `serve`), or ignore claims (`uniform`, which DP needs: see `docs/privacy.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::update::{ClientId, ClientUpdate};

/// Rules applied to the claimed example counts before aggregation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientWeights {
    /// Every claim is capped at this many examples.
    pub max_examples_per_client: Option<u64>,
    /// Per-client caps declared by the coordinator (a client not listed is capped only by
    /// `max_examples_per_client`).
    pub declared: BTreeMap<ClientId, u64>,
    /// Every client weighs 1, whatever it claims.
    pub uniform: bool,
}

impl ClientWeights {
    /// Whether every claim passes unchanged.
    pub fn is_identity(&self) -> bool {
        self.max_examples_per_client.is_none() && self.declared.is_empty() && !self.uniform
    }

    /// The weight of a client that claims `claimed` examples.
    pub fn weight(&self, client: &str, claimed: u64) -> u64 {
        if self.uniform {
            return 1;
        }
        let mut w = claimed;
        if let Some(m) = self.max_examples_per_client {
            w = w.min(m);
        }
        if let Some(&d) = self.declared.get(client) {
            w = w.min(d);
        }
        w
    }

    /// Rewrites every update's `num_examples` to its weight; returns the clients whose
    /// claim was lowered, with their claims.
    pub fn apply(&self, results: &mut [ClientUpdate]) -> Vec<(ClientId, u64)> {
        let mut lowered = Vec::new();
        if self.is_identity() {
            return lowered;
        }
        for u in results {
            let w = self.weight(&u.client_id, u.num_examples);
            if w < u.num_examples && !self.uniform {
                lowered.push((u.client_id.clone(), u.num_examples));
            }
            u.num_examples = w;
        }
        lowered
    }
}
