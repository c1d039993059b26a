//! A random-weight XLM-R-base folder (`XLMRobertaForSequenceClassification` layout), written
//! once, that both fedprompt and PyTorch load: the benchmark needs the shape, not the values.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use safetensors::{Dtype, View};

/// Shape of the random model.
#[derive(Clone, Debug)]
pub struct XlmrShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward (intermediate) size.
    pub ffn: usize,
    /// Position embeddings.
    pub max_positions: usize,
    /// Labels of the classification head.
    pub num_labels: usize,
}

impl XlmrShape {
    /// XLM-R base: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 250002.
    pub fn base(num_labels: usize) -> Self {
        XlmrShape {
            vocab: 250_002,
            hidden: 768,
            layers: 12,
            heads: 12,
            ffn: 3072,
            max_positions: 514,
            num_labels,
        }
    }

    /// Folder name under the cache, unique per shape.
    pub fn slug(&self) -> String {
        format!(
            "xlmr-random-v1-l{}-h{}-a{}-f{}-v{}-n{}",
            self.layers, self.hidden, self.heads, self.ffn, self.vocab, self.num_labels
        )
    }

    fn config_json(&self) -> serde_json::Value {
        let id2label: serde_json::Map<String, serde_json::Value> = (0..self.num_labels)
            .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = (0..self.num_labels)
            .map(|i| (format!("LABEL_{i}"), i.into()))
            .collect();
        serde_json::json!({
            "_fedprompt_bench": "random weights (N(0, 0.02), LayerNorm 1/0, biases 0) for benchmarking only",
            "architectures": ["XLMRobertaForSequenceClassification"],
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 0,
            "classifier_dropout": null,
            "dtype": "float32",
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": self.hidden,
            "id2label": id2label,
            "initializer_range": 0.02,
            "intermediate_size": self.ffn,
            "label2id": label2id,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": self.max_positions,
            "model_type": "xlm-roberta",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "pad_token_id": 1,
            "position_embedding_type": "absolute",
            "type_vocab_size": 1,
            "vocab_size": self.vocab,
        })
    }

    /// `(name, shape, init)` of every tensor.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (h, f) = (self.hidden, self.ffn);
        let mut v = vec![
            (
                "roberta.embeddings.word_embeddings.weight".into(),
                vec![self.vocab, h],
                Init::Normal,
            ),
            (
                "roberta.embeddings.position_embeddings.weight".into(),
                vec![self.max_positions, h],
                Init::Normal,
            ),
            (
                "roberta.embeddings.token_type_embeddings.weight".into(),
                vec![1, h],
                Init::Normal,
            ),
            (
                "roberta.embeddings.LayerNorm.weight".into(),
                vec![h],
                Init::One,
            ),
            (
                "roberta.embeddings.LayerNorm.bias".into(),
                vec![h],
                Init::Zero,
            ),
        ];
        for l in 0..self.layers {
            let p = format!("roberta.encoder.layer.{l}");
            for (name, o, i) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", f, h),
                ("output.dense", h, f),
            ] {
                v.push((format!("{p}.{name}.weight"), vec![o, i], Init::Normal));
                v.push((format!("{p}.{name}.bias"), vec![o], Init::Zero));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((format!("{p}.{name}.weight"), vec![h], Init::One));
                v.push((format!("{p}.{name}.bias"), vec![h], Init::Zero));
            }
        }
        v.push(("classifier.dense.weight".into(), vec![h, h], Init::Normal));
        v.push(("classifier.dense.bias".into(), vec![h], Init::Zero));
        v.push((
            "classifier.out_proj.weight".into(),
            vec![self.num_labels, h],
            Init::Normal,
        ));
        v.push((
            "classifier.out_proj.bias".into(),
            vec![self.num_labels],
            Init::Zero,
        ));
        v
    }
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    One,
    Zero,
}

struct Owned {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The small XLM-R tokenizer of fedprompt-model's test fixture: `Backbone::load` needs a
/// `tokenizer.json`, the benchmark feeds token ids directly.
const TOKENIZER_JSON: &str =
    include_str!("../../fedprompt-model/tests/fixtures/tiny-xlmr/tokenizer.json");

/// Writes a random-weight folder of `shape` to `dir` (through a temporary sibling and a
/// rename) unless it is already there; returns `dir`.
pub fn ensure_random_xlmr(dir: &Path, shape: &XlmrShape) -> Result<PathBuf> {
    if dir.join("model.safetensors").is_file() {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().context("random model folder has no parent")?;
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-random-xlmr-")
        .tempdir_in(parent)?;
    eprintln!(
        "fedprompt bench: writing a random-weight model ({} layers, hidden {}, vocab {}) to {}",
        shape.layers,
        shape.hidden,
        shape.vocab,
        dir.display()
    );
    let specs = shape.tensors();
    let owned: Vec<(String, Owned)> = specs
        .into_par_iter()
        .enumerate()
        .map(|(k, (name, dims, init))| {
            let n: usize = dims.iter().product();
            let vals: Vec<f32> = match init {
                Init::One => vec![1.0; n],
                Init::Zero => vec![0.0; n],
                Init::Normal => {
                    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0000 + k as u64);
                    let d = Normal::new(0.0f32, 0.02).expect("valid normal");
                    (0..n).map(|_| d.sample(&mut rng)).collect()
                }
            };
            let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, Owned { shape: dims, bytes })
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::tensor::serialize_to_file(
        owned.iter().map(|(n, o)| (n.clone(), o)),
        Some(meta),
        &tmp.path().join("model.safetensors"),
    )?;
    drop(owned);
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_string_pretty(&shape.config_json())?,
    )?;
    std::fs::write(tmp.path().join("tokenizer.json"), TOKENIZER_JSON)?;
    let tmp = tmp.keep();
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        // Another process finished first.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir.to_path_buf())
        }
        Err(e) => Err(e).with_context(|| format!("renaming into {}", dir.display())),
    }
}
