//! A sequence classifier: the shared frozen encoder, a PEFT method and a classification head,
//! with the trainable set that the method owns.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::backbone::{Backbone, HeadKind};
use crate::encoder::{Encoder, LoraTarget};
use crate::error::{ModelError, Result};
use crate::head::Head;
use crate::nn::{ForwardCtx, Linear};
use crate::peft::init::Init;
use crate::peft::prompt_encoder::PromptEncoder;
use crate::peft::{lora, prompt, MethodConfig};
use crate::tokenize::Batch;
use crate::trainable::TrainableSet;
use crate::weights::ParamSource;

pub use crate::ops::MIN_PART_ROWS;

/// How many parts an inference batch is cut into: one per compute thread when every part
/// still has at least [`MIN_PART_ROWS`] rows (sequences × positions, virtual tokens included),
/// else 1 (also with `FEDPROMPT_NO_BATCH_SPLIT=1`). Each part then runs the whole model with
/// its products on one thread. Why: products of a few hundred rows per thread fit the core's
/// L2, and two single-threaded products side by side ran faster than one product split over
/// two threads (docs/performance.md). Rows are computed independently and each part keeps the
/// batch's padded length, so the logits do not change.
pub fn eval_parts(batch: &Batch, virtual_tokens: usize) -> usize {
    eval_ranges(batch, virtual_tokens).len()
}

/// The parts of [`eval_parts`]: `(first sequence, sequences)` each.
fn eval_ranges(batch: &Batch, virtual_tokens: usize) -> Vec<(usize, usize)> {
    let len = batch.input_ids.dims().get(1).copied().unwrap_or(0) + virtual_tokens;
    crate::ops::batch_parts(batch.len(), len)
}

#[derive(Clone, Debug)]
enum PromptSource {
    None,
    Soft(Tensor),
    Encoder(PromptEncoder),
}

/// A classifier built on a [`Backbone`] with one PEFT method.
#[derive(Clone)]
pub struct Classifier {
    method: MethodConfig,
    encoder: Encoder,
    head: Head,
    prompt: PromptSource,
    trainable: TrainableSet,
    labels: Vec<String>,
    encoder_params: usize,
}

fn trainable_linear(
    set: &mut TrainableSet,
    name: &str,
    weight: Tensor,
    bias: Tensor,
) -> Result<Linear> {
    let w = Var::from_tensor(&weight.contiguous()?)?;
    let b = Var::from_tensor(&bias.contiguous()?)?;
    let lin = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    set.insert(&format!("{name}.weight"), w);
    set.insert(&format!("{name}.bias"), b);
    Ok(lin)
}

