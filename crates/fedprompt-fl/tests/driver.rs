//! The round loop shared by the simulator and the network server, over in-memory clients.

use std::collections::BTreeMap;

use fedprompt_fl::{
    keys, run_rounds, ClientConfig, ClientUpdate, Collected, ConfigValue, EvalOutcome, EvalRound,
    EvaluateResult, FitRound, FlError, Flow, Params, RoundClients, RoundOutcome, RoundPolicy,
    RunRules, Server, StrategyConfig,
};

fn global0() -> Params {
    Params::new().with("w", vec![2], vec![0.0, 0.0]).unwrap()
}

/// Clients that set `w` to their own value and report `examples[i]` examples; a client in
/// `broken` fails every round.
#[derive(Default)]
struct Mem {
    values: BTreeMap<String, (f32, u64)>,
    broken: Vec<String>,
    configs: Vec<ClientConfig>,
    evaluated: Vec<u64>,
    round_ends: u64,
    stop_after: Option<u64>,
    fit_outcomes: Vec<RoundOutcome>,
}

impl Mem {
    fn new(items: &[(&str, f32, u64)]) -> Self {
        Mem {
            values: items
                .iter()
                .map(|(c, v, n)| (c.to_string(), (*v, *n)))
                .collect(),
            ..Default::default()
        }
    }
}

impl RoundClients for Mem {
    type Error = FlError;

    fn wait_available(&mut self, _min: usize) -> Result<Option<Vec<String>>, FlError> {
        Ok(Some(self.values.keys().cloned().collect()))
    }

    fn available(&mut self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }

    fn fit(
        &mut self,
        mut round: FitRound,
        global: &Params,
        config: &ClientConfig,
    ) -> Result<Collected<FitRound>, FlError> {
        self.configs.push(config.clone());
        for c in round.plan().clients.clone() {
            if self.broken.contains(&c) {
                round.fail(&c, "crashed")?;
                continue;
            }
            let (v, n) = self.values[&c];
            let mut p = global.clone();
            for (_, t) in p.iter_mut() {
                t.data_mut().iter_mut().for_each(|x| *x = v);
            }
            round.submit(ClientUpdate::new(c.clone(), p, n), 8)?;
        }
        Ok(Collected {
            round,
            stopped: false,
        })
    }

    fn evaluate(
        &mut self,
        mut round: EvalRound,
        global: &Params,
        _config: &ClientConfig,
    ) -> Result<Collected<EvalRound>, FlError> {
        for c in round.plan().clients.clone() {
            let r = EvaluateResult {
                client_id: c,
                num_examples: 1,
                metrics: [("w".to_string(), global.get("w").unwrap().data()[0] as f64)].into(),
            };
            round.submit(r, 8)?;
        }
        Ok(Collected {
            round,
            stopped: false,
        })
    }

    fn on_fit(&mut self, _server: &Server, outcome: &RoundOutcome) -> Result<(), FlError> {
        self.fit_outcomes.push(outcome.clone());
        Ok(())
    }

    fn on_evaluate(
        &mut self,
        _server: &Server,
        round: u64,
        outcome: Result<&EvalOutcome, &FlError>,
    ) -> Result<(), FlError> {
        assert!(outcome.is_ok());
        self.evaluated.push(round);
        Ok(())
    }

    fn on_round_end(&mut self, server: &Server) -> Result<Flow, FlError> {
        self.round_ends += 1;
        Ok(match self.stop_after {
            Some(r) if server.round() >= r => Flow::Stop,
            _ => Flow::Continue,
        })
    }
}

fn server(strategy: StrategyConfig) -> Server {
    let policy = RoundPolicy {
        fraction_fit: 1.0,
        fraction_evaluate: 1.0,
        ..RoundPolicy::default()
    };
    Server::new(global0(), strategy.build(policy).unwrap()).unwrap()
}

fn rules(rounds: u64, evaluate_every: u64) -> RunRules {
    RunRules {
        rounds,
        evaluate_every,
        client_config: ClientConfig::from([
            (keys::EPOCHS.to_string(), ConfigValue::Int(2)),
            (keys::ROUND.to_string(), ConfigValue::Int(99)),
        ]),
        privacy: None,
    }
}

#[test]
fn runs_every_round_with_the_merged_config_and_weighted_average() {
    let mut s = server(StrategyConfig::FedProx { proximal_mu: 0.5 });
    let mut m = Mem::new(&[("a", 1.0, 1), ("b", 4.0, 3)]);
    let report = run_rounds(&mut s, &mut m, &rules(3, 2)).unwrap();
    assert_eq!(s.round(), 3);
    assert_eq!(report.outcomes.len(), 3);
    assert!(!report.stopped);
    // (1·1 + 4·3) / 4 = 3.25 in every coordinate.
    assert_eq!(s.global().get("w").unwrap().data(), &[3.25, 3.25]);
    // The operator's keys reach the clients; the strategy's keys win over them.
    for (i, c) in m.configs.iter().enumerate() {
        assert_eq!(c[keys::EPOCHS], ConfigValue::Int(2));
        assert_eq!(c[keys::ROUND], ConfigValue::Int(i as i64 + 1));
        assert_eq!(c[keys::PROXIMAL_MU], ConfigValue::Float(0.5));
    }
    // Evaluation after round 2 (every 2) and after the last.
    assert_eq!(m.evaluated, vec![2, 3]);
    assert_eq!(report.evaluations.len(), 2);
    assert_eq!(m.round_ends, 3);
}

