//! Tokenising examples once, before training.

use fedprompt_data::Example;
use fedprompt_model::{Batch, TextEncoder, TextInput};

use crate::trainer::TrainError;

/// An example as token ids.
#[derive(Clone, Debug)]
pub struct EncodedExample {
    /// Token ids, special tokens included, truncated to the encoder's maximum length.
    pub ids: Vec<u32>,
    /// Token type ids (segment of each token), as long as `ids`.
    pub type_ids: Vec<u32>,
    /// Gold label index.
    pub label: usize,
    /// Language code of the example, the key of per-language scores.
    pub language: String,
}

/// Tokenises examples with truncation to the encoder's maximum length.
pub fn encode_examples(
    enc: &TextEncoder,
    examples: &[Example],
) -> Result<Vec<EncodedExample>, TrainError> {
    examples
        .iter()
        .map(|e| {
            let (ids, type_ids) = enc.encode(&TextInput {
                text: e.text.clone(),
                text_pair: e.text_pair.clone(),
            })?;
            Ok(EncodedExample {
                ids,
                type_ids,
                label: e.label,
                language: e.language.clone(),
            })
        })
        .collect()
}

/// Pads the chosen examples into a batch.
pub(crate) fn make_batch(
    examples: &[EncodedExample],
    idx: &[usize],
    pad_id: u32,
    use_types: bool,
) -> Result<Batch, TrainError> {
    let ids: Vec<Vec<u32>> = idx.iter().map(|&i| examples[i].ids.clone()).collect();
    let types: Vec<Vec<u32>> = idx.iter().map(|&i| examples[i].type_ids.clone()).collect();
    Ok(Batch::from_ids(
        &ids,
        if use_types {
            Some(types.as_slice())
        } else {
            None
        },
        pad_id,
    )?)
}
