//! Partitioners: conservation, determinism, the mixture α's language
//! proportions, Dirichlet skew, size reduction, and argument errors.

use fedprompt_data::partition::{client_of_language, language_shares};
use fedprompt_data::{
    cap_clients, label_counts, partition_by_language, partition_dirichlet, partition_iid,
    partition_mixture, DataError, DirichletOptions, DirichletOver, Example, MixtureOptions,
    Partition, PartitionSpec, Stratify,
};
use proptest::prelude::*;

fn data(langs: &[&str], per_lang: usize, labels: usize) -> Vec<Example> {
    let mut v = Vec::new();
    for l in langs {
        for i in 0..per_lang {
            v.push(Example::new(format!("{l}-{i}"), i % labels, *l));
        }
    }
    v
}

/// Every index in 0..n exactly once.
fn assert_conserves(p: &Partition, n: usize) {
    let mut all: Vec<usize> = p
        .clients
        .iter()
        .flat_map(|c| c.indices.iter().copied())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    for c in &p.clients {
        assert!(c.indices.windows(2).all(|w| w[0] < w[1]));
    }
}

const LANGS: [&str; 5] = ["de", "en", "es", "fr", "ru"];

fn mix(alpha: f64, seed: u64) -> MixtureOptions {
    MixtureOptions {
        alpha,
        seed,
        languages: None,
    }
}

#[test]
fn mixture_alpha_one_is_uniform_and_zero_is_per_language() {
    let ex = data(&LANGS, 1000, 10);
    let p = partition_mixture(&ex, &mix(1.0, 3)).unwrap();
    assert_conserves(&p, ex.len());
    let (langs, shares) = language_shares(&p, &ex);
    assert_eq!(langs, LANGS);
    for row in &shares {
        for s in row {
            assert!((s - 0.2).abs() < 1e-12, "{shares:?}");
        }
    }
    let p0 = partition_mixture(&ex, &mix(0.0, 3)).unwrap();
    assert_eq!(p0, partition_by_language(&ex).unwrap());
    let (_, shares0) = language_shares(&p0, &ex);
    for (k, row) in shares0.iter().enumerate() {
        for (j, s) in row.iter().enumerate() {
            assert_eq!(*s, if j == k { 1.0 } else { 0.0 });
        }
    }
    // Near zero: each client is dominated by its own language.
    let p = partition_mixture(&ex, &mix(0.01, 3)).unwrap();
    let (_, shares) = language_shares(&p, &ex);
    for (k, row) in shares.iter().enumerate() {
        assert!((row[k] - (0.99 + 0.01 / 5.0)).abs() < 1e-3, "{row:?}");
    }
}

