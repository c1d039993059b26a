//! The node's identity: an ECDSA P-384 key pair, and the signed headers every Fleet call
//! carries (`flwr-public-key`, `flwr-timestamp`, `flwr-signature`), whether or not the
//! SuperLink has SuperNode authentication on.

use std::path::Path;

use base64::Engine as _;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::error::{FlowerError, Result};

/// Header with the node's public key (base64 of its PEM).
pub const PUBLIC_KEY_HEADER: &str = "flwr-public-key";
/// Header with the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "flwr-timestamp";
/// Header with the signature (base64 of DER).
pub const SIGNATURE_HEADER: &str = "flwr-signature";

/// A node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    key: SigningKey,
    public_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

impl NodeKey {
    fn from_signing(key: SigningKey) -> Result<Self> {
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| FlowerError::Config(format!("cannot encode the public key: {e}")))?;
        Ok(Self { key, public_pem })
    }

    /// A fresh key pair (what a self-registering node uses).
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 48];
        loop {
            rand::fill(&mut bytes);
            if let Ok(k) = SigningKey::from_slice(&bytes) {
                return Self::from_signing(k);
            }
        }
    }

    /// Reads a P-384 private key: OpenSSH (`ssh-keygen -t ecdsa -b 384`, what Flower's
    /// docs use), PKCS#8 `PRIVATE KEY` (`cryptography`, `openssl genpkey`) or SEC1
    /// `EC PRIVATE KEY`.
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| FlowerError::Key {
            path: path.to_path_buf(),
            msg: format!("cannot read it: {e}"),
        })?;
        if text.contains("BEGIN OPENSSH PRIVATE KEY") {
            return Self::from_openssh(path, &text);
        }
        let key = SigningKey::from_pkcs8_pem(&text)
            .or_else(|_| p384::SecretKey::from_sec1_pem(&text).map(|s| SigningKey::from(&s)))
            .map_err(|_| FlowerError::Key {
                path: path.to_path_buf(),
                msg: "not a P-384 (secp384r1) private key (OpenSSH, or PEM in PKCS#8 or SEC1). \
                      Make a key set with `fedprompt flower-keygen`"
                    .into(),
            })?;
        Self::from_signing(key)
    }

    fn from_openssh(path: &Path, text: &str) -> Result<Self> {
        let bad = |msg: String| FlowerError::Key {
            path: path.to_path_buf(),
            msg,
        };
        let k = ssh_key::PrivateKey::from_openssh(text)
            .map_err(|e| bad(format!("not a readable OpenSSH private key: {e}")))?;
        if k.is_encrypted() {
            return Err(bad(
                "the key is passphrase-protected; remove the passphrase (`ssh-keygen -p -N \"\" -f KEY`)".into(),
            ));
        }
        match k.key_data() {
            ssh_key::private::KeypairData::Ecdsa(ssh_key::private::EcdsaKeypair::NistP384 {
                private,
                ..
            }) => {
                let sk = SigningKey::from_slice(private.as_slice())
                    .map_err(|e| bad(format!("invalid P-384 scalar: {e}")))?;
                Self::from_signing(sk)
            }
            _ => Err(bad(
                "Flower nodes use ECDSA P-384 keys (`ssh-keygen -t ecdsa -b 384`); this is another kind".into(),
            )),
        }
    }

    /// The public key in OpenSSH format (`ecdsa-sha2-nistp384 AAAA...`), what
    /// `flwr supernode register` takes.
    pub fn public_openssh(&self) -> Result<String> {
        let point = self.key.verifying_key().to_encoded_point(false);
        let data =
            ssh_key::public::KeyData::Ecdsa(ssh_key::public::EcdsaPublicKey::NistP384(point));
        ssh_key::PublicKey::new(data, "fedprompt-node")
            .to_openssh()
            .map_err(|e| FlowerError::Config(format!("cannot encode the public key: {e}")))
    }

    /// Writes the private key (PKCS#8 PEM) and the public key (SubjectPublicKeyInfo PEM).
    pub fn write_pem(&self, private: &Path, public: &Path) -> Result<()> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| FlowerError::Config(format!("cannot encode the private key: {e}")))?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| FlowerError::Io { path: p, source: e }
        };
        std::fs::write(private, pem.as_bytes()).map_err(io(private))?;
        std::fs::write(public, self.public_pem.as_bytes()).map_err(io(public))?;
        Ok(())
    }

    /// Writes a key set for `flwr supernode register`: `<stem>.key` (PKCS#8 PEM, for
    /// `--auth-key`), `<stem>.pub.pem` (PEM) and `<stem>.pub` (OpenSSH, to register).
    pub fn write_key_set(&self, dir: &Path, stem: &str) -> Result<[std::path::PathBuf; 3]> {
        std::fs::create_dir_all(dir).map_err(|e| FlowerError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let paths = [
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.pub.pem")),
            dir.join(format!("{stem}.pub")),
        ];
        self.write_pem(&paths[0], &paths[1])?;
        let ssh = self.public_openssh()? + "\n";
        std::fs::write(&paths[2], ssh).map_err(|e| FlowerError::Io {
            path: paths[2].clone(),
            source: e,
        })?;
        Ok(paths)
    }

    /// The public key as PEM bytes (what `RegisterNode`/`ActivateNode` carry).
    pub fn public_pem(&self) -> &[u8] {
        self.public_pem.as_bytes()
    }

    /// ECDSA over SHA-256 of `msg`, DER-encoded (Python `cryptography`'s
    /// `sign(msg, ec.ECDSA(hashes.SHA256()))`).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let digest = Sha256::digest(msg);
        let sig: Signature = self
            .key
            .sign_prehash(&digest)
            .map_err(|e| FlowerError::Config(format!("signing failed: {e}")))?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// The three identity headers for a call made now.
    pub fn headers(&self) -> Result<[(&'static str, String); 3]> {
        let ts = timestamp_now();
        let sig = self.sign(ts.as_bytes())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok([
            (PUBLIC_KEY_HEADER, b64.encode(self.public_pem())),
            (TIMESTAMP_HEADER, ts),
            (SIGNATURE_HEADER, b64.encode(sig)),
        ])
    }
}

/// The current UTC time as Python's `datetime.now(tz=UTC).isoformat()` writes it
/// (`2026-11-24T19:04:42.123456+00:00`), which the SuperLink parses with `fromisoformat`.
pub fn timestamp_now() -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000+00:00".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::ecdsa::VerifyingKey;
    use p384::pkcs8::DecodePublicKey;

    #[test]
    fn signs_sha256_prehash_verifiably() {
        let k = NodeKey::generate().unwrap();
        let pem = std::str::from_utf8(k.public_pem()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let vk = VerifyingKey::from_public_key_pem(pem).unwrap();
        let sig = Signature::from_der(&k.sign(b"hello").unwrap()).unwrap();
        vk.verify_prehash(&Sha256::digest(b"hello"), &sig).unwrap();
        assert!(vk.verify_prehash(&Sha256::digest(b"hellO"), &sig).is_err());
    }

    #[test]
    fn timestamp_format() {
        let t = timestamp_now();
        assert_eq!(t.len(), "2026-11-24T19:04:42.123456+00:00".len(), "{t}");
        assert!(t.ends_with("+00:00") && t.as_bytes()[10] == b'T');
    }

    #[test]
    fn key_files_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::generate().unwrap();
        let (sk, pk) = (dir.path().join("n.key"), dir.path().join("n.pub"));
        k.write_pem(&sk, &pk).unwrap();
        let back = NodeKey::from_pem_file(&sk).unwrap();
        assert_eq!(back.public_pem(), k.public_pem());
        std::fs::write(&sk, "not a key").unwrap();
        let e = NodeKey::from_pem_file(&sk).unwrap_err().to_string();
        assert!(e.contains("P-384"), "{e}");
        assert!(NodeKey::from_pem_file(&dir.path().join("missing.key")).is_err());
    }

    #[test]
    fn openssh_keys() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::generate().unwrap();
        let [_, _, pubfile] = k.write_key_set(dir.path(), "node").unwrap();
        let line = std::fs::read_to_string(pubfile).unwrap();
        assert!(line.starts_with("ecdsa-sha2-nistp384 "), "{line}");
        // An OpenSSH private key of the same scalar reads back to the same identity.
        let pk = ssh_key::PublicKey::from_openssh(line.trim()).unwrap();
        let sk_bytes = k.key.to_bytes();
        let keypair = ssh_key::private::EcdsaKeypair::NistP384 {
            public: match pk.key_data() {
                ssh_key::public::KeyData::Ecdsa(ssh_key::public::EcdsaPublicKey::NistP384(p)) => *p,
                _ => unreachable!(),
            },
            private: ssh_key::private::EcdsaPrivateKey::from(
                p384::SecretKey::from_slice(&sk_bytes).unwrap(),
            ),
        };
        let sshk =
            ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ecdsa(keypair), "t").unwrap();
        let path = dir.path().join("id_ecdsa");
        std::fs::write(
            &path,
            sshk.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(
            NodeKey::from_pem_file(&path).unwrap().public_pem(),
            k.public_pem()
        );
    }
}
