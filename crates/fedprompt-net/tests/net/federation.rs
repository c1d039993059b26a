// End-to-end federation tests over real TLS sockets on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fedprompt_fl::{ClientUpdate, Params, RoundPolicy, Server, StrategyConfig};
use fedprompt_net::devcerts::{self, DevCerts};
use fedprompt_net::proto::{self, task_message, update_message, TaskKind};
use fedprompt_net::{
    join_async, raw_client, update_messages, ClientTlsConfig, DeterministicTrainer, EvalResult,
    Event, FitResult, InitialParams, JoinConfig, LocalTrainer, NetError, RawClient, RefusalKind,
    ServeConfig, ServerTlsConfig, Task, TrainerError,
};
use tonic::Code;

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) certs: DevCerts,
    pub(crate) initial: Params,
}

/// 2059 values: beyond one 1 KiB chunk, so transfers are chunked.
pub(crate) fn initial_params() -> Params {
    let mut p = Params::new();
    let v = |n: usize, s: f32| (0..n).map(|i| ((i as f32) * s).sin()).collect::<Vec<_>>();
    p.insert_vec("prompt", vec![4, 8], v(32, 0.3)).unwrap();
    p.insert_vec("head.weight", vec![3, 8], v(24, 0.7)).unwrap();
    p.insert_vec("head.bias", vec![3], vec![0.1, -0.2, 0.3])
        .unwrap();
    p.insert_vec("big", vec![2000], v(2000, 0.01)).unwrap();
    p
}

pub(crate) fn fixture(clients: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcerts::generate(&dir.path().join("certs"), clients).unwrap();
    let initial = initial_params();
    std::fs::write(
        dir.path().join("init.safetensors"),
        initial.to_safetensors().unwrap(),
    )
    .unwrap();
    Fixture {
        dir,
        certs,
        initial,
    }
}

pub(crate) fn policy(min_available: usize, min_results: usize, fraction: f64) -> RoundPolicy {
    RoundPolicy {
        fraction_fit: fraction,
        fraction_evaluate: 1.0,
        min_fit_clients: 1,
        min_evaluate_clients: 1,
        min_available_clients: min_available,
        min_fit_results: min_results,
        min_evaluate_results: 1,
        accept_failures: true,
        round_timeout_s: None,
        seed: 7,
    }
}

pub(crate) fn serve_config(fx: &Fixture, rounds: u64, policy: RoundPolicy) -> ServeConfig {
    let d = fx.dir.path();
    ServeConfig {
        address: "127.0.0.1:0".into(),
        tls: Some(ServerTlsConfig {
            cert: fx.certs.server_cert.clone(),
            key: fx.certs.server_key.clone(),
            client_ca: Some(fx.certs.ca_cert.clone()),
        }),
        allow_plaintext: false,
        tokens: fx.certs.tokens_file.clone(),
        rounds,
        strategy: StrategyConfig::FedAvg,
        policy,
        round_deadline_s: 10.0,
        gather_s: 0.2,
        evaluate_every: 0,
        client_config: Default::default(),
        model: None,
        initial: InitialParams::File {
            path: d.join("init.safetensors"),
        },
        checkpoint: d.join("checkpoint.safetensors"),
        resume: false,
        events: Some(d.join("events.jsonl")),
        output: Some(d.join("global.safetensors")),
        max_chunk_bytes: 1024,
        max_update_bytes: None,
        liveness_s: 30.0,
        linger_s: 2.0,
        privacy: None,
        weights: Default::default(),
        compression: None,
        secure_aggregation: None,
        secagg_stage_deadline_s: 60.0,
    }
}

pub(crate) fn join_config(fx: &Fixture, port: u16, id: &str) -> JoinConfig {
    let c = &fx.certs.clients[id];
    JoinConfig {
        server: format!("https://localhost:{port}"),
        token: c.token.clone(),
        tls: ClientTlsConfig {
            ca_cert: Some(fx.certs.ca_cert.clone()),
            cert: Some(c.cert.clone()),
            key: Some(c.key.clone()),
            domain: None,
        },
        poll_wait_s: 5.0,
        backoff_initial_s: 0.05,
        backoff_max_s: 0.5,
        give_up_after_s: 20.0,
    }
}

pub(crate) fn trainer(i: usize) -> DeterministicTrainer {
    DeterministicTrainer::new(i as u64, 10 * (i as u64 + 1))
}

