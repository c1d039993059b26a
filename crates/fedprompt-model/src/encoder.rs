//! The frozen multilingual encoder (XLM-RoBERTa / RoBERTa / BERT, post-LN) that takes either
//! token ids or input embeddings, so that soft prompts can be placed before the text.

use candle_core::{DType, Module, Tensor};

use crate::config::{Activation, EncoderConfig};
use crate::error::Result;
use crate::nn::{ForwardCtx, FusedAct, LayerNorm, Linear, LoraDelta};
use crate::ops::attention::{attention, AttnDropout};
use crate::ops::last_layer::frozen_layer_first_row;
use crate::ops::layer::{frozen_layer, FrozenLayerParams, LayerDropout};
use crate::weights::{ParamSource, Table};

/// Token, position and token-type embeddings followed by layer norm.
#[derive(Clone, Debug)]
pub struct Embeddings {
    word: Table,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f64,
    position_offset: usize,
}

impl Embeddings {
    fn detached(&self) -> Self {
        Embeddings {
            word: self.word.detached(),
            position: self.position.detach(),
            token_type: self.token_type.detach(),
            norm: self.norm.detached(),
            ..self.clone()
        }
    }

    /// Loads `embeddings.*`.
    pub fn load(cfg: &EncoderConfig, src: &ParamSource) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word: src.get_table(&[cfg.vocab_size, h], "word_embeddings.weight")?,
            position: src.get(
                &[cfg.max_position_embeddings, h],
                "position_embeddings.weight",
            )?,
            token_type: src.get(&[cfg.type_vocab_size, h], "token_type_embeddings.weight")?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, &src.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
            position_offset: cfg.position_offset(),
        })
    }

    /// The word-embedding table `[vocab, hidden]`: left in the file in a frozen backbone (rows read on lookup), a
    /// trainable tensor in full fine-tuning.
    pub fn word_embeddings(&self) -> &Table {
        &self.word
    }

    /// Looks up word embeddings of `ids [B, L]` → `[B, L, H]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        self.word
            .lookup(&ids.flatten_all()?)?
            .reshape((b, l, self.word.cols()))
    }

    /// Adds positions (sequential from the family's offset) and token types, then normalises.
    ///
    /// Sequences are right-padded, so sequential positions equal Hugging Face's mask-based
    /// positions on every real token (padding is masked out of attention).
    pub fn forward(
        &self,
        inputs_embeds: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (b, l, h) = inputs_embeds.dims3()?;
        let pos = self.position.narrow(0, self.position_offset, l)?;
        let mut x = inputs_embeds.broadcast_add(&pos.unsqueeze(0)?)?;
        match token_type_ids {
            Some(tt) => {
                let flat = tt.flatten_all()?.to_dtype(DType::U32)?;
                let te = self.token_type.index_select(&flat, 0)?.reshape((b, l, h))?;
                x = (x + te)?;
            }
            None => {
                let row = self.token_type.narrow(0, 0, 1)?;
                x = x.broadcast_add(&row.unsqueeze(0)?)?;
            }
        }
        let x = self.norm.forward(&x)?;
        ctx.dropout(&x, self.dropout)
    }
}

/// Multi-head self-attention with its output projection and residual layer norm.
#[derive(Clone, Debug)]
pub struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    /// Query, key and value packed in one `[3H, H]` layer (frozen backbones only); the three
    /// layers above are views into it.
    qkv: Option<Linear>,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
    attn_dropout: f64,
    hidden_dropout: f64,
}

impl Attention {
    fn detached(&self) -> Self {
        Attention {
            query: self.query.detached(),
            key: self.key.detached(),
            value: self.value.detached(),
            qkv: self.qkv.as_ref().map(|l| l.detached()),
            output: self.output.detached(),
            norm: self.norm.detached(),
            ..self.clone()
        }
    }

