//! Seeded batch orders, optionally length-bucketed so that dynamic padding
//! wastes little. Works on token lengths computed by the caller (this crate
//! has no tokenizer).

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::sample::derived_rng;

/// How examples are grouped into batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOrder {
    /// A seeded shuffle cut into batches.
    #[default]
    Shuffled,
    /// A seeded shuffle cut into pools of `pool_batches` batches; each pool
    /// is sorted by length and cut into batches, and the batch order is
    /// shuffled again.
    Bucketed {
        /// Batches per pool (≥ 1); larger pools pad less, mix less.
        pool_batches: usize,
    },
}

/// Batches of indices into `lengths` for one epoch: every index exactly
/// once, all batches of `batch_size` except possibly one smaller batch.
/// `epoch` is mixed into the seed so each epoch gets its own order.
pub fn batch_indices(
    lengths: &[usize],
    batch_size: usize,
    order: BatchOrder,
    seed: u64,
    epoch: u64,
) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(DataError::InvalidArgument(
            "batch_size must be at least 1".into(),
        ));
    }
    let mut rng = derived_rng(seed, &format!("batches/{epoch}"));
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(&mut rng);
    match order {
        BatchOrder::Shuffled => Ok(idx.chunks(batch_size).map(<[usize]>::to_vec).collect()),
        BatchOrder::Bucketed { pool_batches } => {
            if pool_batches == 0 {
                return Err(DataError::InvalidArgument(
                    "pool_batches must be at least 1".into(),
                ));
            }
            let mut batches: Vec<Vec<usize>> = Vec::new();
            for pool in idx.chunks(batch_size.saturating_mul(pool_batches)) {
                let mut pool = pool.to_vec();
                pool.sort_by_key(|&i| lengths[i]);
                batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
            }
            batches.shuffle(&mut rng);
            Ok(batches)
        }
    }
}

/// Padding cost of a batching: Σ over batches of `len(batch) × max length`
/// minus the real tokens (what dynamic padding adds).
pub fn padding_tokens(lengths: &[usize], batches: &[Vec<usize>]) -> usize {
    batches
        .iter()
        .map(|b| {
            let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            b.iter().map(|&i| max - lengths[i]).sum::<usize>()
        })
        .sum()
}
