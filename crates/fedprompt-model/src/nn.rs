//! Differentiable building blocks: linear layers that can carry LoRA, layer norm, softmax and
//! seeded dropout.
//!
//! candle's fast `softmax_last_dim` and `LayerNorm` paths have no backward pass, so gradients
//! would stop there silently; the compositions here are differentiable end to end.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ops;
pub use crate::ops::linear::FusedAct;
use crate::ops::packs::WeightPacks;

/// Whether the fused CPU kernels apply to this tensor (f32 on the CPU).
fn fusable(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu)
}

/// Whether the fused CPU kernels apply to this tensor (f32 on the CPU).
pub(crate) fn is_fusable(t: &Tensor) -> bool {
    fusable(t)
}

/// Whether a frozen weight suits the fused kernels (f32 or bf16 on the CPU).
fn fusable_weight(t: &Tensor) -> bool {
    matches!(t.dtype(), DType::F32 | DType::BF16) && matches!(t.device(), Device::Cpu)
}

/// Per-forward context: training mode (dropout), whether gradients are recorded, and the
/// seeded random source for dropout.
pub struct ForwardCtx {
    train: bool,
    grad: bool,
    rng: Mutex<ChaCha8Rng>,
}

impl ForwardCtx {
    /// Inference: no dropout, nothing recorded for autograd.
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            grad: false,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
        }
    }

    /// No dropout, but gradients recorded (PyTorch's `model.eval()` followed by `backward()`;
    /// used by the parity tests).
    pub fn eval_with_grad() -> Self {
        ForwardCtx {
            grad: true,
            ..Self::eval()
        }
    }

    /// Training with dropout masks drawn from a generator seeded with `seed`.
    pub fn train(seed: u64) -> Self {
        ForwardCtx {
            train: true,
            grad: true,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Whether gradients are recorded.
    pub fn records_grad(&self) -> bool {
        self.grad
    }

    /// Whether dropout is active.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// A fresh seed from the context's generator, for ops that draw their own dropout masks.
    pub fn next_seed(&self) -> u64 {
        self.rng
            .lock()
            .expect("dropout rng poisoned")
            .random::<u64>()
    }

    /// Inverted dropout with probability `p` (identity in eval mode or for `p == 0`).
    ///
    /// The mask comes from a ChaCha8 generator seeded by the context's own generator, so it is
    /// deterministic for a given seed and order of calls.
    pub fn dropout(&self, xs: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(xs.clone());
        }
        if fusable(xs) && p < 1.0 {
            return ops::dropout::dropout(xs, p as f32, self.next_seed());
        }
        let n = xs.elem_count();
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mut rng = self.rng.lock().expect("dropout rng poisoned");
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        drop(rng);
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?;
        xs.mul(&mask)
    }
}

/// A LoRA update `x · Aᵀ · Bᵀ · (alpha / r)` attached to a linear layer.
#[derive(Clone, Debug)]
pub struct LoraDelta {
    /// `lora_A.weight`, shape `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight`, shape `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the LoRA input.
    pub dropout: f64,
}

/// A linear layer `y = x Wᵀ + b`, frozen or trainable, with an optional LoRA delta.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraDelta>,
    /// The kept fast-layout copies of a constant weight, made on first use (see
    /// [`WeightPacks`]); `None` for a detached copy of a trainable weight, which changes
    /// between calls.
    packs: Option<Arc<WeightPacks>>,
}

impl Linear {
    /// A copy whose tensors are cut from the autograd graph (for inference: nothing recorded,
    /// activations freed as soon as they are used).
    pub fn detached(&self) -> Self {
        Linear {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(|b| b.detach()),
            lora: self.lora.as_ref().map(|l| LoraDelta {
                a: l.a.detach(),
                b: l.b.detach(),
                scale: l.scale,
                dropout: l.dropout,
            }),
            // A trainable weight changes between calls: its detached copy keeps no copies.
            packs: if self.weight.track_op() {
                None
            } else {
                self.packs.clone()
            },
        }
    }

