//! A client that lies about its example count, against FedAvg, weight caps, coordinate-wise
//! median and trimmed mean; each aggregate checked against exact arithmetic.

use std::collections::BTreeMap;

use fedprompt_fl::{
    ClientUpdate, ClientWeights, FlError, Params, RoundPolicy, Server, StrategyConfig,
};

const HONEST: [(&str, f32, u64); 4] = [
    ("a", 1.0, 100),
    ("b", 1.5, 100),
    ("c", 0.5, 100),
    ("d", 1.25, 100),
];
/// The liar sends a poisoned value and claims a billion examples.
const LIAR: (&str, f32, u64) = ("liar", 50.0, 1_000_000_000);

fn global0() -> Params {
    Params::new().with("w", vec![3], vec![0.0; 3]).unwrap()
}

fn updates() -> Vec<ClientUpdate> {
    HONEST
        .iter()
        .chain(std::iter::once(&LIAR))
        .map(|&(c, v, n)| {
            // Coordinates differ per client so that the aggregation is exercised per value.
            let p = Params::new()
                .with("w", vec![3], vec![v, 2.0 * v, -v])
                .unwrap();
            ClientUpdate::new(c, p, n)
        })
        .collect()
}

/// One round over the honest clients and the liar; the global's `w`.
fn aggregate(strategy: StrategyConfig, weights: ClientWeights) -> Vec<f32> {
    let strategy = strategy.build(RoundPolicy::default()).unwrap();
    let mut server = Server::new(global0(), strategy)
        .unwrap()
        .with_client_weights(weights);
    let clients: Vec<String> = updates().iter().map(|u| u.client_id.clone()).collect();
    let mut fit = server.begin_fit(&clients).unwrap();
    for u in updates() {
        fit.submit(u, 0).unwrap();
    }
    let outcome = server.finish_fit(fit).unwrap();
    assert!(outcome.aggregated);
    server.global().get("w").unwrap().data().to_vec()
}

fn honest_mean() -> f64 {
    HONEST.iter().map(|h| f64::from(h.1)).sum::<f64>() / HONEST.len() as f64
}

/// Exact weighted mean of the first coordinate in f64 with the given weights.
fn weighted(ws: &[(f32, u64)]) -> f64 {
    let num: f64 = ws.iter().map(|&(v, n)| f64::from(v) * n as f64).sum();
    let den: f64 = ws.iter().map(|&(_, n)| n as f64).sum();
    num / den
}

fn close(got: f32, want: f64) {
    assert!(
        (f64::from(got) - want).abs() <= 1e-6 * want.abs().max(1.0),
        "got {got}, want {want}"
    );
}

#[test]
fn with_plain_fedavg_the_liar_dominates() {
    let w = aggregate(StrategyConfig::FedAvg, ClientWeights::default());
    let mut all: Vec<(f32, u64)> = HONEST.iter().map(|h| (h.1, h.2)).collect();
    all.push((LIAR.1, LIAR.2));
    close(w[0], weighted(&all));
    // The liar's share of the weight is 1e9 / (1e9 + 400): the global is its value.
    assert!((f64::from(w[0]) - f64::from(LIAR.1)).abs() < 1e-3, "{w:?}");
    assert!(f64::from(w[0]) > 10.0 * honest_mean());
}

#[test]
fn a_cap_on_claims_gives_the_liar_one_honest_clients_weight() {
    let caps = ClientWeights {
        max_examples_per_client: Some(100),
        ..ClientWeights::default()
    };
    let w = aggregate(StrategyConfig::FedAvg, caps);
    let mut all: Vec<(f32, u64)> = HONEST.iter().map(|h| (h.1, h.2)).collect();
    all.push((LIAR.1, 100));
    for (i, k) in [1.0, 2.0, -1.0].into_iter().enumerate() {
        close(w[i], k * weighted(&all));
    }
    // Its influence is bounded to 1/5 instead of ~1.
    assert!(f64::from(w[0]) < 0.25 * f64::from(LIAR.1));
}

