//! The serde results model of one experiment run.
//!
//! All accuracies and F1 scores are fractions in `[0, 1]`; tables and plots show percent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ReportError, Result};

/// Everything one experiment run produced: filled by the simulator, re-rendered by `fedprompt report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// Experiment name (e.g. `paper-nc`).
    pub experiment: String,
    /// Task name (e.g. `xglue-nc`, `xnli`, `masakhanews`).
    pub task: String,
    /// Backbone model name or folder.
    pub model: String,
    /// Seed the run was made with (the first of `seeds` when several ran).
    pub seed: u64,
    /// Every seed the results are a mean over (empty or one seed: a single run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Evaluation languages, in table column order.
    pub languages: Vec<String>,
    /// One row per paradigm of the main table.
    #[serde(default)]
    pub rows: Vec<ParadigmRow>,
    /// Accuracy per round (federated) or epoch (local/centralized).
    #[serde(default)]
    pub curves: Vec<Curve>,
    /// Parameter and communication accounting (Table 4).
    #[serde(default)]
    pub comm: Vec<CommRow>,
    /// Accuracy against training-set size (Figure 4).
    #[serde(default)]
    pub data_efficiency: Vec<DataEffPoint>,
    /// Language distance φ to the pre-training language, per language code (Figure 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distances: Option<BTreeMap<String, f64>>,
    /// Free-form run metadata (config path, durations, versions...).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// Evaluation metrics of one paradigm on one language.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LangMetrics {
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Macro-averaged F1 in `[0, 1]`.
    pub macro_f1: f64,
    /// Number of evaluation examples.
    pub n: usize,
}

/// One row of the main table: a training paradigm evaluated on every language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParadigmRow {
    /// Paradigm label, e.g. `PE_FL (non-IID)`.
    pub paradigm: String,
    /// Trained parameters, e.g. `prompt`, `lora-r8`, `full`.
    pub method: String,
    /// Data setting, e.g. `IID`, `non-IID α=0.1`, `local`.
    pub setting: String,
    /// Metrics per language code.
    pub per_language: BTreeMap<String, LangMetrics>,
    /// Average accuracy over languages in `[0, 1]`.
    pub average: f64,
    /// Standard deviations over seeds (present when the row is a mean over several seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// Each seed's numbers (present when the row is a mean over several seeds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_seed: Vec<SeedRow>,
    /// Where training stopped and which round/epoch was best (early stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
}

/// Sample standard deviations (n − 1) over seeds of a row's accuracies, in `[0, 1]` units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Number of seeds.
    pub seeds: usize,
    /// Standard deviation of the average accuracy.
    pub average_sd: f64,
    /// Standard deviation of each language's accuracy.
    pub per_language_sd: BTreeMap<String, f64>,
}

/// One seed's numbers of a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRow {
    /// The experiment seed.
    pub seed: u64,
    /// Average accuracy over languages.
    pub average: f64,
    /// Accuracy per language.
    pub per_language: BTreeMap<String, f64>,
    /// Where this seed's training stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
}

/// Early stopping's record: the best and the last round (federated) or epoch (local) of the
/// models behind a row, as means over models (languages of a monolingual run, seeds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// `round` (federated runs) or `epoch` (monolingual and centralized runs).
    pub unit: String,
    /// Mean round/epoch of the best eval accuracy (the reported model).
    pub best: f64,
    /// Mean last round/epoch run.
    pub stopped: f64,
    /// The maximum allowed.
    pub max: u64,
    /// Models trained (seeds × languages for monolingual runs).
    pub models: usize,
    /// How many of them ran to `max` without the patience running out (not converged by the
    /// rule: a larger maximum might have found a better model).
    pub hit_max: usize,
}

impl Convergence {
    /// The mean of several records of the same unit and maximum (`None` for none).
    pub fn mean(all: &[Convergence]) -> Option<Convergence> {
        let first = all.first()?;
        let models: usize = all.iter().map(|c| c.models).sum();
        let w = |f: fn(&Convergence) -> f64| {
            all.iter().map(|c| f(c) * c.models as f64).sum::<f64>() / models.max(1) as f64
        };
        Some(Convergence {
            unit: first.unit.clone(),
            best: w(|c| c.best),
            stopped: w(|c| c.stopped),
            max: all.iter().map(|c| c.max).max().unwrap_or(first.max),
            models,
            hit_max: all.iter().map(|c| c.hit_max).sum(),
        })
    }
}

impl ParadigmRow {
    /// Builds a row whose `average` is the unweighted mean accuracy over its languages.
    pub fn new(
        paradigm: impl Into<String>,
        method: impl Into<String>,
        setting: impl Into<String>,
        per_language: BTreeMap<String, LangMetrics>,
    ) -> Self {
        let average = if per_language.is_empty() {
            0.0
        } else {
            per_language.values().map(|m| m.accuracy).sum::<f64>() / per_language.len() as f64
        };
        Self {
            paradigm: paradigm.into(),
            method: method.into(),
            setting: setting.into(),
            per_language,
            average,
            spread: None,
            per_seed: Vec::new(),
            convergence: None,
        }
    }
}