    /// Loads `attention.*`.
    pub fn load(cfg: &EncoderConfig, src: &ParamSource) -> Result<Self> {
        let h = cfg.hidden_size;
        let s = src.pp("self");
        let mut query = Linear::load(h, h, &s.pp("query"))?;
        let mut key = Linear::load(h, h, &s.pp("key"))?;
        let mut value = Linear::load(h, h, &s.pp("value"))?;
        let mut qkv = None;
        if [&query, &key, &value].iter().all(|l| l.is_frozen()) {
            let w = Tensor::cat(&[query.weight(), key.weight(), value.weight()], 0)?;
            let b = match (query.bias(), key.bias(), value.bias()) {
                (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[q, k, v], 0)?),
                _ => None,
            };
            if b.is_some() || query.bias().is_none() {
                let part = |i: usize| -> candle_core::Result<Linear> {
                    Ok(Linear::new(
                        w.narrow(0, i * h, h)?,
                        b.as_ref().map(|b| b.narrow(0, i * h, h)).transpose()?,
                    ))
                };
                query = part(0)?;
                key = part(1)?;
                value = part(2)?;
                qkv = Some(Linear::new(w, b));
            }
        }
        Ok(Attention {
            query,
            key,
            value,
            qkv,
            output: Linear::load(h, h, &src.pp("output").pp("dense"))?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, &src.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            attn_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The packed projection `[B, L, 3H]`: one GEMM when the three layers are frozen and plain.
    fn project_qkv(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        match &self.qkv {
            Some(qkv)
                if !self.query.has_lora() && !self.key.has_lora() && !self.value.has_lora() =>
            {
                qkv.forward_ctx(x, ctx)
            }
            _ => {
                let q = self.query.forward_ctx(x, ctx)?;
                let k = self.key.forward_ctx(x, ctx)?;
                let v = self.value.forward_ctx(x, ctx)?;
                Tensor::cat(&[&q, &k, &v], 2)
            }
        }
    }

    /// `x [B, L, H]`, `mask_bias [B, 1, 1, L]` (0 or a large negative number).
    pub fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let qkv = self.project_qkv(x, ctx)?;
        let mask: Vec<f32> = mask_bias
            .to_dtype(DType::F32)?
            .broadcast_as((b, 1, 1, l))?
            .flatten_all()?
            .to_vec1()?;
        let drop = (ctx.is_train() && self.attn_dropout > 0.0).then(|| AttnDropout {
            p: self.attn_dropout as f32,
            seed: ctx.next_seed(),
        });
        let ctx_out = attention(&qkv, &mask, self.heads, drop)?;
        let out = self.output.forward_ctx(&ctx_out, ctx)?;
        let out = ctx.dropout(&out, self.hidden_dropout)?;
        self.norm.forward(&(out + x)?)
    }
}

/// One transformer layer: attention, then the feed-forward block with residual layer norm.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    attention: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
    hidden_dropout: f64,
}

impl EncoderLayer {
    fn detached(&self) -> Self {
        EncoderLayer {
            attention: self.attention.detached(),
            intermediate: self.intermediate.detached(),
            output: self.output.detached(),
            norm: self.norm.detached(),
            ..self.clone()
        }
    }

