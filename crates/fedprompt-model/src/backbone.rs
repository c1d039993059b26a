//! A model folder loaded once: configuration, frozen encoder, tokenizer, and the folder's
//! own classification head if it has one. One `Backbone` serves every client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{EncoderConfig, Family};
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::tokenize::TextEncoder;
use crate::weights::{ParamSource, WeightDtype, Weights};

/// The frozen backbone of a Hugging Face folder.
pub struct Backbone {
    folder: PathBuf,
    cfg: EncoderConfig,
    weights: Arc<Weights>,
    prefix: String,
    encoder: Encoder,
    text: TextEncoder,
    dtype: WeightDtype,
}

impl Backbone {
    /// Loads `config.json`, the safetensors weights and `tokenizer.json` from `folder`, with
    /// f32 weights (exact mode).
    pub fn load(folder: &Path) -> Result<Self> {
        Self::load_with(folder, WeightDtype::F32)
    }

    /// [`Backbone::load`] with the encoder's frozen matrices kept in `dtype` (bf16: the fast
    /// mode; the word embeddings stay in the file as stored, everything else f32).
    pub fn load_with(folder: &Path, dtype: WeightDtype) -> Result<Self> {
        if !folder.is_dir() {
            return Err(ModelError::NotFound {
                what: "model folder",
                path: folder.to_path_buf(),
                hint: "pass a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), or omit --model to use the default model",
            });
        }
        let cfg = EncoderConfig::from_file(&folder.join("config.json"))?;
        let weights = Weights::open(folder)?;
        let prefix = detect_prefix(&weights, &cfg)?;
        let src = ParamSource::frozen(&weights).with_dtype(dtype);
        let src = if prefix.is_empty() {
            src
        } else {
            src.pp(&prefix)
        };
        let encoder = Encoder::load(&cfg, &src)?;
        let text = TextEncoder::from_file(
            &folder.join("tokenizer.json"),
            cfg.pad_token_id,
            cfg.family == Family::Bert,
        )?
        .with_max_len(512.min(cfg.max_sequence_len()))?;
        Ok(Backbone {
            folder: folder.to_path_buf(),
            cfg,
            weights: Arc::new(weights),
            prefix,
            encoder,
            text,
            dtype,
        })
    }

    /// The folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The float type of the frozen encoder's matrices.
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// The frozen encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The weights (for the head and for full fine-tuning).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Weight-name prefix of the encoder (`roberta`, `bert`, or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tokenizer.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// Parameters of the folder's encoder (and pooler), the frozen part of a PE model.
    pub fn encoder_params(&self) -> usize {
        self.weights
            .shapes()
            .iter()
            .filter(|(k, _)| !k.starts_with("classifier.") && !k.starts_with("lm_head."))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Which head the classifier on this backbone uses.
    pub fn head_kind(&self) -> HeadKind {
        let pooler = if self.prefix.is_empty() {
            "pooler.dense.weight".to_string()
        } else {
            format!("{}.pooler.dense.weight", self.prefix)
        };
        if self.cfg.family == Family::Bert && self.weights.contains(&pooler) {
            HeadKind::BertPooler
        } else {
            HeadKind::Roberta
        }
    }
}

/// The shape of the classification head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// `classifier.dense` + `classifier.out_proj`.
    Roberta,
    /// frozen `pooler.dense` + `classifier`.
    BertPooler,
}

fn detect_prefix(w: &Weights, cfg: &EncoderConfig) -> Result<String> {
    for p in [cfg.default_prefix(), "roberta", "bert", ""] {
        let name = if p.is_empty() {
            "embeddings.word_embeddings.weight".to_string()
        } else {
            format!("{p}.embeddings.word_embeddings.weight")
        };
        if w.contains(&name) {
            return Ok(p.to_string());
        }
    }
    Err(ModelError::MissingTensor {
        name: format!("{}.embeddings.word_embeddings.weight", cfg.default_prefix()),
        path: w.origin().to_path_buf(),
    })
}
