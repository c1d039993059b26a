//! Classification heads: RoBERTa's (dense, tanh, out_proj on the first token) and BERT's
//! (frozen pooler, then a linear classifier).

use candle_core::{Module, Tensor};

use crate::nn::{ForwardCtx, Linear};

/// A classification head; its linear layers are trainable in every method.
#[derive(Clone, Debug)]
pub enum Head {
    /// `classifier.dense` → tanh → `classifier.out_proj`, on the first token's hidden state.
    Roberta {
        /// `classifier.dense`, `[H, H]`.
        dense: Linear,
        /// `classifier.out_proj`, `[labels, H]`.
        out_proj: Linear,
        /// Dropout probability before `dense` and before `out_proj` (training only).
        dropout: f64,
    },
    /// BERT: the (frozen) pooler `tanh(pooler.dense(h₀))`, then `classifier`.
    Bert {
        /// `pooler.dense`, `[H, H]`; frozen except under full fine-tuning.
        pooler: Linear,
        /// `classifier`, `[labels, H]`.
        classifier: Linear,
        /// Dropout probability on the pooled output (training only).
        dropout: f64,
    },
}

impl Head {
    /// A copy cut from the autograd graph.
    pub fn detached(&self) -> Self {
        match self {
            Head::Roberta {
                dense,
                out_proj,
                dropout,
            } => Head::Roberta {
                dense: dense.detached(),
                out_proj: out_proj.detached(),
                dropout: *dropout,
            },
            Head::Bert {
                pooler,
                classifier,
                dropout,
            } => Head::Bert {
                pooler: pooler.detached(),
                classifier: classifier.detached(),
                dropout: *dropout,
            },
        }
    }

    /// Logits `[B, labels]` from the last hidden states `[B, L, H]`.
    pub fn forward(&self, hidden: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        match self {
            Head::Roberta {
                dense,
                out_proj,
                dropout,
            } => {
                let x = ctx.dropout(&first, *dropout)?;
                let x = dense.forward_ctx(&x, ctx)?.tanh()?;
                let x = ctx.dropout(&x, *dropout)?;
                out_proj.forward_ctx(&x, ctx)
            }
            Head::Bert {
                pooler,
                classifier,
                dropout,
            } => {
                let pooled = pooler.forward(&first)?.tanh()?;
                let x = ctx.dropout(&pooled, *dropout)?;
                classifier.forward_ctx(&x, ctx)
            }
        }
    }
}
