//! Protocol tests: masks cancel, the aggregate is weighted FedAvg within the quantisation
//! bound, dropouts at every stage, clear failures below the threshold, and the server
//! holding nothing from which one client's update can be read.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

fn cfg(threshold: usize, neighbours: Option<usize>, rounding: Rounding) -> SecAggConfig {
    SecAggConfig {
        threshold,
        neighbours,
        clip_range: 1.0,
        bits: 32,
        max_weight: 1000,
        rounding,
        simulate_dropouts: SimulatedDropouts::default(),
    }
}

fn inputs(n: usize, dim: usize, seed: u64) -> Vec<ClientInput> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| ClientInput {
            client_id: format!("client-{i:02}"),
            update: (0..dim).map(|_| rng.random_range(-0.9f32..0.9)).collect(),
            num_examples: rng.random_range(1..=500),
        })
        .collect()
}

/// The exact weighted mean (f64) of the updates of `who`.
fn weighted_mean(inputs: &[ClientInput], who: &[ClientId]) -> Vec<f64> {
    let chosen: Vec<&ClientInput> = inputs
        .iter()
        .filter(|i| who.contains(&i.client_id))
        .collect();
    let total: f64 = chosen.iter().map(|i| i.num_examples as f64).sum();
    (0..inputs[0].update.len())
        .map(|j| {
            chosen
                .iter()
                .map(|i| i.num_examples as f64 * f64::from(i.update[j]))
                .sum::<f64>()
                / total
        })
        .collect()
}

fn max_error(mean: &[f32], exact: &[f64]) -> f64 {
    mean.iter()
        .zip(exact)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
}

fn run(
    c: &SecAggConfig,
    ins: &[ClientInput],
    drops: &BTreeMap<ClientId, DropStage>,
) -> Result<InProcessRound, SecAggError> {
    run_in_process(c, 1, 77, ins, drops, &mut ChaCha20Rng::seed_from_u64(9))
}

#[test]
fn masks_cancel_exactly() {
    // With nearest rounding the quantised inputs are deterministic: the unmasked sum must
    // decode to exactly what the plain sum of the quantised vectors decodes to.
    for (neighbours, threshold) in [(None, 5), (Some(4), 3)] {
        let c = cfg(threshold, neighbours, Rounding::Nearest);
        let ins = inputs(9, 300, 1);
        let r = run(&c, &ins, &BTreeMap::new()).unwrap();
        let q = Quantiser::new(&c, ins.len()).unwrap();
        let mut plain = vec![0u32; 301];
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        for i in &ins {
            let enc = q.encode(&i.update, i.num_examples, &mut rng).unwrap();
            for (s, e) in plain.iter_mut().zip(enc) {
                *s = s.wrapping_add(e);
            }
        }
        let (expected, total) = q.decode(&plain).unwrap();
        assert_eq!(r.outcome.mean, expected, "neighbours {neighbours:?}");
        assert_eq!(r.outcome.total_weight, total);
        // The masks were not trivial: no stored vector is its client's plain encoding.
        let stored = masked_vectors(&r.server_state);
        for i in &ins {
            let enc = q.encode(&i.update, i.num_examples, &mut rng).unwrap();
            let same = stored[&i.client_id]
                .iter()
                .zip(&enc)
                .filter(|(a, b)| a == b)
                .count();
            assert!(same < 3, "{}: {same} coordinates unmasked", i.client_id);
        }
    }
}

#[test]
fn aggregate_is_weighted_fedavg_within_the_quantisation_bound() {
    for rounding in [Rounding::Nearest, Rounding::Stochastic] {
        let c = cfg(5, Some(6), rounding);
        let ins = inputs(12, 500, 2);
        let r = run(&c, &ins, &BTreeMap::new()).unwrap();
        let ids: Vec<ClientId> = ins.iter().map(|i| i.client_id.clone()).collect();
        let exact = weighted_mean(&ins, &ids);
        let err = max_error(&r.outcome.mean, &exact);
        let bound = r.outcome.error_bound;
        eprintln!("{rounding:?}: max |secagg − fedavg| = {err:.3e}, bound {bound:.3e}");
        assert!(
            err <= bound,
            "{rounding:?}: error {err} above bound {bound}"
        );
        // The bound is tight enough to mean something: a step of 2/(L−1) with L ≈ 2^32/12000.
        assert!(bound < 1e-4, "{bound}");
        let total: u64 = ins.iter().map(|i| i.num_examples).sum();
        assert_eq!(r.outcome.total_weight, total);
    }
}