impl Classifier {
    /// Builds a classifier with `labels` classes. The head starts from the folder's own head
    /// when it has one of the right size, otherwise from a seeded N(0, initializer_range) init.
    pub fn new(
        backbone: &Backbone,
        method: &MethodConfig,
        labels: &[String],
        seed: u64,
    ) -> Result<Self> {
        method.validate()?;
        if labels.len() < 2 {
            return Err(ModelError::Input(format!(
                "a classifier needs at least 2 labels, got {}",
                labels.len()
            )));
        }
        let cfg = backbone.config();
        let h = cfg.hidden_size;
        let n = labels.len();
        let mut init = Init::new(seed);
        let mut set = TrainableSet::new();
        let w = backbone.weights();

        // The encoder: frozen and shared, or trainable for full fine-tuning.
        let (encoder, full_pooler) = if matches!(method, MethodConfig::Full) {
            let vars = std::cell::RefCell::new(BTreeMap::new());
            let src = ParamSource::trainable(w, &vars);
            let src = if backbone.prefix().is_empty() {
                src
            } else {
                src.pp(backbone.prefix())
            };
            let enc = Encoder::load(cfg, &src)?;
            let pooler = if backbone.head_kind() == HeadKind::BertPooler {
                Some(Linear::load(h, h, &src.pp("pooler.dense"))?)
            } else {
                None
            };
            set.extend(vars.into_inner());
            (enc, pooler)
        } else {
            (backbone.encoder().clone(), None)
        };

        // The head.
        let dropout = cfg.head_dropout();
        let head = match backbone.head_kind() {
            HeadKind::Roberta => {
                let (dw, db) = if w.contains("classifier.dense.weight") {
                    (
                        w.get("classifier.dense.weight", &[h, h])?,
                        w.get("classifier.dense.bias", &[h])?,
                    )
                } else {
                    (
                        init.normal(&[h, h], 0.0, cfg.initializer_range)?,
                        Tensor::zeros(h, DType::F32, &Device::Cpu)?,
                    )
                };
                let (ow, ob) = match w.shapes().get("classifier.out_proj.weight") {
                    Some(s) if s.as_slice() == [n, h] => (
                        w.get("classifier.out_proj.weight", &[n, h])?,
                        w.get("classifier.out_proj.bias", &[n])?,
                    ),
                    _ => (
                        init.normal(&[n, h], 0.0, cfg.initializer_range)?,
                        Tensor::zeros(n, DType::F32, &Device::Cpu)?,
                    ),
                };
                Head::Roberta {
                    dense: trainable_linear(&mut set, "classifier.dense", dw, db)?,
                    out_proj: trainable_linear(&mut set, "classifier.out_proj", ow, ob)?,
                    dropout,
                }
            }
            HeadKind::BertPooler => {
                let pooler = match full_pooler {
                    Some(p) => p,
                    None => {
                        let src = ParamSource::frozen(w);
                        let src = if backbone.prefix().is_empty() {
                            src
                        } else {
                            src.pp(backbone.prefix())
                        };
                        Linear::load(h, h, &src.pp("pooler.dense"))?
                    }
                };
                let (cw, cb) = match w.shapes().get("classifier.weight") {
                    Some(s) if s.as_slice() == [n, h] => (
                        w.get("classifier.weight", &[n, h])?,
                        w.get("classifier.bias", &[n])?,
                    ),
                    _ => (
                        init.normal(&[n, h], 0.0, cfg.initializer_range)?,
                        Tensor::zeros(n, DType::F32, &Device::Cpu)?,
                    ),
                };
                Head::Bert {
                    pooler,
                    classifier: trainable_linear(&mut set, "classifier", cw, cb)?,
                    dropout,
                }
            }
        };

        // The method's own parameters.
        let (encoder, prompt) = match method {
            MethodConfig::Prompt {
                num_virtual_tokens,
                init_text,
            } => {
                let ids = match init_text {
                    Some(t) => Some(backbone.text_encoder().encode_text(t)?),
                    None => None,
                };
                let p = prompt::create(
                    &encoder,
                    *num_virtual_tokens,
                    ids.as_deref(),
                    &mut init,
                    &mut set,
                )?;
                (encoder, PromptSource::Soft(p))
            }
            MethodConfig::PromptEncoder {
                num_virtual_tokens,
                encoder_hidden_size,
            } => {
                let pe = PromptEncoder::create(
                    *num_virtual_tokens,
                    h,
                    *encoder_hidden_size,
                    &mut init,
                    &mut set,
                )?;
                (encoder, PromptSource::Encoder(pe))
            }
            MethodConfig::Lora {
                r,
                alpha,
                dropout,
                target_modules,
            } => {
                let mut targets: Vec<LoraTarget> = Vec::new();
                for t in target_modules {
                    for x in LoraTarget::parse(t).unwrap_or_default() {
                        if !targets.contains(&x) {
                            targets.push(x);
                        }
                    }
                }
                let enc = lora::attach(
                    &encoder,
                    backbone.prefix(),
                    *r,
                    *alpha,
                    *dropout,
                    &targets,
                    &mut init,
                    &mut set,
                )?;
                (enc, PromptSource::None)
            }
            MethodConfig::Head | MethodConfig::Full => (encoder, PromptSource::None),
        };

        Ok(Classifier {
            method: method.clone(),
            encoder,
            head,
            prompt,
            trainable: set,
            labels: labels.to_vec(),
            encoder_params: backbone.encoder_params(),
        })
    }