/// Accuracy of one paradigm over rounds or epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Paradigm label (matches [`ParadigmRow::paradigm`]).
    pub paradigm: String,
    /// Points in round order.
    pub points: Vec<RoundPoint>,
    /// Standard deviation over seeds of each point's accuracy (aligned with `points`; empty
    /// for a single seed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sd: Vec<f64>,
}

/// One evaluation after a round (or epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    /// Round or epoch number (1-based by convention).
    pub round: u32,
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Evaluation loss, when measured.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Differential privacy: `ε` spent after this round (at the run's `δ`), when accounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

/// Parameter counts and communication of one paradigm (Table 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommRow {
    /// Paradigm label.
    pub paradigm: String,
    /// Trained parameters, e.g. `prompt`.
    pub method: String,
    /// Number of trainable parameters.
    pub trainable_params: u64,
    /// Number of parameters of the whole model.
    pub total_params: u64,
    /// Bytes one client uploads per round.
    pub bytes_up_per_client_round: u64,
    /// Bytes one client downloads per round.
    pub bytes_down_per_client_round: u64,
    /// Number of clients K.
    pub clients: u32,
    /// Number of rounds.
    pub rounds: u32,
    /// Bytes moved during the whole run, up and down, all clients.
    pub total_bytes: u64,
    /// How uploads were encoded when not as plain f32 (`f16`, `int8`, `topk 10%+ef`,
    /// `secagg 32 bits`...); the byte counts are what was actually sent. Always written (an
    /// empty CSV cell for plain f32) so that every CSV row has the same fields.
    #[serde(default)]
    pub upload_encoding: Option<String>,
}

impl CommRow {
    /// Row for a run where every client sends and receives the trainable set each round
    /// as `bytes_per_value`-byte values (4 for fp32).
    pub fn full_participation(
        paradigm: impl Into<String>,
        method: impl Into<String>,
        trainable_params: u64,
        total_params: u64,
        bytes_per_value: u64,
        clients: u32,
        rounds: u32,
    ) -> Self {
        let per = trainable_params * bytes_per_value;
        Self {
            paradigm: paradigm.into(),
            method: method.into(),
            trainable_params,
            total_params,
            bytes_up_per_client_round: per,
            bytes_down_per_client_round: per,
            clients,
            rounds,
            total_bytes: 2 * per * u64::from(clients) * u64::from(rounds),
            upload_encoding: None,
        }
    }
}

/// Accuracy of one paradigm trained on `train_size` examples (Figure 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataEffPoint {
    /// Paradigm label.
    pub paradigm: String,
    /// Training examples (per language or client).
    pub train_size: usize,
    /// Accuracy in `[0, 1]` (mean over seeds when several ran).
    pub accuracy: f64,
    /// Standard deviation over seeds (absent for a single seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
}

fn check_unit(what: &str, value: f64) -> Result<()> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ReportError::Invalid(format!(
            "{what} is {value}, outside [0, 1] (accuracies and F1 are fractions, not percent)"
        )))
    }
}

impl RunResults {
    /// Checks that every accuracy and F1 is a fraction in `[0, 1]`, every distance is finite,
    /// and every per-language entry names a language listed in `languages`.
    pub fn validate(&self) -> Result<()> {
        for row in &self.rows {
            let p = &row.paradigm;
            for (lang, m) in &row.per_language {
                if !self.languages.contains(lang) {
                    return Err(ReportError::Invalid(format!(
                        "row {p:?} has language {lang:?}, which is not in languages {:?}",
                        self.languages
                    )));
                }
                check_unit(&format!("accuracy of {p:?} on {lang:?}"), m.accuracy)?;
                check_unit(&format!("macro-F1 of {p:?} on {lang:?}"), m.macro_f1)?;
            }
            check_unit(&format!("average accuracy of {p:?}"), row.average)?;
        }
        for c in &self.curves {
            for pt in &c.points {
                check_unit(
                    &format!("accuracy of {:?} in round {}", c.paradigm, pt.round),
                    pt.accuracy,
                )?;
            }
        }
        for d in &self.data_efficiency {
            check_unit(
                &format!(
                    "accuracy of {:?} at train size {}",
                    d.paradigm, d.train_size
                ),
                d.accuracy,
            )?;
            if d.train_size == 0 {
                return Err(ReportError::Invalid(format!(
                    "data-efficiency point of {:?} has train size 0 (the axis is logarithmic)",
                    d.paradigm
                )));
            }
        }
        for (lang, phi) in self.distances.iter().flatten() {
            if !phi.is_finite() {
                return Err(ReportError::Invalid(format!(
                    "distance of {lang:?} is {phi}, not a finite number"
                )));
            }
        }
        Ok(())
    }

    /// Paradigm names in order of first appearance across rows, curves, data efficiency and comm;
    /// plots colour a paradigm by its index here so colours agree across plots.
    pub fn paradigm_order(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let names = self
            .rows
            .iter()
            .map(|r| &r.paradigm)
            .chain(self.curves.iter().map(|c| &c.paradigm))
            .chain(self.data_efficiency.iter().map(|d| &d.paradigm))
            .chain(self.comm.iter().map(|c| &c.paradigm));
        for n in names {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }
}
