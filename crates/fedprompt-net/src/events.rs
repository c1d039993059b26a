//! Structured events: one JSON object per line in the events file, and a
//! broadcast channel for in-process observers.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use fedprompt_fl::{EvalAggregate, Metrics};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{NetError, Result};

/// Something that happened on the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The server is listening.
    Started {
        /// Bound address.
        address: String,
        /// Target number of training rounds.
        rounds: u64,
        /// Rounds already done (from a checkpoint).
        resumed_at: u64,
        /// Clients in the tokens file.
        known_clients: usize,
        /// TLS on.
        tls: bool,
        /// Client certificates required.
        mutual_tls: bool,
    },
    /// A client authenticated and registered.
    Registered {
        /// The client.
        client_id: String,
        /// Peer address.
        peer: String,
    },
    /// A call without a valid token.
    AuthRefused {
        /// Peer address.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A connection that failed the TLS handshake (plaintext, wrong CA, no client certificate...).
    TlsRefused {
        /// Peer address.
        peer: String,
        /// Why.
        reason: String,
    },
    /// An update or evaluation that was refused.
    Refused {
        /// The client.
        client_id: String,
        /// The round it was for (0 when unknown).
        round: u64,
        /// Refusal kind (see `RefusalKind`).
        kind: String,
        /// gRPC status code name.
        code: String,
        /// Message sent to the client.
        reason: String,
    },
    /// A training update was accepted.
    Accepted {
        /// The client.
        client_id: String,
        /// Round.
        round: u64,
        /// Bytes received.
        bytes: u64,
        /// Examples it trained on.
        num_examples: u64,
    },
    /// A round opened.
    RoundStarted {
        /// Round number.
        round: u64,
        /// `fit` or `evaluate`.
        phase: String,
        /// The sampled clients.
        clients: Vec<String>,
    },
    /// A stage of a securely aggregated round closed (no values: who goes on, who dropped).
    SecAggStage {
        /// Round number.
        round: u64,
        /// The stage that closed (`advertise keys`, `share keys`, `masked input`, `unmask`).
        stage: String,
        /// Clients that answered it and go on (after `unmask`: the survivors whose masked
        /// input is in the sum).
        clients: usize,
        /// Clients dropped from the round so far.
        dropped: Vec<String>,
    },
    /// A training round closed.
    Round {
        /// Round number.
        round: u64,
        /// Clients asked.
        asked: usize,
        /// Clients that delivered an accepted update.
        ok: usize,
        /// Clients that did not answer before the deadline.
        late: usize,
        /// Refused submissions during the round.
        refused: usize,
        /// Bytes clients → server.
        bytes_up: u64,
        /// Bytes server → clients.
        bytes_down: u64,
        /// Whether the global parameters changed.
        aggregated: bool,
        /// Why aggregation was skipped.
        skipped: Option<String>,
        /// Examples behind the aggregate.
        num_examples: u64,
        /// Example-weighted training metrics.
        metrics: Metrics,
        /// Seconds the round took.
        seconds: f64,
    },
    /// Differential privacy spent so far (after each training round of a run with DP).
    Privacy {
        /// Training rounds behind the bound.
        round: u64,
        /// `ε` at `delta`.
        epsilon: f64,
        /// Target `δ`.
        delta: f64,
        /// `central` or `local`.
        mode: String,
    },
    /// An evaluation round closed.
    Evaluation {
        /// Training rounds behind the evaluated global.
        round: u64,
        /// Clients asked.
        asked: usize,
        /// Clients that did not answer in time.
        late: usize,
        /// The aggregate (none when the quorum was missed).
        aggregate: Option<EvalAggregate>,
        /// Why aggregation was skipped.
        skipped: Option<String>,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Completed rounds in it.
        round: u64,
        /// The file.
        path: String,
    },
    /// The run ended.
    Finished {
        /// Completed training rounds.
        rounds: u64,
        /// Why it ended (`completed`, `shutdown`, `privacy budget`, `failed`).
        reason: String,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    #[serde(flatten)]
    event: &'a Event,
}

/// Writes events to the JSON-lines file (if any) and to subscribers.
#[derive(Debug)]
pub(crate) struct EventSink {
    file: Mutex<Option<std::fs::File>>,
    tx: broadcast::Sender<Event>,
}

impl EventSink {
    pub(crate) fn open(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(NetError::io(dir))?;
                }
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(NetError::io(p))?,
                )
            }
            None => None,
        };
        let (tx, _) = broadcast::channel(4096);
        Ok(Self {
            file: Mutex::new(file),
            tx,
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                if let Ok(mut line) = serde_json::to_vec(&Line { ts, event: &event }) {
                    line.push(b'\n');
                    if let Err(e) = f.write_all(&line) {
                        tracing::warn!("could not write the events file: {e}");
                    }
                }
            }
        }
        let _ = self.tx.send(event);
    }
}
