//! Round state machine, communication ledger and checkpoints.

use std::collections::BTreeMap;

use fedprompt_fl::{
    ClientUpdate, EvaluateResult, FlError, Params, Phase, RoundPolicy, Server, ServerState,
    StrategyConfig,
};

fn global0() -> Params {
    Params::new()
        .with("prompt", vec![1, 8], vec![0.0; 8])
        .unwrap()
        .with("head", vec![3], vec![0.0; 3])
        .unwrap()
}

fn clients(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("c{i}")).collect()
}

/// A deterministic stand-in for local training: move towards a client-specific target.
fn local_train(global: &Params, client: &str, round: u64) -> Params {
    let idx: f32 = client[1..].parse().unwrap();
    let mut p = global.clone();
    for (_, t) in p.iter_mut() {
        for (j, v) in t.data_mut().iter_mut().enumerate() {
            *v += 0.5 * (idx + j as f32 * 0.1 - *v) + round as f32 * 0.01;
        }
    }
    p
}

/// Drives `rounds` rounds in memory, sending and receiving safetensors bytes.
fn drive(server: &mut Server, rounds: u64, available: &[String]) {
    for _ in 0..rounds {
        let mut fit = server.begin_fit(available).unwrap();
        let down = server.global().to_safetensors().unwrap();
        for c in fit.plan().clients.clone() {
            fit.record_sent(&c, down.len() as u64).unwrap();
            let params = Params::from_safetensors(&down).unwrap();
            let local = local_train(&params, &c, fit.plan().round);
            let up = local.to_safetensors().unwrap();
            let n = 100 + c[1..].parse::<u64>().unwrap();
            fit.submit_bytes(&c, &up, n, [("loss".to_string(), 1.0)].into())
                .unwrap();
        }
        let out = server.finish_fit(fit).unwrap();
        assert!(out.aggregated);
    }
}

fn fedavg_server(policy: RoundPolicy) -> Server {
    Server::new(global0(), StrategyConfig::FedAvg.build(policy).unwrap()).unwrap()
}

#[test]
fn simulated_rounds_match_direct_fedavg_and_count_bytes() {
    let policy = RoundPolicy {
        fraction_fit: 0.6,
        seed: 5,
        ..RoundPolicy::default()
    };
    let mut server = fedavg_server(policy);
    let pool = clients(5);
    let wire = global0().wire_len().unwrap() as u64;

    // Round 1 by hand.
    let plan = StrategyConfig::FedAvg
        .build(RoundPolicy {
            fraction_fit: 0.6,
            seed: 5,
            ..RoundPolicy::default()
        })
        .unwrap()
        .configure_fit(1, &pool)
        .unwrap();
    assert_eq!(plan.clients.len(), 3);
    let updates: Vec<_> = plan
        .clients
        .iter()
        .map(|c| {
            ClientUpdate::new(
                c.clone(),
                local_train(&global0(), c, 1),
                100 + c[1..].parse::<u64>().unwrap(),
            )
        })
        .collect();
    let expected = fedprompt_fl::fedavg(1, &global0(), &updates).unwrap();

    drive(&mut server, 1, &pool);
    assert_eq!(server.round(), 1);
    assert_eq!(server.global(), &expected);
    drive(&mut server, 2, &pool);
    assert_eq!(server.round(), 3);

    let ledger = server.ledger();
    assert_eq!(ledger.entries().len(), 9);
    for e in ledger.entries() {
        assert_eq!(e.traffic.up, wire, "{e:?}");
        assert_eq!(e.traffic.down, wire);
    }
    assert_eq!(ledger.total().up, 9 * wire);
    assert_eq!(ledger.total().total(), 18 * wire);
    assert_eq!(ledger.per_round().len(), 3);
    assert_eq!(ledger.round_total(2).down, 3 * wire);
    assert_eq!(
        ledger.per_client().values().map(|t| t.up).sum::<u64>(),
        9 * wire
    );
}

#[test]
fn one_client_with_c_1_equals_local_training() {
    let mut server = fedavg_server(RoundPolicy::default());
    drive(&mut server, 1, &clients(1));
    assert_eq!(server.global(), &local_train(&global0(), "c0", 1));
}

