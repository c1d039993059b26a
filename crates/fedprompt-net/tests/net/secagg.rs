// Secure aggregation (SecAgg+) over real gRPC: the aggregate equals plain FedAvg within the
// quantiser's bound, the server only ever holds masked vectors, and rounds complete when
// clients drop after sharing keys or during unmasking.

use bytes::Bytes;
use fedprompt_fl::secagg::{
    ForwardedShares, Quantiser, Roster, SecAggClient, SecAggConfig, UnmaskRequest,
};
use fedprompt_fl::{Params, ServerState};
use fedprompt_net::proto::{self, task_message, update_message, SecAggStage, TaskKind};
use fedprompt_net::{raw_client, update_messages, Event, RawClient, SECURE_AGGREGATION};

use crate::federation::{
    events_in, fixture, init_tracing, join_config, policy, serve_config, spawn_client, trainer,
    Fixture,
};

fn secagg_config(threshold: usize) -> SecAggConfig {
    // Deltas of the test trainer stay within ±1: no clipping, only quantisation.
    toml::from_str(&format!("threshold = {threshold}\nclip_range = 2.0")).unwrap()
}

/// The values of `p`, tensor after tensor in name order.
fn flatten(p: &Params) -> Vec<f32> {
    p.iter()
        .flat_map(|(_, t)| t.data().iter().copied())
        .collect()
}

/// One task as a hand-driven client receives it.
struct Got {
    kind: TaskKind,
    round: u64,
    stage: i32,
    header: proto::TaskHeader,
    payload: Vec<u8>,
}

async fn next_task(c: &mut RawClient) -> Got {
    loop {
        let mut s = c
            .get_task(proto::TaskRequest { wait_ms: 5000 })
            .await
            .unwrap()
            .into_inner();
        let Some(proto::TaskMessage {
            body: Some(task_message::Body::Header(h)),
        }) = s.message().await.unwrap()
        else {
            panic!("no header")
        };
        let mut payload = h.params_inline.to_vec();
        while let Some(m) = s.message().await.unwrap() {
            if let Some(task_message::Body::Chunk(c)) = m.body {
                payload.extend_from_slice(&c);
            }
        }
        let kind = TaskKind::try_from(h.kind).unwrap();
        if kind != TaskKind::Wait {
            return Got {
                kind,
                round: h.round,
                stage: h.secagg_stage,
                header: h,
                payload,
            };
        }
    }
}

async fn answer(c: &mut RawClient, round: u64, stage: SecAggStage, bytes: Vec<u8>, n: u64) {
    let mut m = update_messages(round, n, Default::default(), Bytes::from(bytes), 1024);
    if let Some(update_message::Body::Header(h)) = m[0].body.as_mut() {
        h.secagg_stage = stage as i32;
    }
    c.submit_update(tokio_stream::iter(m)).await.unwrap();
}

/// When a hand-driven client stops answering.
#[derive(Clone, Copy, PartialEq)]
enum StopAt {
    Never,
    /// Advertises keys, never shares them.
    ShareKeys,
    /// Shares keys, never sends its masked input.
    MaskedInput,
    /// Sends its masked input, never answers the unmask request.
    Unmask,
}

/// What a hand-driven client saw and sent in its first round.
struct Record {
    cfg: SecAggConfig,
    roster_len: usize,
    update: Vec<f32>,
    weight: u64,
    masked: Vec<u32>,
}

