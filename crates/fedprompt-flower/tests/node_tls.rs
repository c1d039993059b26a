//! A node whose TLS can never work stops at once with the cause and the fix, instead of
//! retrying for `reconnect_for` (5 minutes here) as if the network were down. Real servers
//! on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedprompt_fl::Params;
use fedprompt_flower::fleet::Transport;
use fedprompt_flower::node::{run, MessageHandler, NodeConfig};
use fedprompt_flower::records::{Message, RecordDict};
use fedprompt_flower::FlowerError;

struct Never;

impl MessageHandler for Never {
    fn handle(&mut self, _: &Message) -> Result<RecordDict, (i64, String)> {
        Err((2, "unused".into()))
    }
}

/// Runs a node on `transport` and expects it to fail within 30 s.
async fn node_error(transport: Transport) -> FlowerError {
    let mut cfg = NodeConfig::new(transport);
    cfg.reconnect_for = Duration::from_secs(300);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let r = tokio::time::timeout(Duration::from_secs(30), run(&cfg, &mut Never, stop))
        .await
        .expect("a permanent TLS failure was retried instead of ending the node");
    assert!(t0.elapsed() < Duration::from_secs(30));
    r.expect_err("the node ran")
}

/// A plain HTTP/1.1 server that answers every connection `400 Bad Request` (as a SuperLink
/// started with `--insecure` answers a TLS ClientHello); serves for at most 60 s.
fn plain_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_against_a_plain_http_superlink_says_use_insecure() {
    let port = plain_http_server();
    let mut t = Transport::insecure(format!("127.0.0.1:{port}"));
    t.insecure = false;
    let e = node_error(t).await;
    let msg = e.to_string();
    assert!(matches!(e, FlowerError::Tls { .. }), "{msg}");
    assert!(!e.is_transient());
    assert!(
        msg.contains("does not speak TLS") && msg.contains("`--insecure`"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_superlink_certificate_says_root_certificates() {
    // A TLS server with a development certificate, and the CA of another one to trust.
    let dir = tempfile::tempdir().unwrap();
    let certs = fedprompt_net::devcerts::generate(&dir.path().join("certs"), &["a"]).unwrap();
    let other = fedprompt_net::devcerts::generate(&dir.path().join("other"), &["a"]).unwrap();
    let mut p = Params::new();
    p.insert_vec("classifier.bias", vec![1], vec![0.0]).unwrap();
    std::fs::write(
        dir.path().join("init.safetensors"),
        p.to_safetensors().unwrap(),
    )
    .unwrap();
    let toml = format!(
        "address = \"127.0.0.1:0\"\ntokens = \"{}\"\nrounds = 1\ncheckpoint = \"{}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n[policy]\nmin_available_clients = 1\n\
         min_fit_clients = 1\n[initial]\ntype = \"file\"\npath = \"{}\"\n",
        certs.tokens_file.display(),
        dir.path().join("ck.safetensors").display(),
        certs.server_cert.display(),
        certs.server_key.display(),
        dir.path().join("init.safetensors").display()
    );
    let cfg = fedprompt_net::ServeConfig::from_toml(&toml).unwrap();
    let server = fedprompt_net::start(cfg).await.unwrap();
    let mut t = Transport::insecure(format!("localhost:{}", server.local_addr().port()));
    t.insecure = false;
    t.root_certificates = Some(other.ca_cert.clone());
    let e = node_error(t).await;
    let msg = e.to_string();
    assert!(matches!(e, FlowerError::Tls { .. }), "{msg}");
    assert!(
        msg.contains("not signed by a CA this node trusts") && msg.contains("--root-certificates"),
        "{msg}"
    );
}