#[test]
fn a_round_whose_clients_claim_zero_examples_fails_and_the_run_goes_on() {
    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("liar", 9.0, 0)]);
    // The only client claims 0 examples: every round fails, so the run ends with a clear
    // error instead of a crash, the global untouched.
    let e = run_rounds(&mut s, &mut m, &rules(2, 0)).unwrap_err();
    assert!(
        matches!(e, FlError::NothingAggregated { rounds: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("claimed 0 training examples"), "{e}");
    assert_eq!(s.global().get("w").unwrap().data(), &[0.0, 0.0]);
    assert_eq!(m.fit_outcomes.len(), 2);
    assert!(m.fit_outcomes.iter().all(|o| !o.aggregated));

    // Beside an honest client, the zero-weight client changes nothing.
    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("honest", 2.0, 5), ("liar", 9.0, 0)]);
    run_rounds(&mut s, &mut m, &rules(1, 0)).unwrap();
    assert_eq!(s.global().get("w").unwrap().data(), &[2.0, 2.0]);
}

#[test]
fn failed_clients_are_failures_and_quorum_decides() {
    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("a", 1.0, 1), ("b", 3.0, 1)]);
    m.broken = vec!["b".into()];
    let report = run_rounds(&mut s, &mut m, &rules(1, 0)).unwrap();
    assert_eq!(report.outcomes[0].n_failed, 1);
    assert_eq!(s.global().get("w").unwrap().data(), &[1.0, 1.0]);

    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("a", 1.0, 1)]);
    m.broken = vec!["a".into()];
    let e = run_rounds(&mut s, &mut m, &rules(2, 0)).unwrap_err();
    assert!(matches!(e, FlError::NothingAggregated { .. }), "{e}");
    // The client's own reason reaches the operator.
    assert!(e.to_string().contains("client `a` failed: crashed"), "{e}");
}

#[test]
fn a_hook_stops_the_run_after_its_round() {
    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("a", 1.0, 1)]);
    m.stop_after = Some(2);
    let report = run_rounds(&mut s, &mut m, &rules(5, 0)).unwrap();
    assert!(report.stopped);
    assert_eq!(s.round(), 2);
}

#[test]
fn a_stopped_run_is_a_shutdown_even_if_nothing_was_aggregated() {
    let mut s = server(StrategyConfig::FedAvg);
    let mut m = Mem::new(&[("liar", 9.0, 0)]);
    m.stop_after = Some(1);
    let report = run_rounds(&mut s, &mut m, &rules(5, 0)).unwrap();
    assert!(report.stopped);
    assert_eq!(report.outcomes.len(), 1);
    assert!(!report.outcomes[0].aggregated);
}

#[test]
fn the_privacy_budget_stops_the_run_before_the_round_that_would_exceed_it() {
    use fedprompt_fl::privacy::{privacy_accounting, PrivacyConfig};
    let strategy = StrategyConfig::DpFedAvg {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
    };
    let budget = PrivacyConfig {
        max_epsilon: Some(10.0),
        ..PrivacyConfig::default()
    };
    let acc = privacy_accounting(&strategy, Some(&budget), 1.0)
        .unwrap()
        .unwrap();
    // The last round whose epsilon stays within 10.
    let last_ok = (1..100)
        .take_while(|&t| acc.epsilon(t) <= 10.0)
        .last()
        .unwrap();
    assert!(last_ok >= 1 && acc.epsilon(last_ok + 1) > 10.0);
    let mut s = server(strategy);
    let mut m = Mem::new(&[("a", 1.0, 1), ("b", 2.0, 1)]);
    let mut r = rules(100, 0);
    r.privacy = Some(acc.clone());
    let report = run_rounds(&mut s, &mut m, &r).unwrap();
    assert!(report.stopped);
    assert_eq!(
        s.round(),
        last_ok,
        "stops after the last round within budget"
    );
    assert_eq!(report.outcomes.len() as u64, last_ok);
    let why = report.budget_stop.expect("the budget says why");
    assert!(why.contains("max_epsilon 10"), "{why}");
    assert!(acc.epsilon(s.round()) <= 10.0);
}

#[test]
fn a_budget_below_one_round_is_refused_up_front() {
    use fedprompt_fl::privacy::{privacy_accounting, PrivacyConfig};
    let strategy = StrategyConfig::DpFedAvg {
        clip_norm: 1.0,
        noise_multiplier: 0.5,
    };
    let budget = PrivacyConfig {
        max_epsilon: Some(0.01),
        ..PrivacyConfig::default()
    };
    let e = privacy_accounting(&strategy, Some(&budget), 1.0).unwrap_err();
    assert!(
        e.to_string()
            .contains("below the epsilon of a single round"),
        "{e}"
    );
    // [privacy] without any DP mechanism, and DP asked twice, are refused too.
    let e = privacy_accounting(&StrategyConfig::FedAvg, Some(&budget), 1.0).unwrap_err();
    assert!(e.to_string().contains("no DP mechanism is on"), "{e}");
    let both = PrivacyConfig {
        local: Some(fedprompt_fl::dp::GaussianDp {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        }),
        ..PrivacyConfig::default()
    };
    let e = privacy_accounting(&strategy, Some(&both), 1.0).unwrap_err();
    assert!(e.to_string().contains("choose one"), "{e}");
}
