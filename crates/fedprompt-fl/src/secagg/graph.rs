//! The masking graph of SecAgg+: a random `k`-regular Harary graph over the round's clients,
//! derived from a public seed so that the server and every client compute the same one.
//!
//! The clients are placed on a ring in an order drawn from the seed, and each is joined to
//! the `k/2` nearest on either side (Bell et al. 2020 use this construction). With `k ≥ n − 1`
//! the graph is complete: the original SecAgg of Bonawitz et al. (2017).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::update::ClientId;

/// Each client's neighbours, for clients `roster` (sorted, distinct) and degree `k` (even).
pub fn neighbourhoods(
    roster: &[ClientId],
    k: usize,
    seed: u64,
) -> BTreeMap<ClientId, BTreeSet<ClientId>> {
    let n = roster.len();
    let mut ring: Vec<&ClientId> = roster.iter().collect();
    ring.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
    let mut out: BTreeMap<ClientId, BTreeSet<ClientId>> = roster
        .iter()
        .map(|c| (c.clone(), BTreeSet::new()))
        .collect();
    if k + 1 >= n {
        for c in roster {
            let others = roster.iter().filter(|o| *o != c).cloned().collect();
            out.insert(c.clone(), others);
        }
        return out;
    }
    for (i, c) in ring.iter().enumerate() {
        let set = out.entry((*c).clone()).or_default();
        for d in 1..=k / 2 {
            set.insert(ring[(i + d) % n].clone());
            set.insert(ring[(i + n - d) % n].clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(n: usize) -> Vec<ClientId> {
        let mut r: Vec<ClientId> = (0..n).map(|i| format!("c{i:03}")).collect();
        r.sort();
        r
    }

    #[test]
    fn graph_is_k_regular_symmetric_and_seeded() {
        for (n, k) in [(10, 4), (11, 6), (50, 8), (7, 2)] {
            let r = roster(n);
            let g = neighbourhoods(&r, k, 42);
            for (c, ns) in &g {
                assert_eq!(ns.len(), k, "n {n} k {k} client {c}");
                assert!(!ns.contains(c));
                for v in ns {
                    assert!(g[v].contains(c), "edge {c}-{v} not symmetric");
                }
            }
            assert_eq!(g, neighbourhoods(&r, k, 42));
            assert_ne!(g, neighbourhoods(&r, k, 43), "n {n} k {k}");
        }
    }

    #[test]
    fn small_rosters_get_the_complete_graph() {
        let r = roster(5);
        for k in [4, 6, 100] {
            let g = neighbourhoods(&r, k, 1);
            assert!(g.values().all(|ns| ns.len() == 4));
        }
    }
}