#[test]
fn weights_above_the_cap_are_capped() {
    let c = SecAggConfig {
        max_weight: 10,
        ..cfg(2, None, Rounding::Nearest)
    };
    let mut ins = inputs(3, 20, 3);
    ins[0].num_examples = 1_000_000;
    let r = run(&c, &ins, &BTreeMap::new()).unwrap();
    let capped: Vec<ClientInput> = ins
        .iter()
        .map(|i| ClientInput {
            num_examples: i.num_examples.min(10),
            ..i.clone()
        })
        .collect();
    let ids: Vec<ClientId> = ins.iter().map(|i| i.client_id.clone()).collect();
    let err = max_error(&r.outcome.mean, &weighted_mean(&capped, &ids));
    assert!(err <= r.outcome.error_bound, "{err}");
    assert_eq!(
        r.outcome.total_weight,
        10 + ins[1].num_examples.min(10) + ins[2].num_examples.min(10)
    );
}

fn drops(list: &[(usize, DropStage)]) -> BTreeMap<ClientId, DropStage> {
    list.iter()
        .map(|&(i, s)| (format!("client-{i:02}"), s))
        .collect()
}

#[test]
fn rounds_complete_with_dropouts_at_every_stage() {
    use DropStage::*;
    // 12 clients, 6 neighbours each, threshold 4: each client tolerates 2 lost neighbours,
    // and no scenario below loses more than 2 clients after the roster is fixed (a client
    // that never advertises is simply not in the graph).
    let scenarios: Vec<(&str, Vec<(usize, DropStage)>)> = vec![
        ("none", vec![]),
        (
            "two never advertise",
            vec![(0, BeforeAdvertising), (7, BeforeAdvertising)],
        ),
        (
            "two drop after advertising",
            vec![(3, AfterAdvertising), (8, AfterAdvertising)],
        ),
        (
            "two drop after sharing",
            vec![(1, AfterSharing), (10, AfterSharing)],
        ),
        (
            "two drop after masking",
            vec![(2, AfterMasking), (9, AfterMasking)],
        ),
        (
            "one before advertising, one after advertising, one after sharing",
            vec![
                (0, BeforeAdvertising),
                (4, AfterAdvertising),
                (6, AfterSharing),
            ],
        ),
        (
            "one before advertising, one after sharing, one after masking",
            vec![
                (0, BeforeAdvertising),
                (6, AfterSharing),
                (11, AfterMasking),
            ],
        ),
    ];
    let ins = inputs(12, 200, 4);
    for neighbours in [Some(6), None] {
        let c = cfg(
            if neighbours.is_some() { 4 } else { 7 },
            neighbours,
            Rounding::Nearest,
        );
        for (name, list) in &scenarios {
            let d = drops(list);
            let r = run(&c, &ins, &d)
                .unwrap_or_else(|e| panic!("{name} (neighbours {neighbours:?}): {e}"));
            let expected_survivors: Vec<ClientId> = ins
                .iter()
                .map(|i| i.client_id.clone())
                .filter(|id| d.get(id).is_none_or(|s| *s == AfterMasking))
                .collect();
            assert_eq!(r.outcome.survivors, expected_survivors, "{name}");
            let dropped: Vec<ClientId> = d
                .iter()
                .filter(|(_, s)| **s == AfterSharing)
                .map(|(c, _)| c.clone())
                .collect();
            assert_eq!(r.outcome.dropped, dropped, "{name}");
            let err = max_error(&r.outcome.mean, &weighted_mean(&ins, &expected_survivors));
            assert!(err <= r.outcome.error_bound, "{name}: {err}");
        }
    }
}

