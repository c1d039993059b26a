//! The Fleet API as protobuf over HTTP(S): `POST /v1/fleet/<rpc>` with
//! `content-type: application/protobuf`, every call signed by the node's key and tagged with
//! the Flower runtime version this node speaks.

use std::path::PathBuf;
use std::time::Duration;

use fedprompt_io::error_chain;
use fedprompt_io::tls_failure::{tls_failure, TlsFailure, TlsFailureKind};

use crate::auth::NodeKey;
use crate::error::{FlowerError, Result};
use crate::proto;

const MEDIA: &str = "application/protobuf";
/// Flower's runtime-version headers (checked by the SuperLink: same major.minor required).
const VERSION_HEADERS: [(&str, &str); 3] = [
    ("flwr-package-name", "flwr"),
    ("flwr-package-version", crate::FLWR_VERSION),
    ("flwr-component-name", "SuperNode"),
];
/// Flower's API error code for a runtime version mismatch.
const RUNTIME_VERSION_INCOMPATIBLE: i64 = 1001;

/// How to reach the SuperLink.
#[derive(Clone, Debug)]
pub struct Transport {
    /// `HOST:PORT` of the SuperLink's Fleet API (or a full `http(s)://` URL).
    pub address: String,
    /// Plain HTTP (development only; the SuperLink must run with `--insecure`).
    pub insecure: bool,
    /// PEM file with the CA certificate(s) that signed the SuperLink's certificate; without
    /// it the system's web PKI roots are used.
    pub root_certificates: Option<PathBuf>,
    /// Timeout of ordinary calls.
    pub timeout: Duration,
}