    /// Loads `encoder.layer.{i}.*`.
    pub fn load(cfg: &EncoderConfig, src: &ParamSource) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        Ok(EncoderLayer {
            attention: Attention::load(cfg, &src.pp("attention"))?,
            intermediate: Linear::load(i, h, &src.pp("intermediate").pp("dense"))?,
            output: Linear::load(h, i, &src.pp("output").pp("dense"))?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, &src.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The parameters of the one-op frozen layer ([`frozen_layer`]), when it applies: every
    /// projection and norm frozen, no LoRA, Q/K/V packed with biases, erf GELU, dropout below 1.
    fn fused_params(&self, x: &Tensor) -> Option<FrozenLayerParams> {
        let at = &self.attention;
        let qkv = at.qkv.as_ref()?;
        let linears = [
            &at.query,
            &at.key,
            &at.value,
            &at.output,
            &self.intermediate,
            &self.output,
        ];
        let plain = linears
            .iter()
            .all(|l| l.is_frozen() && !l.has_lora() && l.bias().is_some())
            && qkv.is_frozen()
            && at.norm.is_frozen()
            && self.norm.is_frozen();
        let drop_ok = [at.attn_dropout, at.hidden_dropout, self.hidden_dropout]
            .iter()
            .all(|&p| p < 1.0);
        if !(plain && drop_ok && self.act == Activation::Gelu && crate::nn::is_fusable(x)) {
            return None;
        }
        Some(FrozenLayerParams {
            qkv_w: qkv.weight().clone(),
            qkv_b: qkv.bias()?.clone(),
            out_w: at.output.weight().clone(),
            out_b: at.output.bias()?.clone(),
            ln1_g: at.norm.weight().clone(),
            ln1_b: at.norm.bias().clone(),
            ln1_eps: at.norm.eps(),
            inter_w: self.intermediate.weight().clone(),
            inter_b: self.intermediate.bias()?.clone(),
            output_w: self.output.weight().clone(),
            output_b: self.output.bias()?.clone(),
            ln2_g: self.norm.weight().clone(),
            ln2_b: self.norm.bias().clone(),
            ln2_eps: self.norm.eps(),
            heads: at.heads,
            packs: match (
                qkv.packs(),
                at.output.packs(),
                self.intermediate.packs(),
                self.output.packs(),
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => {
                    Some([a.clone(), b.clone(), c.clone(), d.clone()])
                }
                _ => None,
            },
        })
    }

    /// Applies the layer: as one fused op when the layer is frozen and plain (see
    /// [`frozen_layer`]), else composed of separate differentiable ops.
    pub fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        if let Some(params) = self.fused_params(x) {
            let (mask, drop) = self.fused_inputs(x, mask_bias, ctx)?;
            return frozen_layer(x, &params, mask, drop);
        }
        self.forward_composed(x, mask_bias, ctx)
    }

    /// The layer's output at the first position only, `[B, 1, H]` (what a classification head
    /// reads): when the layer is frozen and plain, computed for that position alone (keys and
    /// values from every position, see [`frozen_layer_first_row`]); else the full layer, cut.
    /// The same values, gradients and dropout seeds as `forward(..).narrow(1, 0, 1)`.
    pub fn forward_first(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        if let Some(params) = self.fused_params(x) {
            let (mask, drop) = self.fused_inputs(x, mask_bias, ctx)?;
            return frozen_layer_first_row(x, &params, mask, drop);
        }
        self.forward(x, mask_bias, ctx)?.narrow(1, 0, 1)
    }

    /// The key mask as a flat `[B·L]` vector and the dropout of the fused layer, its seeds
    /// drawn in the order the composed layer draws them.
    fn fused_inputs(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Vec<f32>, LayerDropout)> {
        let (b, l, _) = x.dims3()?;
        let mask: Vec<f32> = mask_bias
            .to_dtype(DType::F32)?
            .broadcast_as((b, 1, 1, l))?
            .flatten_all()?
            .to_vec1()?;
        let train = ctx.is_train();
        let attn = (train && self.attention.attn_dropout > 0.0).then(|| AttnDropout {
            p: self.attention.attn_dropout as f32,
            seed: ctx.next_seed(),
        });
        let hidden1 = (train && self.attention.hidden_dropout > 0.0)
            .then(|| (self.attention.hidden_dropout as f32, ctx.next_seed()));
        let hidden2 = (train && self.hidden_dropout > 0.0)
            .then(|| (self.hidden_dropout as f32, ctx.next_seed()));
        let drop = LayerDropout {
            attn,
            hidden1,
            hidden2,
        };
        Ok((mask, drop))
    }

    /// The layer composed of separate differentiable ops (LoRA, full fine-tuning, and the
    /// reference the fused layer is tested against).
    pub fn forward_composed(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, ctx)?;
        let inter = match self.act {
            Activation::Gelu => self.intermediate.forward_act(&a, FusedAct::GeluErf, ctx)?,
            Activation::GeluTanh => self.intermediate.forward_ctx(&a, ctx)?.gelu()?,
            Activation::Relu => self.intermediate.forward_ctx(&a, ctx)?.relu()?,
        };
        let out = self.output.forward_ctx(&inter, ctx)?;
        let out = ctx.dropout(&out, self.hidden_dropout)?;
        self.norm.forward(&(out + a)?)
    }
}

/// Which projection inside a layer a LoRA delta attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `attention.self.query`
    Query,
    /// `attention.self.key`
    Key,
    /// `attention.self.value`
    Value,
    /// `attention.output.dense`
    AttentionOutput,
    /// `intermediate.dense`
    Intermediate,
    /// `output.dense`
    Output,
}

impl LoraTarget {
    /// Parses a PEFT target-module name (`query`, `value`, `key`, `dense`...).
    pub fn parse(name: &str) -> Option<Vec<LoraTarget>> {
        Some(match name {
            "query" => vec![LoraTarget::Query],
            "key" => vec![LoraTarget::Key],
            "value" => vec![LoraTarget::Value],
            "attention.output.dense" => vec![LoraTarget::AttentionOutput],
            "intermediate.dense" => vec![LoraTarget::Intermediate],
            "output.dense" => vec![LoraTarget::Output],
            "dense" => vec![
                LoraTarget::AttentionOutput,
                LoraTarget::Intermediate,
                LoraTarget::Output,
            ],
            _ => return None,
        })
    }

