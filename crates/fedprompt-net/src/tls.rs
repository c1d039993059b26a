//! TLS settings: a rustls server configuration (optionally requiring client
//! certificates) and the matching tonic client configuration. Crypto: `ring`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{NetError, Result};

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
            certs(c)?;
            key(k)?;
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
