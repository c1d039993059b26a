// Compressed uploads over real gRPC (`[compression]`): what the server aggregates is the
// decode-then-FedAvg of what the clients sent, the bytes it counts are the encodings', and an
// upload in another codec is refused as that client's failure.

use std::collections::BTreeMap;

use bytes::Bytes;
use fedprompt_fl::codec::{Codec, Compression, ErrorFeedback};
use fedprompt_fl::Params;
use fedprompt_net::proto;
use fedprompt_net::{raw_client, update_messages, Event, RefusalKind};
use tonic::Code;

use crate::federation::{
    events_in, fit_round, fixture, init_tracing, initial_params, join_config, policy, send,
    serve_config, spawn_client, trainer,
};

/// What the clients of the test send in each round, replayed here: their encoded deltas
/// (with each client's error-feedback residual carried across rounds), decoded as the
/// server does, and the FedAvg of `global + decoded` computed in f64 from those values.
struct Replay {
    global: Params,
    feedback: BTreeMap<String, ErrorFeedback>,
}

impl Replay {
    /// One round over the honest clients `(id, index)`; returns each client's encoded size.
    fn round(
        &mut self,
        codec: &Codec,
        round: u64,
        honest: &[(&str, usize)],
    ) -> BTreeMap<String, u64> {
        let layout = self.global.layout();
        let mut sizes = BTreeMap::new();
        let mut sent = Vec::new();
        for &(id, i) in honest {
            let t = trainer(i);
            let delta = t.apply(&self.global, round).sub(&self.global).unwrap();
            let enc = self
                .feedback
                .entry(id.to_string())
                .or_default()
                .encode(codec, &delta)
                .unwrap();
            // The server sees only the bytes: decode them as it must.
            let decoded = codec.decode(&enc.bytes, &layout).unwrap();
            assert_eq!(decoded, enc.sent);
            let mut params = self.global.clone();
            params.add_scaled(&decoded, 1.0).unwrap();
            sizes.insert(id.to_string(), enc.bytes.len() as u64);
            sent.push((t.num_examples, params));
        }
        let total: f64 = sent.iter().map(|(w, _)| *w as f64).sum();
        let mut next = self.global.clone();
        for (name, t) in next.iter_mut() {
            for (j, x) in t.data_mut().iter_mut().enumerate() {
                let s: f64 = sent
                    .iter()
                    .map(|(w, p)| *w as f64 * f64::from(p.get(name).unwrap().data()[j]))
                    .sum();
                *x = (s / total) as f32;
            }
        }
        self.global = next;
        sizes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_uploads_are_decoded_averaged_counted_and_checked() {
    init_tracing();
    let ids = ["c0", "c1", "c2", "r0", "r1"];
    let honest = [("c0", 0), ("c1", 1), ("c2", 2)];
    let fx = fixture(&ids);
    let rounds = 3;
    let compression = Compression {
        codec: Codec::TopK { fraction: 0.1 },
        error_feedback: None, // on by default for top-k
    };
    let mut cfg = serve_config(&fx, rounds, policy(5, 3, 1.0));
    cfg.compression = Some(compression);
    let server = fedprompt_net::start(cfg).await.unwrap();
    let port = server.local_addr().port();
    let mut events = server.subscribe();

    // A client of protocol version 1 knows nothing of encodings: refused at registration.
    let mut old = raw_client(&join_config(&fx, port, "r1")).await.unwrap();
    let e = old
        .register(proto::RegisterRequest {
            protocol_version: 1,
            agent: "old".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("compressed uploads") && e.message().contains("upgrade"),
        "{}",
        e.message()
    );

    let clients: Vec<_> = honest
        .iter()
        .map(|&(id, i)| spawn_client(join_config(&fx, port, id), trainer(i)))
        .collect();
    // Two clients upload in the wrong format every round: r0 a valid f16 encoding, r1 plain
    // f32 parameters (what a client ignoring `update_encoding` would send).
    let mut rogues = Vec::new();
    for (k, id) in ["r0", "r1"].into_iter().enumerate() {
        let mut c = raw_client(&join_config(&fx, port, id)).await.unwrap();
        c.register(proto::RegisterRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            agent: "rogue".into(),
        })
        .await
        .unwrap();
        rogues.push(tokio::spawn(async move {
            let mut sent = BTreeMap::new();
            while let Some(round) = fit_round(&mut c).await {
                let p = initial_params();
                let bytes = if k == 0 {
                    Codec::F16.encode(&p).unwrap()
                } else {
                    p.to_safetensors().unwrap()
                };
                sent.insert(round, bytes.len() as u64);
                let m = update_messages(round, 5, Default::default(), Bytes::from(bytes), 1024);
                let e = send(&mut c, m).await.unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
                assert!(
                    e.message().contains("`topk`"),
                    "the refusal names the codec expected: {}",
                    e.message()
                );
            }
            sent
        }));
    }
    // Each accepted upload's counted bytes, as the server's events report them.
    let mut accepted: BTreeMap<(u64, String), u64> = BTreeMap::new();
    while accepted.len() < 3 * rounds as usize {
        if let Event::Accepted {
            client_id,
            round,
            bytes,
            ..
        } = crate::federation::next_event(&mut events, |e| matches!(e, Event::Accepted { .. }))
            .await
        {
            accepted.insert((round, client_id), bytes);
        }
    }
    let summary = server.wait().await.unwrap();
    for c in clients {
        let s = c.await.unwrap().unwrap();
        assert_eq!(s.rounds_trained, vec![1, 2, 3]);
        assert!(s.refused.is_empty(), "{:?}", s.refused);
    }
    let mut rogue_bytes: BTreeMap<u64, u64> = BTreeMap::new();
    for r in rogues {
        for (round, n) in r.await.unwrap() {
            *rogue_bytes.entry(round).or_default() += n;
        }
    }

    let mut replay = Replay {
        global: fx.initial.clone(),
        feedback: BTreeMap::new(),
    };
    let plain = fx.initial.wire_len().unwrap() as u64;
    let file_events = events_in(&fx.dir.path().join("events.jsonl"));
    for round in 1..=rounds {
        let sizes = replay.round(&compression.codec, round, &honest);
        let o = &summary.outcomes[round as usize - 1];
        assert!(o.aggregated);
        assert_eq!((o.n_ok, o.n_failed), (3, 2), "{:?}", o.failures);
        assert!(o
            .failures
            .iter()
            .all(|f| f.reason.contains("not a `topk` encoding")));
        for (id, n) in &sizes {
            // The bytes counted are the encoding's: at 10 % (values and indices, plus the
            // safetensors header) under a third of plain f32.
            assert_eq!(accepted[&(round, id.clone())], *n, "round {round} {id}");
            assert!(*n * 3 < plain, "{n} bytes vs {plain} plain");
        }
        let want_up = sizes.values().sum::<u64>() + rogue_bytes[&round];
        assert_eq!(o.traffic.up, want_up, "round {round}");
        let ev = file_events
            .iter()
            .find(|e| e["event"] == "round" && e["round"] == round)
            .unwrap();
        assert_eq!(ev["bytes_up"], want_up);
    }
    // The global equals decode-then-FedAvg of what was sent (f64 sums, one f32 rounding).
    let diff = crate::federation::max_abs_diff(&summary.global, &replay.global);
    assert!(diff <= 1e-6, "max abs diff {diff}");
    assert_ne!(summary.global, fx.initial);
    assert_eq!(summary.uploads.as_deref(), Some("topk 10%+ef"));
    assert!(summary.to_string().contains("(topk 10%+ef)"), "{summary}");
    let st = &summary.stats;
    assert_eq!(
        st.refused.get(&RefusalKind::BadEncoding),
        Some(&(2 * rounds))
    );
    assert_eq!(
        st.bytes_up,
        summary.outcomes.iter().map(|o| o.traffic.up).sum::<u64>()
    );
}
