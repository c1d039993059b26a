//! Monolingual and centralized runs: one model per language, or one on everything pooled.

use std::collections::BTreeMap;
use std::time::Instant;

use fedprompt_fl::derive_seed;
use fedprompt_model::Classifier;
use fedprompt_report::{Curve, ParadigmRow, RoundPoint};
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

    /// (name, train, eval) of each model the run trains.
    fn groups(
        &self,
        paradigm: Paradigm,
    ) -> Vec<(String, Vec<EncodedExample>, Vec<EncodedExample>)> {
        if paradigm == Paradigm::Centralized {
            return vec![("all".into(), self.train.clone(), self.eval.clone())];
        }
        let tr = self.by_language(&self.train);
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

    pub(super) fn run_local(&mut self, plan: &RunPlan<'_>) -> Result<RunOutcome> {
        let start = Instant::now();
        let spec = plan.spec;
        let groups = self.groups(spec.paradigm);
        let total: u64 = groups
            .iter()
            .map(|g| self.steps_per_epoch(g.1.len()) * plan.epochs as u64)
            .sum();
        let pb = self.bar(total, spec.label.clone());
        let mut per_language = BTreeMap::new();
        let mut curves: Vec<Vec<f64>> = Vec::new();
        for (name, tr, ev) in &groups {
            if ev.is_empty() {
                return Err(SimError::Run {
                    run: spec.label.clone(),
                    msg: format!("language `{name}` has no evaluation examples"),
                });
            }
            let seed = derive_seed(self.cfg.seed, &[&spec.label, name]);
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
        let row = ParadigmRow::new(
            &spec.label,
            method_label(&spec.method),
            setting.to_string(),
            per_language,
        );
        Ok(RunOutcome {
            best_avg: row.average,
            row,
            curve: Curve {
                paradigm: spec.label.clone(),
                points,
            },
            comm: None,
            privacy: None,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