#[test]
fn bad_and_missing_clients_become_failures() {
    let mut server = fedavg_server(RoundPolicy::default());
    let pool = clients(4);
    let mut fit = server.begin_fit(&pool).unwrap();
    let good = local_train(server.global(), "c0", 1);
    fit.submit(ClientUpdate::new("c0", good.clone(), 10), 123)
        .unwrap();
    // Corrupt bytes.
    let bytes = good.to_safetensors().unwrap();
    let e = fit
        .submit_bytes("c1", &bytes[..bytes.len() - 3], 10, BTreeMap::new())
        .unwrap_err();
    assert!(matches!(e, FlError::InvalidUpdate { ref client_id, .. } if client_id == "c1"));
    // NaN.
    let mut nan = good.clone();
    nan.get_mut("head").unwrap().data_mut()[0] = f32::NAN;
    let e = fit.submit(ClientUpdate::new("c2", nan, 10), 1).unwrap_err();
    assert!(
        e.to_string().contains("c2") && e.to_string().contains("head"),
        "{e}"
    );
    // Unknown and duplicate clients change nothing.
    assert!(matches!(
        fit.submit(ClientUpdate::new("intruder", good.clone(), 10), 1),
        Err(FlError::UnknownClient { .. })
    ));
    assert!(matches!(
        fit.submit(ClientUpdate::new("c0", good.clone(), 10), 1),
        Err(FlError::DuplicateClient { .. })
    ));
    assert_eq!(fit.pending(), vec!["c3".to_string()]);
    let out = server.finish_fit(fit).unwrap();
    assert!(out.aggregated);
    assert_eq!((out.n_ok, out.n_failed), (1, 3));
    let failed: Vec<_> = out.failures.iter().map(|f| f.client_id.as_str()).collect();
    assert_eq!(failed, ["c1", "c2", "c3"]);
    assert!(out.failures[2].reason.contains("no answer"));
    assert_eq!(server.global(), &good);
    assert_eq!(out.traffic.up, 123 + (bytes.len() as u64 - 3) + 1);
}

#[test]
fn quorum_and_accept_failures() {
    let policy = RoundPolicy {
        min_fit_results: 2,
        ..RoundPolicy::default()
    };
    let mut server = fedavg_server(policy);
    let pool = clients(3);
    let mut fit = server.begin_fit(&pool).unwrap();
    fit.submit(
        ClientUpdate::new("c0", local_train(&global0(), "c0", 1), 5),
        0,
    )
    .unwrap();
    fit.fail("c1", "timeout").unwrap();
    let out = server.finish_fit(fit).unwrap();
    assert!(!out.aggregated);
    assert!(out.skipped.unwrap().contains("quorum"));
    assert_eq!(server.global(), &global0());
    assert_eq!(server.round(), 1);

    let strict = RoundPolicy {
        accept_failures: false,
        ..RoundPolicy::default()
    };
    let mut server = fedavg_server(strict);
    let mut fit = server.begin_fit(&pool).unwrap();
    fit.submit(
        ClientUpdate::new("c0", local_train(&global0(), "c0", 1), 5),
        0,
    )
    .unwrap();
    fit.submit(
        ClientUpdate::new("c1", local_train(&global0(), "c1", 1), 5),
        0,
    )
    .unwrap();
    fit.fail("c2", "disconnected").unwrap();
    assert!(!server.finish_fit(fit).unwrap().aggregated);

    // A quorum larger than the sample is a configuration error at planning time.
    let big = RoundPolicy {
        fraction_fit: 0.5,
        min_fit_results: 3,
        ..RoundPolicy::default()
    };
    assert!(matches!(
        fedavg_server(big).begin_fit(&clients(4)),
        Err(FlError::Config(_))
    ));
    // Stale round objects are refused.
    let mut server = fedavg_server(RoundPolicy::default());
    let a = server.begin_fit(&pool).unwrap();
    let b = server.begin_fit(&pool).unwrap();
    server.finish_fit(a).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        server.finish_fit(b),
        Err(FlError::RoundMismatch { .. })
    ));
}

#[test]
fn evaluation_round() {
    let mut server = fedavg_server(RoundPolicy {
        fraction_evaluate: 0.5,
        ..RoundPolicy::default()
    });
    drive(&mut server, 1, &clients(4));
    let mut ev = server.begin_evaluate(&clients(4)).unwrap();
    assert_eq!(ev.plan().round, 1);
    assert_eq!(ev.plan().phase, Phase::Evaluate);
    let selected = ev.plan().clients.clone();
    assert_eq!(selected.len(), 2);
    ev.submit(
        EvaluateResult {
            client_id: selected[0].clone(),
            num_examples: 30,
            metrics: [("accuracy".into(), 0.6)].into(),
        },
        50,
    )
    .unwrap();
    ev.submit(
        EvaluateResult {
            client_id: selected[1].clone(),
            num_examples: 10,
            metrics: [("accuracy".into(), 1.0)].into(),
        },
        50,
    )
    .unwrap();
    let out = server.finish_evaluate(ev).unwrap();
    let agg = out.aggregate.unwrap();
    assert!((agg.metrics["accuracy"] - 0.7).abs() < 1e-12);
    assert_eq!(server.ledger().phase_total(Phase::Evaluate).up, 100);
}

fn adam() -> StrategyConfig {
    StrategyConfig::FedAdam {
        eta: 0.05,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
        bias_correction: false,
    }
}