impl Transport {
    /// Plain HTTP to `address`.
    pub fn insecure(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            insecure: true,
            root_certificates: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A signed Fleet API client.
#[derive(Clone, Debug)]
pub struct FleetClient {
    http: reqwest::Client,
    base: String,
    key: NodeKey,
}

impl FleetClient {
    /// A client for `transport`, signing with `key`.
    pub fn new(transport: &Transport, key: NodeKey) -> Result<Self> {
        let addr = transport.address.trim_end_matches('/');
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else if transport.insecure {
            format!("http://{addr}")
        } else {
            format!("https://{addr}")
        };
        if transport.insecure && base.starts_with("https://") {
            return Err(FlowerError::Config(
                "`--insecure` with an https:// address: drop one of them".into(),
            ));
        }
        if !transport.insecure && base.starts_with("http://") {
            return Err(FlowerError::Config(
                "an http:// address needs `--insecure` (plain HTTP, development only)".into(),
            ));
        }
        if transport.insecure && transport.root_certificates.is_some() {
            return Err(FlowerError::Config(
                "`--root-certificates` has no effect with `--insecure`: drop one of them".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(transport.timeout)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if let Some(path) = &transport.root_certificates {
            let pem = std::fs::read(path).map_err(|e| FlowerError::Io {
                path: path.clone(),
                source: e,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FlowerError::Config(format!(
                    "{}: not a PEM certificate bundle ({e})",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(FlowerError::Config(format!(
                    "{}: holds no PEM certificate",
                    path.display()
                )));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| FlowerError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, key })
    }

    /// The node's key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The SuperLink's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// What to change after a permanent TLS failure.
    fn tls_fix(&self, f: &TlsFailure) -> String {
        match f.kind {
            TlsFailureKind::NotTls => "The SuperLink does not speak TLS on this port (was it started with `--insecure`?): start the node with `--insecure` (plain HTTP, development only), or give the SuperLink a certificate".into(),
            TlsFailureKind::UntrustedCertificate => "The SuperLink's certificate is not signed by a CA this node trusts: pass the CA certificate that signed it with `--root-certificates`".into(),
            TlsFailureKind::WrongName => format!("The SuperLink's certificate does not name the host of {}: use an address that is a name or IP in that certificate", self.base),
            TlsFailureKind::BadCertificate => "The SuperLink's certificate is unusable (expired, not yet valid, revoked, or not a server certificate): the SuperLink's operator must renew it; check this machine's clock".into(),
            TlsFailureKind::RefusedByPeer => "The server ended the TLS handshake: check that this address is the SuperLink's Fleet API (a SuperLink does not ask nodes for certificates)".into(),
            TlsFailureKind::Incompatible => "The node and the server share no TLS version or cipher suite (TLS 1.2 or 1.3 with a modern cipher is needed), or the server is not a SuperLink".into(),
        }
    }

    async fn call<Req, Resp>(
        &self,
        rpc: &'static str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let url = format!("{}/v1/fleet/{rpc}", self.base);
        let mut rb = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, MEDIA)
            .header(reqwest::header::ACCEPT, MEDIA)
            .body(req.encode_to_vec());
        for (k, v) in VERSION_HEADERS {
            rb = rb.header(k, v);
        }
        for (k, v) in self.key.headers()? {
            rb = rb.header(k, v);
        }
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        let resp = rb.send().await.map_err(|e| match tls_failure(&e) {
            // Certificate and handshake failures do not heal by retrying.
            Some(f) => FlowerError::Tls {
                url: url.clone(),
                msg: f.detail.clone(),
                fix: self.tls_fix(&f),
            },
            None => FlowerError::Connect {
                url: url.clone(),
                msg: error_chain(&e),
            },
        })?;
        if let Some(msg) = resp
            .headers()
            .get("flwr-version-incompatibility-message")
            .and_then(|v| v.to_str().ok())
        {
            tracing::warn!("{msg}");
        }
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| FlowerError::Connect {
            url: url.clone(),
            msg: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(refusal(rpc, status.as_u16(), &body));
        }
        Resp::decode(body).map_err(|e| FlowerError::Decode {
            rpc,
            msg: format!("{e} (a SuperLink of another Flower release?)"),
        })
    }

    /// `RegisterNode`: announce a self-generated public key.
    pub async fn register_node(&self) -> Result<u64> {
        let r: proto::RegisterNodeFleetResponse = self
            .call(
                "register-node",
                &proto::RegisterNodeFleetRequest {
                    public_key: self.key.public_pem().to_vec().into(),
                },
                None,
            )
            .await?;
        Ok(r.node_id)
    }

    /// `ActivateNode`: go online; returns the node id.
    pub async fn activate_node(&self, heartbeat_interval: f64) -> Result<u64> {
        let r: proto::ActivateNodeResponse = self
            .call(
                "activate-node",
                &proto::ActivateNodeRequest {
                    public_key: self.key.public_pem().to_vec().into(),
                    heartbeat_interval,
                },
                None,
            )
            .await?;
        Ok(r.node_id)
    }

    /// `DeactivateNode`: go offline.
    pub async fn deactivate_node(&self, node_id: u64) -> Result<()> {
        let _: proto::DeactivateNodeResponse = self
            .call(
                "deactivate-node",
                &proto::DeactivateNodeRequest { node_id },
                None,
            )
            .await?;
        Ok(())
    }

    /// `UnregisterNode`: forget a self-registered node.
    pub async fn unregister_node(&self, node_id: u64) -> Result<()> {
        let _: proto::UnregisterNodeFleetResponse = self
            .call(
                "unregister-node",
                &proto::UnregisterNodeFleetRequest { node_id },
                None,
            )
            .await?;
        Ok(())
    }

    /// `SendNodeHeartbeat` (5 s timeout, as Flower's node).
    pub async fn heartbeat(&self, node_id: u64, interval: f64) -> Result<bool> {
        let r: proto::SendNodeHeartbeatResponse = self
            .call(
                "send-node-heartbeat",
                &proto::SendNodeHeartbeatRequest {
                    node: Some(proto::Node { node_id }),
                    heartbeat_interval: interval,
                },
                Some(Duration::from_secs(5)),
            )
            .await?;
        Ok(r.success)
    }

    /// `PullMessages`: messages waiting for this node, with their object trees.
    pub async fn pull_messages(&self, node_id: u64) -> Result<proto::PullMessagesResponse> {
        self.call(
            "pull-messages",
            &proto::PullMessagesRequest {
                node: Some(proto::Node { node_id }),
                message_ids: Vec::new(),
            },
            None,
        )
        .await
    }

    /// `PushMessages`: a reply's metadata and object tree; returns the ids still to push
    /// and the push session.
    pub async fn push_messages(
        &self,
        node_id: u64,
        message: proto::Message,
        tree: proto::ObjectTree,
        runtime: f64,
    ) -> Result<proto::PushMessagesResponse> {
        self.call(
            "push-messages",
            &proto::PushMessagesRequest {
                node: Some(proto::Node { node_id }),
                messages_list: vec![message],
                message_object_trees: vec![tree],
                clientapp_runtime_list: vec![runtime],
            },
            None,
        )
        .await
    }

    /// `GetRun`.
    pub async fn get_run(&self, node_id: u64, run_id: u64) -> Result<proto::Run> {
        let r: proto::GetRunResponse = self
            .call(
                "get-run",
                &proto::GetRunRequest {
                    node: Some(proto::Node { node_id }),
                    run_id,
                },
                None,
            )
            .await?;
        r.run.ok_or(FlowerError::Decode {
            rpc: "get-run",
            msg: "no run in the reply".into(),
        })
    }

    /// `PullObject`: `Ok(None)` while the object is not yet available.
    pub async fn pull_object(
        &self,
        node_id: u64,
        run_id: u64,
        object_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        let r: proto::PullObjectResponse = self
            .call(
                "pull-object",
                &proto::PullObjectRequest {
                    node: Some(proto::Node { node_id }),
                    run_id,
                    object_id: object_id.to_string(),
                },
                None,
            )
            .await?;
        if !r.object_found {
            return Err(FlowerError::object(
                object_id,
                "the SuperLink does not have it (the message expired or was withdrawn)",
            ));
        }
        Ok(r.object_available.then(|| r.object_content.to_vec()))
    }

    /// `PushObject`.
    pub async fn push_object(
        &self,
        node_id: u64,
        run_id: u64,
        session_id: &str,
        object_id: &str,
        content: Vec<u8>,
    ) -> Result<()> {
        let r: proto::PushObjectResponse = self
            .call(
                "push-object",
                &proto::PushObjectRequest {
                    node: Some(proto::Node { node_id }),
                    run_id,
                    object_id: object_id.to_string(),
                    object_content: content.into(),
                    session_id: session_id.to_string(),
                },
                None,
            )
            .await?;
        if !r.stored {
            return Err(FlowerError::object(
                object_id,
                "the SuperLink did not store it (it re-hashes every object; an id that does not match the bytes is refused)",
            ));
        }
        Ok(())
    }

    /// `ConfirmMessageReceived`.
    pub async fn confirm_received(
        &self,
        node_id: u64,
        run_id: u64,
        message_id: &str,
    ) -> Result<()> {
        let _: proto::ConfirmMessageReceivedResponse = self
            .call(
                "confirm-message-received",
                &proto::ConfirmMessageReceivedRequest {
                    node: Some(proto::Node { node_id }),
                    run_id,
                    message_object_id: message_id.to_string(),
                },
                None,
            )
            .await?;
        Ok(())
    }
}

/// Turns an error status and body into a [`FlowerError`].
fn refusal(rpc: &'static str, status: u16, body: &[u8]) -> FlowerError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(|c| c.as_i64());
    let mut detail = json
        .as_ref()
        .and_then(|j| j.get("detail").or_else(|| j.get("public_message")))
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
    if let Some(extra) = json
        .as_ref()
        .and_then(|j| j.get("extra").or_else(|| j.get("public_details")))
        .and_then(|d| d.as_str())
    {
        detail = format!("{detail} ({extra})");
    }
    if code == Some(RUNTIME_VERSION_INCOMPATIBLE) {
        return FlowerError::Version(detail);
    }
    // flwr 1.42's SuperLink serves every Fleet RPC at `POST /v1/fleet/<rpc>`; a server without
    // that route is another Flower release (older ones speak gRPC only) or not a SuperLink.
    // (1.42 itself does not reject other node versions on this API, so this is the signal.)
    if matches!(status, 404 | 405 | 501) {
        return FlowerError::Version(format!(
            "the server has no `POST /v1/fleet/{rpc}` (HTTP {status}): it is not a flwr 1.42 SuperLink's Fleet API (older Flower releases serve the Fleet API over gRPC only)"
        ));
    }
    if status == 401 {
        return FlowerError::Unauthenticated { rpc, detail };
    }
    FlowerError::Refused {
        rpc,
        status,
        code,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified() {
        let v = refusal(
            "activate-node",
            412,
            br#"{"code": 1001, "detail": "SuperLink version 1.43.0 detected a runtime version mismatch"}"#,
        );
        assert!(matches!(v, FlowerError::Version(_)), "{v}");
        let a = refusal(
            "pull-messages",
            401,
            br#"{"detail": "Invalid SuperNode authentication"}"#,
        );
        assert!(a.to_string().contains("flwr supernode register"), "{a}");
        let n = refusal("register-node", 404, br#"{"detail":"Not Found"}"#);
        assert!(matches!(n, FlowerError::Version(_)), "{n}");
        let o = refusal("push-object", 500, b"boom");
        assert!(o.is_transient() && o.to_string().contains("boom"));
    }

    #[test]
    fn address_and_tls_settings() {
        let k = NodeKey::generate().unwrap();
        let c = FleetClient::new(&Transport::insecure("127.0.0.1:9092"), k.clone()).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:9092");
        let mut t = Transport::insecure("https://x:1");
        assert!(FleetClient::new(&t, k.clone()).is_err());
        t.insecure = false;
        t.root_certificates = Some("/nonexistent/ca.pem".into());
        assert!(FleetClient::new(&t, k).is_err());
    }
}
