//! LoRA: low-rank deltas `B·A·(alpha/r)` on chosen projections of every layer.

use candle_core::{Tensor, Var};

use crate::encoder::{Encoder, LoraTarget};
use crate::error::Result;
use crate::nn::LoraDelta;
use crate::peft::init::Init;
use crate::trainable::TrainableSet;

/// Trainable-set name of a LoRA matrix (`which` is `lora_A` or `lora_B`).
pub fn param_name(prefix: &str, layer: usize, target: LoraTarget, which: &str) -> String {
    let base = format!(
        "encoder.layer.{layer}.{}.{which}.weight",
        target.module_path()
    );
    if prefix.is_empty() {
        base
    } else {
        format!("{prefix}.{base}")
    }
}

/// Creates LoRA matrices (A Kaiming-uniform, B zero, as PEFT) for every layer and target and
/// returns the encoder with the deltas attached.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    encoder: &Encoder,
    prefix: &str,
    r: usize,
    alpha: f64,
    dropout: f64,
    targets: &[LoraTarget],
    init: &mut Init,
    set: &mut TrainableSet,
) -> Result<Encoder> {
    let cfg = encoder.config();
    let scale = alpha / r as f64;
    let mut deltas = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        for &t in targets {
            let (out, inp) = t.dims(cfg);
            let a = init.uniform(&[r, inp], 1.0 / (inp as f64).sqrt())?;
            let b = Tensor::zeros((out, r), candle_core::DType::F32, &candle_core::Device::Cpu)?;
            let a = Var::from_tensor(&a)?;
            let b = Var::from_tensor(&b)?;
            let delta = LoraDelta {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale,
                dropout,
            };
            set.insert(&param_name(prefix, layer, t, "lora_A"), a);
            set.insert(&param_name(prefix, layer, t, "lora_B"), b);
            deltas.push((layer, t, delta));
        }
    }
    Ok(encoder.with_lora(&deltas))
}
