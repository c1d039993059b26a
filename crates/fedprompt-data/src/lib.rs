//! Data for fedprompt: readers for XNLI, XGLUE-NC, MasakhaNEWS, generic
//! CSV/TSV/JSON lines and the chatterbot-corpus demo data; label maps;
//! seeded per-language sampling of the paper's sizes; and the federated
//! partitioners (per language, IID, the paper's mixture α, Dirichlet α,
//! size reduction); and seeded, optionally length-bucketed batch orders.
//!
//! Readers never skip a bad line silently: a bad line is an error naming the
//! file and line, unless [`ReadOptions::skip_bad_lines`] turns it into a
//! [`LoadWarning`] returned with the examples.
#![warn(missing_docs)]

mod error;
mod io;
mod types;

pub mod batch;
pub mod chatterbot;
pub mod generic;
pub mod masakhanews;
pub mod partition;
pub mod sample;
pub mod xglue;
pub mod xnli;

pub use batch::{batch_indices, padding_tokens, BatchOrder};
pub use chatterbot::{
    chatterbot_language_code, load_chatterbot, read_chatterbot, split_conversations,
    survey_chatterbot, ChatterbotOptions, CHATTERBOT_DEMO_LANGUAGES, CHATTERBOT_TOPICS,
};
pub use error::{DataError, Result};
pub use generic::{read_generic, scan_labels, FileFormat, GenericFormat};
pub use masakhanews::{read_masakhanews, MasakhaInput};
pub use partition::{
    cap_clients, partition_by_language, partition_dirichlet, partition_iid, partition_mixture,
    ClientShard, DirichletOptions, DirichletOver, MixtureOptions, Partition, PartitionSpec,
};
pub use sample::{
    sample_indices, sample_per_language, split_per_language, SampleOptions, SampleSizes, Stratify,
};
pub use types::{
    indices_by_language, label_counts, language_counts, select_languages, Dataset, Example,
    LabelMap, LoadWarning, ReadOptions, ReadOutput,
};
pub use xglue::read_xglue_nc;
pub use xnli::read_xnli;