/// The same rounds computed by `fedprompt_fl::Server` in-process. Clients
/// not in `honest` fail every round.
fn reference(
    initial: &Params,
    ids: &[&str],
    honest: &BTreeMap<String, DeterministicTrainer>,
    rounds: u64,
    policy: RoundPolicy,
) -> Params {
    let mut s = Server::new(
        initial.clone(),
        StrategyConfig::FedAvg.build(policy).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    for _ in 0..rounds {
        let mut fit = s.begin_fit(&ids).unwrap();
        let round = fit.plan().round;
        for id in fit.plan().clients.clone() {
            match honest.get(&id) {
                Some(t) => fit
                    .submit(
                        ClientUpdate::new(id.clone(), t.apply(s.global(), round), t.num_examples),
                        0,
                    )
                    .unwrap(),
                None => fit.fail(&id, "rogue").unwrap(),
            }
        }
        s.finish_fit(fit).unwrap();
    }
    s.global().clone()
}

pub(crate) fn max_abs_diff(a: &Params, b: &Params) -> f32 {
    assert!(a.same_layout(b), "layouts differ");
    a.iter()
        .flat_map(|(n, t)| {
            let u = b.get(n).unwrap();
            t.data()
                .iter()
                .zip(u.data())
                .map(|(x, y)| (x - y).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0, f32::max)
}

pub(crate) fn spawn_client(
    cfg: JoinConfig,
    mut t: DeterministicTrainer,
) -> tokio::task::JoinHandle<fedprompt_net::Result<fedprompt_net::JoinSummary>> {
    tokio::spawn(async move { join_async(cfg, &mut t).await })
}

pub(crate) async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("event did not come in time")
}

pub(crate) fn events_in(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_clients_match_the_in_process_server() {
    init_tracing();
    let ids = ["c0", "c1", "c2", "c3", "c4"];
    let fx = fixture(&ids);
    // 3 of 5 sampled per round: the seeded sampling must agree with the core's.
    let pol = policy(5, 2, 0.6);
    let mut cfg = serve_config(&fx, 3, pol.clone());
    cfg.evaluate_every = 1;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| spawn_client(join_config(&fx, port, id), trainer(i)))
        .collect();
    let summary = server.wait().await.unwrap();
    let mut trained = 0;
    for c in clients {
        let s = c.await.unwrap().unwrap();
        assert!(s.finished);
        assert!(s.refused.is_empty(), "{:?}", s.refused);
        trained += s.rounds_trained.len();
    }
    assert_eq!(trained, 9, "3 clients x 3 rounds");
    assert_eq!(summary.rounds_completed, 3);
    assert!(summary.outcomes.iter().all(|o| o.n_ok == 3 && o.aggregated));
    assert_eq!(summary.evaluations.len(), 3);
    assert!(summary
        .evaluations
        .iter()
        .all(|e| e.aggregate.as_ref().is_some_and(|a| a.n_results == 5)));
    let honest = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), trainer(i)))
        .collect();
    let want = reference(&fx.initial, &ids, &honest, 3, pol);
    let diff = max_abs_diff(&summary.global, &want);
    assert!(diff <= 1e-6, "max abs diff {diff}");
    assert_ne!(summary.global, fx.initial);
    // Chunked both ways: ~8 KiB per transfer with 1 KiB chunks.
    assert_eq!(summary.stats.accepted_updates, 9);
    assert!(summary.stats.bytes_up > 9 * 8000);
    assert!(summary.stats.bytes_down > 9 * 8000);
    assert_eq!(summary.stats.total_refused(), 0);
    // The output file and the events file.
    let out = std::fs::read(fx.dir.path().join("global.safetensors")).unwrap();
    assert_eq!(Params::from_safetensors(&out).unwrap(), summary.global);
    let events = events_in(&fx.dir.path().join("events.jsonl"));
    let rounds: Vec<_> = events.iter().filter(|e| e["event"] == "round").collect();
    assert_eq!(rounds.len(), 3);
    assert!(rounds
        .iter()
        .all(|e| e["asked"] == 3 && e["ok"] == 3 && e["late"] == 0));
    assert!(events.iter().all(|e| e["ts"].as_f64().is_some()));
    assert_eq!(
        events.iter().filter(|e| e["event"] == "checkpoint").count(),
        3
    );
}

/// A fake trainer that crashes (panics, as a killed process would vanish) when told to.
struct Crashable {
    inner: DeterministicTrainer,
    crash: Arc<AtomicBool>,
}

impl LocalTrainer for Crashable {
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(10));
            if self.crash.load(Ordering::SeqCst) {
                panic!("simulated crash");
            }
        }
        self.inner.fit(task)
    }
    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        self.inner.evaluate(task)
    }
}