#[test]
fn mixture_intermediate_alpha_follows_the_formula() {
    let ex = data(&LANGS, 1000, 10);
    for alpha in [0.25, 0.5, 0.8] {
        let p = partition_mixture(&ex, &mix(alpha, 1)).unwrap();
        assert_conserves(&p, ex.len());
        for (k, c) in p.clients.iter().enumerate() {
            assert_eq!(c.language.as_deref(), Some(LANGS[k]));
            let counts = &p.language_counts(&ex)[k];
            for (j, l) in LANGS.iter().enumerate() {
                let want = alpha * 1000.0 / 5.0 + if j == k { (1.0 - alpha) * 1000.0 } else { 0.0 };
                let got = counts.get(*l).copied().unwrap_or(0) as f64;
                assert!(
                    (got - want).abs() <= 1.0,
                    "alpha {alpha} client {k} lang {l}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn mixture_respects_client_order_and_rejects_bad_requests() {
    let ex = data(&["en", "de"], 10, 2);
    let p = partition_mixture(
        &ex,
        &MixtureOptions {
            alpha: 0.0,
            seed: 0,
            languages: Some(vec!["en".into(), "de".into()]),
        },
    )
    .unwrap();
    assert_eq!(p.clients[0].name, "en");
    assert!(p.clients[0].indices.iter().all(|&i| ex[i].language == "en"));
    for bad in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            partition_mixture(&ex, &mix(bad, 0)),
            Err(DataError::AlphaOutOfRange { .. })
        ));
    }
    let only_en = MixtureOptions {
        alpha: 0.5,
        seed: 0,
        languages: Some(vec!["en".into()]),
    };
    assert!(matches!(
        partition_mixture(&ex, &only_en),
        Err(DataError::InvalidArgument(_))
    ));
    let extra = MixtureOptions {
        alpha: 0.5,
        seed: 0,
        languages: Some(vec!["en".into(), "de".into(), "fr".into()]),
    };
    assert!(matches!(
        partition_mixture(&ex, &extra),
        Err(DataError::EmptyLanguage { .. })
    ));
    assert!(partition_mixture(&[], &mix(0.5, 0)).is_err());
}

#[test]
fn iid_sizes_and_errors() {
    let ex = data(&["en"], 103, 3);
    let p = partition_iid(&ex, 5, 0).unwrap();
    assert_eq!(p.sizes(), [21, 21, 21, 20, 20]);
    assert_conserves(&p, 103);
    assert!(matches!(
        partition_iid(&ex, 0, 0),
        Err(DataError::NoClients)
    ));
    assert!(matches!(
        partition_iid(&ex, 104, 0),
        Err(DataError::TooFewExamples {
            clients: 104,
            examples: 103
        })
    ));
    // IID over languages: every client near the global mix.
    let ex = data(&LANGS, 400, 4);
    let p = partition_iid(&ex, 4, 11).unwrap();
    let (_, shares) = language_shares(&p, &ex);
    for row in shares {
        for s in row {
            assert!((s - 0.2).abs() < 0.07);
        }
    }
}

#[test]
fn dirichlet_small_alpha_skews_and_large_alpha_evens() {
    let ex = data(&LANGS, 400, 10);
    let opts = |alpha: f64| DirichletOptions {
        clients: 5,
        alpha,
        over: DirichletOver::Label,
        min_per_client: 1,
        max_tries: 100,
        seed: 5,
    };
    let skewed = partition_dirichlet(&ex, &opts(0.1)).unwrap();
    let even = partition_dirichlet(&ex, &opts(1000.0)).unwrap();
    assert_conserves(&skewed, ex.len());
    assert_conserves(&even, ex.len());
    // Mean over clients of the largest label's share.
    let top = |p: &Partition| -> f64 {
        let m = p.materialize(&ex).unwrap();
        m.iter()
            .map(|c| *label_counts(c, 10).iter().max().unwrap() as f64 / c.len() as f64)
            .sum::<f64>()
            / m.len() as f64
    };
    assert!(top(&skewed) > 0.3, "{}", top(&skewed));
    assert!(top(&even) < 0.15, "{}", top(&even));
    assert_eq!(skewed, partition_dirichlet(&ex, &opts(0.1)).unwrap());

    let lang = partition_dirichlet(
        &ex,
        &DirichletOptions {
            over: DirichletOver::Language,
            ..opts(0.05)
        },
    )
    .unwrap();
    assert_conserves(&lang, ex.len());

    for bad in [0.0, -1.0, f64::INFINITY] {
        assert!(matches!(
            partition_dirichlet(&ex, &opts(bad)),
            Err(DataError::AlphaOutOfRange { .. })
        ));
    }
    let impossible = DirichletOptions {
        min_per_client: 399,
        max_tries: 3,
        ..opts(0.01)
    };
    assert!(matches!(
        partition_dirichlet(&ex, &impossible),
        Err(DataError::DirichletFailed { .. })
    ));
    let too_many = DirichletOptions {
        min_per_client: 500,
        ..opts(1.0)
    };
    assert!(matches!(
        partition_dirichlet(&ex, &too_many),
        Err(DataError::TooFewExamples { .. })
    ));
}

#[test]
fn cap_reduces_chosen_clients_only() {
    let ex = data(&LANGS, 800, 10);
    let p = partition_by_language(&ex).unwrap();
    let de = client_of_language(&p, "de").unwrap();
    let capped = cap_clients(&p, &ex, &[de], 30, Stratify::Label, 7).unwrap();
    let sizes = capped.sizes();
    assert_eq!(sizes[de], 30);
    assert!(sizes.iter().enumerate().all(|(k, &s)| k == de || s == 800));
    // A subset of the original, with all ten labels kept (stratified).
    assert!(capped.clients[de]
        .indices
        .iter()
        .all(|i| p.clients[de].indices.contains(i)));
    let m = capped.materialize(&ex).unwrap();
    assert_eq!(label_counts(&m[de], 10), [3; 10]);
    assert_eq!(
        capped,
        cap_clients(&p, &ex, &[de], 30, Stratify::Label, 7).unwrap()
    );
    assert_ne!(
        capped,
        cap_clients(&p, &ex, &[de], 30, Stratify::Label, 8).unwrap()
    );
    // A cap above the size changes nothing; bad requests fail.
    assert_eq!(
        cap_clients(&p, &ex, &[de], 5000, Stratify::None, 0).unwrap(),
        p
    );
    assert!(cap_clients(&p, &ex, &[de], 0, Stratify::None, 0).is_err());
    assert!(cap_clients(&p, &ex, &[9], 10, Stratify::None, 0).is_err());
}

#[test]
fn spec_from_toml_like_json() {
    let spec: PartitionSpec = serde_json::from_str(r#"{"type":"mixture","alpha":0.5}"#).unwrap();
    assert_eq!(spec, PartitionSpec::Mixture { alpha: 0.5 });
    let spec: PartitionSpec =
        serde_json::from_str(r#"{"type":"dirichlet","clients":3,"alpha":0.3}"#).unwrap();
    let ex = data(&LANGS, 50, 3);
    let p = spec.partition(&ex, 1).unwrap();
    assert_eq!(p.num_clients(), 3);
    assert_conserves(&p, ex.len());
    assert!(
        serde_json::from_str::<PartitionSpec>(r#"{"type":"iid","clients":3,"extra":1}"#).is_err()
    );
}

fn arb_examples() -> impl Strategy<Value = Vec<Example>> {
    prop::collection::vec((0usize..4, 0usize..5), 1..300).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (l, y))| Example::new(format!("x{i}"), y, ["de", "en", "fr", "sw"][l]))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_partitioner_conserves_and_is_deterministic(
        ex in arb_examples(),
        k in 1usize..8,
        alpha in 0.0f64..=1.0,
        dir_alpha in 0.05f64..10.0,
        seed in any::<u64>(),
    ) {
        let by_lang = partition_by_language(&ex).unwrap();
        assert_conserves(&by_lang, ex.len());

        match partition_iid(&ex, k, seed) {
            Ok(p) => {
                assert_conserves(&p, ex.len());
                prop_assert_eq!(&p, &partition_iid(&ex, k, seed).unwrap());
                let s = p.sizes();
                prop_assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
            }
            Err(e) => prop_assert!(k > ex.len(), "{}", e),
        }

        match partition_mixture(&ex, &mix(alpha, seed)) {
            Ok(p) => {
                assert_conserves(&p, ex.len());
                prop_assert_eq!(&p, &partition_mixture(&ex, &mix(alpha, seed)).unwrap());
            }
            // Only possible when some client would get nothing.
            Err(e) => prop_assert!(matches!(e, DataError::InvalidArgument(_)), "{}", e),
        }

        for over in [DirichletOver::Label, DirichletOver::Language] {
            let o = DirichletOptions { clients: k, alpha: dir_alpha, over, min_per_client: 1, max_tries: 50, seed };
            match partition_dirichlet(&ex, &o) {
                Ok(p) => {
                    assert_conserves(&p, ex.len());
                    prop_assert_eq!(p.num_clients(), k);
                    prop_assert!(p.sizes().iter().all(|&s| s >= 1));
                    prop_assert_eq!(&p, &partition_dirichlet(&ex, &o).unwrap());
                }
                Err(e) => prop_assert!(
                    matches!(e, DataError::DirichletFailed { .. } | DataError::TooFewExamples { .. }),
                    "{}", e
                ),
            }
        }
    }

    #[test]
    fn cap_is_a_seeded_subset(ex in arb_examples(), n in 1usize..50, seed in any::<u64>()) {
        let p = partition_by_language(&ex).unwrap();
        let all: Vec<usize> = (0..p.num_clients()).collect();
        let c = cap_clients(&p, &ex, &all, n, Stratify::None, seed).unwrap();
        prop_assert_eq!(&c, &cap_clients(&p, &ex, &all, n, Stratify::None, seed).unwrap());
        for (orig, capped) in p.clients.iter().zip(&c.clients) {
            prop_assert_eq!(capped.indices.len(), orig.indices.len().min(n));
            prop_assert!(capped.indices.iter().all(|i| orig.indices.contains(i)));
        }
    }
}
