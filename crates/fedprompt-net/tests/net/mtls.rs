// Mutual TLS: the token names the client, and the client certificate must agree.

use fedprompt_fl::{Params, RoundPolicy, StrategyConfig};
use fedprompt_net::proto::{self, PROTOCOL_VERSION};
use fedprompt_net::{
    devcerts, raw_client, ClientTlsConfig, Event, InitialParams, JoinConfig, ServeConfig,
    ServerTlsConfig,
};
use tonic::Code;

async fn register(cfg: &JoinConfig) -> Result<proto::RegisterReply, tonic::Status> {
    let mut c = raw_client(cfg).await.unwrap();
    c.register(proto::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        agent: "mtls test".into(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_must_name_the_tokens_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = devcerts::generate(&d.join("certs"), &["a", "b"]).unwrap();
    let mut initial = Params::new();
    initial.insert_vec("w", vec![2], vec![0.5, -0.5]).unwrap();
    std::fs::write(
        d.join("init.safetensors"),
        initial.to_safetensors().unwrap(),
    )
    .unwrap();
    let cfg = ServeConfig {
        address: "127.0.0.1:0".into(),
        tls: Some(ServerTlsConfig {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: Some(certs.ca_cert.clone()),
        }),
        allow_plaintext: false,
        tokens: certs.tokens_file.clone(),
        rounds: 1,
        strategy: StrategyConfig::FedAvg,
        policy: RoundPolicy {
            min_available_clients: 2,
            ..RoundPolicy::default()
        },
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
        events: None,
        output: None,
        max_chunk_bytes: 1024,
        max_update_bytes: None,
        liveness_s: 30.0,
        linger_s: 0.0,
        privacy: None,
        weights: Default::default(),
        compression: None,
        secure_aggregation: None,
        secagg_stage_deadline_s: 60.0,
    };
    let server = fedprompt_net::start(cfg).await.unwrap();
    let mut events = server.subscribe();
    let port = server.local_addr().port();
    // Client `a`'s certificate and key, with the token given as `token`.
    let with_a_cert = |token: &str| JoinConfig {
        tls: ClientTlsConfig {
            ca_cert: Some(certs.ca_cert.clone()),
            cert: Some(certs.clients["a"].cert.clone()),
            key: Some(certs.clients["a"].key.clone()),
            domain: None,
        },
        ..JoinConfig::new(format!("https://localhost:{port}"), token)
    };

    let refused = register(&with_a_cert(&certs.clients["b"].token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let msg = refused.message();
    assert!(msg.contains("`a`") && msg.contains("`b`"), "{msg}");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Event::AuthRefused { reason, .. } = events.recv().await.unwrap() {
                return reason;
            }
        }
    })
    .await
    .expect("an auth_refused event");
    assert!(reason.contains("`a`") && reason.contains("`b`"), "{reason}");
    // Refused for good: `join` does not retry.
    let e = fedprompt_net::join_async(
        with_a_cert(&certs.clients["b"].token),
        &mut fedprompt_net::DeterministicTrainer::new(0, 1),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, fedprompt_net::NetError::Refused(_)), "{e}");

    let reg = register(&with_a_cert(&certs.clients["a"].token))
        .await
        .unwrap();
    assert_eq!(reg.client_id, "a");

    server.stop_handle().stop();
    let summary = server.wait().await.unwrap();
    assert_eq!(summary.stats.auth_refused, 2);
    assert_eq!(summary.stats.registrations, 1);
}