#[test]
fn checkpoint_resume_equals_uninterrupted_run() {
    let policy = RoundPolicy {
        fraction_fit: 0.5,
        seed: 11,
        ..RoundPolicy::default()
    };
    let pool = clients(6);
    let mut straight = Server::new(global0(), adam().build(policy.clone()).unwrap()).unwrap();
    drive(&mut straight, 4, &pool);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut first = Server::new(global0(), adam().build(policy.clone()).unwrap()).unwrap();
    drive(&mut first, 2, &pool);
    first.state().save_checkpoint(&path).unwrap();
    // Only the checkpoint is left in the folder (no temporary file).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let state = ServerState::load_checkpoint(&path).unwrap();
    assert_eq!(state, first.state());
    let mut resumed = Server::from_state(state, adam().build(policy.clone()).unwrap()).unwrap();
    drive(&mut resumed, 2, &pool);
    assert_eq!(resumed.round(), 4);
    assert_eq!(resumed.global(), straight.global());
    assert_eq!(resumed.state(), straight.state());
    assert_eq!(resumed.ledger(), straight.ledger());
    // Overwriting an existing checkpoint works.
    resumed.state().save_checkpoint(&path).unwrap();
    assert_eq!(ServerState::load_checkpoint(&path).unwrap().round, 4);
}

#[test]
fn checkpoint_errors_are_clear() {
    let policy = RoundPolicy::default();
    let mut s = Server::new(global0(), adam().build(policy.clone()).unwrap()).unwrap();
    drive(&mut s, 1, &clients(2));
    let state = s.state();
    let bytes = state.to_bytes().unwrap();
    assert_eq!(ServerState::from_bytes(&bytes).unwrap(), state);

    // Wrong strategy or seed.
    let e = Server::from_state(
        state.clone(),
        StrategyConfig::FedAvg.build(policy.clone()).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("fedadam"), "{e}");
    let other_seed = RoundPolicy { seed: 1, ..policy };
    assert!(Server::from_state(state, adam().build(other_seed).unwrap()).is_err());

    // Truncated bytes, plain params (no metadata), missing file.
    assert!(matches!(
        ServerState::from_bytes(&bytes[..bytes.len() / 2]),
        Err(FlError::Checkpoint(_))
    ));
    let e = ServerState::from_bytes(&global0().to_safetensors().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not a fedprompt checkpoint"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = ServerState::load_checkpoint(dir.path().join("nope")).unwrap_err();
    assert!(matches!(e, FlError::Io { .. }));
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let e = ServerState::load_checkpoint(&junk).unwrap_err();
    assert!(e.to_string().contains("junk"), "{e}");
}

#[test]
fn errors_print_their_cause_once() {
    // A variant prints its cause or returns it as `source()`, never both: a printer of the
    // whole chain (anyhow's `{:#}`) must not repeat the operating system's message.
    let e = fedprompt_fl::ServerState::load_checkpoint(std::path::Path::new("/no/such/ckpt"))
        .unwrap_err();
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
}

#[test]
fn encoded_updates_are_decoded_onto_the_global_and_bad_encodings_fail_their_client() {
    use fedprompt_fl::codec::Codec;
    let mut server = fedavg_server(RoundPolicy::default());
    let pool = clients(3);
    let mut fit = server.begin_fit(&pool).unwrap();
    let global = server.global().clone();
    let local = local_train(&global, "c1", 1);
    let delta = local.sub(&global).unwrap();
    let codec = Codec::Int8;
    let bytes = codec.encode(&delta).unwrap();
    fit.submit_encoded("c0", &bytes, &codec, &global, 10, BTreeMap::new())
        .unwrap();
    // What was submitted is global + decode(bytes), within int8's half step of the delta.
    let mut want = global.clone();
    want.add_scaled(&codec.decode(&bytes, &global.layout()).unwrap(), 1.0)
        .unwrap();
    assert_eq!(fit.results()[0].params, want);
    // Another codec's encoding, and plain parameters: refused, naming the codec expected.
    let f16 = Codec::F16.encode(&delta).unwrap();
    let e = fit
        .submit_encoded("c1", &f16, &codec, &global, 10, BTreeMap::new())
        .unwrap_err();
    assert!(
        matches!(e, FlError::Codec(ref m) if m.contains("`c1`") && m.contains("`int8`")),
        "{e}"
    );
    let plain = local.to_safetensors().unwrap();
    assert!(fit
        .submit_encoded("c2", &plain, &codec, &global, 10, BTreeMap::new())
        .is_err());
    assert!(fit.is_complete());
    assert_eq!(fit.failures().len(), 2);
    // Every upload's bytes are counted, refused ones too; record_received adds more.
    let outcome = server.finish_fit(fit).unwrap();
    assert_eq!(
        outcome.traffic.up,
        (bytes.len() + f16.len() + plain.len()) as u64
    );
    let mut fit = server.begin_fit(&pool).unwrap();
    fit.record_received("c0", 77).unwrap();
    assert!(fit.record_received("intruder", 1).is_err());
    for c in pool {
        fit.fail(&c, "test").unwrap();
    }
    assert_eq!(server.finish_fit(fit).unwrap().traffic.up, 77);
}
