//! Aggregation math: FedAvg against exact arithmetic, FedProx, FedAdam/FedYogi by hand.

use fedprompt_fl::{
    add_proximal_grad, fedavg, proximal_term, screen_updates, ClientUpdate, ConfigValue, FlError,
    Params, ParamsError, RoundPolicy, Strategy as FlStrategy, StrategyConfig, StrategyState,
};
use proptest::prelude::*;

fn p1(name: &str, data: Vec<f32>) -> Params {
    let n = data.len();
    Params::new().with(name, vec![n], data).unwrap()
}

fn two_tensors(a: Vec<f32>, b: Vec<f32>) -> Params {
    let (na, nb) = (a.len(), b.len());
    Params::new()
        .with("prompt", vec![1, na], a)
        .unwrap()
        .with("head", vec![nb], b)
        .unwrap()
}

fn build(cfg: StrategyConfig) -> Box<dyn FlStrategy> {
    cfg.build(RoundPolicy::default()).unwrap()
}

/// One client: weight and values per tensor.
type Client = (u64, Vec<Vec<f32>>);

/// Clients with a shared random layout (tensor lengths).
fn clients_strategy() -> impl Strategy<Value = (Vec<usize>, Vec<Client>)> {
    prop::collection::vec(1usize..20, 1..4).prop_flat_map(|shape_lens| {
        let tensors: Vec<_> = shape_lens
            .iter()
            .map(|&n| prop::collection::vec(-1.0e3f32..1.0e3, n))
            .collect();
        let client = (0u64..100_000, tensors);
        (Just(shape_lens), prop::collection::vec(client, 1..8))
    })
}

fn to_params(shape_lens: &[usize], values: &[Vec<f32>]) -> Params {
    let mut p = Params::new();
    for (i, (&n, v)) in shape_lens.iter().zip(values).enumerate() {
        p.insert_vec(format!("t{i}"), vec![n], v.clone()).unwrap();
    }
    p
}

proptest! {
    #[test]
    fn fedavg_equals_exact_weighted_mean((lens, clients) in clients_strategy()) {
        prop_assume!(clients.iter().any(|(w, _)| *w > 0));
        let global = to_params(&lens, &lens.iter().map(|&n| vec![0.0; n]).collect::<Vec<_>>());
        let updates: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(k, (w, v))| ClientUpdate::new(format!("c{k}"), to_params(&lens, v), *w))
            .collect();
        let out = fedavg(1, &global, &updates).unwrap();
        prop_assert!(out.same_layout(&global));
        // Independent computation: normalised weights, then the weighted sum.
        let total: f64 = clients.iter().map(|(w, _)| *w as f64).sum();
        for (i, &n) in lens.iter().enumerate() {
            for j in 0..n {
                let want: f64 = clients
                    .iter()
                    .map(|(w, v)| (*w as f64 / total) * v[i][j] as f64)
                    .sum();
                let got = out.get(&format!("t{i}")).unwrap().data()[j] as f64;
                // One f32 rounding of the result plus f64 noise.
                let tol = 1e-6 * want.abs().max(1.0);
                prop_assert!((got - want).abs() <= tol, "t{i}[{j}]: got {got}, want {want}");
            }
        }
    }

    #[test]
    fn identical_clients_give_each_client_exactly(
        (lens, clients) in clients_strategy(),
    ) {
        let (_, values) = &clients[0];
        let p = to_params(&lens, values);
        let updates: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(k, (w, _))| ClientUpdate::new(format!("c{k}"), p.clone(), w + 1))
            .collect();
        let out = fedavg(1, &p.zeros_like(), &updates).unwrap();
        prop_assert_eq!(out, p);
    }
}

#[test]
fn one_client_is_returned_exactly() {
    let global = two_tensors(vec![0.0; 3], vec![0.0; 2]);
    let local = two_tensors(vec![0.1, -7.3, 1e-30], vec![3.4e38, -1.0]);
    let mut s = build(StrategyConfig::FedAvg);
    let out = s
        .aggregate_fit(
            1,
            &global,
            &[ClientUpdate::new("only", local.clone(), 8000)],
            &[],
        )
        .unwrap();
    assert_eq!(out, local);
}

#[test]
fn weights_are_dataset_sizes() {
    // h_g = (1·[0] + 3·[4]) / 4 = [3]
    let updates = [
        ClientUpdate::new("a", p1("w", vec![0.0]), 1),
        ClientUpdate::new("b", p1("w", vec![4.0]), 3),
        ClientUpdate::new("c", p1("w", vec![1000.0]), 0),
    ];
    let out = fedavg(1, &p1("w", vec![0.0]), &updates).unwrap();
    assert_eq!(out.get("w").unwrap().data(), &[3.0]);
}