    /// The method.
    pub fn method(&self) -> &MethodConfig {
        &self.method
    }

    /// Label names, in logit order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The trainable set.
    pub fn trainable(&self) -> &TrainableSet {
        &self.trainable
    }

    /// The encoder this classifier runs (with LoRA deltas when the method is LoRA).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// All parameters of the model as the method runs it: the frozen encoder (and pooler)
    /// plus the trainable set, each tensor counted once. (For full fine-tuning the trainable set
    /// is the whole model.)
    pub fn total_params(&self) -> usize {
        match self.method {
            MethodConfig::Full => self.trainable.num_params(),
            _ => self.encoder_params + self.trainable.num_params(),
        }
    }

    /// The virtual-token embeddings `[n, H]` of a prompt method.
    pub fn prompt_embeddings(&self) -> candle_core::Result<Option<Tensor>> {
        match &self.prompt {
            PromptSource::None => Ok(None),
            PromptSource::Soft(t) => Ok(Some(t.clone())),
            PromptSource::Encoder(pe) => Ok(Some(pe.forward()?)),
        }
    }

    /// Logits `[B, labels]` for a batch. In eval mode nothing is recorded for autograd, so
    /// activations are freed as the forward pass goes (inference memory stays flat), and a
    /// large enough batch is cut into one part per compute thread, each part's products run
    /// on one thread ([`eval_parts`]); the logits are the same bit for bit.
    pub fn forward(&self, batch: &Batch, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let prompt = self.prompt_embeddings()?;
        if ctx.records_grad() {
            return self.forward_with(&self.encoder, &self.head, prompt, batch, ctx);
        }
        let enc = self.encoder.detached();
        let head = self.head.detached();
        let prompt = prompt.map(|p| p.detach());
        let virtual_tokens = match &prompt {
            Some(p) => p.dim(0)?,
            None => 0,
        };
        let parts = eval_ranges(batch, virtual_tokens);
        if parts.len() <= 1 {
            return self.forward_with(&enc, &head, prompt, batch, ctx);
        }
        let logits = crate::ops::each_on_one_thread(parts, |(first, n)| {
            let part = batch.narrow(first, n)?;
            self.forward_with(&enc, &head, prompt.clone(), &part, ctx)
        })
        .into_iter()
        .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&logits, 0)
    }

    fn forward_with(
        &self,
        encoder: &Encoder,
        head: &Head,
        prompt: Option<Tensor>,
        batch: &Batch,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let mut embeds = encoder.embed(&batch.input_ids)?;
        let mut mask = batch.attention_mask.clone();
        let mut types = batch.token_type_ids.clone();
        if let Some(p) = prompt {
            let (b, _, h) = embeds.dims3()?;
            let n = p.dim(0)?;
            let p = p.unsqueeze(0)?.broadcast_as((b, n, h))?;
            embeds = Tensor::cat(&[&p, &embeds], 1)?;
            let ones = Tensor::ones((b, n), mask.dtype(), mask.device())?;
            mask = Tensor::cat(&[&ones, &mask], 1)?;
            if let Some(t) = &types {
                let zeros = Tensor::zeros((b, n), t.dtype(), t.device())?;
                types = Some(Tensor::cat(&[&zeros, t], 1)?);
            }
        }
        // The heads read the first position only (RoBERTa's `features[:, 0]`, BERT's pooler;
        // with a prompt that is the first virtual token), so the last layer is computed for it
        // alone.
        let hidden = encoder.forward_embeds_first(&embeds, &mask, types.as_ref(), ctx)?;
        head.forward(&hidden, ctx)
    }
}
