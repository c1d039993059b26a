//! Federated partitioners: which examples each client holds.
//!
//! Every partitioner returns a [`Partition`] of indices into the input slice;
//! each index appears in exactly one client (nothing lost, nothing
//! duplicated), each client's indices are ascending, and the result depends
//! only on the input and the seed.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::sample::{apportion, choose_from, derived_rng, Stratify};
use crate::types::{indices_by_language, language_counts, Example};

/// One client's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientShard {
    /// A readable name (`en`, `client-3`).
    pub name: String,
    /// The client's home language, for language-tied partitions.
    pub language: Option<String>,
    /// Ascending indices into the partitioned examples.
    pub indices: Vec<usize>,
}

/// One shard per client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The clients, in order.
    pub clients: Vec<ClientShard>,
}

impl Partition {
    /// Number of clients.
    pub fn num_clients(&self) -> usize {
        self.clients.len()
    }

    /// Examples per client (the FedAvg weights |D_k|).
    pub fn sizes(&self) -> Vec<usize> {
        self.clients.iter().map(|c| c.indices.len()).collect()
    }

    /// Each client's examples, cloned. Errors on an index out of range.
    pub fn materialize(&self, examples: &[Example]) -> Result<Vec<Vec<Example>>> {
        self.clients
            .iter()
            .map(|c| {
                c.indices
                    .iter()
                    .map(|&i| {
                        examples.get(i).cloned().ok_or_else(|| {
                            DataError::InvalidArgument(format!(
                                "partition index {i} out of range for {} examples",
                                examples.len()
                            ))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Per-client example counts by language.
    pub fn language_counts(&self, examples: &[Example]) -> Vec<BTreeMap<String, usize>> {
        self.clients
            .iter()
            .map(|c| {
                let mut m = BTreeMap::new();
                for &i in &c.indices {
                    if let Some(e) = examples.get(i) {
                        *m.entry(e.language.clone()).or_insert(0) += 1;
                    }
                }
                m
            })
            .collect()
    }
}

fn nonempty(examples: &[Example]) -> Result<()> {
    if examples.is_empty() {
        Err(DataError::InvalidArgument(
            "no examples to partition".into(),
        ))
    } else {
        Ok(())
    }
}

fn enough(clients: usize, n: usize) -> Result<()> {
    if clients == 0 {
        Err(DataError::NoClients)
    } else if clients > n {
        Err(DataError::TooFewExamples {
            clients,
            examples: n,
        })
    } else {
        Ok(())
    }
}

fn finish(mut clients: Vec<ClientShard>) -> Partition {
    for c in &mut clients {
        c.indices.sort_unstable();
    }
    Partition { clients }
}

/// One client per language, in sorted language order (the paper's non-IID
/// extreme, and "local monolingual" training).
pub fn partition_by_language(examples: &[Example]) -> Result<Partition> {
    nonempty(examples)?;
    Ok(finish(
        indices_by_language(examples)
            .into_iter()
            .map(|(lang, indices)| ClientShard {
                name: lang.clone(),
                language: Some(lang),
                indices,
            })
            .collect(),
    ))
}

/// IID: a seeded shuffle split into `clients` parts whose sizes differ by at
/// most one (the first `n mod K` clients get the extra example).
pub fn partition_iid(examples: &[Example], clients: usize, seed: u64) -> Result<Partition> {
    nonempty(examples)?;
    enough(clients, examples.len())?;
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.shuffle(&mut derived_rng(seed, "iid"));
    let (base, extra) = (examples.len() / clients, examples.len() % clients);
    let mut start = 0;
    let shards = (0..clients)
        .map(|k| {
            let len = base + usize::from(k < extra);
            let s = ClientShard {
                name: format!("client-{k}"),
                language: None,
                indices: idx[start..start + len].to_vec(),
            };
            start += len;
            s
        })
        .collect();
    Ok(finish(shards))
}

/// Options of the paper's language-mixture partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureOptions {
    /// Mixture parameter in [0, 1]: 0 = each client holds only its language,
    /// 1 = each client holds an equal share of every language.
    pub alpha: f64,
    /// Seed of the shuffles.
    #[serde(default)]
    pub seed: u64,
    /// The clients' home languages in client order; `None` = every language
    /// in the data, sorted. Each must occur in the data, and every language
    /// in the data must be listed.
    #[serde(default)]
    pub languages: Option<Vec<String>>,
}

/// The paper's mixture α (appendix B: "α = 1.0 signifies a uniform mixture of
/// all languages, while values closer to 0 indicate a dominant
/// representation of individual languages"). The paper gives no formula; this
/// crate defines it as follows.
///
/// There are K clients, client k tied to language ℓ_k (one client per
/// language). Language ℓ's n_ℓ examples are shuffled (seeded) and dealt out
/// so that client k receives
///
///   q_k(ℓ) = α · n_ℓ / K + (1 − α) · n_ℓ · [k = home(ℓ)]
///
/// examples of ℓ, rounded by largest remainder (ties to the home client, then
/// the lower index) so the shares of ℓ sum to exactly n_ℓ. Thus the home
/// client keeps (1 − α) + α/K of its language and every other client gets
/// α/K of it. α = 0 is the per-language partition; α = 1 gives every client
/// 1/K of every language (a uniform mixture when languages are equally
/// sized, as in the paper's samples); each example goes to exactly one client.
pub fn partition_mixture(examples: &[Example], opts: &MixtureOptions) -> Result<Partition> {
    nonempty(examples)?;
    if !(0.0..=1.0).contains(&opts.alpha) {
        return Err(DataError::AlphaOutOfRange {
            alpha: opts.alpha,
            expected: "0 ≤ alpha ≤ 1",
        });
    }
    let by_lang = indices_by_language(examples);
    let langs: Vec<String> = match &opts.languages {
        None => by_lang.keys().cloned().collect(),
        Some(l) => {
            let mut seen = std::collections::BTreeSet::new();
            for x in l {
                if !seen.insert(x.as_str()) {
                    return Err(DataError::InvalidArgument(format!(
                        "language `{x}` listed twice"
                    )));
                }
                if !by_lang.contains_key(x) {
                    return Err(DataError::EmptyLanguage {
                        language: x.clone(),
                    });
                }
            }
            if let Some(missing) = by_lang.keys().find(|k| !seen.contains(k.as_str())) {
                return Err(DataError::InvalidArgument(format!(
                    "language `{missing}` is in the data but has no client"
                )));
            }
            l.clone()
        }
    };
    let k = langs.len();
    let mut shards: Vec<ClientShard> = langs
        .iter()
        .map(|l| ClientShard {
            name: l.clone(),
            language: Some(l.clone()),
            indices: Vec::new(),
        })
        .collect();
    for (home, lang) in langs.iter().enumerate() {
        let mut pool = by_lang[lang].clone();
        pool.shuffle(&mut derived_rng(opts.seed, &format!("mixture/{lang}")));
        let n = pool.len() as f64;
        let weights: Vec<f64> = (0..k)
            .map(|c| {
                opts.alpha * n / k as f64
                    + if c == home {
                        (1.0 - opts.alpha) * n
                    } else {
                        0.0
                    }
            })
            .collect();
        let shares = apportion(pool.len(), &weights, Some(home));
        let mut start = 0;
        for (c, s) in shares.into_iter().enumerate() {
            shards[c].indices.extend_from_slice(&pool[start..start + s]);
            start += s;
        }
    }
    if let Some(empty) = shards.iter().find(|s| s.indices.is_empty()) {
        return Err(DataError::InvalidArgument(format!(
            "client `{}` would hold no examples",
            empty.name
        )));
    }
    Ok(finish(shards))
}

/// What a Dirichlet partition skews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirichletOver {
    /// Label skew (the common FL benchmark form).
    #[default]
    Label,
    /// Language skew.
    Language,
}

/// Options of a Dirichlet partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirichletOptions {
    /// Number of clients K.
    pub clients: usize,
    /// Concentration α > 0: small = skewed, large = near IID.
    pub alpha: f64,
    /// Label or language skew.
    #[serde(default)]
    pub over: DirichletOver,
    /// Each client must get at least this many examples (default 1); the
    /// whole draw is repeated until it does.
    #[serde(default = "one")]
    pub min_per_client: usize,
    /// Draws tried before failing (default 100).
    #[serde(default = "hundred")]
    pub max_tries: usize,
    /// Seed.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> usize {
    1
}
fn hundred() -> usize {
    100
}

/// Dirichlet(α) skew: for each group g (a label or a language, in sorted
/// order) draw p_g ~ Dir(α, …, α) over the K clients and deal the group's
/// shuffled examples by p_g (largest remainder). Retried until every client
/// holds at least `min_per_client` examples.
pub fn partition_dirichlet(examples: &[Example], opts: &DirichletOptions) -> Result<Partition> {
    nonempty(examples)?;
    enough(opts.clients, examples.len())?;
    if !(opts.alpha.is_finite() && opts.alpha > 0.0) {
        return Err(DataError::AlphaOutOfRange {
            alpha: opts.alpha,
            expected: "a finite alpha > 0",
        });
    }
    if opts.min_per_client.saturating_mul(opts.clients) > examples.len() {
        return Err(DataError::TooFewExamples {
            clients: opts.clients,
            examples: examples.len(),
        });
    }
    let groups: Vec<Vec<usize>> = match opts.over {
        DirichletOver::Label => {
            let mut m: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, e) in examples.iter().enumerate() {
                m.entry(e.label).or_default().push(i);
            }
            m.into_values().collect()
        }
        DirichletOver::Language => indices_by_language(examples).into_values().collect(),
    };
    let gamma = Gamma::new(opts.alpha, 1.0)
        .map_err(|e| DataError::InvalidArgument(format!("Gamma({}, 1): {e}", opts.alpha)))?;
    let mut rng = derived_rng(opts.seed, "dirichlet");
    let k = opts.clients;
    for _ in 0..opts.max_tries.max(1) {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); k];
        for g in &groups {
            let mut w: Vec<f64> = (0..k).map(|_| gamma.sample(&mut rng)).collect();
            if w.iter().sum::<f64>() <= 0.0 || w.iter().any(|x| !x.is_finite()) {
                // Every draw underflowed (tiny α): the limit is one client.
                let c = rng.random_range(0..k);
                w = (0..k).map(|j| if j == c { 1.0 } else { 0.0 }).collect();
            }
            let mut pool = g.clone();
            pool.shuffle(&mut rng);
            let shares = apportion(pool.len(), &w, None);
            let mut start = 0;
            for (c, s) in shares.into_iter().enumerate() {
                shards[c].extend_from_slice(&pool[start..start + s]);
                start += s;
            }
        }
        if shards.iter().all(|s| s.len() >= opts.min_per_client) {
            return Ok(finish(
                shards
                    .into_iter()
                    .enumerate()
                    .map(|(c, indices)| ClientShard {
                        name: format!("client-{c}"),
                        language: None,
                        indices,
                    })
                    .collect(),
            ));
        }
    }
    Err(DataError::DirichletFailed {
        tries: opts.max_tries.max(1),
        min_per_client: opts.min_per_client,
    })
}

/// Caps the training sets of the chosen clients to `n` examples each (the
/// paper's data-efficiency ablation, 8000 → 30): a seeded sample, uniform or
/// label-stratified; clients with at most `n` examples and clients not listed
/// are unchanged. The dropped examples are gone from the result.
pub fn cap_clients(
    partition: &Partition,
    examples: &[Example],
    clients: &[usize],
    n: usize,
    stratify: Stratify,
    seed: u64,
) -> Result<Partition> {
    if n == 0 {
        return Err(DataError::InvalidArgument(
            "cannot cap a client to 0 examples".into(),
        ));
    }
    let mut out = partition.clone();
    for &c in clients {
        let shard = out.clients.get_mut(c).ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "client {c} out of range ({} clients)",
                partition.clients.len()
            ))
        })?;
        if let Some(&bad) = shard.indices.iter().find(|&&i| i >= examples.len()) {
            return Err(DataError::InvalidArgument(format!(
                "partition index {bad} out of range for {} examples",
                examples.len()
            )));
        }
        if shard.indices.len() > n {
            let mut rng = derived_rng(seed, &format!("cap/{c}"));
            shard.indices = choose_from(examples, &shard.indices, n, stratify, &mut rng);
        }
    }
    Ok(out)
}