fn spawn_crashable(
    cfg: JoinConfig,
    i: usize,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<fedprompt_net::Result<fedprompt_net::JoinSummary>>,
) {
    let crash = Arc::new(AtomicBool::new(false));
    let mut t = Crashable {
        inner: trainer(i),
        crash: crash.clone(),
    };
    (
        crash,
        tokio::spawn(async move { join_async(cfg, &mut t).await }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropouts_complete_at_quorum_and_rejoin() {
    init_tracing();
    let ids = ["c0", "c1", "c2", "c3", "c4"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 4, policy(3, 3, 1.0));
    cfg.round_deadline_s = 1.5;
    cfg.gather_s = 1.0;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let mut events = server.subscribe();
    let mut clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| spawn_crashable(join_config(&fx, port, id), i))
        .collect();
    next_event(
        &mut events,
        |e| matches!(e, Event::RoundStarted { round: 2, phase, .. } if phase == "fit"),
    )
    .await;
    // Two clients die while they train.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in &clients[3..] {
        c.0.store(true, Ordering::SeqCst);
    }
    let r2 = next_event(&mut events, |e| matches!(e, Event::Round { round: 2, .. })).await;
    let Event::Round {
        ok,
        late,
        aggregated,
        ..
    } = r2
    else {
        unreachable!()
    };
    assert_eq!((ok, late, aggregated), (3, 2, true));
    // They come back and join a later round.
    for i in 3..5 {
        let (_, old) = std::mem::replace(
            &mut clients[i],
            spawn_crashable(join_config(&fx, port, ids[i]), i),
        );
        assert!(old.await.unwrap_err().is_panic());
    }
    let summary = server.wait().await.unwrap();
    assert_eq!(summary.rounds_completed, 4);
    assert!(summary.outcomes.iter().all(|o| o.aggregated));
    assert_eq!(summary.outcomes[0].n_ok, 5);
    assert_eq!(summary.outcomes[1].n_ok, 3);
    assert_eq!(summary.outcomes[3].n_ok, 5, "{:?}", summary.outcomes[3]);
    assert_eq!(summary.stats.late, 2);
    for (i, (_, c)) in clients.into_iter().enumerate() {
        let s = c.await.unwrap().unwrap();
        assert!(s.finished, "client {i}");
        if i >= 3 {
            assert!(
                s.rounds_trained.contains(&4),
                "client {i}: {:?}",
                s.rounds_trained
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_from_checkpoint_equals_an_uninterrupted_run() {
    init_tracing();
    let ids = ["c0", "c1", "c2"];
    let fx = fixture(&ids);
    let pol = policy(3, 3, 1.0);
    let cfg = serve_config(&fx, 4, pol.clone());
    let first = fedprompt_net::start(cfg.clone()).await.unwrap();
    let addr = first.local_addr();
    let mut events = first.subscribe();
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let t = DeterministicTrainer {
                delay: Duration::from_millis(200),
                ..trainer(i)
            };
            spawn_client(join_config(&fx, addr.port(), id), t)
        })
        .collect();
    next_event(&mut events, |e| {
        matches!(e, Event::Checkpoint { round: 2, .. })
    })
    .await;
    first.stop_handle().stop();
    let s1 = first.wait().await.unwrap();
    assert!(s1.stopped_early);
    assert_eq!(s1.rounds_completed, 2);
    // A new server process on the same address continues from the checkpoint;
    // the clients reconnect by themselves.
    let mut cfg2 = cfg;
    cfg2.address = addr.to_string();
    cfg2.resume = true;
    // The port was the kernel's pick for the first server; while the tests run in parallel,
    // another test's server may hold it for a moment after the first one let it go. Retry
    // the bind for a while (only that error) rather than fail on the neighbour's timing.
    let mut tries = 0;
    let second = loop {
        match fedprompt_net::start(cfg2.clone()).await {
            Ok(s) => break s,
            Err(e) if tries < 100 && format!("{e:?} {e}").contains("in use") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("restarting the server on {addr}: {e}"),
        }
    };
    let s2 = second.wait().await.unwrap();
    assert_eq!(s2.resumed_at, 2);
    assert_eq!(s2.rounds_completed, 4);
    assert_eq!(s2.outcomes.len(), 2);
    let honest = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), trainer(i)))
        .collect();
    let want = reference(&fx.initial, &ids, &honest, 4, pol);
    let diff = max_abs_diff(&s2.global, &want);
    assert!(diff <= 1e-6, "max abs diff {diff}");
    for c in clients {
        let s = c.await.unwrap().unwrap();
        // (tonic may re-establish the connection itself, so no reconnect count is asserted)
        assert!(s.finished);
        let mut r = s.rounds_trained.clone();
        r.dedup();
        assert_eq!(r, vec![1, 2, 3, 4]);
    }
}

/// Waits for a fit task and returns its round.
pub(crate) async fn fit_round(c: &mut RawClient) -> Option<u64> {
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
        while s.message().await.unwrap().is_some() {}
        match TaskKind::try_from(h.kind).unwrap() {
            TaskKind::Fit => return Some(h.round),
            TaskKind::Finished => return None,
            _ => {}
        }
    }
}

