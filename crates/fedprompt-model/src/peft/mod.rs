//! The parameter-efficient methods, chosen by a tagged configuration
//! (`type = "prompt" | "prompt-encoder" | "lora" | "head" | "full"`).

pub mod init;
pub mod lora;
pub mod prompt;
pub mod prompt_encoder;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The paper's prompt initialisation text (news classification).
pub const PAPER_INIT_TEXT: &str = "Predict the category given the following news article";

fn one() -> usize {
    1
}
fn default_encoder_hidden() -> usize {
    128
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_lora_dropout() -> f64 {
    0.1
}
fn default_targets() -> Vec<String> {
    vec!["query".into(), "value".into()]
}

/// Which part of the model is trained. The classification head is trainable in every method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Soft prompt tuning (Lester et al.): virtual tokens before the token embeddings.
    Prompt {
        /// Number of virtual tokens (the paper: 1).
        #[serde(default = "one")]
        num_virtual_tokens: usize,
        /// Initialise from the embeddings of this text's tokens; random (N(0,1), as PEFT) if absent.
        #[serde(default)]
        init_text: Option<String>,
    },
    /// P-tuning (Liu et al.): virtual tokens produced by an MLP prompt encoder, as PEFT's
    /// `PROMPT_ENCODER` with MLP reparameterisation.
    PromptEncoder {
        /// Number of virtual tokens (default 1, at least 1).
        #[serde(default = "one")]
        num_virtual_tokens: usize,
        /// Hidden width of the MLP.
        #[serde(default = "default_encoder_hidden")]
        encoder_hidden_size: usize,
    },
    /// LoRA (Hu et al.) on the chosen projections.
    Lora {
        /// Rank of the low-rank update `B·A` (default 8, at least 1).
        #[serde(default = "default_r")]
        r: usize,
        /// Scaling numerator: the update is multiplied by `alpha / r` (default 16, finite).
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Dropout probability on the input of the LoRA branch, in `[0, 1)` (default 0.1).
        #[serde(default = "default_lora_dropout")]
        dropout: f64,
        /// PEFT target-module names: `query`, `key`, `value`, `dense`...
        #[serde(default = "default_targets")]
        target_modules: Vec<String>,
    },
    /// Only the classification head.
    Head,
    /// Every weight (full fine-tuning).
    Full,
}

impl MethodConfig {
    /// The paper's prompt tuning: 1 virtual token initialised from its news-classification text.
    pub fn paper_prompt() -> Self {
        MethodConfig::Prompt {
            num_virtual_tokens: 1,
            init_text: Some(PAPER_INIT_TEXT.into()),
        }
    }

    /// The paper's LoRA: r = 8, alpha 16, dropout 0.1, on query and value.
    pub fn paper_lora() -> Self {
        MethodConfig::Lora {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            target_modules: default_targets(),
        }
    }

    /// Short name (`prompt`, `lora`...).
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Prompt { .. } => "prompt",
            MethodConfig::PromptEncoder { .. } => "prompt-encoder",
            MethodConfig::Lora { .. } => "lora",
            MethodConfig::Head => "head",
            MethodConfig::Full => "full",
        }
    }

    /// Number of virtual tokens the method prepends.
    pub fn virtual_tokens(&self) -> usize {
        match self {
            MethodConfig::Prompt {
                num_virtual_tokens, ..
            }
            | MethodConfig::PromptEncoder {
                num_virtual_tokens, ..
            } => *num_virtual_tokens,
            _ => 0,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        match self {
            MethodConfig::Prompt {
                num_virtual_tokens, ..
            } if *num_virtual_tokens == 0 => Err(ModelError::Method(
                "prompt: num_virtual_tokens must be at least 1".into(),
            )),
            MethodConfig::PromptEncoder {
                num_virtual_tokens,
                encoder_hidden_size,
            } if *num_virtual_tokens == 0 || *encoder_hidden_size == 0 => Err(ModelError::Method(
                "prompt-encoder: num_virtual_tokens and encoder_hidden_size must be at least 1"
                    .into(),
            )),
            MethodConfig::Lora {
                r,
                dropout,
                target_modules,
                alpha,
            } => {
                if *r == 0 {
                    return Err(ModelError::Method("lora: r must be at least 1".into()));
                }
                if !(0.0..1.0).contains(dropout) {
                    return Err(ModelError::Method("lora: dropout must be in [0, 1)".into()));
                }
                if !alpha.is_finite() {
                    return Err(ModelError::Method("lora: alpha must be finite".into()));
                }
                if target_modules.is_empty() {
                    return Err(ModelError::Method(
                        "lora: target_modules must name at least one module".into(),
                    ));
                }
                for t in target_modules {
                    if crate::encoder::LoraTarget::parse(t).is_none() {
                        return Err(ModelError::Method(format!(
                            "lora: unknown target module `{t}` (query, key, value, dense, attention.output.dense, intermediate.dense, output.dense)"
                        )));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
