//! Seeded per-language sampling of the paper's data sizes.
//!
//! Every draw is per language, without replacement, from a ChaCha8 generator
//! seeded by `(seed, language)`, so adding or removing a language does not
//! change the others' samples. Returned indices and examples keep input order.
//!
//! [`Stratify::None`] (the default) is a uniform sample, as
//! `dataset.shuffle(seed).select(range(n))` would give; [`Stratify::Label`]
//! allocates `n` across labels in proportion to their counts within the
//! language (largest remainder, ties to the lower label index) and samples
//! uniformly within each label.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::types::{indices_by_language, Example};

/// How a sample treats labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stratify {
    /// Uniform sample without replacement.
    #[default]
    None,
    /// Label proportions of the pool kept (largest remainder).
    Label,
}

/// Train / eval sizes per language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSizes {
    /// Training examples per language.
    pub train: usize,
    /// Evaluation examples per language.
    pub eval: usize,
}

impl SampleSizes {
    /// XGLUE-NC in the paper: 8k train, 1k eval per language.
    pub const NC: Self = Self {
        train: 8000,
        eval: 1000,
    };
    /// XNLI in the paper: 2k train, 250 eval per language.
    pub const XNLI: Self = Self {
        train: 2000,
        eval: 250,
    };
    /// MasakhaNEWS in the paper: 1433 train, 411 eval per language.
    pub const MASAKHANEWS: Self = Self {
        train: 1433,
        eval: 411,
    };
}

/// Options for a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleOptions {
    /// Seed of the draw.
    pub seed: u64,
    /// Uniform or label-stratified.
    pub stratify: Stratify,
    /// Take every example of a language that has fewer than asked for,
    /// instead of failing with [`DataError::NotEnoughExamples`].
    pub allow_fewer: bool,
}

/// A generator for `(seed, salt)`: FNV-1a of the salt mixed into the seed.
pub(crate) fn derived_rng(seed: u64, salt: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser so nearby seeds give unrelated streams.
    let mut z = seed ^ h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ChaCha8Rng::seed_from_u64(z)
}

/// Integer shares of `total` proportional to `weights` (largest remainder;
/// ties go to the earlier entry, or to `prefer` first). Sums to `total` when
/// the weights sum to a positive number.
pub(crate) fn apportion(total: usize, weights: &[f64], prefer: Option<usize>) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if weights.is_empty() || sum <= 0.0 || !sum.is_finite() {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let assigned: usize = out.iter().sum();
    let mut rest = total.saturating_sub(assigned);
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.partial_cmp(&fa)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| (Some(b) == prefer).cmp(&(Some(a) == prefer)))
            .then(a.cmp(&b))
    });
    let mut i = 0;
    while rest > 0 {
        let k = order[i % order.len()];
        if weights[k] > 0.0 {
            out[k] += 1;
            rest -= 1;
        }
        i += 1;
    }
    out
}

/// Picks `n` of `pool` (indices into `examples`), sorted ascending.
fn choose(
    examples: &[Example],
    pool: &[usize],
    n: usize,
    stratify: Stratify,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    let mut picked = match stratify {
        Stratify::None => {
            let mut p = pool.to_vec();
            p.shuffle(rng);
            p.truncate(n);
            p
        }
        Stratify::Label => {
            let mut by_label: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &i in pool {
                by_label.entry(examples[i].label).or_default().push(i);
            }
            let weights: Vec<f64> = by_label.values().map(|v| v.len() as f64).collect();
            let quotas = apportion(n.min(pool.len()), &weights, None);
            let mut p = Vec::with_capacity(n);
            for (members, q) in by_label.into_values().zip(quotas) {
                let mut m = members;
                m.shuffle(rng);
                m.truncate(q);
                p.extend(m);
            }
            p
        }
    };
    picked.sort_unstable();
    picked
}

