//! Soft prompt tuning: `prompt_embeddings [n, hidden]` placed before the token embeddings.

use candle_core::{DType, Tensor, Var};

use crate::encoder::Encoder;
use crate::error::Result;
use crate::peft::init::Init;
use crate::trainable::TrainableSet;

/// Name of the prompt in the trainable set (PEFT's saved key).
pub const PROMPT_NAME: &str = "prompt_embeddings";

/// Creates the prompt variable.
///
/// With `init_ids` (the token ids of an init text, special tokens included, as PEFT's TEXT
/// init), the ids are cut or repeated to `n` and their word embeddings copied; otherwise the
/// values are N(0, 1), PEFT's RANDOM init.
pub fn create(
    encoder: &Encoder,
    n: usize,
    init_ids: Option<&[u32]>,
    init: &mut Init,
    set: &mut TrainableSet,
) -> Result<Tensor> {
    let h = encoder.config().hidden_size;
    let value = match init_ids {
        Some(ids) if !ids.is_empty() => {
            let ids: Vec<u32> = ids.iter().copied().cycle().take(n).collect();
            let ids = Tensor::from_vec(ids, (n,), &candle_core::Device::Cpu)?;
            encoder
                .embeddings()
                .word_embeddings()
                .lookup(&ids)?
                .to_dtype(DType::F32)?
                .contiguous()?
        }
        _ => init.normal(&[n, h], 0.0, 1.0)?,
    };
    let var = Var::from_tensor(&value)?;
    let t = var.as_tensor().clone();
    set.insert(PROMPT_NAME, var);
    Ok(t)
}
