//! TLS settings: a rustls server configuration (optionally requiring client
//! certificates) and the matching tonic client configuration. Crypto: `ring`.
//! [`tls_failure`] (from `fedprompt-io`) tells the TLS failures that retrying cannot heal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{NetError, Result};
pub use fedprompt_io::tls_failure::{tls_failure, TlsFailure, TlsFailureKind};

/// Server side: certificate chain, key, and optionally the CA that signs client certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain of the server (leaf first).
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificate(s); when set, every client must present a certificate they sign (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Client side: whom to trust and, for mutual TLS, who we are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA certificate to trust (a private CA); the public web roots when absent.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the URL's host).
    #[serde(default)]
    pub domain: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(NetError::io(path))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NetError::Tls(format!("`{}`: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!(
            "`{}` holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        NetError::Tls(format!(
            "`{}`: no usable PEM private key ({e})",
            path.display()
        ))
    })
}

/// Builds the rustls server configuration (TLS 1.2 and 1.3, ALPN `h2`).
pub fn server_config(cfg: &ServerTlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| NetError::Tls(format!("`{}`: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| NetError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&cfg.cert)?, key(&cfg.key)?)
        .map_err(|e| NetError::Tls(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Builds tonic's client TLS configuration.
pub fn client_config(cfg: &ClientTlsConfig) -> Result<tonic::transport::ClientTlsConfig> {
    let mut out = tonic::transport::ClientTlsConfig::new();
    out = match &cfg.ca_cert {
        Some(ca) => {
            certs(ca)?;
            out.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
        }
        None => out.with_webpki_roots(),
    };
    match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => {
            check_pair(c, certs(c)?, k, key(k)?)?;
            out = out.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
        }
        (None, None) => {}
        _ => {
            return Err(NetError::Config(
                "a client certificate needs its key and a key its certificate".into(),
            ))
        }
    }
    if let Some(d) = &cfg.domain {
        out = out.domain_name(d.clone());
    }
    Ok(out)
}

/// The client identities a certificate names: its subject common names and
/// DNS subject alternative names (devcerts puts the client id in the CN).
pub(crate) fn certificate_names(der: &[u8]) -> Result<Vec<String>> {
    let bad = |e: &dyn std::fmt::Display| NetError::Tls(format!("client certificate: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(&e))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| bad(&e))? {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }));
    }
    Ok(names)
}

/// Checks that `key` is a usable private key and the one of `chain`'s leaf certificate.
fn check_pair(
    cert_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key_path: &Path,
    key: PrivateKeyDer<'static>,
) -> Result<()> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        NetError::Tls(format!(
            "`{}`: not a usable private key ({e}); --key takes the PEM key of --cert",
            key_path.display()
        ))
    })?;
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(NetError::Tls(format!(
                "the key `{}` does not belong to the certificate `{}`: --key must be the private key of --cert",
                key_path.display(),
                cert_path.display()
            )))
        }
        // Ok, or a key whose public half cannot be derived to compare: the handshake decides.
        _ => Ok(()),
    }
}

/// A join client's error for a permanent TLS failure talking to `server`: the cause and the fix.
pub(crate) fn client_error(server: &str, tls: &ClientTlsConfig, f: &TlsFailure) -> NetError {
    let d = &f.detail;
    let msg = match f.kind {
        TlsFailureKind::NotTls => format!(
            "{server} does not speak TLS ({d}): if that server runs without TLS (allow_plaintext), use {}",
            server.replacen("https://", "http://", 1)
        ),
        TlsFailureKind::UntrustedCertificate => match &tls.ca_cert {
            Some(ca) => format!(
                "the certificate of {server} is not signed by `{}` ({d}): --ca-cert must be the coordinator's CA certificate (its ca.pem)",
                ca.display()
            ),
            None => format!(
                "the certificate of {server} is not signed by a public CA ({d}): for a private CA pass its certificate with --ca-cert"
            ),
        },
        TlsFailureKind::WrongName => format!(
            "the certificate of {server} does not name {} ({d}): use a host name the certificate lists in --server",
            tls.domain.as_deref().unwrap_or("that host")
        ),
        TlsFailureKind::BadCertificate => format!(
            "the certificate of {server} is unusable ({d}): expired, not yet valid or not a server certificate; ask the coordinator, and check this machine's clock"
        ),
        TlsFailureKind::RefusedByPeer => match &tls.cert {
            None => format!(
                "{server} refused the TLS handshake ({d}): it requires a client certificate (mutual TLS); pass --cert and --key"
            ),
            Some(c) => format!(
                "{server} did not accept the client certificate `{}` ({d}): it must be signed by the CA the server trusts for clients (its client_ca)",
                c.display()
            ),
        },
        TlsFailureKind::Incompatible => format!(
            "no TLS with {server} ({d}): the two sides share no TLS version, cipher suite or protocol (is it a fedprompt server?)"
        ),
    };
    NetError::Tls(msg)
}

/// Whether `host:port` answers a TLS handshake (its ServerHello and certificate arrive). For a
/// plaintext client whose first call broke: a TLS server only looks like broken HTTP/2 to it.
/// Nothing is sent but a ClientHello; the certificate is refused unread.
pub(crate) async fn speaks_tls(host: &str, port: u16) -> bool {
    use std::time::Duration;
    let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_string()) else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RefuseEveryCertificate(provider)))
        .with_no_client_auth();
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let r = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        Some(match r {
            Ok(_) => true,
            Err(e) => tls_failure(&e).is_some_and(|f| f.kind != TlsFailureKind::NotTls),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A verifier for [`speaks_tls`]: receiving a certificate is the answer; none is trusted.
#[derive(Debug)]
struct RefuseEveryCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for RefuseEveryCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The permanent TLS failure of a fresh handshake with `host:port` as `cfg`'s client, waiting
/// up to 3 s after it for the server's alert (TLS 1.3 servers refuse a client certificate only
/// after the client has finished its handshake). Nothing is sent but the handshake.
pub(crate) async fn handshake_refusal(
    host: &str,
    port: u16,
    cfg: &ClientTlsConfig,
) -> Option<TlsFailure> {
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    let name = cfg.domain.clone().unwrap_or_else(|| host.to_string());
    let name = rustls::pki_types::ServerName::try_from(name).ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?;
    let builder = match &cfg.ca_cert {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca).ok()? {
                roots.add(c).ok()?;
            }
            builder.with_root_certificates(roots)
        }
        // The web PKI roots are tonic's; the real connection has just verified this server.
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptEveryCertificate(provider))),
    };
    let mut config = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certs(c).ok()?, key(k).ok()?)
            .ok()?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
        {
            Ok(s) => s,
            Err(e) => return tls_failure(&e),
        };
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
            Ok(Err(e)) => tls_failure(&e),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .ok()
        .flatten()
}

/// For [`handshake_refusal`] without a private CA: the question is what the server makes of
/// this client, and no secret but the handshake's own signature is sent.
#[derive(Debug)]
struct AcceptEveryCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptEveryCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_are_the_cn_and_dns_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["sw".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "swahili");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(certificate_names(cert.der()).unwrap(), ["swahili", "sw"]);
        assert!(certificate_names(b"not a certificate").is_err());
    }
}