/// A client driven message by message with the core's state machine, so the test knows
/// exactly what it put on the wire.
async fn hand_client(fx: &Fixture, port: u16, id: &str, index: usize, stop: StopAt) -> Record {
    let mut c = raw_client(&join_config(fx, port, id)).await.unwrap();
    c.register(proto::RegisterRequest {
        protocol_version: proto::PROTOCOL_VERSION,
        agent: "hand".into(),
    })
    .await
    .unwrap();
    let t = trainer(index);
    let mut first: Option<Record> = None;
    let mut state: Option<(SecAggClient, Vec<f32>)> = None;
    loop {
        let got = next_task(&mut c).await;
        let round = got.round;
        match got.kind {
            TaskKind::Finished => return first.expect("took part in a round"),
            TaskKind::Fit => {
                let global = Params::from_safetensors(&got.payload).unwrap();
                let config = proto::config_from_wire(&got.header.config);
                let Some(fedprompt_fl::ConfigValue::Str(json)) = config.get(SECURE_AGGREGATION)
                else {
                    panic!("the FIT task does not announce secure aggregation: {config:?}")
                };
                let task: serde_json::Value = serde_json::from_str(json).unwrap();
                let cfg: SecAggConfig = serde_json::from_value(task["config"].clone()).unwrap();
                let update = flatten(&t.apply(&global, round).sub(&global).unwrap());
                let (client, adv) = SecAggClient::new(id, &cfg, &mut rand::rng()).unwrap();
                let msg = serde_json::to_vec(&adv).unwrap();
                answer(
                    &mut c,
                    round,
                    SecAggStage::AdvertiseKeys,
                    msg,
                    t.num_examples,
                )
                .await;
                if first.is_none() {
                    first = Some(Record {
                        cfg,
                        roster_len: 0,
                        update: update.clone(),
                        weight: t.num_examples,
                        masked: Vec::new(),
                    });
                }
                state = Some((client, update));
            }
            TaskKind::Secagg => {
                let (client, update) = state.as_mut().unwrap();
                let stage = SecAggStage::try_from(got.stage).unwrap();
                let reply = match stage {
                    SecAggStage::ShareKeys => {
                        if stop == StopAt::ShareKeys {
                            return first.unwrap();
                        }
                        let roster: Roster = serde_json::from_slice(&got.payload).unwrap();
                        if let Some(r) = first.as_mut().filter(|r| r.roster_len == 0) {
                            r.roster_len = roster.keys.len();
                        }
                        let m = client.share_keys(&roster, &mut rand::rng()).unwrap();
                        serde_json::to_vec(&m).unwrap()
                    }
                    SecAggStage::MaskedInput => {
                        if stop == StopAt::MaskedInput {
                            return first.unwrap();
                        }
                        let fwd: ForwardedShares = serde_json::from_slice(&got.payload).unwrap();
                        let m = client
                            .masked_input(&fwd, update, t.num_examples, &mut rand::rng())
                            .unwrap();
                        if let Some(r) = first.as_mut().filter(|r| r.masked.is_empty()) {
                            r.masked = m.vector.clone();
                        }
                        m.vector.iter().flat_map(|w| w.to_le_bytes()).collect()
                    }
                    SecAggStage::Unmask => {
                        if stop == StopAt::Unmask {
                            return first.unwrap();
                        }
                        let req: UnmaskRequest = serde_json::from_slice(&got.payload).unwrap();
                        serde_json::to_vec(&client.unmask(&req).unwrap()).unwrap()
                    }
                    other => panic!("unexpected stage {other:?}"),
                };
                answer(&mut c, round, stage, reply, 0).await;
            }
            other => panic!("unexpected task {other:?}"),
        }
    }
}

/// A client that breaks the protocol of a securely aggregated round: plain parameters, then
/// keys in another client's name (which drops it), then another message (out of the round).
async fn rogue(fx: &Fixture, port: u16) {
    let mut c = raw_client(&join_config(fx, port, "r0")).await.unwrap();
    c.register(proto::RegisterRequest {
        protocol_version: proto::PROTOCOL_VERSION,
        agent: "rogue".into(),
    })
    .await
    .unwrap();
    let got = next_task(&mut c).await;
    assert_eq!(got.kind, TaskKind::Fit);
    let round = got.round;
    let plain = update_messages(round, 5, Default::default(), Bytes::from(got.payload), 1024);
    let e = c
        .submit_update(tokio_stream::iter(plain))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("securely aggregated"),
        "{}",
        e.message()
    );
    let cfg = secagg_config(3);
    let (_, mut adv) = SecAggClient::new("r0", &cfg, &mut rand::rng()).unwrap();
    adv.client_id = "c0".into();
    let send = |bytes: Vec<u8>| {
        let mut m = update_messages(round, 5, Default::default(), Bytes::from(bytes), 1024);
        if let Some(update_message::Body::Header(h)) = m[0].body.as_mut() {
            h.secagg_stage = SecAggStage::AdvertiseKeys as i32;
        }
        m
    };
    let m = send(serde_json::to_vec(&adv).unwrap());
    let e = c.submit_update(tokio_stream::iter(m)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("names `c0` as its sender"),
        "{}",
        e.message()
    );
    adv.client_id = "r0".into();
    let m = send(serde_json::to_vec(&adv).unwrap());
    let e = c.submit_update(tokio_stream::iter(m)).await.unwrap_err();
    assert!(e.message().contains("out of this round"), "{}", e.message());
}

/// Plain FedAvg of the deltas of `clients` (trainer index, in the sum) from `global`, in f64.
fn plain_fedavg(global: &Params, round: u64, clients: &[usize]) -> Params {
    let deltas: Vec<(f64, Vec<f32>)> = clients
        .iter()
        .map(|&i| {
            let t = trainer(i);
            let d = flatten(&t.apply(global, round).sub(global).unwrap());
            (t.num_examples as f64, d)
        })
        .collect();
    let total: f64 = deltas.iter().map(|(w, _)| w).sum();
    let mut next = global.clone();
    let mut j = 0;
    for (_, t) in next.iter_mut() {
        for x in t.data_mut() {
            let s: f64 = deltas.iter().map(|(w, d)| w * f64::from(d[j])).sum();
            *x = (f64::from(*x) + s / total) as f32;
            j += 1;
        }
    }
    next
}