    /// A linear layer from its weight `[out, in]` and bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            lora: None,
            packs: Some(Arc::default()),
        }
    }

    /// Loads `weight` and `bias` from a parameter source.
    pub fn load(
        out_dim: usize,
        in_dim: usize,
        src: &crate::weights::ParamSource,
    ) -> crate::Result<Self> {
        let weight = src.get_matrix(&[out_dim, in_dim], "weight")?;
        let bias = src.get(&[out_dim], "bias")?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The kept fast-layout copies of the weight, shared by every copy of this layer with the
    /// same constant weight (`None` on a detached copy of a trainable weight).
    pub fn packs(&self) -> Option<&Arc<WeightPacks>> {
        self.packs.as_ref()
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// A copy of this layer (sharing the frozen weight) with a LoRA delta attached.
    pub fn with_lora(&self, lora: LoraDelta) -> Self {
        Linear {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            lora: Some(lora),
            packs: self.packs.clone(),
        }
    }

    /// Whether a LoRA delta is attached.
    pub fn has_lora(&self) -> bool {
        self.lora.is_some()
    }

    /// Whether the weight and bias are constants (no gradient flows to them), so that the
    /// fused input-gradient-only kernel applies.
    pub fn is_frozen(&self) -> bool {
        !self.weight.track_op() && self.bias.as_ref().is_none_or(|b| !b.track_op())
    }

    /// Applies the layer to `[..., in]`.
    pub fn forward_ctx(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_act(xs, FusedAct::Identity, ctx)
    }

    /// `act(layer(x))`, with the activation fused into the kernel of a frozen layer.
    pub fn forward_act(&self, xs: &Tensor, act: FusedAct, ctx: &ForwardCtx) -> Result<Tensor> {
        if self.lora.is_none() && self.is_frozen() && fusable(xs) && fusable_weight(&self.weight) {
            // One op on `[..., in]` as it is: no reshape nodes in the graph.
            return ops::linear::frozen_linear_packed(
                xs,
                &self.weight,
                self.packs.as_ref(),
                self.bias.as_ref(),
                act,
            );
        }
        let dims = xs.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim;
        let x2 = xs.reshape((rows, in_dim))?;
        let fused = self.is_frozen() && fusable(&x2) && fusable_weight(&self.weight);
        let mut y = if fused {
            // A LoRA delta is added before the activation.
            ops::linear::frozen_linear_packed(
                &x2,
                &self.weight,
                self.packs.as_ref(),
                self.bias.as_ref(),
                FusedAct::Identity,
            )?
        } else {
            let mut y = x2.matmul(&self.weight.t()?)?;
            if let Some(b) = &self.bias {
                y = y.broadcast_add(b)?;
            }
            y
        };
        if let Some(l) = &self.lora {
            let xd = ctx.dropout(&x2, l.dropout)?;
            let delta = xd.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
            y = (y + (delta * l.scale)?)?;
        }
        y = match act {
            FusedAct::Identity => y,
            FusedAct::GeluErf => y.gelu_erf()?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty dims") = self.out_dim();
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_ctx(xs, &ForwardCtx::eval())
    }
}

/// Layer normalisation over the last dimension, differentiable in all its inputs.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A copy cut from the autograd graph.
    pub fn detached(&self) -> Self {
        LayerNorm {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            eps: self.eps,
        }
    }

    /// From gamma, beta and epsilon.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm { weight, bias, eps }
    }

    /// Gamma.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Beta.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Epsilon.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether gamma and beta are constants (no gradient flows to them).
    pub fn is_frozen(&self) -> bool {
        !self.weight.track_op() && !self.bias.track_op()
    }

    /// Loads `weight` and `bias` of width `dim`.
    pub fn load(dim: usize, eps: f64, src: &crate::weights::ParamSource) -> crate::Result<Self> {
        Ok(LayerNorm::new(
            src.get(&[dim], "weight")?,
            src.get(&[dim], "bias")?,
            eps,
        ))
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if fusable(xs) && fusable(&self.weight) && fusable(&self.bias) {
            return ops::norm::layer_norm(xs, &self.weight, &self.bias, self.eps);
        }
        let mean = xs.mean_keepdim(D::Minus1)?;
        let xc = xs.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension, differentiable (the max is a detached constant).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fusable(xs) {
        return ops::softmax::softmax_last_dim(xs);
    }
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Mean cross-entropy of `logits [B, C]` against integer `labels [B]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = logp.gather(&labels, 1)?;
    picked.neg()?.mean_all()
}
