//! Seeded per-language sampling.

use std::collections::BTreeMap;

use fedprompt_data::{
    label_counts, language_counts, sample_indices, sample_per_language, split_per_language,
    DataError, Example, SampleOptions, SampleSizes, Stratify,
};

/// `per_lang` examples in each language; label i % labels, except language
/// `b` whose labels are skewed 70/20/10 over three labels.
fn pool(langs: &[&str], per_lang: usize) -> Vec<Example> {
    let mut v = Vec::new();
    for l in langs {
        for i in 0..per_lang {
            let label = if *l == "b" {
                match i * 10 / per_lang {
                    0..=6 => 0,
                    7 | 8 => 1,
                    _ => 2,
                }
            } else {
                i % 3
            };
            v.push(Example::new(format!("{l}-{i}"), label, *l));
        }
    }
    v
}

#[test]
fn paper_sizes() {
    assert_eq!(
        SampleSizes::NC,
        SampleSizes {
            train: 8000,
            eval: 1000
        }
    );
    assert_eq!(
        SampleSizes::XNLI,
        SampleSizes {
            train: 2000,
            eval: 250
        }
    );
    assert_eq!(
        SampleSizes::MASAKHANEWS,
        SampleSizes {
            train: 1433,
            eval: 411
        }
    );
}

#[test]
fn per_language_counts_and_determinism() {
    let ex = pool(&["a", "b", "c"], 500);
    let o = SampleOptions {
        seed: 9,
        ..SampleOptions::default()
    };
    let s = sample_per_language(&ex, 120, &o).unwrap();
    assert_eq!(
        language_counts(&s).values().copied().collect::<Vec<_>>(),
        [120, 120, 120]
    );
    assert_eq!(s, sample_per_language(&ex, 120, &o).unwrap());
    let other = sample_per_language(&ex, 120, &SampleOptions { seed: 10, ..o }).unwrap();
    assert_ne!(s, other);
    // No duplicates, input order kept.
    let idx = sample_indices(&ex, 120, &o).unwrap();
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_language_sample_does_not_depend_on_other_languages() {
    let o = SampleOptions {
        seed: 4,
        ..SampleOptions::default()
    };
    let ab = sample_per_language(&pool(&["a", "b"], 300), 50, &o).unwrap();
    let a = sample_per_language(&pool(&["a"], 300), 50, &o).unwrap();
    let a_from_ab: Vec<_> = ab.into_iter().filter(|e| e.language == "a").collect();
    assert_eq!(a, a_from_ab);
}

#[test]
fn stratified_keeps_label_proportions() {
    let ex = pool(&["b"], 1000);
    let o = SampleOptions {
        seed: 1,
        stratify: Stratify::Label,
        ..SampleOptions::default()
    };
    let s = sample_per_language(&ex, 100, &o).unwrap();
    assert_eq!(label_counts(&s, 3), [70, 20, 10]);
    // Rounding by largest remainder still sums to n.
    let s = sample_per_language(&ex, 33, &o).unwrap();
    let c = label_counts(&s, 3);
    assert_eq!(c.iter().sum::<usize>(), 33);
    assert_eq!(c, [23, 7, 3]);
}

#[test]
fn not_enough_is_an_error_unless_allowed() {
    let ex = pool(&["a", "b"], 40);
    let err = sample_per_language(&ex, 50, &SampleOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::NotEnoughExamples {
                requested: 50,
                available: 40,
                ..
            }
        ),
        "{err}"
    );
    let o = SampleOptions {
        allow_fewer: true,
        ..SampleOptions::default()
    };
    assert_eq!(sample_per_language(&ex, 50, &o).unwrap().len(), 80);
}

#[test]
fn split_is_disjoint_and_eval_is_stable_when_train_shrinks() {
    let ex = pool(&["a", "b", "c"], 400);
    let o = SampleOptions {
        seed: 2,
        stratify: Stratify::Label,
        ..SampleOptions::default()
    };
    let (train, eval) = split_per_language(
        &ex,
        SampleSizes {
            train: 300,
            eval: 80,
        },
        &o,
    )
    .unwrap();
    assert_eq!(
        language_counts(&train)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [300; 3]
    );
    assert_eq!(
        language_counts(&eval).values().copied().collect::<Vec<_>>(),
        [80; 3]
    );
    let names: BTreeMap<&str, ()> = train.iter().map(|e| (e.text.as_str(), ())).collect();
    assert!(eval.iter().all(|e| !names.contains_key(e.text.as_str())));
    let (small_train, eval2) = split_per_language(
        &ex,
        SampleSizes {
            train: 30,
            eval: 80,
        },
        &o,
    )
    .unwrap();
    assert_eq!(eval, eval2);
    assert_eq!(small_train.len(), 90);
    // Too small a pool.
    assert!(split_per_language(
        &ex,
        SampleSizes {
            train: 350,
            eval: 80
        },
        &o
    )
    .is_err());
    let o2 = SampleOptions {
        allow_fewer: true,
        ..o
    };
    let (t, e) = split_per_language(
        &ex,
        SampleSizes {
            train: 350,
            eval: 80,
        },
        &o2,
    )
    .unwrap();
    assert_eq!((t.len(), e.len()), (3 * 320, 3 * 80));
}

mod batching {
    use fedprompt_data::{batch_indices, padding_tokens, BatchOrder};

    fn lengths() -> Vec<usize> {
        (0..1000).map(|i| 5 + (i * 7919) % 300).collect()
    }

    #[test]
    fn every_index_once_and_seeded() {
        let l = lengths();
        for order in [
            BatchOrder::Shuffled,
            BatchOrder::Bucketed { pool_batches: 8 },
        ] {
            let b = batch_indices(&l, 16, order, 1, 0).unwrap();
            let mut all: Vec<usize> = b.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..1000).collect::<Vec<_>>());
            assert_eq!(
                b.iter().filter(|x| x.len() != 16).count(),
                1,
                "1000 = 62×16 + 8"
            );
            assert_eq!(b, batch_indices(&l, 16, order, 1, 0).unwrap());
            assert_ne!(
                b,
                batch_indices(&l, 16, order, 1, 1).unwrap(),
                "epochs differ"
            );
        }
        assert!(batch_indices(&l, 0, BatchOrder::Shuffled, 0, 0).is_err());
        assert!(batch_indices(&l, 4, BatchOrder::Bucketed { pool_batches: 0 }, 0, 0).is_err());
    }

    #[test]
    fn bucketing_cuts_padding() {
        let l = lengths();
        let shuffled = batch_indices(&l, 16, BatchOrder::Shuffled, 3, 0).unwrap();
        let bucketed =
            batch_indices(&l, 16, BatchOrder::Bucketed { pool_batches: 16 }, 3, 0).unwrap();
        let (ps, pb) = (padding_tokens(&l, &shuffled), padding_tokens(&l, &bucketed));
        assert!(pb * 5 < ps, "bucketed {pb} vs shuffled {ps}");
    }
}