pub(crate) async fn send(
    c: &mut RawClient,
    msgs: Vec<proto::UpdateMessage>,
) -> Result<proto::SubmitReply, tonic::Status> {
    c.submit_update(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

fn msgs(round: u64, p: &Params) -> Vec<proto::UpdateMessage> {
    update_messages(
        round,
        5,
        Default::default(),
        Bytes::from(p.to_safetensors().unwrap()),
        1024,
    )
}

fn f64_safetensors(p: &Params) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = p
        .iter()
        .map(|(n, t)| {
            let b = t
                .data()
                .iter()
                .flat_map(|&x| f64::from(x).to_le_bytes())
                .collect();
            (n.to_string(), b, t.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

pub(crate) fn expect(r: Result<proto::SubmitReply, tonic::Status>, code: Code, what: &str) {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {}", s.message()),
    }
}

/// One consuming bad update per rogue per round; the layout is `initial_params`'.
fn bad_update(rogue: usize, round: u64, good: &Params) -> (Vec<u8>, &'static str) {
    let mut p = good.clone();
    match (rogue, round) {
        (0, 1) => {
            let t = p.remove("prompt").unwrap();
            p.insert("prompts", t);
            (p.to_safetensors().unwrap(), "wrong tensor name")
        }
        (0, 2) => {
            p.get_mut("big").unwrap().data_mut()[17] = f32::NAN;
            (p.to_safetensors().unwrap(), "NaN")
        }
        (0, _) => {
            p.get_mut("prompt").unwrap().data_mut()[0] = f32::INFINITY;
            (p.to_safetensors().unwrap(), "Inf")
        }
        (1, 1) => {
            let (_, d) = p.remove("prompt").unwrap().into_parts();
            p.insert_vec("prompt", vec![8, 4], d).unwrap();
            (p.to_safetensors().unwrap(), "wrong shape")
        }
        (1, 2) => (f64_safetensors(&p), "F64 dtype"),
        (1, _) => (b"certainly not safetensors".to_vec(), "garbage bytes"),
        (_, 1) => {
            p.remove("head.bias");
            (p.to_safetensors().unwrap(), "missing tensor")
        }
        (_, 2) => {
            p.insert_vec("extra", vec![1], vec![0.0]).unwrap();
            (p.to_safetensors().unwrap(), "extra tensor")
        }
        (_, _) => (Vec::new(), "empty update"),
    }
}

async fn rogue(mut c: RawClient, index: usize, max_update: u64) -> usize {
    let good = initial_params();
    let mut cases = 0;
    while let Some(round) = fit_round(&mut c).await {
        if index == 0 && round == 1 {
            // Refusals that leave the client's slot open.
            expect(
                send(&mut c, msgs(round + 7, &good)).await,
                Code::FailedPrecondition,
                "future round",
            );
            expect(
                send(&mut c, msgs(round - 1, &good)).await,
                Code::FailedPrecondition,
                "stale round",
            );
            let mut m = msgs(round, &good);
            m.pop();
            expect(send(&mut c, m).await, Code::DataLoss, "truncated stream");
            let mut m = msgs(round, &good);
            m.remove(0);
            expect(send(&mut c, m).await, Code::InvalidArgument, "no header");
            let mut m = msgs(round, &good);
            if let Some(update_message::Body::Header(h)) = m[0].body.as_mut() {
                h.sha256 = Bytes::from_static(&[0u8; 32]);
            }
            expect(send(&mut c, m).await, Code::DataLoss, "checksum");
            let mut m = msgs(round, &good);
            if let Some(update_message::Body::Header(h)) = m[0].body.as_mut() {
                h.total_len = max_update + 1;
            }
            expect(
                send(&mut c, m).await,
                Code::ResourceExhausted,
                "declared too large",
            );
            let huge = Bytes::from(vec![0u8; 1024 + 64 * 1024 + 1]);
            let m = update_messages(round, 5, Default::default(), huge, usize::MAX);
            expect(
                send(&mut c, m).await,
                Code::ResourceExhausted,
                "one oversized message",
            );
            let mut m = msgs(round, &good);
            if let Some(update_message::Body::Header(h)) = m[0].body.as_mut() {
                h.metrics.insert("loss".into(), f64::NAN);
            }
            expect(send(&mut c, m).await, Code::InvalidArgument, "NaN metric");
            let ev = c
                .submit_evaluation(proto::EvaluationResult {
                    round,
                    num_examples: 1,
                    metrics: Default::default(),
                })
                .await;
            expect(
                ev.map(|r| r.into_inner()),
                Code::FailedPrecondition,
                "evaluation outside an evaluation round",
            );
            cases += 9;
        }
        let (bytes, what) = bad_update(index, round, &good);
        let m = update_messages(round, 5, Default::default(), Bytes::from(bytes), 1024);
        expect(send(&mut c, m).await, Code::InvalidArgument, what);
        // The slot is used: a second (valid) update is a duplicate.
        expect(
            send(&mut c, msgs(round, &good)).await,
            Code::AlreadyExists,
            "duplicate",
        );
        cases += 2;
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_clients_and_updates_are_refused_and_the_run_finishes() {
    init_tracing();
    let ids = ["h0", "h1", "h2", "r0", "r1", "r2"];
    let fx = fixture(&ids);
    let pol = policy(6, 3, 1.0);
    let server = fedprompt_net::start(serve_config(&fx, 3, pol.clone()))
        .await
        .unwrap();
    let port = server.local_addr().port();

    // Connections refused before any round.
    let mut bad_token = join_config(&fx, port, "h0");
    bad_token.token = "fpt_not_a_real_token".into();
    let e = join_async(bad_token, &mut trainer(0)).await.unwrap_err();
    assert!(matches!(e, NetError::Refused(_)), "{e}");
    let mut plaintext = join_config(&fx, port, "h0");
    plaintext.server = format!("http://localhost:{port}");
    let e = join_async(plaintext, &mut trainer(0)).await.unwrap_err();
    assert!(matches!(e, NetError::Tls(_)), "{e}");
    let mut no_cert = join_config(&fx, port, "h0");
    no_cert.tls.cert = None;
    no_cert.tls.key = None;
    let e = join_async(no_cert, &mut trainer(0)).await.unwrap_err();
    assert!(matches!(e, NetError::Tls(_)), "{e}");

    // Honest clients take 300 ms, so every rogue call reaches an open round.
    let honest: Vec<_> = (0..3)
        .map(|i| {
            let t = DeterministicTrainer {
                delay: Duration::from_millis(300),
                ..trainer(i)
            };
            spawn_client(join_config(&fx, port, &format!("h{i}")), t)
        })
        .collect();
    let mut rogues = Vec::new();
    for i in 0..3 {
        let mut c = raw_client(&join_config(&fx, port, &format!("r{i}")))
            .await
            .unwrap();
        let reg = c
            .register(proto::RegisterRequest {
                protocol_version: proto::PROTOCOL_VERSION,
                agent: "rogue".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reg.client_id, format!("r{i}"));
        rogues.push(tokio::spawn(rogue(c, i, reg.max_update_bytes)));
    }
    let summary = server.wait().await.unwrap();
    let mut cases = 0;
    for r in rogues {
        cases += r.await.unwrap();
    }
    assert_eq!(cases, 9 + 3 * 3 * 2);
    for h in honest {
        let s = h.await.unwrap().unwrap();
        assert_eq!(s.rounds_trained, vec![1, 2, 3]);
    }
    let st = &summary.stats;
    assert!(st.auth_refused >= 1, "{st:?}");
    assert!(st.tls_refused >= 2, "{st:?}");
    let n = |k: RefusalKind| st.refused.get(&k).copied().unwrap_or(0);
    assert_eq!(n(RefusalKind::InvalidParams), 9, "{st:?}");
    assert_eq!(n(RefusalKind::Duplicate), 9, "{st:?}");
    assert_eq!(n(RefusalKind::StaleRound), 3, "{st:?}");
    assert_eq!(n(RefusalKind::Truncated), 1, "{st:?}");
    assert_eq!(n(RefusalKind::Malformed), 1, "{st:?}");
    assert_eq!(n(RefusalKind::Checksum), 1, "{st:?}");
    assert_eq!(n(RefusalKind::Oversized), 2, "{st:?}");
    assert_eq!(n(RefusalKind::BadMetrics), 1, "{st:?}");
    assert!(summary
        .outcomes
        .iter()
        .all(|o| o.aggregated && o.n_ok == 3 && o.n_failed == 3));
    let honest_trainers = (0..3).map(|i| (format!("h{i}"), trainer(i))).collect();
    let want = reference(&fx.initial, &ids, &honest_trainers, 3, pol);
    let diff = max_abs_diff(&summary.global, &want);
    assert!(diff <= 1e-6, "max abs diff {diff}");
    let events = events_in(&fx.dir.path().join("events.jsonl"));
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("refused") as u64, st.total_refused());
    assert!(count("auth_refused") >= 1 && count("tls_refused") >= 2);
}

fn write_jsonl(path: &Path, rows: &[(&str, &str)]) {
    let text: String = rows
        .iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fedprompt-model/tests/fixtures/tiny-xlmr")
}

#[test]
fn real_model_trainer_federates_prompt_tuning() {
    init_tracing();
    let ids = ["en", "fr"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 2, policy(2, 2, 1.0));
    cfg.evaluate_every = 1;
    cfg.max_chunk_bytes = DEFAULT_CHUNK;
    cfg.model = Some(
        toml::from_str(
            r#"
            labels = ["neg", "pos"]
            max_len = 32
            method = { type = "prompt", num_virtual_tokens = 2 }
            "#,
        )
        .unwrap(),
    );
    cfg.initial = InitialParams::Model {
        dir: tiny_model(),
        seed: 3,
    };
    cfg.client_config = toml::from_str("epochs = 1\nbatch_size = 4\nlearning_rate = 0.01").unwrap();
    let data = [
        vec![
            ("good movie", "pos"),
            ("bad film", "neg"),
            ("great fun", "pos"),
            ("awful plot", "neg"),
            ("nice", "pos"),
        ],
        vec![
            ("bon film", "pos"),
            ("mauvais", "neg"),
            ("super", "pos"),
            ("nul", "neg"),
        ],
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(fedprompt_net::start(cfg)).unwrap();
    let port = server.local_addr().port();
    let threads: Vec<_> = ids
        .iter()
        .zip(&data)
        .enumerate()
        .map(|(i, (id, rows))| {
            let file = fx.dir.path().join(format!("{id}.jsonl"));
            write_jsonl(&file, rows);
            let jc = join_config(&fx, port, id);
            std::thread::spawn(move || {
                let mut c = fedprompt_net::ModelTrainerConfig::new(tiny_model(), file);
                // Clients may differ in their backbone's float type (`join --dtype`): the
                // second one runs bf16 matrices.
                if i == 1 {
                    c.dtype = fedprompt_model::WeightDtype::Bf16;
                }
                let mut t = fedprompt_net::ModelTrainer::new(c);
                fedprompt_net::join(jc, &mut t)
            })
        })
        .collect();
    let summary = rt.block_on(server.wait()).unwrap();
    for t in threads {
        let s = t.join().unwrap().unwrap();
        assert_eq!(s.rounds_trained, vec![1, 2]);
        assert_eq!(s.evaluations, vec![1, 2]);
        assert!(s.bytes_up > 0 && s.bytes_down > 0);
    }
    assert_eq!(summary.rounds_completed, 2);
    assert!(summary
        .outcomes
        .iter()
        .all(|o| o.aggregated && o.num_examples == 9));
    let ev = summary
        .evaluations
        .last()
        .unwrap()
        .aggregate
        .as_ref()
        .unwrap();
    assert_eq!(ev.num_examples, 9);
    let acc = ev.metrics["accuracy"];
    assert!((0.0..=1.0).contains(&acc));
    // The trainable set is the prompt and the head; every tensor moved.
    let init = std::fs::read(fx.dir.path().join("global.safetensors")).unwrap();
    let global = Params::from_safetensors(&init).unwrap();
    assert_eq!(global, summary.global);
    assert!(
        global.names().any(|n| n.contains("prompt")),
        "{:?}",
        global.names().collect::<Vec<_>>()
    );
    let m = summary.outcomes[0]
        .metrics
        .get("train_loss")
        .copied()
        .unwrap();
    assert!(m.is_finite() && m > 0.0);
}

const DEFAULT_CHUNK: u64 = fedprompt_net::DEFAULT_CHUNK_BYTES;

#[test]
fn prompt_tuning_client_leaves_room_for_virtual_tokens_on_long_texts() {
    // The tiny model holds 64 tokens. Without a `max_len`, texts used to be cut to 64 tokens
    // and the 4 virtual tokens then overflowed the position table on the first long example.
    init_tracing();
    let ids = ["en"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 1, policy(1, 1, 1.0));
    cfg.model = Some(
        toml::from_str(
            r#"
            labels = ["neg", "pos"]
            method = { type = "prompt", num_virtual_tokens = 4 }
            "#,
        )
        .unwrap(),
    );
    cfg.initial = InitialParams::Model {
        dir: tiny_model(),
        seed: 3,
    };
    cfg.client_config = toml::from_str("epochs = 1\nbatch_size = 2").unwrap();
    let long = "a very long review of a film ".repeat(40);
    let file = fx.dir.path().join("en.jsonl");
    write_jsonl(&file, &[(&long, "pos"), ("bad", "neg"), (&long, "neg")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(fedprompt_net::start(cfg)).unwrap();
    let jc = join_config(&fx, server.local_addr().port(), "en");
    let client = std::thread::spawn(move || {
        let mut t = fedprompt_net::ModelTrainer::new(fedprompt_net::ModelTrainerConfig::new(
            tiny_model(),
            file,
        ));
        fedprompt_net::join(jc, &mut t)
    });
    let summary = rt.block_on(server.wait());
    let joined = client.join().unwrap();
    let summary = summary.unwrap();
    assert!(
        summary
            .outcomes
            .iter()
            .all(|o| o.aggregated && o.n_failed == 0),
        "{:?}; client: {joined:?}",
        summary.outcomes
    );
    assert_eq!(joined.unwrap().rounds_trained, vec![1]);
}

/// A trainer that claims zero examples in the rounds it is told to (issue: one such client,
/// alone in its round, used to stop the server).
struct ClaimsZero {
    inner: DeterministicTrainer,
    rounds: Vec<u64>,
}

impl LocalTrainer for ClaimsZero {
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        let mut r = self.inner.fit(task)?;
        if self.rounds.contains(&task.round) {
            r.num_examples = 0;
        }
        Ok(r)
    }
    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        self.inner.evaluate(task)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_claiming_zero_examples_fails_its_round_not_the_server() {
    init_tracing();
    let fx = fixture(&["liar"]);
    let server = fedprompt_net::start(serve_config(&fx, 3, policy(1, 1, 1.0)))
        .await
        .unwrap();
    let port = server.local_addr().port();
    let mut t = ClaimsZero {
        inner: trainer(0),
        rounds: vec![1],
    };
    let cfg = join_config(&fx, port, "liar");
    let client = tokio::spawn(async move { join_async(cfg, &mut t).await });
    let summary = server.wait().await.expect("the server survives the round");
    assert_eq!(summary.rounds_completed, 3);
    let aggregated: Vec<bool> = summary.outcomes.iter().map(|o| o.aggregated).collect();
    assert_eq!(aggregated, [false, true, true]);
    let why = summary.outcomes[0].skipped.as_deref().unwrap_or_default();
    assert!(why.contains("0 training examples"), "{why}");
    assert!(client.await.unwrap().unwrap().finished);

    // Alone and lying every round: the run aggregated nothing, which is a failure that names
    // the cause (not a "completed" run), and the client still learns that it is over.
    let fx = fixture(&["liar"]);
    let server = fedprompt_net::start(serve_config(&fx, 2, policy(1, 1, 1.0)))
        .await
        .unwrap();
    let port = server.local_addr().port();
    let mut t = ClaimsZero {
        inner: trainer(0),
        rounds: vec![1, 2],
    };
    let cfg = join_config(&fx, port, "liar");
    let client = tokio::spawn(async move { join_async(cfg, &mut t).await });
    let e = server.wait().await.unwrap_err();
    assert!(e.to_string().contains("0 training examples"), "{e}");
    assert!(client.await.unwrap().unwrap().finished);
    assert!(!fx.dir.path().join("global.safetensors").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_the_known_clients_cannot_meet_is_refused_at_start() {
    let fx = fixture(&["a", "b"]);
    let e = fedprompt_net::start(serve_config(&fx, 1, policy(3, 1, 1.0)))
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, NetError::Config(_)), "{e:?}");
    assert!(
        m.contains("min_available_clients = 3") && m.contains("knows 2 clients"),
        "{m}"
    );
    let e = fedprompt_net::start(serve_config(&fx, 1, policy(2, 3, 1.0)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("min_fit_results = 3"), "{e}");
}

/// A trainer whose local setup does not fit the run (as a wrong label set would).
struct Unprepared {
    inner: DeterministicTrainer,
    fitted: Arc<AtomicBool>,
}

impl LocalTrainer for Unprepared {
    fn prepare(&mut self, _: Option<&fedprompt_net::ModelSpec>) -> Result<(), TrainerError> {
        Err("local data file `x.jsonl`: label `sports` is not one of the run's labels".into())
    }
    fn fit(&mut self, task: &Task<'_>) -> Result<FitResult, TrainerError> {
        self.fitted.store(true, Ordering::SeqCst);
        self.inner.fit(task)
    }
    fn evaluate(&mut self, task: &Task<'_>) -> Result<EvalResult, TrainerError> {
        self.inner.evaluate(task)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_data_does_not_fit_the_run_stops_before_its_first_task() {
    init_tracing();
    let fx = fixture(&["a"]);
    let mut cfg = serve_config(&fx, 1, policy(1, 1, 1.0));
    cfg.gather_s = 0.0;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let fitted = Arc::new(AtomicBool::new(false));
    let mut t = Unprepared {
        inner: trainer(0),
        fitted: fitted.clone(),
    };
    let e = join_async(join_config(&fx, port, "a"), &mut t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("label `sports`"), "{e}");
    assert!(!fitted.load(Ordering::SeqCst), "no task was trained");
    server.stop_handle().stop();
    let _ = server.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_run_that_was_already_complete_tells_returning_clients_it_is_over() {
    init_tracing();
    let fx = fixture(&["a"]);
    let server = fedprompt_net::start(serve_config(&fx, 1, policy(1, 1, 1.0)))
        .await
        .unwrap();
    let port = server.local_addr().port();
    let first = spawn_client(join_config(&fx, port, "a"), trainer(0));
    assert_eq!(server.wait().await.unwrap().rounds_completed, 1);
    assert!(first.await.unwrap().unwrap().finished);

    // The server died after its last checkpoint and is restarted with --resume; the client,
    // in reconnect backoff meanwhile, comes back a little later.
    let mut cfg = serve_config(&fx, 1, policy(1, 1, 1.0));
    cfg.resume = true;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = spawn_client(join_config(&fx, port, "a"), trainer(0));
    let summary = server.wait().await.unwrap();
    assert_eq!((summary.resumed_at, summary.rounds_completed), (1, 1));
    let s = late.await.unwrap().unwrap();
    assert!(s.finished && s.rounds_trained.is_empty(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_client_is_noticed_by_its_silence_not_the_round_deadline() {
    init_tracing();
    let ids = ["alive", "dies"];
    let fx = fixture(&ids);
    // One round: with one of two clients gone, a second could never gather two.
    let mut cfg = serve_config(&fx, 1, policy(2, 1, 1.0));
    cfg.round_deadline_s = 120.0;
    cfg.liveness_s = 1.0;
    cfg.gather_s = 1.0;
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let mut events = server.subscribe();
    let alive = spawn_client(join_config(&fx, port, "alive"), trainer(0));
    let (crash, dies) = spawn_crashable(join_config(&fx, port, "dies"), 1);
    next_event(
        &mut events,
        |e| matches!(e, Event::RoundStarted { round: 1, phase, .. } if phase == "fit"),
    )
    .await;
    crash.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r1 = next_event(&mut events, |e| matches!(e, Event::Round { round: 1, .. })).await;
    let Event::Round { ok, aggregated, .. } = r1 else {
        unreachable!()
    };
    assert_eq!((ok, aggregated), (1, true));
    // Four missed heartbeats (1 s), not the 120 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(dies.await.unwrap_err().is_panic());
    let summary = tokio::time::timeout(Duration::from_secs(60), server.wait())
        .await
        .expect("the run ends after its one round")
        .unwrap();
    let f = &summary.outcomes[0].failures;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].client_id, "dies");
    assert!(f[0].reason.contains("lost contact"), "{}", f[0].reason);
    assert!(alive.await.unwrap().unwrap().finished);
}

/// Privacy and robustness over gRPC: a lying client capped by the declared sizes of
/// `[weights]`, the server's result equal to the in-process server with the same caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declared_sizes_cap_a_lying_client_over_grpc() {
    init_tracing();
    let ids = ["c0", "c1", "c2"];
    let fx = fixture(&ids);
    let pol = policy(3, 3, 1.0);
    let mut cfg = serve_config(&fx, 2, pol.clone());
    cfg.weights.declared = BTreeMap::from([("c2".to_string(), 10)]);
    let server = fedprompt_net::start(cfg.clone()).await.unwrap();
    let port = server.local_addr().port();
    // c2 claims a billion examples.
    let liar = DeterministicTrainer::new(2, 1_000_000_000);
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let t = if i == 2 { liar.clone() } else { trainer(i) };
            spawn_client(join_config(&fx, port, id), t)
        })
        .collect();
    let summary = server.wait().await.unwrap();
    for c in clients {
        assert!(c.await.unwrap().unwrap().finished);
    }
    // The same rounds in-process with c2's weight capped at 10.
    let mut s = Server::new(
        fx.initial.clone(),
        StrategyConfig::FedAvg.build(pol).unwrap(),
    )
    .unwrap()
    .with_client_weights(cfg.weights.clone());
    let mut uncapped = fx.initial.clone();
    for round in 1..=2 {
        let mut fit = s.begin_fit(&ids.map(String::from)).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let t = if i == 2 { liar.clone() } else { trainer(i) };
            let u = ClientUpdate::new(*id, t.apply(s.global(), round), t.num_examples);
            fit.submit(u, 0).unwrap();
        }
        s.finish_fit(fit).unwrap();
        uncapped = liar.apply(&uncapped, round);
    }
    let diff = max_abs_diff(&summary.global, s.global());
    assert!(diff <= 1e-6, "max abs diff {diff}");
    // Without the cap the global would be (within 1e-5) the liar's own model.
    assert!(max_abs_diff(&summary.global, &uncapped) > 1e-3);

    // An unknown name in [weights] is refused at start.
    let mut bad = serve_config(&fx, 1, policy(3, 3, 1.0));
    bad.weights.declared = BTreeMap::from([("nobody".to_string(), 10)]);
    let Err(e) = fedprompt_net::start(bad).await else {
        panic!("an unknown client in [weights] must be refused")
    };
    assert!(e.to_string().contains("`nobody`"), "{e}");
}

/// Central DP over gRPC: epsilon after each round in the events, the budget stops the run
/// before the round that would exceed it, the final model is written and the summary says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_privacy_budget_ends_a_served_run_cleanly() {
    use fedprompt_fl::privacy::{PrivacyConfig, RdpAccountant};
    init_tracing();
    let ids = ["c0", "c1"];
    let fx = fixture(&ids);
    let acc = RdpAccountant::new(1.0, 1.0).unwrap();
    let budget = (acc.epsilon(2, 1e-5) + acc.epsilon(3, 1e-5)) / 2.0;
    let mut cfg = serve_config(&fx, 5, policy(2, 2, 1.0));
    cfg.strategy = StrategyConfig::DpFedAvg {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
    };
    cfg.privacy = Some(PrivacyConfig {
        max_epsilon: Some(budget),
        ..PrivacyConfig::default()
    });
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| spawn_client(join_config(&fx, port, id), trainer(i)))
        .collect();
    let summary = server.wait().await.unwrap();
    for c in clients {
        let s = c.await.unwrap().unwrap();
        assert!(s.finished, "the clients are told the run is over");
    }
    assert_eq!(summary.rounds_completed, 2);
    let (eps, delta) = summary.epsilon.expect("epsilon in the summary");
    assert!((eps - acc.epsilon(2, 1e-5)).abs() < 1e-12 && delta == 1e-5);
    assert!(summary
        .budget_stop
        .as_deref()
        .unwrap()
        .contains("max_epsilon"));
    assert!(summary.to_string().contains("privacy: epsilon"));
    let out = std::fs::read(fx.dir.path().join("global.safetensors")).unwrap();
    assert_eq!(Params::from_safetensors(&out).unwrap(), summary.global);
    let events = events_in(&fx.dir.path().join("events.jsonl"));
    let privacy: Vec<_> = events.iter().filter(|e| e["event"] == "privacy").collect();
    assert_eq!(privacy.len(), 2);
    assert_eq!(privacy[1]["mode"], "central");
    assert!((privacy[0]["epsilon"].as_f64().unwrap() - acc.epsilon(1, 1e-5)).abs() < 1e-12);
    let finished = events.iter().find(|e| e["event"] == "finished").unwrap();
    assert_eq!(finished["reason"], "privacy budget");
}

/// Client-side clipping asked in the round configuration: every `join` client clips its delta,
/// so the FedAvg of the clipped deltas moves the global by at most the clipping norm.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_clients_clip_their_delta_when_the_round_asks() {
    init_tracing();
    let ids = ["c0", "c1"];
    let fx = fixture(&ids);
    let mut cfg = serve_config(&fx, 1, policy(2, 2, 1.0));
    cfg.client_config.insert(
        "clipping_norm".into(),
        fedprompt_fl::ConfigValue::Float(0.01),
    );
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| spawn_client(join_config(&fx, port, id), trainer(i)))
        .collect();
    let summary = server.wait().await.unwrap();
    for c in clients {
        assert!(c.await.unwrap().unwrap().finished);
    }
    let unclipped = trainer(0).apply(&fx.initial, 1).sub(&fx.initial).unwrap();
    assert!(
        unclipped.l2_norm() > 1.0,
        "the trainer's delta needs clipping"
    );
    let moved = summary.global.sub(&fx.initial).unwrap().l2_norm();
    assert!(
        moved > 0.0 && moved <= 0.01 + 1e-6,
        "global moved by {moved}"
    );
}
