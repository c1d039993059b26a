//! What clients send back: training results, evaluation results and failures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{FlError, Result};
use crate::params::{Layout, Params};

/// A client's identifier (a language name, an index, a node id...).
pub type ClientId = String;

/// Scalar metrics keyed by name.
pub type Metrics = BTreeMap<String, f64>;

/// The result of one client's local training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientUpdate {
    /// Who trained.
    pub client_id: ClientId,
    /// The locally updated trainable parameters `h_k`.
    pub params: Params,
    /// `|D_k|`: examples the client trained on (the aggregation weight).
    pub num_examples: u64,
    /// Training metrics (loss, accuracy...).
    #[serde(default)]
    pub metrics: Metrics,
}

impl ClientUpdate {
    /// An update without metrics.
    pub fn new(client_id: impl Into<ClientId>, params: Params, num_examples: u64) -> Self {
        Self {
            client_id: client_id.into(),
            params,
            num_examples,
            metrics: Metrics::new(),
        }
    }

    /// Checks layout against `layout` and finiteness; the error names client and tensor.
    pub fn validate(&self, layout: &Layout) -> Result<()> {
        self.params
            .check_layout(layout)
            .and_then(|()| self.params.check_finite())
            .map_err(|e| FlError::invalid_update(self.client_id.clone(), e))
    }
}

/// The result of one client's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluateResult {
    /// Who evaluated.
    pub client_id: ClientId,
    /// Examples evaluated (the metric weight).
    pub num_examples: u64,
    /// Metrics (loss, accuracy, macro-F1...).
    pub metrics: Metrics,
}

/// A client that did not deliver a usable result this round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The client.
    pub client_id: ClientId,
    /// Why (timeout, disconnect, rejected update...).
    pub reason: String,
}

impl Failure {
    /// A failure for `client_id` with `reason`.
    pub fn new(client_id: impl Into<ClientId>, reason: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            reason: reason.into(),
        }
    }
}

/// Splits `results` into updates that fit `layout` and failures for the rest.
pub fn screen_updates(
    layout: &Layout,
    results: Vec<ClientUpdate>,
) -> (Vec<ClientUpdate>, Vec<Failure>) {
    let mut ok = Vec::with_capacity(results.len());
    let mut bad = Vec::new();
    for u in results {
        match u.validate(layout) {
            Ok(()) => ok.push(u),
            Err(e) => bad.push(Failure::new(u.client_id.clone(), e.to_string())),
        }
    }
    (ok, bad)
}

/// Example-weighted mean of each metric over the clients that report it.
///
/// Non-finite values are skipped; a metric reported only with zero weight is
/// averaged unweighted over its reporters.
pub fn weighted_metrics<'a>(items: impl IntoIterator<Item = (u64, &'a Metrics)>) -> Metrics {
    let mut acc: BTreeMap<&str, (f64, f64, f64, f64)> = BTreeMap::new();
    for (n, metrics) in items {
        for (k, &v) in metrics {
            if !v.is_finite() {
                continue;
            }
            let e = acc.entry(k.as_str()).or_default();
            e.0 += n as f64 * v;
            e.1 += n as f64;
            e.2 += v;
            e.3 += 1.0;
        }
    }
    acc.into_iter()
        .map(|(k, (wsum, w, sum, count))| {
            let v = if w > 0.0 { wsum / w } else { sum / count };
            (k.to_string(), v)
        })
        .collect()
}
