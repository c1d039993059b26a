//! Monolingual and centralized runs: one model per language, or one on everything pooled.

use std::collections::BTreeMap;
use std::time::Instant;

use fedprompt_data::{cap_clients, partition_by_language, Stratify};
use fedprompt_fl::derive_seed;
use fedprompt_model::Classifier;
use fedprompt_report::{Convergence, Curve, ParadigmRow, RoundPoint};
use fedprompt_train::{evaluate, train, EncodedExample};

use super::plan::RunPlan;
use super::results::{method_label, metrics};
use super::state::RunOutcome;
use super::Ctx;
use crate::config::Paradigm;
use crate::error::{Result, SimError};

impl Ctx<'_> {
    fn by_language(&self, examples: &[EncodedExample]) -> BTreeMap<String, Vec<EncodedExample>> {
        let mut m: BTreeMap<String, Vec<EncodedExample>> = BTreeMap::new();
        for e in examples {
            m.entry(e.language.clone()).or_default().push(e.clone());
        }
        m
    }

    /// The training examples with every language cut to `cap` (stratified by label, seeded
    /// as a federated run's clients are cut), or all of them.
    fn capped_train(&self, cap: Option<usize>, seed: u64) -> Result<Vec<EncodedExample>> {
        let Some(n) = cap else {
            return Ok(self.train.clone());
        };
        let part = partition_by_language(&self.train_raw)?;
        let all: Vec<usize> = (0..part.clients.len()).collect();
        let part = cap_clients(&part, &self.train_raw, &all, n, Stratify::Label, seed)?;
        let mut idx: Vec<usize> = part
            .clients
            .iter()
            .flat_map(|c| c.indices.clone())
            .collect();
        idx.sort_unstable();
        Ok(idx.into_iter().map(|i| self.train[i].clone()).collect())
    }

    /// (name, train, eval) of each model the run trains.
    fn groups(
        &self,
        paradigm: Paradigm,
        train: &[EncodedExample],
    ) -> Vec<(String, Vec<EncodedExample>, Vec<EncodedExample>)> {
        if paradigm == Paradigm::Centralized {
            return vec![("all".into(), train.to_vec(), self.eval.clone())];
        }
        let tr = self.by_language(train);
        let ev = self.by_language(&self.eval);
        self.cfg
            .data
            .languages
            .iter()
            .filter_map(|l| {
                let code = tr.keys().find(|k| *k == l).cloned()?;
                Some((
                    code.clone(),
                    tr[&code].clone(),
                    ev.get(&code).cloned().unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// A monolingual or centralized run; with `cap`, every language's training set is cut
    /// to `cap` examples (the data-efficiency ablation).
    pub(super) fn run_local(&self, plan: &RunPlan<'_>, cap: Option<usize>) -> Result<RunOutcome> {
        let start = Instant::now();
        let spec = plan.spec;
        let train_set = self.capped_train(cap, plan.seed)?;
        let groups = self.groups(spec.paradigm, &train_set);
        let total: u64 = groups
            .iter()
            .map(|g| self.steps_per_epoch(g.1.len()) * plan.epochs as u64)
            .sum();
        let pb = self.bar(total, self.bar_label(&spec.label));
        let mut per_language = BTreeMap::new();
        let mut curves: Vec<Vec<f64>> = Vec::new();
        let mut convergence = Vec::new();
        for (name, tr, ev) in &groups {
            if ev.is_empty() {
                return Err(SimError::Run {
                    run: spec.label.clone(),
                    msg: format!("language `{name}` has no evaluation examples"),
                });
            }
            let seed = derive_seed(self.cfg.seed, &[spec.seed_key(), name]);
            let clf = Classifier::new(self.backbone, &spec.method, &self.labels, seed)?;
            let tcfg = plan.local_train(seed);
            let rep = train(
                &clf,
                tr,
                Some(ev),
                &tcfg,
                self.pad_id,
                self.use_types,
                None,
                Some(&pb),
            )?;
            let ran = rep.epochs.len();
            convergence.push(Convergence {
                unit: "epoch".into(),
                best: rep.best_epoch.unwrap_or(ran) as f64,
                stopped: ran as f64,
                max: plan.epochs as u64,
                models: 1,
                hit_max: usize::from(!rep.stopped_early),
            });
            curves.push(
                rep.epochs
                    .iter()
                    .filter_map(|e| e.eval.as_ref().map(|r| r.overall.accuracy))
                    .collect(),
            );
            let final_eval = evaluate(&clf, ev, 64, self.pad_id, self.use_types)?;
            per_language.extend(metrics(&final_eval));
        }
        pb.finish_and_clear();
        // Mean over groups per epoch; an early-stopped group keeps its last value.
        let longest = curves.iter().map(|c| c.len()).max().unwrap_or(0);
        let points = (0..longest)
            .map(|e| {
                let vals: Vec<f64> = curves
                    .iter()
                    .filter_map(|c| c.get(e).or(c.last()).copied())
                    .collect();
                RoundPoint {
                    round: e as u32 + 1,
                    accuracy: vals.iter().sum::<f64>() / vals.len().max(1) as f64,
                    loss: None,
                    epsilon: None,
                }
            })
            .collect();
        let setting = match spec.paradigm {
            Paradigm::Centralized => "centralized",
            _ => "monolingual",
        };
        let mut row = ParadigmRow::new(
            &spec.label,
            method_label(&spec.method),
            setting.to_string(),
            per_language,
        );
        row.convergence = Convergence::mean(&convergence);
        Ok(RunOutcome {
            best_avg: row.average,
            row,
            curve: Curve {
                paradigm: spec.label.clone(),
                points,
                sd: Vec::new(),
            },
            comm: None,
            privacy: None,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