#[test]
fn empty_and_zero_weight_rounds_are_errors() {
    let g = p1("w", vec![0.0]);
    assert!(matches!(
        fedavg(3, &g, &[]),
        Err(FlError::NoResults { round: 3 })
    ));
    let u = [ClientUpdate::new("a", p1("w", vec![1.0]), 0)];
    assert!(matches!(
        fedavg(3, &g, &u),
        Err(FlError::ZeroExamples { round: 3 })
    ));
}

#[test]
fn malformed_updates_are_rejected_by_name_and_others_aggregate() {
    let global = two_tensors(vec![0.0; 2], vec![0.0]);
    let good_a = ClientUpdate::new("en", two_tensors(vec![1.0, 2.0], vec![3.0]), 1);
    let good_b = ClientUpdate::new("fr", two_tensors(vec![3.0, 4.0], vec![5.0]), 1);
    let mut missing = ClientUpdate::new("de", two_tensors(vec![9.0, 9.0], vec![9.0]), 1);
    missing.params.remove("head");
    let mut reshaped = ClientUpdate::new("es", two_tensors(vec![9.0, 9.0], vec![9.0]), 1);
    reshaped
        .params
        .insert_vec("prompt", vec![2, 1], vec![9.0, 9.0])
        .unwrap();
    let nan = ClientUpdate::new("ru", two_tensors(vec![9.0, f32::NAN], vec![9.0]), 1);

    let mut s = build(StrategyConfig::FedAvg);
    for (bad, tensor) in [(&missing, "head"), (&reshaped, "prompt"), (&nan, "prompt")] {
        let all = vec![good_a.clone(), bad.clone(), good_b.clone()];
        let e = s.aggregate_fit(1, &global, &all, &[]).unwrap_err();
        match &e {
            FlError::InvalidUpdate { client_id, cause } => {
                assert_eq!(client_id, &bad.client_id);
                let named = match cause {
                    ParamsError::Missing(n) => n,
                    ParamsError::Shape { name, .. } | ParamsError::NonFinite { name, .. } => name,
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(named, tensor);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains(&bad.client_id) && e.to_string().contains(tensor));

        let (ok, failures) = screen_updates(&global.layout(), all);
        assert_eq!(ok.len(), 2);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].client_id, bad.client_id);
        let out = s.aggregate_fit(1, &global, &ok, &failures).unwrap();
        assert_eq!(out, two_tensors(vec![2.0, 3.0], vec![4.0]));
    }
}

#[test]
fn fedprox_aggregates_like_fedavg_and_sends_mu() {
    let mut prox = build(StrategyConfig::FedProx { proximal_mu: 0.01 });
    let mut avg = build(StrategyConfig::FedAvg);
    let g = p1("w", vec![0.0, 1.0]);
    let u = [
        ClientUpdate::new("a", p1("w", vec![1.0, 2.0]), 2),
        ClientUpdate::new("b", p1("w", vec![4.0, -1.0]), 5),
    ];
    assert_eq!(
        prox.aggregate_fit(1, &g, &u, &[]).unwrap(),
        avg.aggregate_fit(1, &g, &u, &[]).unwrap()
    );
    let plan = prox.configure_fit(1, &["a".into(), "b".into()]).unwrap();
    assert_eq!(
        plan.config.get("proximal_mu"),
        Some(&ConfigValue::Float(0.01))
    );
    assert_eq!(plan.config.get("round"), Some(&ConfigValue::Int(1)));
}

#[test]
fn proximal_term_and_gradient() {
    let g = p1("w", vec![1.0, 2.0, 3.0]);
    let w = p1("w", vec![2.0, 0.0, 3.5]);
    let mu = 0.5;
    // μ/2 (1 + 4 + 0.25) = 1.3125
    assert!((proximal_term(&w, &g, mu).unwrap() - 1.3125).abs() < 1e-12);
    let mut grads = p1("w", vec![10.0, 10.0, 10.0]);
    add_proximal_grad(&mut grads, &w, &g, mu).unwrap();
    assert_eq!(grads.get("w").unwrap().data(), &[10.5, 9.0, 10.25]);
    // The gradient matches a central finite difference of the term.
    let h = 1e-3f32;
    for i in 0..3 {
        let mut plus = w.clone();
        plus.get_mut("w").unwrap().data_mut()[i] += h;
        let mut minus = w.clone();
        minus.get_mut("w").unwrap().data_mut()[i] -= h;
        let fd = (proximal_term(&plus, &g, mu).unwrap() - proximal_term(&minus, &g, mu).unwrap())
            / (2.0 * h as f64);
        let analytic = grads.get("w").unwrap().data()[i] as f64 - 10.0;
        assert!((fd - analytic).abs() < 1e-3, "i={i}: fd {fd} vs {analytic}");
    }
    assert!(proximal_term(&p1("v", vec![0.0; 3]), &g, mu).is_err());
}

