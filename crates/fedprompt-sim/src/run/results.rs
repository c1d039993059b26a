//! Turning evaluations into the results model: per-language metrics, rows, distances, notes.

use std::collections::BTreeMap;

use fedprompt_data::Example;
use fedprompt_model::MethodConfig;
use fedprompt_report::{LangMetrics, RunResults};
use fedprompt_train::EvalReport;

use crate::error::Result;

/// Per-language accuracy and macro-F1 of an evaluation.
pub(crate) fn metrics(report: &EvalReport) -> BTreeMap<String, LangMetrics> {
    report
        .per_language
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                LangMetrics {
                    accuracy: s.accuracy,
                    macro_f1: s.macro_f1,
                    n: s.n,
                },
            )
        })
        .collect()
}

/// Mean accuracy over languages (the paper's "average" column).
pub(crate) fn avg_accuracy(report: &EvalReport) -> f64 {
    let v: Vec<f64> = report.per_language.values().map(|s| s.accuracy).collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Short method description for tables (`prompt (1 vt)`, `lora r8`...).
pub fn method_label(m: &MethodConfig) -> String {
    match m {
        MethodConfig::Prompt {
            num_virtual_tokens, ..
        } => format!("prompt ({num_virtual_tokens} vt)"),
        MethodConfig::PromptEncoder {
            num_virtual_tokens, ..
        } => format!("p-tuning ({num_virtual_tokens} vt)"),
        MethodConfig::Lora { r, .. } => format!("lora r{r}"),
        MethodConfig::Head => "head".into(),
        MethodConfig::Full => "full".into(),
    }
}

/// φ per language from URIEL, and a note on what could not be computed.
pub(crate) fn distances(langs: &[String]) -> Result<(BTreeMap<String, f64>, String)> {
    let dir = fedprompt_hub::lang2vec_data_dir()?;
    let ld = fedprompt_lang::LanguageDistance::load(&dir, &Default::default())?;
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for l in langs {
        // Script variants share their language's typology (URIEL has no script axis).
        let base = l.split(['_', '-']).next().unwrap_or(l);
        match ld.phi(base) {
            Ok(phi) => {
                out.insert(l.clone(), phi);
                if base != l {
                    notes.push(format!("{l} uses {base}'s URIEL vector"));
                }
            }
            Err(e) => notes.push(format!("{l}: {e}")),
        }
    }
    Ok((out, notes.join("; ")))
}

/// Adds the language distances (or why there are none) to the results.
pub(crate) fn add_distances(results: &mut RunResults, langs: &[String]) {
    match distances(langs) {
        Ok((d, note)) => {
            results.distances = Some(d);
            if !note.is_empty() {
                results.meta.insert("distance_note".into(), note);
            }
        }
        Err(e) => {
            results.meta.insert(
                "distance_note".into(),
                format!("no language distances: {e}"),
            );
        }
    }
}

/// `lang count, ...` of a set of examples.
pub(crate) fn counts(ex: &[Example]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for e in ex {
        *m.entry(e.language.as_str()).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
