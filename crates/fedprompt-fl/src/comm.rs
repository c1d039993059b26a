//! Communication accounting: bytes actually serialised, per client and round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sampling::Phase;
use crate::update::ClientId;

/// Bytes in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Client → server.
    pub up: u64,
    /// Server → client.
    pub down: u64,
}

impl Traffic {
    /// `up + down`.
    pub fn total(&self) -> u64 {
        self.up + self.down
    }

    fn add(&mut self, o: Traffic) {
        self.up += o.up;
        self.down += o.down;
    }
}

/// One ledger line: a client's traffic in one round and phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommEntry {
    /// Round.
    pub round: u64,
    /// Training or evaluation.
    pub phase: Phase,
    /// Client.
    pub client_id: ClientId,
    /// Bytes.
    pub traffic: Traffic,
}

/// Bytes up/down per client per round, filled by the simulator and the network server alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommLedger {
    entries: Vec<CommEntry>,
}

impl CommLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `traffic` for `client_id` in `round`/`phase` (merging with an existing line).
    pub fn record(&mut self, round: u64, phase: Phase, client_id: &str, traffic: Traffic) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.round == round && e.phase == phase && e.client_id == client_id)
        {
            e.traffic.add(traffic);
        } else {
            self.entries.push(CommEntry {
                round,
                phase,
                client_id: client_id.to_string(),
                traffic,
            });
        }
    }

    /// Records `bytes` sent up.
    pub fn record_up(&mut self, round: u64, phase: Phase, client_id: &str, bytes: u64) {
        self.record(round, phase, client_id, Traffic { up: bytes, down: 0 });
    }

    /// Records `bytes` sent down.
    pub fn record_down(&mut self, round: u64, phase: Phase, client_id: &str, bytes: u64) {
        self.record(round, phase, client_id, Traffic { up: 0, down: bytes });
    }

    /// Appends every line of `other`.
    pub fn merge(&mut self, other: &CommLedger) {
        for e in &other.entries {
            self.record(e.round, e.phase, &e.client_id, e.traffic);
        }
    }

    /// All lines, in recording order.
    pub fn entries(&self) -> &[CommEntry] {
        &self.entries
    }

    /// Totals over the whole run.
    pub fn total(&self) -> Traffic {
        self.sum(|_| true)
    }

    /// Totals of one round (both phases).
    pub fn round_total(&self, round: u64) -> Traffic {
        self.sum(|e| e.round == round)
    }

    /// Totals of one client over the run.
    pub fn client_total(&self, client_id: &str) -> Traffic {
        self.sum(|e| e.client_id == client_id)
    }

    /// Totals of one phase over the run.
    pub fn phase_total(&self, phase: Phase) -> Traffic {
        self.sum(|e| e.phase == phase)
    }

    /// Totals per round.
    pub fn per_round(&self) -> BTreeMap<u64, Traffic> {
        let mut out = BTreeMap::<u64, Traffic>::new();
        for e in &self.entries {
            out.entry(e.round).or_default().add(e.traffic);
        }
        out
    }

    /// Totals per client.
    pub fn per_client(&self) -> BTreeMap<ClientId, Traffic> {
        let mut out = BTreeMap::<ClientId, Traffic>::new();
        for e in &self.entries {
            out.entry(e.client_id.clone()).or_default().add(e.traffic);
        }
        out
    }

    fn sum(&self, keep: impl Fn(&CommEntry) -> bool) -> Traffic {
        let mut t = Traffic::default();
        for e in self.entries.iter().filter(|e| keep(e)) {
            t.add(e.traffic);
        }
        t
    }
}