/// Two rounds by hand. η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-3, x0 = [1, 2].
/// Round 1: avg of ([2,2]·1, [2,1]·3) = [2, 1.25]; Δ = [1, −0.75]; m = 0.1Δ = [0.1, −0.075];
///   v = 0.01Δ² = [0.01, 0.005625] (Yogi: v − Δ² < 0 so v + 0.01Δ², the same);
///   x1 = x0 + η m / (√v + τ) = [1 + 0.01/0.101, 2 − 0.0075/0.076] = [1.0990099, 1.9013158].
/// Round 2: avg of ([1.5,1.5], [2.5,1.5]) = [2, 1.5]; Δ = [0.9009901, −0.4013158];
///   m = 0.9m + 0.1Δ = [0.18009901, −0.10763158];
///   Adam: v = 0.99v + 0.01Δ² = [0.018017832, 0.0071792938] → x2 = [1.2321892, 1.7757697];
///   Yogi: v − Δ² < 0 so v = v + 0.01Δ² = [0.018117832, 0.0072355438] → x2 = [1.2318238, 1.7762530].
fn two_rounds(mut s: Box<dyn FlStrategy>) -> (Params, Params, Box<dyn FlStrategy>) {
    let x0 = p1("w", vec![1.0, 2.0]);
    let r1 = [
        ClientUpdate::new("a", p1("w", vec![2.0, 2.0]), 1),
        ClientUpdate::new("b", p1("w", vec![2.0, 1.0]), 3),
    ];
    let x1 = s.aggregate_fit(1, &x0, &r1, &[]).unwrap();
    let r2 = [
        ClientUpdate::new("a", p1("w", vec![1.5, 1.5]), 1),
        ClientUpdate::new("b", p1("w", vec![2.5, 1.5]), 1),
    ];
    let x2 = s.aggregate_fit(2, &x1, &r2, &[]).unwrap();
    (x1, x2, s)
}

fn assert_close(p: &Params, want: &[f64]) {
    for (g, w) in p.get("w").unwrap().data().iter().zip(want) {
        assert!(
            ((*g as f64) - w).abs() <= 1e-6 * w.abs(),
            "got {g}, want {w}"
        );
    }
}