#[test]
fn declared_sizes_cap_each_client_and_uniform_ignores_claims() {
    let declared: BTreeMap<String, u64> = HONEST
        .iter()
        .map(|h| (h.0.to_string(), h.2))
        .chain([(LIAR.0.to_string(), 10)])
        .collect();
    let w = aggregate(
        StrategyConfig::FedAvg,
        ClientWeights {
            declared,
            ..ClientWeights::default()
        },
    );
    let mut all: Vec<(f32, u64)> = HONEST.iter().map(|h| (h.1, h.2)).collect();
    all.push((LIAR.1, 10));
    close(w[0], weighted(&all));

    let w = aggregate(
        StrategyConfig::FedAvg,
        ClientWeights {
            uniform: true,
            ..ClientWeights::default()
        },
    );
    let mut all: Vec<(f32, u64)> = HONEST.iter().map(|h| (h.1, 1)).collect();
    all.push((LIAR.1, 1));
    close(w[0], weighted(&all));
}

#[test]
fn the_median_stays_at_the_honest_median() {
    let w = aggregate(StrategyConfig::Median, ClientWeights::default());
    // Values 0.5, 1.0, 1.25, 1.5, 50: the median is the honest 1.25, exactly.
    assert_eq!(w, vec![1.25, 2.5, -1.25]);
    assert!((f64::from(w[0]) - honest_mean()).abs() < 0.25);
}

#[test]
fn the_trimmed_mean_drops_the_liar() {
    let w = aggregate(
        StrategyConfig::TrimmedMean { trim_fraction: 0.2 },
        ClientWeights::default(),
    );
    // floor(0.2 * 5) = 1 dropped from each end: mean of 1.0, 1.25, 1.5 (and mirrored for -v).
    close(w[0], (1.0 + 1.25 + 1.5) / 3.0);
    close(w[1], 2.0 * (1.0 + 1.25 + 1.5) / 3.0);
    close(w[2], -(1.0 + 1.25 + 1.5) / 3.0);
    assert!((f64::from(w[0]) - honest_mean()).abs() < 0.25);
}

#[test]
fn median_of_an_even_count_and_bad_trim_fractions() {
    let strategy = StrategyConfig::Median
        .build(RoundPolicy::default())
        .unwrap();
    let mut server = Server::new(global0(), strategy).unwrap();
    let ids = ["a", "b", "c", "d"].map(String::from);
    let mut fit = server.begin_fit(&ids).unwrap();
    for (c, v) in ids.iter().zip([4.0f32, 1.0, 3.0, 2.0]) {
        let p = Params::new().with("w", vec![3], vec![v; 3]).unwrap();
        fit.submit(ClientUpdate::new(c.clone(), p, 1), 0).unwrap();
    }
    server.finish_fit(fit).unwrap();
    assert_eq!(server.global().get("w").unwrap().data(), &[2.5; 3]);

    for bad in [0.5, -0.1, f64::NAN] {
        let e = StrategyConfig::TrimmedMean { trim_fraction: bad }
            .build(RoundPolicy::default())
            .unwrap_err();
        assert!(matches!(e, FlError::Config(_)) && e.to_string().contains("trim_fraction"));
    }
}

#[test]
fn robust_strategies_are_chosen_by_type_in_config_files() {
    let m: StrategyConfig = serde_json::from_str(r#"{"type": "median"}"#).unwrap();
    assert_eq!(m, StrategyConfig::Median);
    let t: StrategyConfig =
        serde_json::from_str(r#"{"type": "trimmed-mean", "trim_fraction": 0.1}"#).unwrap();
    assert_eq!(t, StrategyConfig::TrimmedMean { trim_fraction: 0.1 });
    assert_eq!(t.name(), "trimmed-mean");
}
