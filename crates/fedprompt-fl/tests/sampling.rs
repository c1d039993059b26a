//! Client sampling: size, determinism, coverage, errors.

use std::collections::BTreeSet;

use fedprompt_fl::{FlError, Phase, Sampling};
use proptest::prelude::*;

fn ids(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("client-{i:02}")).collect()
}

fn frac(c: f64) -> Sampling {
    Sampling {
        fraction: c,
        ..Sampling::default()
    }
}

#[test]
fn sample_size_is_max_floor_ck_1() {
    for (c, k, m) in [
        (1.0, 5, 5),
        (0.5, 5, 2),
        (0.2, 5, 1),
        (0.1, 5, 1),
        (0.3, 10, 3),
        (0.29, 100, 29),
        (0.7, 10, 7),
        (1e-9, 3, 1),
    ] {
        assert_eq!(frac(c).num_sampled(k).unwrap(), m, "C={c} K={k}");
        assert_eq!(frac(c).sample(&ids(k), 7, 1, Phase::Fit).unwrap().len(), m);
    }
    let s = Sampling {
        fraction: 0.1,
        min_clients: 3,
        min_available: 1,
    };
    assert_eq!(s.num_sampled(10).unwrap(), 3);
}

#[test]
fn sampling_is_deterministic_per_seed_and_round() {
    let pool = ids(15);
    let s = frac(0.4);
    let a = s.sample(&pool, 42, 3, Phase::Fit).unwrap();
    assert_eq!(a, s.sample(&pool, 42, 3, Phase::Fit).unwrap());
    // Order of the available list does not matter.
    let mut rev = pool.clone();
    rev.reverse();
    assert_eq!(a, s.sample(&rev, 42, 3, Phase::Fit).unwrap());
    // Other rounds, seeds and phases give other draws (over several tries).
    let differs = |f: &dyn Fn(u64) -> Vec<String>| (0..5).any(|i| f(i) != a);
    assert!(differs(&|r| s
        .sample(&pool, 42, 4 + r, Phase::Fit)
        .unwrap()));
    assert!(differs(&|sd| s
        .sample(&pool, 43 + sd, 3, Phase::Fit)
        .unwrap()));
    assert_ne!(
        (1..6)
            .map(|r| s.sample(&pool, 42, r, Phase::Fit).unwrap())
            .collect::<Vec<_>>(),
        (1..6)
            .map(|r| s.sample(&pool, 42, r, Phase::Evaluate).unwrap())
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_client_is_eventually_sampled() {
    let pool = ids(20);
    let s = frac(0.1);
    let seen: BTreeSet<String> = (1..=200)
        .flat_map(|r| s.sample(&pool, 9, r, Phase::Fit).unwrap())
        .collect();
    assert_eq!(seen.len(), 20);
    // And roughly uniformly: each is picked about 200·2/20 = 20 times.
    for c in &pool {
        let n = (1..=200)
            .filter(|&r| s.sample(&pool, 9, r, Phase::Fit).unwrap().contains(c))
            .count();
        assert!((5..=40).contains(&n), "{c} picked {n} times");
    }
}

#[test]
fn invalid_configurations_are_errors() {
    for c in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(frac(c).num_sampled(5), Err(FlError::Config(_))),
            "C={c}"
        );
    }
    assert!(matches!(frac(0.5).num_sampled(0), Err(FlError::Config(_))));
    assert!(matches!(
        frac(0.5).sample(&[], 0, 1, Phase::Fit),
        Err(FlError::Config(_))
    ));
    let s = Sampling {
        fraction: 1.0,
        min_clients: 1,
        min_available: 6,
    };
    assert!(matches!(
        s.num_sampled(5),
        Err(FlError::NotEnoughClients {
            available: 5,
            required: 6
        })
    ));
    let s = Sampling {
        fraction: 1.0,
        min_clients: 0,
        min_available: 1,
    };
    assert!(s.validate().is_err());
    let s = Sampling {
        fraction: 0.5,
        min_clients: 8,
        min_available: 1,
    };
    assert!(matches!(
        s.num_sampled(5),
        Err(FlError::NotEnoughClients { .. })
    ));
}

#[test]
fn duplicates_in_available_are_ignored() {
    let mut pool = ids(4);
    pool.extend(ids(4));
    let got = frac(1.0).sample(&pool, 1, 1, Phase::Fit).unwrap();
    assert_eq!(got, ids(4));
}

proptest! {
    #[test]
    fn sample_is_a_sorted_subset_of_size_m(k in 1usize..60, c in 0.001f64..=1.0, seed: u64, round in 1u64..1000) {
        let pool = ids(k);
        let got = frac(c).sample(&pool, seed, round, Phase::Fit).unwrap();
        let m = ((c * k as f64 + 1e-9).floor() as usize).max(1);
        prop_assert_eq!(got.len(), m);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(got.iter().all(|g| pool.contains(g)));
    }
}