fn max_abs_diff(a: &Params, b: &Params) -> f64 {
    flatten(a)
        .iter()
        .zip(flatten(b))
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_aggregation_equals_fedavg_and_the_server_holds_only_masked_vectors() {
    init_tracing();
    let ids = ["c0", "c1", "c2", "c3", "spy"];
    let fx = fixture(&ids);
    let rounds = 2;
    let mut cfg = serve_config(&fx, rounds, policy(5, 3, 1.0));
    cfg.secure_aggregation = Some(secagg_config(3));
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();

    // A client of protocol version 1 cannot take part: refused with the reason.
    let mut old = raw_client(&join_config(&fx, port, "c0")).await.unwrap();
    let e = old
        .register(proto::RegisterRequest {
            protocol_version: 1,
            agent: "old".into(),
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("secure aggregation"),
        "{}",
        e.message()
    );

    let clients: Vec<_> = (0..4)
        .map(|i| spawn_client(join_config(&fx, port, ids[i]), trainer(i)))
        .collect();
    let spy = hand_client(&fx, port, "spy", 4, StopAt::Never).await;
    let summary = server.wait().await.unwrap();
    for c in clients {
        let s = c.await.unwrap().unwrap();
        assert!(s.finished);
        assert_eq!(s.rounds_trained, vec![1, 2], "{:?}", s.refused);
    }
    assert!(summary.outcomes.iter().all(|o| o.aggregated && o.n_ok == 5));

    // (a) The aggregate equals plain FedAvg within the quantiser's bound. Each round adds
    // at most the bound; the trainer halves what the global carried, so after two rounds
    // the gap stays below 1.5 bounds.
    let q = Quantiser::new(&spy.cfg, spy.roster_len).unwrap();
    let bound = q.error_bound();
    let mut want = fx.initial.clone();
    for round in 1..=rounds {
        want = plain_fedavg(&want, round, &[0, 1, 2, 3, 4]);
    }
    let diff = max_abs_diff(&summary.global, &want);
    assert!(diff <= 1.5 * bound, "max abs diff {diff}, bound {bound}");
    assert!(max_abs_diff(&summary.global, &fx.initial) > 1000.0 * bound);

    // (b) What the server received from the spy is masked: read as the spy's quantised
    // update, it is wrong by far more than the bound on almost every value.
    let quantised = q.encode(&spy.update, spy.weight, &mut rand::rng()).unwrap();
    assert_eq!(spy.masked.len(), quantised.len());
    let same = spy
        .masked
        .iter()
        .zip(&quantised)
        .filter(|(m, q)| m == q)
        .count();
    assert!(same * 100 < quantised.len(), "{same} values unmasked");
    let w = spy.weight as f64;
    let read_back: Vec<f64> = spy.masked[..spy.update.len()]
        .iter()
        .map(|&m| f64::from(m) / w * q.step() - 2.0)
        .collect();
    let mean_err = read_back
        .iter()
        .zip(&spy.update)
        .map(|(r, u)| (r - f64::from(*u)).abs())
        .sum::<f64>()
        / read_back.len() as f64;
    assert!(mean_err > 1e4 * bound, "mean error {mean_err}");

    // Nothing the server wrote holds an individual update: the checkpoint's global is the
    // aggregate, which is no client's own update of the last round...
    let ckpt = ServerState::load_checkpoint(fx.dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ckpt.global, summary.global);
    let prev = plain_fedavg(&fx.initial, 1, &[0, 1, 2, 3, 4]);
    for i in 0..5 {
        let own = trainer(i).apply(&prev, 2);
        assert!(
            max_abs_diff(&ckpt.global, &own) > 100.0 * bound,
            "client {i}'s own update"
        );
    }
    // ...and the events carry counts and names, never a vector of values.
    fn longest_array(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => {
                a.len().max(a.iter().map(longest_array).max().unwrap_or(0))
            }
            serde_json::Value::Object(o) => o.values().map(longest_array).max().unwrap_or(0),
            _ => 0,
        }
    }
    let events = events_in(&fx.dir.path().join("events.jsonl"));
    assert!(events.iter().all(|e| longest_array(e) <= ids.len()));
    let stages: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sec_agg_stage")
        .collect();
    assert_eq!(stages.len(), 4 * rounds as usize, "{stages:?}");
    assert!(stages.iter().all(|e| e["clients"] == 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_dropping_at_each_stage_do_not_stop_the_round() {
    init_tracing();
    let ids = ["c0", "c1", "c2", "c3", "c4", "c5", "d0", "d1", "d2", "r0"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 1, policy(10, 3, 1.0));
    cfg.secure_aggregation = Some(secagg_config(5));
    cfg.secagg_stage_deadline_s = 1.5;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let mut events = server.subscribe();
    let clients: Vec<_> = (0..6)
        .map(|i| spawn_client(join_config(&fx, port, ids[i]), trainer(i)))
        .collect();
    // d0 advertises keys and falls silent; d1 shares its keys and falls silent; d2 sends its
    // masked input and falls silent; r0 breaks the protocol and is dropped at once.
    let (fx0, fx1, fx2, fx3) = (&fx, &fx, &fx, &fx);
    let (d0, d1, d2, ()) = tokio::join!(
        hand_client(fx0, port, "d0", 6, StopAt::ShareKeys),
        hand_client(fx1, port, "d1", 7, StopAt::MaskedInput),
        hand_client(fx2, port, "d2", 8, StopAt::Unmask),
        rogue(fx3, port),
    );
    assert_eq!(d0.roster_len, 0, "d0 never read the roster");
    assert!(d1.masked.is_empty());
    assert!(!d2.masked.is_empty());
    let masked_closed = crate::federation::next_event(
        &mut events,
        |e| matches!(e, Event::SecAggStage { stage, .. } if stage == "masked input"),
    )
    .await;
    let Event::SecAggStage {
        clients: went_on,
        dropped,
        ..
    } = masked_closed
    else {
        unreachable!()
    };
    assert_eq!(
        (went_on, dropped),
        (
            7,
            vec!["d0".to_string(), "d1".to_string(), "r0".to_string()]
        )
    );
    let summary = server.wait().await.unwrap();
    for c in clients {
        let s = c.await.unwrap().unwrap();
        assert_eq!(s.rounds_trained, vec![1]);
    }
    let o = &summary.outcomes[0];
    assert!(o.aggregated, "{:?}", o.skipped);
    // d2's masked input is in the sum (its self-mask was recovered from its neighbours'
    // shares); d1's pairwise masks were removed with its recovered key.
    assert_eq!((o.n_ok, o.n_failed), (7, 3), "{:?}", o.failures);
    let why = |id: &str| {
        o.failures
            .iter()
            .find(|f| f.client_id == id)
            .map(|f| f.reason.clone())
            .unwrap()
    };
    assert!(why("d0").contains("stage `share keys`"), "{}", why("d0"));
    assert!(why("d1").contains("stage `masked input`"), "{}", why("d1"));
    assert!(
        why("r0").contains("names `c0` as its sender"),
        "{}",
        why("r0")
    );
    assert_eq!(
        summary
            .stats
            .refused
            .get(&fedprompt_net::RefusalKind::SecAgg),
        Some(&2)
    );
    let q = Quantiser::new(&d2.cfg, d2.roster_len).unwrap();
    let want = plain_fedavg(&fx.initial, 1, &[0, 1, 2, 3, 4, 5, 8]);
    let diff = max_abs_diff(&summary.global, &want);
    assert!(
        diff <= q.error_bound(),
        "max abs diff {diff}, bound {}",
        q.error_bound()
    );
    assert_eq!(summary.stats.late, 3, "one per stage missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_dropouts_fail_the_round_with_the_cores_reason() {
    init_tracing();
    let ids = ["c0", "c1", "d1", "d2"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 1, policy(4, 2, 1.0));
    cfg.secure_aggregation = Some(secagg_config(3));
    cfg.secagg_stage_deadline_s = 1.0;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let clients: Vec<_> = (0..2)
        .map(|i| spawn_client(join_config(&fx, port, ids[i]), trainer(i)))
        .collect();
    // Two of four drop after sharing keys: 2 masked inputs, threshold 3.
    let (fx1, fx2) = (&fx, &fx);
    tokio::join!(
        hand_client(fx1, port, "d1", 2, StopAt::MaskedInput),
        hand_client(fx2, port, "d2", 3, StopAt::MaskedInput),
    );
    let e = server.wait().await.unwrap_err().to_string();
    assert!(
        e.contains("secure aggregation failed at stage `masked input`")
            && e.contains("3 needed")
            && e.contains("lower the threshold or the dropouts"),
        "{e}"
    );
    for c in clients {
        assert!(c.await.unwrap().unwrap().finished);
    }
    // Nothing was aggregated: the checkpoint still holds the initial parameters.
    let ckpt = ServerState::load_checkpoint(fx.dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ckpt.global, fx.initial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_that_cannot_fit_a_full_round_is_refused_at_start() {
    let ids = ["c0", "c1", "c2", "c3", "c4", "c5", "c6"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 1, policy(7, 3, 1.0));
    // 7 clients, every other one a neighbour: k = 6, so the threshold must be at least 4.
    cfg.secure_aggregation = Some(secagg_config(3));
    let e = fedprompt_net::start(cfg).await.unwrap_err().to_string();
    assert!(
        e.contains("round of 7 clients") && e.contains("use at least 4"),
        "{e}"
    );
}