#[test]
fn too_many_dropouts_fail_clearly() {
    use DropStage::*;
    let ins = inputs(6, 50, 5);
    // Complete graph over 6: 5 neighbours each, threshold 4.
    let c = cfg(4, None, Rounding::Nearest);
    let cases: Vec<(Vec<(usize, DropStage)>, &str)> = vec![
        // 4 left: 3 neighbours each, below the threshold, at roster time.
        (
            vec![(0, BeforeAdvertising), (1, BeforeAdvertising)],
            "advertise keys",
        ),
        // 2 of 6 do not share: the others have only 3 sharing neighbours.
        (
            vec![(0, AfterAdvertising), (1, AfterAdvertising)],
            "share keys",
        ),
        // 2 do not send masked input: 3 neighbours left to reveal shares.
        (vec![(0, AfterSharing), (1, AfterSharing)], "masked input"),
    ];
    for (list, stage) in cases {
        let e = run(&c, &ins, &drops(&list)).unwrap_err();
        assert!(
            matches!(&e, SecAggError::TooFewClients { stage: s, .. } if *s == stage),
            "{stage}: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("needed") && msg.contains(stage), "{msg}");
    }
    // 2 survivors stop answering the unmask request: 3 shares of each seed come back.
    let e = run(&c, &ins, &drops(&[(0, AfterMasking), (1, AfterMasking)])).unwrap_err();
    assert!(
        matches!(
            e,
            SecAggError::TooFewShares {
                have: 3,
                need: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("too many clients dropped"), "{e}");
}

fn masked_vectors(server: &SecAggServer) -> BTreeMap<ClientId, Vec<u32>> {
    let v = serde_json::to_value(server).unwrap();
    serde_json::from_value(v["masked"].clone()).unwrap()
}

#[test]
fn the_server_stores_nothing_that_reveals_one_update() {
    // One honest target among 8 clients; everyone survives. Inspect everything the server
    // holds at the end, serialised.
    let c = cfg(4, Some(6), Rounding::Nearest);
    let ins = inputs(8, 400, 6);
    let target = &ins[3];
    let r = run(&c, &ins, &BTreeMap::new()).unwrap();
    let state = serde_json::to_value(&r.server_state).unwrap();
    let text = state.to_string();
    let q = Quantiser::new(&c, ins.len()).unwrap();
    let enc = q
        .encode(
            &target.update,
            target.num_examples,
            &mut ChaCha20Rng::seed_from_u64(0),
        )
        .unwrap();

    // 1. The stored masked vector is statistically unrelated to the quantised update:
    //    about as many equal coordinates as chance (1 in 2^32) and no correlation.
    let stored = &masked_vectors(&r.server_state)[&target.client_id];
    let equal = stored.iter().zip(&enc).filter(|(a, b)| a == b).count();
    assert_eq!(equal, 0);
    let corr = correlation(stored, &enc);
    eprintln!("correlation(masked, quantised update) = {corr:.4}");
    assert!(corr.abs() < 0.2, "{corr}");
    // Uniform-looking: the mean word is near 2^31, the middle of the modulus.
    let mean = stored.iter().map(|&v| f64::from(v)).sum::<f64>() / stored.len() as f64;
    assert!((mean / 2f64.powi(31) - 1.0).abs() < 0.1, "{mean}");

    // 2. Even with the target's self-mask seed (which the server does recover, as the
    //    protocol intends for survivors), the pairwise masks remain: the server holds no
    //    share of the target's masking key, so it cannot remove them.
    let key_shares = &state["mask_key_shares"];
    assert!(key_shares.get(&target.client_id).is_none(), "{key_shares}");
    let b_shares: Vec<shamir::Share> =
        serde_json::from_value(state["self_mask_shares"][&target.client_id].clone()).unwrap();
    let seed = shamir::combine(&b_shares, c.threshold).unwrap();
    let without_self: Vec<u32> = stored
        .iter()
        .zip(crypto::prg(&seed, stored.len(), q.modulus_mask()))
        .map(|(s, m)| s.wrapping_sub(m))
        .collect();
    let equal = without_self
        .iter()
        .zip(&enc)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(equal, 0, "pairwise masks must still hide the update");
    assert!(correlation(&without_self, &enc).abs() < 0.2);

    // 3. The relayed shares are ciphertexts: no share pair appears in clear, and the
    //    target's float update appears nowhere.
    assert!(
        !text.contains("self_mask\""),
        "plain share pairs in the server state"
    );
    assert!(
        !text.contains("mask_key\""),
        "plain share pairs in the server state"
    );
    for v in target.update.iter().take(20) {
        assert!(
            !text.contains(&v.to_string()),
            "update value {v} in the server state"
        );
    }

    // 4. A late masked input (which, after a dropout, the server could unmask with the
    //    dropped client's recovered key) is refused once its stage has closed.
    let mut s = r.server_state.clone();
    let late = MaskedInput {
        client_id: target.client_id.clone(),
        vector: enc.clone(),
    };
    assert!(matches!(
        s.receive_masked(late),
        Err(SecAggError::WrongStage { .. })
    ));
}

fn correlation(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
        b.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn clients_refuse_to_reveal_both_secrets_of_one_client() {
    let c = cfg(2, None, Rounding::Nearest);
    let ins = inputs(3, 4, 7);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ids: Vec<ClientId> = ins.iter().map(|i| i.client_id.clone()).collect();
    let mut server = SecAggServer::new(&c, 1, 5, &ids, 4).unwrap();
    let mut clients = Vec::new();
    for i in &ins {
        let (cl, msg) = SecAggClient::new(i.client_id.clone(), &c, &mut rng).unwrap();
        server.receive_keys(msg).unwrap();
        clients.push(cl);
    }
    let roster = server.roster().unwrap();
    for cl in &mut clients {
        server
            .receive_shares(cl.share_keys(&roster, &mut rng).unwrap())
            .unwrap();
    }
    let fwd = server.forward_shares().unwrap();
    for (cl, i) in clients.iter_mut().zip(&ins) {
        let m = cl
            .masked_input(&fwd[&i.client_id], &i.update, i.num_examples, &mut rng)
            .unwrap();
        server.receive_masked(m).unwrap();
    }
    let lying = UnmaskRequest {
        survivors: ids.clone(),
        dropped: vec![ids[1].clone()],
    };
    let e = clients[0].unmask(&lying).unwrap_err();
    assert!(e.to_string().contains("both survivor and dropped"), "{e}");
    // Messages out of order are refused with the stage named.
    let e = server.roster().unwrap_err();
    assert!(e.to_string().contains("advertise keys"), "{e}");
    let e = clients[1]
        .share_keys(&roster, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("share keys"), "{e}");
}

#[test]
fn tampered_or_misaddressed_messages_are_refused() {
    let c = cfg(2, None, Rounding::Nearest);
    let ins = inputs(3, 4, 8);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let ids: Vec<ClientId> = ins.iter().map(|i| i.client_id.clone()).collect();
    let mut server = SecAggServer::new(&c, 1, 5, &ids, 4).unwrap();
    let mut clients = Vec::new();
    for i in &ins {
        let (cl, msg) = SecAggClient::new(i.client_id.clone(), &c, &mut rng).unwrap();
        server.receive_keys(msg.clone()).unwrap();
        assert!(matches!(
            server.receive_keys(msg),
            Err(SecAggError::Duplicate { .. })
        ));
        clients.push(cl);
    }
    let stranger = AdvertiseKeys {
        client_id: "stranger".into(),
        keys: PublicKeys {
            cipher: [1; 32],
            mask: [2; 32],
        },
    };
    assert!(matches!(
        server.receive_keys(stranger),
        Err(SecAggError::UnknownClient { .. })
    ));
    let roster = server.roster().unwrap();
    for cl in &mut clients {
        server
            .receive_shares(cl.share_keys(&roster, &mut rng).unwrap())
            .unwrap();
    }
    let mut fwd = server.forward_shares().unwrap();
    let f = fwd.get_mut(&ids[0]).unwrap();
    f.shares[0].ciphertext[0] ^= 1;
    let e = clients[0]
        .masked_input(f, &ins[0].update, 1, &mut rng)
        .unwrap_err();
    assert!(e.to_string().contains("does not open"), "{e}");
    let e = clients[1]
        .masked_input(&fwd[&ids[2]], &ins[1].update, 1, &mut rng)
        .unwrap_err();
    assert!(e.to_string().contains("delivered"), "{e}");
}
