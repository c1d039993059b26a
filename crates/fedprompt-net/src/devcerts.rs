//! Development credentials: a private CA, a server certificate, one client
//! certificate and token per client, and the server's hashed tokens file.
//!
//! For trials and tests. In production use certificates from your own CA and
//! keep the CA key offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::auth::{generate_token, hash_token, validate_client_id, TokensFile};
use crate::error::{NetError, Result};

/// Paths (and tokens) written by [`generate`].
#[derive(Clone, Debug)]
pub struct DevCerts {
    /// CA certificate: clients trust it (`--ca-cert`), the server checks client certificates with it.
    pub ca_cert: PathBuf,
    /// Server certificate (valid for `localhost`, `127.0.0.1` and `::1`).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Hashed tokens for the server (`tokens` in `federation.toml`).
    pub tokens_file: PathBuf,
    /// Per client: certificate, key, token file and the token itself.
    pub clients: BTreeMap<String, DevClient>,
}

/// One client's credentials.
#[derive(Clone, Debug)]
pub struct DevClient {
    /// Client certificate (for mutual TLS).
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
    /// File holding the token.
    pub token_file: PathBuf,
    /// The token (give it to the client only).
    pub token: String,
}

fn cg(e: rcgen::Error) -> NetError {
    NetError::CertGen(e.to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(NetError::io(path))
}

/// Writes a secret (private key, token) readable by its owner only: created with mode 0600
/// on unix, never widened by a umask or an older file's mode.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NetError::io(path)(e)),
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(NetError::io(path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(NetError::io(path))
}

/// Writes development credentials for `clients` into `dir` (created if needed; an existing
/// folder must be empty).
pub fn generate(dir: &Path, clients: &[&str]) -> Result<DevCerts> {
    generate_with_hosts(dir, clients, &[])
}

/// [`generate`] with extra server names (e.g. the coordinator's host name): DNS names or IP
/// addresses added to the server certificate.
pub fn generate_with_hosts(dir: &Path, clients: &[&str], extra_hosts: &[&str]) -> Result<DevCerts> {
    generate_into(dir, clients, extra_hosts, false)
}

/// [`generate_with_hosts`]; with `force`, also into a folder that is not empty (its files of
/// the same names are replaced, others left alone).
///
/// Private keys and token files are created readable by their owner only (mode 0600).
pub fn generate_into(
    dir: &Path,
    clients: &[&str],
    extra_hosts: &[&str],
    force: bool,
) -> Result<DevCerts> {
    for c in clients {
        validate_client_id(c)?;
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if !force && entries.next().is_some() {
                return Err(NetError::Config(format!(
                    "`{}` is not empty: give a new folder, or force replacing the credentials in it (`fedprompt devcerts --force`)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(NetError::io(dir))?;
        }
        Err(e) => return Err(NetError::io(dir)(e)),
    }

    let ca_key = KeyPair::generate().map_err(cg)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cg)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fedprompt development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cg)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(extra_hosts.iter().map(|s| s.to_string()));
    let server_key = KeyPair::generate().map_err(cg)?;
    let mut sp = CertificateParams::new(names).map_err(cg)?;
    sp.distinguished_name
        .push(DnType::CommonName, "fedprompt server");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &issuer).map_err(cg)?;

    let out = DevCerts {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        tokens_file: dir.join("tokens.toml"),
        clients: BTreeMap::new(),
    };
    write(&out.ca_cert, &ca_cert.pem())?;
    write(&out.server_cert, &server_cert.pem())?;
    write_secret(&out.server_key, &server_key.serialize_pem())?;

    let mut out = out;
    let mut tokens = TokensFile::default();
    for &c in clients {
        let key = KeyPair::generate().map_err(cg)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cg)?;
        p.distinguished_name.push(DnType::CommonName, c);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).map_err(cg)?;
        let token = generate_token();
        let client = DevClient {
            cert: dir.join(format!("client-{c}.pem")),
            key: dir.join(format!("client-{c}.key")),
            token_file: dir.join(format!("client-{c}.token")),
            token: token.clone(),
        };
        write(&client.cert, &cert.pem())?;
        write_secret(&client.key, &key.serialize_pem())?;
        write_secret(&client.token_file, &format!("{token}\n"))?;
        tokens.clients.insert(c.to_string(), hash_token(&token));
        out.clients.insert(c.to_string(), client);
    }
    tokens.save(&out.tokens_file)?;
    Ok(out)
}