fn check(language: &str, requested: usize, available: usize, allow_fewer: bool) -> Result<usize> {
    if available >= requested {
        Ok(requested)
    } else if allow_fewer {
        Ok(available)
    } else {
        Err(DataError::NotEnoughExamples {
            language: language.to_string(),
            requested,
            available,
        })
    }
}

/// Indices (ascending) of `n` examples per language.
pub fn sample_indices(examples: &[Example], n: usize, opts: &SampleOptions) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for (lang, pool) in indices_by_language(examples) {
        let take = check(&lang, n, pool.len(), opts.allow_fewer)?;
        let mut rng = derived_rng(opts.seed, &format!("sample/{lang}"));
        out.extend(choose(examples, &pool, take, opts.stratify, &mut rng));
    }
    out.sort_unstable();
    Ok(out)
}

/// `n` examples per language (e.g. XNLI's 2k training examples from each
/// `multinli.train.<lang>.tsv`), in input order.
pub fn sample_per_language(
    examples: &[Example],
    n: usize,
    opts: &SampleOptions,
) -> Result<Vec<Example>> {
    Ok(sample_indices(examples, n, opts)?
        .into_iter()
        .map(|i| examples[i].clone())
        .collect())
}

/// Disjoint train and eval samples per language from one pool (e.g. NC's
/// 8k / 1k from the 10k annotated examples of each language).
///
/// The eval sample is drawn first, so it does not change when only
/// `sizes.train` changes (the data-efficiency ablation keeps its eval set).
/// With `allow_fewer`, eval is filled first and train gets what is left.
pub fn split_per_language(
    examples: &[Example],
    sizes: SampleSizes,
    opts: &SampleOptions,
) -> Result<(Vec<Example>, Vec<Example>)> {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (lang, pool) in indices_by_language(examples) {
        let want = sizes.train + sizes.eval;
        check(&lang, want, pool.len(), opts.allow_fewer)?;
        let n_eval = sizes.eval.min(pool.len());
        let n_train = sizes.train.min(pool.len() - n_eval);
        let mut rng = derived_rng(opts.seed, &format!("split-eval/{lang}"));
        let e = choose(examples, &pool, n_eval, opts.stratify, &mut rng);
        let rest: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|i| e.binary_search(i).is_err())
            .collect();
        let mut rng = derived_rng(opts.seed, &format!("split-train/{lang}"));
        let t = choose(examples, &rest, n_train, opts.stratify, &mut rng);
        eval.extend(e);
        train.extend(t);
    }
    train.sort_unstable();
    eval.sort_unstable();
    let pick = |v: Vec<usize>| v.into_iter().map(|i| examples[i].clone()).collect();
    Ok((pick(train), pick(eval)))
}

/// Picks `n` of `pool` with a given generator (shared with the partitioners).
pub(crate) fn choose_from(
    examples: &[Example],
    pool: &[usize],
    n: usize,
    stratify: Stratify,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    choose(examples, pool, n, stratify, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_sums_and_breaks_ties() {
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0], None), [4, 3, 3]);
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0], Some(2)), [3, 3, 4]);
        assert_eq!(apportion(7, &[0.0, 2.0, 5.0], None), [0, 2, 5]);
        assert_eq!(apportion(5, &[0.0, 0.0], None), [0, 0]);
        assert_eq!(apportion(1, &[0.3, 0.3, 0.4], None), [0, 0, 1]);
        for n in 0..50 {
            assert_eq!(
                apportion(n, &[0.1, 0.7, 0.2, 1e-9], None)
                    .iter()
                    .sum::<usize>(),
                n
            );
        }
    }

    #[test]
    fn derived_streams_differ_by_salt_and_seed() {
        use rand::Rng;
        let a: u64 = derived_rng(1, "x").random();
        assert_eq!(a, derived_rng(1, "x").random::<u64>());
        assert_ne!(a, derived_rng(1, "y").random::<u64>());
        assert_ne!(a, derived_rng(2, "x").random::<u64>());
    }
}
