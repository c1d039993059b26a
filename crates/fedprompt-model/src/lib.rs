//! The frozen multilingual encoder (XLM-RoBERTa / BERT family) on candle and the
//! parameter-efficient methods of the paper: soft prompt tuning, P-tuning's prompt encoder,
//! LoRA, head-only and full fine-tuning, with adapters in PEFT's on-disk layout.
#![warn(missing_docs)]

pub mod adapter;
pub mod alloc;
pub mod backbone;
pub mod classifier;
pub mod config;
pub mod encoder;
pub mod error;
pub mod head;
pub mod nn;
pub mod ops;
pub mod peft;
pub mod tokenize;
pub mod trainable;
pub mod weights;

pub use backbone::{Backbone, HeadKind};
pub use classifier::Classifier;
pub use config::{EncoderConfig, Family};
pub use error::{ModelError, Result};
pub use nn::ForwardCtx;
pub use peft::MethodConfig;
pub use tokenize::{Batch, TextEncoder, TextInput};
pub use trainable::TrainableSet;
pub use weights::WeightDtype;
