//! Accuracy and macro-F1, overall and per language.

use std::collections::BTreeMap;

use candle_core::Tensor;
use fedprompt_model::{Classifier, ForwardCtx};
use serde::{Deserialize, Serialize};

use crate::encode::{make_batch, EncodedExample};
use crate::trainer::TrainError;

/// Scores on one language (or overall).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LangScore {
    /// Fraction of correct predictions, in `[0, 1]` (0 when `n` is 0).
    pub accuracy: f64,
    /// Mean F1 over the labels that occur in gold or predictions, in `[0, 1]`.
    pub macro_f1: f64,
    /// Number of examples scored.
    pub n: usize,
}

/// Evaluation of a classifier on a set of examples.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalReport {
    /// Scores over all examples.
    pub overall: LangScore,
    /// Scores per language code of the examples.
    pub per_language: BTreeMap<String, LangScore>,
    /// Mean cross-entropy per example (nats).
    pub loss: f64,
}

/// Accuracy and macro-F1 (the mean over labels that occur in gold or predictions). A label
/// id at or beyond `num_labels` counts as a class of its own rather than panicking.
pub fn score(gold: &[usize], pred: &[usize], num_labels: usize) -> LangScore {
    let n = gold.len();
    if n == 0 {
        return LangScore::default();
    }
    let num_labels = gold
        .iter()
        .chain(pred)
        .map(|&l| l + 1)
        .max()
        .unwrap_or(0)
        .max(num_labels);
    let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    let mut tp = vec![0usize; num_labels];
    let mut fp = vec![0usize; num_labels];
    let mut fneg = vec![0usize; num_labels];
    for (&g, &p) in gold.iter().zip(pred) {
        if g == p {
            tp[g] += 1;
        } else {
            fp[p] += 1;
            fneg[g] += 1;
        }
    }
    let mut f1s = Vec::new();
    for c in 0..num_labels {
        if tp[c] + fp[c] + fneg[c] == 0 {
            continue;
        }
        let denom = 2 * tp[c] + fp[c] + fneg[c];
        f1s.push(2.0 * tp[c] as f64 / denom as f64);
    }
    LangScore {
        accuracy: correct as f64 / n as f64,
        macro_f1: f1s.iter().sum::<f64>() / f1s.len().max(1) as f64,
        n,
    }
}

/// Runs the classifier on `examples` (eval mode) and scores it.
pub fn evaluate(
    clf: &Classifier,
    examples: &[EncodedExample],
    batch_size: usize,
    pad_id: u32,
    use_types: bool,
) -> Result<EvalReport, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::Empty("evaluation set".into()));
    }
    let ctx = ForwardCtx::eval();
    // Sort by length so batches pad little; results are put back in order.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].ids.len());
    let mut pred = vec![0usize; examples.len()];
    let mut loss_sum = 0.0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = make_batch(examples, chunk, pad_id, use_types)?;
        let logits = clf.forward(&batch, &ctx)?;
        let labels: Vec<u32> = chunk.iter().map(|&i| examples[i].label as u32).collect();
        let labels_t = Tensor::new(labels.as_slice(), &candle_core::Device::Cpu)?;
        let l = fedprompt_model::nn::cross_entropy(&logits, &labels_t)?.to_scalar::<f32>()?;
        loss_sum += l as f64 * chunk.len() as f64;
        let am: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        for (k, &i) in chunk.iter().enumerate() {
            pred[i] = am[k] as usize;
        }
    }
    let gold: Vec<usize> = examples.iter().map(|e| e.label).collect();
    let nl = clf.labels().len();
    let mut by_lang: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        let entry = by_lang.entry(e.language.clone()).or_default();
        entry.0.push(gold[i]);
        entry.1.push(pred[i]);
    }
    Ok(EvalReport {
        overall: score(&gold, &pred, nl),
        per_language: by_lang
            .into_iter()
            .map(|(k, (g, p))| (k, score(&g, &p, nl)))
            .collect(),
        loss: loss_sum / examples.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        // gold: 0 0 1 1 2 ; pred: 0 1 1 1 0
        let s = score(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        // class 0: tp1 fp1 fn1 -> 0.5 ; class 1: tp2 fp1 fn0 -> 0.8 ; class 2: tp0 fn1 -> 0
        assert!((s.macro_f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_label_beyond_num_labels_is_its_own_class() {
        // gold 3 with num_labels 2: class 3 tp0 fn1 -> 0; class 0 tp1 -> 1; class 1 fp1 -> 0.
        let s = score(&[0, 3], &[0, 1], 2);
        assert!((s.accuracy - 0.5).abs() < 1e-12);
        assert!((s.macro_f1 - 1.0 / 3.0).abs() < 1e-12);
    }
}
