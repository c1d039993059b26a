//! The encoder configuration, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Which family of encoder a folder holds; decides position ids and head shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Family {
    /// XLM-RoBERTa / RoBERTa: positions start at `pad_token_id + 1`, RoBERTa classification head.
    Roberta,
    /// BERT: positions start at 0, token types, pooler + linear classifier.
    Bert,
}

/// Hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// Exact (erf) GELU, Hugging Face's `gelu`.
    Gelu,
    /// Tanh approximation, `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    /// ReLU.
    Relu,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    pad_token_id: Option<u32>,
    #[serde(default = "default_init_range")]
    initializer_range: f64,
    classifier_dropout: Option<f64>,
    num_labels: Option<usize>,
    id2label: Option<std::collections::BTreeMap<String, String>>,
    position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}

/// A checked encoder configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderConfig {
    /// Encoder family, from `model_type` or else the first of `architectures`.
    pub family: Family,
    /// HF `model_type` as written (e.g. `xlm-roberta`, `bert`); empty when the file has none.
    pub model_type: String,
    /// Number of token embeddings (HF `vocab_size`, > 0).
    pub vocab_size: usize,
    /// Width of every hidden state (HF `hidden_size`, > 0, a multiple of the head count).
    pub hidden_size: usize,
    /// Number of transformer layers (HF `num_hidden_layers`, > 0).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (HF `num_attention_heads`, > 0).
    pub num_attention_heads: usize,
    /// Inner width of the feed-forward block (HF `intermediate_size`).
    pub intermediate_size: usize,
    /// Feed-forward activation (HF `hidden_act`, default `gelu`).
    pub hidden_act: Activation,
    /// Dropout probability on embeddings and layer outputs (HF `hidden_dropout_prob`, default 0.1).
    pub hidden_dropout_prob: f64,
    /// Dropout probability on attention weights (HF `attention_probs_dropout_prob`, default 0.1).
    pub attention_probs_dropout_prob: f64,
    /// Dropout inside the classification head (HF `classifier_dropout`); `None` falls back to
    /// `hidden_dropout_prob` (see [`EncoderConfig::head_dropout`]).
    pub classifier_dropout: Option<f64>,
    /// Rows of the position-embedding table (HF `max_position_embeddings`), offset included.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table (HF `type_vocab_size`, default 2, > 0).
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm (HF `layer_norm_eps`, default 1e-12).
    pub layer_norm_eps: f64,
    /// Padding token id (HF `pad_token_id`); defaults to 1 for RoBERTa and 0 for BERT.
    pub pad_token_id: u32,
    /// Standard deviation of the normal init of new head weights (HF `initializer_range`,
    /// default 0.02).
    pub initializer_range: f64,
    /// Labels of the folder's own classification head, if it names them.
    pub id2label: Vec<String>,
}

impl EncoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::NotFound {
                    what: "config.json",
                    path: path.to_path_buf(),
                    hint: "a Hugging Face model folder needs config.json, model.safetensors and tokenizer.json",
                }
            } else {
                ModelError::io(path, e)
            }
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` is used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let arch = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default();
        let model_type = raw.model_type.clone().unwrap_or_default();
        let family = match model_type.as_str() {
            "xlm-roberta" | "roberta" | "camembert" => Family::Roberta,
            "bert" => Family::Bert,
            "" if arch.starts_with("XLMRoberta") || arch.starts_with("Roberta") => Family::Roberta,
            "" if arch.starts_with("Bert") => Family::Bert,
            other => {
                return Err(ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    arch: if other.is_empty() {
                        arch
                    } else {
                        other.to_string()
                    },
                })
            }
        };
        if let Some(p) = &raw.position_embedding_type {
            if p != "absolute" {
                return Err(ModelError::Config {
                    path: path.to_path_buf(),
                    msg: format!("position_embedding_type `{p}` is not supported (only absolute)"),
                });
            }
        }
        let hidden_act = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(ModelError::Config {
                    path: path.to_path_buf(),
                    msg: format!("hidden_act `{other}` is not supported (gelu, gelu_new, relu)"),
                })
            }
        };
        let check = |ok: bool, msg: &str| -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(ModelError::Config {
                    path: path.to_path_buf(),
                    msg: msg.to_string(),
                })
            }
        };
        check(raw.hidden_size > 0, "hidden_size must be positive")?;
        check(
            raw.num_attention_heads > 0,
            "num_attention_heads must be positive",
        )?;
        check(
            raw.hidden_size.is_multiple_of(raw.num_attention_heads),
            "hidden_size must be a multiple of num_attention_heads",
        )?;
        check(
            raw.num_hidden_layers > 0,
            "num_hidden_layers must be positive",
        )?;
        check(raw.vocab_size > 0, "vocab_size must be positive")?;
        check(raw.type_vocab_size > 0, "type_vocab_size must be positive")?;
        let pad_token_id = raw.pad_token_id.unwrap_or(match family {
            Family::Roberta => 1,
            Family::Bert => 0,
        });
        if family == Family::Roberta {
            check(
                raw.max_position_embeddings > pad_token_id as usize + 1,
                "max_position_embeddings must exceed pad_token_id + 1",
            )?;
        }
        let mut id2label = Vec::new();
        if let Some(map) = &raw.id2label {
            let mut pairs: Vec<(usize, String)> = Vec::new();
            for (k, v) in map {
                let idx: usize = k.parse().map_err(|_| ModelError::Config {
                    path: path.to_path_buf(),
                    msg: format!("id2label key `{k}` is not an integer"),
                })?;
                pairs.push((idx, v.clone()));
            }
            pairs.sort();
            id2label = pairs.into_iter().map(|(_, v)| v).collect();
        }
        if let Some(n) = raw.num_labels {
            if id2label.len() != n {
                id2label = (0..n).map(|i| format!("LABEL_{i}")).collect();
            }
        }
        Ok(EncoderConfig {
            family,
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            hidden_dropout_prob: raw.hidden_dropout_prob,
            attention_probs_dropout_prob: raw.attention_probs_dropout_prob,
            classifier_dropout: raw.classifier_dropout,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id,
            initializer_range: raw.initializer_range,
            id2label,
        })
    }

    /// First position id used by the embeddings (`pad + 1` for RoBERTa, 0 for BERT).
    pub fn position_offset(&self) -> usize {
        match self.family {
            Family::Roberta => self.pad_token_id as usize + 1,
            Family::Bert => 0,
        }
    }

    /// Longest sequence (in tokens, virtual tokens included) the position table can hold.
    pub fn max_sequence_len(&self) -> usize {
        self.max_position_embeddings - self.position_offset()
    }

    /// Weight-name prefix of the encoder in a task model (`roberta` or `bert`).
    pub fn default_prefix(&self) -> &'static str {
        match self.family {
            Family::Roberta => "roberta",
            Family::Bert => "bert",
        }
    }

    /// Dropout applied inside the classification head.
    pub fn head_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}
