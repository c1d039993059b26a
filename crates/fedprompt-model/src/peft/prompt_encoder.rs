//! P-tuning's prompt encoder (PEFT `PROMPT_ENCODER`, MLP reparameterisation): virtual-token
//! embeddings passed through Linear → ReLU → Linear → ReLU → Linear.

use candle_core::{Module, Tensor, Var};

use crate::error::Result;
use crate::nn::Linear;
use crate::peft::init::Init;
use crate::trainable::TrainableSet;

/// The prompt encoder's parameters.
#[derive(Clone, Debug)]
pub struct PromptEncoder {
    embedding: Tensor,
    layers: [Linear; 3],
}

fn var(set: &mut TrainableSet, name: &str, t: Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(&t)?;
    let out = v.as_tensor().clone();
    set.insert(name, v);
    Ok(out)
}

impl PromptEncoder {
    /// Creates fresh parameters with PyTorch's default initialisation, named as PEFT names
    /// them (`prompt_encoder.embedding.weight`, `prompt_encoder.mlp_head.{0,2,4}.*`).
    pub fn create(
        n: usize,
        token_dim: usize,
        hidden: usize,
        init: &mut Init,
        set: &mut TrainableSet,
    ) -> Result<Self> {
        let embedding = var(
            set,
            "prompt_encoder.embedding.weight",
            init.normal(&[n, token_dim], 0.0, 1.0)?,
        )?;
        let dims = [(hidden, token_dim), (hidden, hidden), (token_dim, hidden)];
        let mut layers = Vec::new();
        for (i, (out, inp)) in dims.into_iter().enumerate() {
            let (w, b) = init.torch_linear(out, inp)?;
            let idx = i * 2;
            let w = var(set, &format!("prompt_encoder.mlp_head.{idx}.weight"), w)?;
            let b = var(set, &format!("prompt_encoder.mlp_head.{idx}.bias"), b)?;
            layers.push(Linear::new(w, Some(b)));
        }
        let layers: [Linear; 3] = layers.try_into().expect("three layers");
        Ok(PromptEncoder { embedding, layers })
    }

    /// The virtual-token embeddings `[n, token_dim]`.
    pub fn forward(&self) -> candle_core::Result<Tensor> {
        let x = self.layers[0].forward(&self.embedding)?.relu()?;
        let x = self.layers[1].forward(&x)?.relu()?;
        self.layers[2].forward(&x)
    }
}