fn moments(s: &dyn FlStrategy) -> (u64, Vec<f64>, Vec<f64>) {
    match s.state() {
        StrategyState::FedOpt(st) => (st.t, st.m["w"].clone(), st.v["w"].clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fedadam_two_rounds_by_hand() {
    let cfg = StrategyConfig::FedAdam {
        eta: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
        bias_correction: false,
    };
    let (x1, x2, s) = two_rounds(build(cfg));
    assert_close(&x1, &[1.0990099, 1.9013158]);
    assert_close(&x2, &[1.2321892, 1.7757697]);
    let (t, m, v) = moments(s.as_ref());
    assert_eq!(t, 2);
    assert!((m[0] - 0.18009901).abs() < 1e-7 && (m[1] + 0.10763158).abs() < 1e-7);
    assert!((v[0] - 0.018017832).abs() < 1e-8 && (v[1] - 0.0071792938).abs() < 1e-9);
}

#[test]
fn fedyogi_two_rounds_by_hand() {
    let cfg = StrategyConfig::FedYogi {
        eta: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    };
    let (x1, x2, s) = two_rounds(build(cfg));
    assert_close(&x1, &[1.0990099, 1.9013158]);
    assert_close(&x2, &[1.2318238, 1.7762530]);
    let (_, _, v) = moments(s.as_ref());
    assert!((v[0] - 0.018117832).abs() < 1e-8 && (v[1] - 0.0072355438).abs() < 1e-9);
}

#[test]
fn fedadagrad_one_round_by_hand() {
    // Δ = [1, −0.75]; β1 = 0 so m = Δ; v = Δ²; x1 = x0 + η·sign(Δ)·|Δ|/(|Δ| + τ).
    let cfg = StrategyConfig::FedAdagrad {
        eta: 0.1,
        beta1: 0.0,
        tau: 1e-3,
    };
    let (x1, _, _) = two_rounds(build(cfg));
    assert_close(&x1, &[1.0 + 0.1 / 1.001, 2.0 - 0.1 * 0.75 / 0.751]);
}

#[test]
fn fedopt_state_restores_exactly() {
    let cfg = StrategyConfig::FedAdam {
        eta: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
        bias_correction: true,
    };
    let (_, x2, s) = two_rounds(build(cfg.clone()));
    // Interrupt after round 1 and restore into a fresh strategy.
    let mut a = build(cfg.clone());
    let x0 = p1("w", vec![1.0, 2.0]);
    let r1 = [
        ClientUpdate::new("a", p1("w", vec![2.0, 2.0]), 1),
        ClientUpdate::new("b", p1("w", vec![2.0, 1.0]), 3),
    ];
    let x1 = a.aggregate_fit(1, &x0, &r1, &[]).unwrap();
    // (Checkpoints store moments as F64 bits; see the server tests for the file round trip.)
    let mut b = build(cfg);
    b.load_state(a.state()).unwrap();
    let r2 = [
        ClientUpdate::new("a", p1("w", vec![1.5, 1.5]), 1),
        ClientUpdate::new("b", p1("w", vec![2.5, 1.5]), 1),
    ];
    assert_eq!(b.aggregate_fit(2, &x1, &r2, &[]).unwrap(), x2);
    assert_eq!(b.state(), s.state());
    // Stateless strategies refuse optimiser state.
    assert!(build(StrategyConfig::FedAvg).load_state(s.state()).is_err());
}

#[test]
fn strategy_config_from_json_and_validation() {
    let c: StrategyConfig = serde_json::from_str(r#"{"type":"fedadam","eta":0.01}"#).unwrap();
    assert_eq!(
        c,
        StrategyConfig::FedAdam {
            eta: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-9,
            bias_correction: false
        }
    );
    let c: StrategyConfig = serde_json::from_str(r#"{"type":"fedavg"}"#).unwrap();
    assert_eq!(build(c).name(), "fedavg");
    let c: StrategyConfig =
        serde_json::from_str(r#"{"type":"fedprox","proximal_mu":0.1}"#).unwrap();
    assert_eq!(build(c).name(), "fedprox");
    for name in ["fedyogi", "fedadagrad"] {
        let c: StrategyConfig = serde_json::from_str(&format!(r#"{{"type":"{name}"}}"#)).unwrap();
        assert_eq!(build(c).name(), name);
    }
    assert!(serde_json::from_str::<StrategyConfig>(r#"{"type":"fedsgd"}"#).is_err());
    assert!(serde_json::from_str::<StrategyConfig>(r#"{"type":"fedadam","etaa":1}"#).is_err());
    assert!(serde_json::from_str::<StrategyConfig>(r#"{"type":"fedprox"}"#).is_err());
    let bad = [
        StrategyConfig::FedProx { proximal_mu: -1.0 },
        StrategyConfig::FedAdam {
            eta: 0.1,
            beta1: 1.0,
            beta2: 0.99,
            tau: 1e-9,
            bias_correction: false,
        },
        StrategyConfig::FedYogi {
            eta: 0.0,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        },
        StrategyConfig::FedAdagrad {
            eta: 0.1,
            beta1: 0.0,
            tau: 0.0,
        },
        StrategyConfig::DpFedAvg {
            clip_norm: 0.0,
            noise_multiplier: 1.0,
        },
    ];
    for c in bad {
        assert!(
            matches!(c.build(RoundPolicy::default()), Err(FlError::Config(_))),
            "{c:?}"
        );
    }
    let policy = RoundPolicy {
        fraction_fit: 0.0,
        ..RoundPolicy::default()
    };
    assert!(matches!(
        StrategyConfig::FedAvg.build(policy),
        Err(FlError::Config(_))
    ));
}

#[test]
fn aggregate_evaluate_weights_metrics() {
    let s = build(StrategyConfig::FedAvg);
    let r = [
        fedprompt_fl::EvaluateResult {
            client_id: "a".into(),
            num_examples: 100,
            metrics: [("accuracy".to_string(), 0.5), ("loss".to_string(), 1.0)].into(),
        },
        fedprompt_fl::EvaluateResult {
            client_id: "b".into(),
            num_examples: 300,
            metrics: [("accuracy".to_string(), 0.9)].into(),
        },
    ];
    let agg = s.aggregate_evaluate(1, &r, &[]).unwrap();
    assert_eq!(agg.num_examples, 400);
    assert!((agg.metrics["accuracy"] - 0.8).abs() < 1e-12);
    assert_eq!(agg.metrics["loss"], 1.0);
    assert!(s.aggregate_evaluate(1, &[], &[]).is_err());
}
