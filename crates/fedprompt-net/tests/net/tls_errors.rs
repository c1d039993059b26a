// Permanent TLS failures end `join` at once, with the cause and the fix, instead of being
// retried for the whole reconnect window (10 minutes here). Real servers on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use fedprompt_fl::{Params, RoundPolicy, StrategyConfig};
use fedprompt_net::devcerts::{self, DevCerts};
use fedprompt_net::{
    join_async, ClientTlsConfig, DeterministicTrainer, InitialParams, JoinConfig, NetError,
    RunningServer, ServeConfig, ServerTlsConfig,
};

struct Fx {
    _dir: tempfile::TempDir,
    certs: DevCerts,
    /// Credentials of another development CA (the wrong one for this server).
    other: DevCerts,
    server: RunningServer,
}

fn serve_config(dir: &Path, certs: &DevCerts, tls: Option<ServerTlsConfig>) -> ServeConfig {
    let mut p = Params::new();
    p.insert_vec("classifier.bias", vec![2], vec![0.0, 1.0])
        .unwrap();
    std::fs::write(dir.join("init.safetensors"), p.to_safetensors().unwrap()).unwrap();
    ServeConfig {
        address: "127.0.0.1:0".into(),
        allow_plaintext: tls.is_none(),
        tls,
        tokens: certs.tokens_file.clone(),
        rounds: 1,
        strategy: StrategyConfig::FedAvg,
        // Never enough clients: "idle" never connects, so no round starts while the
        // tests run (and the quorum is one the tokens file can meet).
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
            path: dir.join("init.safetensors"),
        },
        checkpoint: dir.join("checkpoint.safetensors"),
        resume: false,
        events: None,
        output: None,
        max_chunk_bytes: 1024,
        max_update_bytes: None,
        liveness_s: 30.0,
        linger_s: 0.5,
        privacy: None,
        weights: Default::default(),
        compression: None,
        secure_aggregation: None,
        secagg_stage_deadline_s: 60.0,
    }
}

/// A server with TLS (`mutual`: client certificates required) or, with `tls = false`, plaintext.
async fn fixture(tls: bool, mutual: bool) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcerts::generate(&dir.path().join("certs"), &["sw", "idle"]).unwrap();
    let other = devcerts::generate(&dir.path().join("other"), &["sw"]).unwrap();
    let server_tls = tls.then(|| ServerTlsConfig {
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        client_ca: mutual.then(|| certs.ca_cert.clone()),
    });
    let cfg = serve_config(dir.path(), &certs, server_tls);
    let server = fedprompt_net::start(cfg).await.unwrap();
    Fx {
        _dir: dir,
        certs,
        other,
        server,
    }
}

impl Fx {
    /// A client with the right CA, certificate and token, and the default 10-minute
    /// reconnect window.
    fn client(&self, scheme: &str) -> JoinConfig {
        let c = &self.certs.clients["sw"];
        let mut cfg = JoinConfig::new(
            format!("{scheme}://localhost:{}", self.server.local_addr().port()),
            c.token.clone(),
        );
        cfg.tls = ClientTlsConfig {
            ca_cert: Some(self.certs.ca_cert.clone()),
            cert: Some(c.cert.clone()),
            key: Some(c.key.clone()),
            domain: None,
        };
        cfg.backoff_initial_s = 0.2;
        cfg.backoff_max_s = 1.0;
        assert!(cfg.give_up_after_s >= 600.0);
        cfg
    }
}

/// Joins and expects an error within 30 s (a retried failure would take 10 minutes).
async fn join_error(cfg: JoinConfig) -> NetError {
    let t0 = Instant::now();
    let mut t = DeterministicTrainer::new(0, 1);
    let r = tokio::time::timeout(Duration::from_secs(30), join_async(cfg, &mut t))
        .await
        .expect("a permanent TLS failure was retried instead of ending the join");
    let e = r.expect_err("the join succeeded");
    assert!(t0.elapsed() < Duration::from_secs(30));
    e
}

fn assert_says(e: &NetError, needles: &[&str]) {
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, NetError::Tls(_)), "not a TLS error: {msg}");
    for n in needles {
        assert!(msg.contains(n), "`{n}` missing from: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_url_against_a_tls_server_says_use_https() {
    let fx = fixture(true, false).await;
    let e = join_error(fx.client("http")).await;
    assert_says(&e, &["speaks TLS", "https://localhost:"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_permanent() {
    let fx = fixture(true, true).await;
    let mut cfg = fx.client("https");
    cfg.tls.cert = None;
    cfg.tls.key = None;
    let e = join_error(cfg).await;
    assert_says(&e, &["refused", "--cert", "--key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_of_another_ca_is_permanent() {
    let fx = fixture(true, true).await;
    let mut cfg = fx.client("https");
    cfg.tls.cert = Some(fx.other.clients["sw"].cert.clone());
    cfg.tls.key = Some(fx.other.clients["sw"].key.clone());
    let e = join_error(cfg).await;
    assert_says(&e, &["did not accept the client certificate", "client_ca"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_certificate_is_named() {
    let fx = fixture(true, true).await;
    let mut cfg = fx.client("https");
    cfg.tls.key = Some(fx.other.clients["sw"].key.clone());
    let e = join_error(cfg).await;
    assert_says(&e, &["does not belong to the certificate", "--key"]);
    // Not a key at all.
    let mut cfg = fx.client("https");
    cfg.tls.key = Some(fx.certs.ca_cert.clone());
    let e = join_error(cfg).await;
    assert_says(&e, &["no usable PEM private key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_server_certificate_is_permanent() {
    let fx = fixture(true, false).await;
    let mut cfg = fx.client("https");
    cfg.tls.ca_cert = Some(fx.other.ca_cert.clone());
    let e = join_error(cfg).await;
    assert_says(&e, &["not signed by", "--ca-cert"]);
    // A name the certificate does not list (it names localhost, 127.0.0.1 and ::1).
    let mut cfg = fx.client("https");
    cfg.tls.domain = Some("coordinator.invalid".into());
    let e = join_error(cfg).await;
    assert_says(&e, &["does not name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_against_a_plaintext_server_says_use_http() {
    let fx = fixture(false, false).await;
    let e = join_error(fx.client("https")).await;
    assert_says(&e, &["does not speak TLS", "http://"]);
}