    /// The module path inside `encoder.layer.{i}`.
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::Query => "attention.self.query",
            LoraTarget::Key => "attention.self.key",
            LoraTarget::Value => "attention.self.value",
            LoraTarget::AttentionOutput => "attention.output.dense",
            LoraTarget::Intermediate => "intermediate.dense",
            LoraTarget::Output => "output.dense",
        }
    }

    fn linear_mut(self, layer: &mut EncoderLayer) -> &mut Linear {
        match self {
            LoraTarget::Query => &mut layer.attention.query,
            LoraTarget::Key => &mut layer.attention.key,
            LoraTarget::Value => &mut layer.attention.value,
            LoraTarget::AttentionOutput => &mut layer.attention.output,
            LoraTarget::Intermediate => &mut layer.intermediate,
            LoraTarget::Output => &mut layer.output,
        }
    }

    /// `(out, in)` of the target projection.
    pub fn dims(self, cfg: &EncoderConfig) -> (usize, usize) {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        match self {
            LoraTarget::Intermediate => (i, h),
            LoraTarget::Output => (h, i),
            _ => (h, h),
        }
    }
}

/// The encoder: embeddings and the stack of layers. Cheap to clone (tensors are shared), so
/// one frozen copy serves every client; LoRA makes a clone with deltas attached.
#[derive(Clone, Debug)]
pub struct Encoder {
    cfg: EncoderConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// A copy cut from the autograd graph: inference records nothing and keeps no activations.
    pub fn detached(&self) -> Self {
        Encoder {
            cfg: self.cfg.clone(),
            embeddings: self.embeddings.detached(),
            layers: self.layers.iter().map(|l| l.detached()).collect(),
        }
    }

    /// Loads `embeddings.*` and `encoder.layer.*` from `src` (already prefixed, e.g. `roberta`).
    pub fn load(cfg: &EncoderConfig, src: &ParamSource) -> Result<Self> {
        let embeddings = Embeddings::load(cfg, &src.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(cfg, &src.pp("encoder.layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            cfg: cfg.clone(),
            embeddings,
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The layers.
    pub fn layers(&self) -> &[EncoderLayer] {
        &self.layers
    }

    /// The embeddings block.
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// Word embeddings of `ids [B, L]`.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embeddings.embed_tokens(ids)
    }

    /// A clone with LoRA deltas attached: `deltas[(layer, target)]`.
    pub fn with_lora(&self, deltas: &[(usize, LoraTarget, LoraDelta)]) -> Self {
        let mut enc = self.clone();
        for (layer, target, delta) in deltas {
            let lin = target.linear_mut(&mut enc.layers[*layer]);
            *lin = lin.with_lora(delta.clone());
        }
        enc
    }

    /// The embedding block's output and the additive key mask `[B, 1, 1, L]` (0 for tokens,
    /// a large negative number for padding) the layers take.
    fn embed_inputs(
        &self,
        inputs_embeds: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, l, _) = inputs_embeds.dims3()?;
        if l > self.cfg.max_sequence_len() {
            candle_core::bail!(
                "sequence of {l} tokens exceeds the model's {} positions",
                self.cfg.max_sequence_len()
            );
        }
        let mask = attention_mask.to_dtype(DType::F32)?;
        // (1 - mask) * -1e9 : padded keys get no weight.
        let bias = ((mask.affine(-1.0, 1.0))? * -1e9)?.reshape((b, 1, 1, l))?;
        let x = self
            .embeddings
            .forward(inputs_embeds, token_type_ids, ctx)?;
        Ok((x, bias))
    }

    /// Runs the encoder from input embeddings `[B, L, H]` with `attention_mask [B, L]`
    /// (1 = attend, 0 = padding); returns the last hidden states `[B, L, H]`.
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (mut x, bias) =
            self.embed_inputs(inputs_embeds, attention_mask, token_type_ids, ctx)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, ctx)?;
        }
        Ok(x)
    }

    /// As [`Encoder::forward_embeds`], but returns only the first position's last hidden
    /// state `[B, 1, H]` (what the classification heads read), computing the last layer for
    /// that position alone where it can ([`EncoderLayer::forward_first`]).
    pub fn forward_embeds_first(
        &self,
        inputs_embeds: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let Some((last, rest)) = self.layers.split_last() else {
            return self
                .forward_embeds(inputs_embeds, attention_mask, token_type_ids, ctx)?
                .narrow(1, 0, 1);
        };
        let (mut x, bias) =
            self.embed_inputs(inputs_embeds, attention_mask, token_type_ids, ctx)?;
        for layer in rest {
            x = layer.forward(&x, &bias, ctx)?;
        }
        last.forward_first(&x, &bias, ctx)
    }

    /// Runs the encoder from token ids.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let e = self.embed(input_ids)?;
        self.forward_embeds(&e, attention_mask, token_type_ids, ctx)
    }
}
