//! How a simulated client's update reaches the server, per the run's settings:
//!
//! - plain: the f32 parameters (as `fedprompt join` sends them);
//! - compressed: the delta from the global encoded with a [`Codec`] (with error feedback,
//!   the residual kept per client), decoded by the server and added back to the global;
//! - securely aggregated: the round's deltas go through one in-process SecAgg+ round
//!   ([`run_in_process`]); the server gets only their weighted mean, which every surviving
//!   client then "submits" so that the strategy averages exactly that mean.
//!
//! [`Codec`]: fedprompt_fl::codec::Codec

use fedprompt_fl::StrategyConfig;
use std::collections::BTreeMap;

use fedprompt_fl::codec::{encode_once, Compression, ErrorFeedback};
use fedprompt_fl::secagg::{run_in_process, ClientInput, DropStage, SecAggConfig};
use fedprompt_fl::{derive_seed, ClientUpdate, FitRound, Params, ParamsError};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::plan::RunPlan;
use crate::error::Result;

/// Checks a run's transport settings (called when the run is planned).
pub(super) fn check(plan: &RunPlan<'_>) -> std::result::Result<(), String> {
    if let Some(c) = &plan.compression {
        c.codec.validate().map_err(|e| e.to_string())?;
    }
    if let Some(s) = &plan.secure_aggregation {
        s.validate().map_err(|e| e.to_string())?;
        if plan.compression.is_some() {
            return Err(
                "secure_aggregation and compression cannot be combined: masked \
                        vectors are uniformly random and do not compress; choose one"
                    .into(),
            );
        }
        // The server of a securely aggregated round sees only the sum: it cannot clip each
        // update (central DP) nor take medians or trimmed means of them.
        match &plan.strategy {
            StrategyConfig::DpFedAvg { .. } => {
                return Err("secure_aggregation cannot be combined with central DP (dpfedavg): the server never sees the individual updates it would clip; use local DP ([federation.privacy.local]) with secure aggregation".into())
            }
            StrategyConfig::Median | StrategyConfig::TrimmedMean { .. } => {
                return Err("secure_aggregation cannot be combined with the median or trimmed-mean strategies: they need the individual updates, which the server never sees".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// A run's uploads: its settings and, per client, the error-feedback residual.
pub(super) struct Transport {
    compression: Option<Compression>,
    secagg: Option<SecAggConfig>,
    seed: u64,
    feedback: BTreeMap<String, ErrorFeedback>,
    held: Vec<ClientUpdate>,
    /// Bytes the last client uploaded in a round (all its messages).
    pub last_up: u64,
}

impl Transport {
    /// The transport of `plan`'s run.
    pub fn new(plan: &RunPlan<'_>) -> Self {
        Self {
            compression: plan.compression,
            secagg: plan.secure_aggregation.clone(),
            seed: plan.seed,
            feedback: BTreeMap::new(),
            held: Vec::new(),
            last_up: 0,
        }
    }

    /// Each client's error-feedback residual (for the round's checkpoint).
    pub fn residuals(&self) -> impl Iterator<Item = (&str, &Params)> {
        self.feedback
            .iter()
            .filter_map(|(c, ef)| ef.residual().map(|r| (c.as_str(), r)))
    }

    /// Goes on with the residuals of a checkpoint (see [`Transport::residuals`]).
    pub fn restore_residuals(&mut self, saved: BTreeMap<String, Params>) {
        self.feedback = saved
            .into_iter()
            .map(|(c, r)| (c, ErrorFeedback::from_residual(r)))
            .collect();
    }

    /// How uploads are encoded, for the communication table; `None` for plain f32.
    pub fn label(&self) -> Option<String> {
        if let Some(s) = &self.secagg {
            return Some(format!("secagg {} bits", s.bits));
        }
        self.compression.map(|c| c.label())
    }

    /// Sends one client's trained parameters: submitted now (plain or compressed) or held
    /// for the round's secure aggregation ([`Transport::flush`]).
    pub fn send(
        &mut self,
        fit: &mut FitRound,
        global: &Params,
        update: ClientUpdate,
    ) -> Result<()> {
        if self.secagg.is_some() {
            self.held.push(update);
            return Ok(());
        }
        let (update, up) = match self.compression {
            None => {
                let up = update.params.wire_len()? as u64;
                (update, up)
            }
            Some(c) => {
                let delta = update.params.sub(global)?;
                let enc = if c.feedback() {
                    self.feedback
                        .entry(update.client_id.clone())
                        .or_default()
                        .encode(&c.codec, &delta)?
                } else {
                    encode_once(&c.codec, &delta)?
                };
                let mut params = global.clone();
                params.add_scaled(&enc.sent, 1.0)?;
                let up = enc.bytes.len() as u64;
                (ClientUpdate { params, ..update }, up)
            }
        };
        self.last_up = up;
        // A rejected update is recorded as a failure by the round; it goes on.
        let _ = fit.submit(update, up);
        Ok(())
    }

    /// Ends the round's uploads: with secure aggregation, runs it over the held updates.
    /// A failed secure aggregation fails every client of it (the round is not aggregated).
    pub fn flush(&mut self, fit: &mut FitRound, global: &Params) -> Result<()> {
        let Some(cfg) = &self.secagg else {
            return Ok(());
        };
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        let round = fit.plan().round;
        let r = round.to_string();
        let mut inputs = Vec::with_capacity(held.len());
        for u in &held {
            inputs.push(ClientInput {
                client_id: u.client_id.clone(),
                update: flatten(&u.params.sub(global)?),
                num_examples: u.num_examples,
            });
        }
        let ids: Vec<String> = held.iter().map(|u| u.client_id.clone()).collect();
        let result = cfg
            .simulate_dropouts
            .pick(&ids, derive_seed(self.seed, &["secagg-dropouts", &r]))
            .and_then(|drops| {
                let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(self.seed, &["secagg", &r]));
                let graph_seed = derive_seed(self.seed, &["secagg-graph", &r]);
                run_in_process(cfg, round, graph_seed, &inputs, &drops, &mut rng)
                    .map(|out| (out, drops))
            });
        let (out, drops) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(round, "secure aggregation failed: {e}");
                for u in &held {
                    fit.fail(&u.client_id, e.to_string())?;
                }
                return Ok(());
            }
        };
        let mut params = global.clone();
        params.add_scaled(&unflatten(global, &out.outcome.mean)?, 1.0)?;
        for u in held {
            let c = u.client_id.clone();
            fit.record_sent(&c, out.bytes_down.get(&c).copied().unwrap_or(0))?;
            let up = out.bytes_up.get(&c).copied().unwrap_or(0);
            if out.outcome.survivors.contains(&c) {
                self.last_up = up;
                let update = ClientUpdate {
                    params: params.clone(),
                    ..u
                };
                let _ = fit.submit(update, up);
            } else {
                let stage = match drops.get(&c) {
                    Some(DropStage::AfterAdvertising) => "after advertising keys",
                    Some(DropStage::AfterSharing) => "after sharing keys",
                    _ => "",
                };
                fit.fail(&c, format!("dropped out of secure aggregation {stage}"))?;
            }
        }
        Ok(())
    }
}

/// The values of `p`, tensor after tensor in name order.
fn flatten(p: &Params) -> Vec<f32> {
    p.iter()
        .flat_map(|(_, t)| t.data().iter().copied())
        .collect()
}

/// Values in [`flatten`]'s order back into `like`'s layout.
fn unflatten(like: &Params, values: &[f32]) -> Result<Params> {
    let expected = like.num_elements();
    if values.len() != expected {
        return Err(ParamsError::DataLength {
            name: "secure aggregate".into(),
            shape: vec![expected],
            expected,
            actual: values.len(),
        }
        .into());
    }
    let mut out = like.zeros_like();
    let mut rest = values;
    for (_, t) in out.iter_mut() {
        let n = t.data().len();
        let (head, tail) = rest.split_at(n);
        t.data_mut().copy_from_slice(head);
        rest = tail;
    }
    Ok(out)
}
