//! Tokenisation into padded batches (dynamic padding to the longest sequence in the batch).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelError, Result};

/// One input: a text and an optional second text (sentence pairs, e.g. XNLI).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TextInput {
    /// The text to classify, or the first text of a pair (e.g. the XNLI premise).
    pub text: String,
    /// The second text of a sentence pair, encoded as the tokenizer's second sequence; `None`
    /// for single texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
}

/// A tokenised, right-padded batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, L]` u32 token ids.
    pub input_ids: Tensor,
    /// `[B, L]` u32, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B, L]` u32 token types, when the model uses them.
    pub token_type_ids: Option<Tensor>,
    /// Real (unpadded) token count per row.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Builds a batch from already tokenised rows; pads with `pad_id`.
    pub fn from_ids(
        rows: &[Vec<u32>],
        type_rows: Option<&[Vec<u32>]>,
        pad_id: u32,
    ) -> Result<Batch> {
        if rows.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if l == 0 {
            return Err(ModelError::Input("a batch of empty sequences".into()));
        }
        let b = rows.len();
        let mut ids = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        let mut types = Vec::with_capacity(b * l);
        for (i, r) in rows.iter().enumerate() {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad_id, l - r.len()));
            mask.extend(std::iter::repeat_n(1u32, r.len()));
            mask.extend(std::iter::repeat_n(0u32, l - r.len()));
            if let Some(t) = type_rows {
                types.extend_from_slice(&t[i]);
                types.extend(std::iter::repeat_n(0u32, l - t[i].len()));
            }
        }
        let dev = Device::Cpu;
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, l), &dev)?,
            attention_mask: Tensor::from_vec(mask, (b, l), &dev)?,
            token_type_ids: match type_rows {
                Some(_) => Some(Tensor::from_vec(types, (b, l), &dev)?),
                None => None,
            },
            lengths: rows.iter().map(|r| r.len()).collect(),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Rows `start..start + len`, padded to the same length as the whole batch.
    pub fn narrow(&self, start: usize, len: usize) -> candle_core::Result<Batch> {
        let lengths = self
            .lengths
            .get(start..start.saturating_add(len))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "rows {start}..{} of a batch of {}",
                    start.saturating_add(len),
                    self.len()
                ))
            })?;
        Ok(Batch {
            input_ids: self.input_ids.narrow(0, start, len)?,
            attention_mask: self.attention_mask.narrow(0, start, len)?,
            token_type_ids: match &self.token_type_ids {
                Some(t) => Some(t.narrow(0, start, len)?),
                None => None,
            },
            lengths: lengths.to_vec(),
        })
    }
}

/// A Hugging Face tokenizer with truncation to a maximum length.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    path: PathBuf,
    max_len: usize,
    pad_id: u32,
    use_token_types: bool,
}

impl TextEncoder {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path, pad_id: u32, use_token_types: bool) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::NotFound {
                what: "tokenizer.json",
                path: path.to_path_buf(),
                hint: "the model folder needs a `tokenizer.json` (save it with the tokenizer's save_pretrained)",
            });
        }
        let tokenizer = Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(TextEncoder {
            tokenizer,
            path: path.to_path_buf(),
            max_len: 512,
            pad_id,
            use_token_types,
        })
    }

    /// Sets the maximum sequence length (special tokens included); longer inputs are truncated.
    pub fn with_max_len(mut self, max_len: usize) -> Result<Self> {
        if max_len < 4 {
            return Err(ModelError::Input(format!(
                "max sequence length {max_len} is too small (at least 4)"
            )));
        }
        self.max_len = max_len;
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
        Ok(self)
    }

    /// The maximum length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids (and type ids) of one input, special tokens included.
    pub fn encode(&self, input: &TextInput) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = match &input.text_pair {
            Some(p) => self
                .tokenizer
                .encode((input.text.as_str(), p.as_str()), true),
            None => self.tokenizer.encode(input.text.as_str(), true),
        }
        .map_err(|e| ModelError::Tokenizer {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Token ids of a text, special tokens included (used for prompt text init).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .encode(&TextInput {
                text: text.to_string(),
                text_pair: None,
            })?
            .0)
    }

    /// Tokenises and pads a batch of inputs.
    pub fn batch(&self, inputs: &[TextInput]) -> Result<Batch> {
        let mut ids = Vec::with_capacity(inputs.len());
        let mut types = Vec::with_capacity(inputs.len());
        for i in inputs {
            let (a, t) = self.encode(i)?;
            ids.push(a);
            types.push(t);
        }
        let tt = if self.use_token_types {
            Some(types.as_slice())
        } else {
            None
        };
        Batch::from_ids(&ids, tt, self.pad_id)
    }
}
