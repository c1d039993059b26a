//! Seeing the data before hours of training: what the readers parsed (examples per language
//! and label, the first examples), and `experiment --check`, which loads and validates
//! everything a run needs (model, data, every run's settings and clients) without training.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fedprompt_data::{Example, LabelMap};

use crate::config::{ExperimentConfig, Paradigm};
use crate::data::ExperimentData;
use crate::error::Result;
use crate::run::{check_data, load_backbone, text_max_len, RunPlan};

/// A Markdown table of examples per label (rows) and language (columns), with totals.
pub fn count_table(examples: &[Example], labels: &LabelMap) -> String {
    let mut langs: Vec<&str> = examples.iter().map(|e| e.language.as_str()).collect();
    langs.sort_unstable();
    langs.dedup();
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for e in examples {
        *counts.entry((e.label, e.language.as_str())).or_default() += 1;
    }
    let mut out = String::from("| label |");
    for l in &langs {
        let _ = write!(out, " {l} |");
    }
    out.push_str(" total |\n|---|");
    for _ in 0..=langs.len() {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut col_totals = vec![0usize; langs.len()];
    for (i, name) in labels.names().iter().enumerate() {
        let _ = write!(out, "| {name} |");
        let mut row = 0;
        for (j, l) in langs.iter().enumerate() {
            let n = counts.get(&(i, *l)).copied().unwrap_or(0);
            row += n;
            col_totals[j] += n;
            let _ = write!(out, " {n} |");
        }
        let _ = writeln!(out, " {row} |");
    }
    out.push_str("| **total** |");
    for n in &col_totals {
        let _ = write!(out, " {n} |");
    }
    let _ = writeln!(out, " {} |", examples.len());
    out
}

/// The first `n` examples, one per line: language, label and the text (cut to 100 chars).
pub fn first_examples(examples: &[Example], labels: &LabelMap, n: usize) -> String {
    let mut out = String::new();
    for e in examples.iter().take(n) {
        let text = match &e.text_pair {
            Some(p) => format!("{} ‖ {p}", e.text),
            None => e.text.clone(),
        };
        let short: String = text.chars().take(100).collect();
        let more = if short.len() < text.len() { "…" } else { "" };
        let label = labels.names().get(e.label).map_or("?", |s| s.as_str());
        let _ = writeln!(out, "  [{}] {label}: {short}{more}", e.language);
    }
    out
}

/// What the data section of `cfg` yields for its first seed: both splits' tables and the
/// first `examples` examples of each.
pub fn describe_data(cfg: &ExperimentConfig, examples: usize) -> Result<(ExperimentData, String)> {
    let seed = cfg.run_seeds()[0];
    let data = crate::data::load(&cfg.data, seed)?;
    let mut out = format!(
        "{} labels: {}\n",
        data.labels.len(),
        data.labels.names().join(", ")
    );
    for (name, split) in [("Training", &data.train), ("Evaluation", &data.eval)] {
        let _ = write!(
            out,
            "\n{name} examples (seed {seed}):\n\n{}",
            count_table(split, &data.labels)
        );
        if examples > 0 {
            let _ = write!(
                out,
                "\nFirst {examples}:\n{}",
                first_examples(split, &data.labels, examples)
            );
        }
    }
    if data.warnings > 0 {
        let _ = writeln!(
            out,
            "\n{} bad line(s) skipped (skip_bad_lines)",
            data.warnings
        );
    }
    Ok((data, out))
}

/// `experiment --check`: loads the model and the data, checks every run's settings and builds
/// every federated run's clients, without training. Returns the report to print.
pub fn check_experiment(cfg: &ExperimentConfig) -> Result<String> {
    cfg.validate().map_err(|msg| crate::SimError::Config {
        path: cfg.name.clone().into(),
        msg,
    })?;
    let backbone = load_backbone(&cfg.model.path, cfg.model.dtype)?;
    let max_len = text_max_len(cfg, &backbone)?;
    let (data, mut out) = describe_data(cfg, 3)?;
    check_data(cfg, &data)?;
    let seeds = cfg.run_seeds();
    let mut head = format!(
        "{}: model {} ({} layers, hidden {}; {}), {} text tokens + virtual tokens; seeds {:?}\n",
        cfg.name,
        backbone.folder().display(),
        backbone.config().num_hidden_layers,
        backbone.config().hidden_size,
        crate::run::backbone_note(backbone.dtype()),
        max_len,
        seeds
    );
    head.push_str("\nRuns:\n");
    for spec in &cfg.runs {
        let plan = RunPlan::resolve(cfg, spec)?;
        let what = match spec.paradigm {
            Paradigm::Federated => {
                let part = plan.partition(&data.train)?;
                format!(
                    "up to {} rounds (patience {}), {} clients of sizes {:?}",
                    plan.rounds,
                    plan.patience,
                    part.clients.len(),
                    part.sizes()
                )
            }
            _ => format!("up to {} epochs (patience {})", plan.epochs, plan.patience),
        };
        let _ = writeln!(
            head,
            "  {:<24} {:<12} {:<16} lr {:.0e}; {what}",
            spec.label,
            format!("{:?}", spec.paradigm).to_lowercase(),
            crate::run::method_label(&spec.method),
            plan.train.learning_rate
        );
    }
    head.push('\n');
    out.insert_str(0, &head);
    out.push_str("\nOK: the model, the data and every run's settings are valid.\n");
    Ok(out)
}