/// The client whose home language is `language` (for choosing whom to cap).
pub fn client_of_language(partition: &Partition, language: &str) -> Option<usize> {
    partition
        .clients
        .iter()
        .position(|c| c.language.as_deref() == Some(language))
}

/// A partition chosen by configuration (`type = "mixture"` in TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PartitionSpec {
    /// One client per language.
    PerLanguage,
    /// IID with K clients.
    Iid {
        /// K.
        clients: usize,
    },
    /// The paper's mixture α, one client per language.
    Mixture {
        /// α in [0, 1].
        alpha: f64,
    },
    /// Dirichlet(α) skew.
    Dirichlet {
        /// K.
        clients: usize,
        /// α > 0.
        alpha: f64,
        /// Label or language.
        #[serde(default)]
        over: DirichletOver,
        /// Minimum examples per client.
        #[serde(default = "one")]
        min_per_client: usize,
    },
}

impl PartitionSpec {
    /// Applies the spec with a seed.
    pub fn partition(&self, examples: &[Example], seed: u64) -> Result<Partition> {
        match self {
            Self::PerLanguage => partition_by_language(examples),
            Self::Iid { clients } => partition_iid(examples, *clients, seed),
            Self::Mixture { alpha } => partition_mixture(
                examples,
                &MixtureOptions {
                    alpha: *alpha,
                    seed,
                    languages: None,
                },
            ),
            Self::Dirichlet {
                clients,
                alpha,
                over,
                min_per_client,
            } => partition_dirichlet(
                examples,
                &DirichletOptions {
                    clients: *clients,
                    alpha: *alpha,
                    over: *over,
                    min_per_client: *min_per_client,
                    max_tries: hundred(),
                    seed,
                },
            ),
        }
    }
}

/// Per-language share of every client (rows: clients; columns: the sorted
/// languages of `examples`); handy for reports and tests.
pub fn language_shares(
    partition: &Partition,
    examples: &[Example],
) -> (Vec<String>, Vec<Vec<f64>>) {
    let langs: Vec<String> = language_counts(examples).into_keys().collect();
    let rows = partition
        .language_counts(examples)
        .into_iter()
        .map(|m| {
            let total: usize = m.values().sum();
            langs
                .iter()
                .map(|l| {
                    if total == 0 {
                        0.0
                    } else {
                        *m.get(l).unwrap_or(&0) as f64 / total as f64
                    }
                })
                .collect()
        })
        .collect();
    (langs, rows)
}
