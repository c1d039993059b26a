//! Per-client bearer tokens: the server keeps only their SHA-256 hashes and
//! compares in constant time.

use std::collections::BTreeMap;
use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::{NetError, Result};

const HASH_PREFIX: &str = "sha256:";

/// A fresh random token: `fpt_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("fpt_{}", hex::encode(bytes))
}

/// The stored form of a token: `sha256:` and the hex digest of its UTF-8 bytes.
pub fn hash_token(token: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// Checks a client id: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
pub fn validate_client_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "client id `{id}` must be 1 to 64 characters of A-Z a-z 0-9 _ - ."
        )))
    }
}

/// The tokens file: `[clients]` maps each client id to its token's hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Client id → `sha256:<hex>`.
    pub clients: BTreeMap<String, String>,
}

impl TokensFile {
    /// Writes the file (TOML) with a header comment.
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self).map_err(|e| NetError::Config(e.to_string()))?;
        let text = format!(
            "# fedprompt client tokens: only SHA-256 hashes are stored here.\n\
             # Add a client: `hash_token` of a fresh token under [clients].\n{body}"
        );
        std::fs::write(path, text).map_err(NetError::io(path))
    }
}

/// Verifies bearer tokens against stored hashes.
#[derive(Clone, Debug)]
pub struct TokenStore {
    ids: Vec<String>,
    hashes: Vec<[u8; 32]>,
}

impl TokenStore {
    /// Builds a store from client id → `sha256:<hex>` entries.
    pub fn from_hashes(clients: &BTreeMap<String, String>) -> Result<Self> {
        if clients.is_empty() {
            return Err(NetError::Config("the tokens file lists no clients".into()));
        }
        let mut ids = Vec::with_capacity(clients.len());
        let mut hashes = Vec::with_capacity(clients.len());
        for (id, h) in clients {
            validate_client_id(id)?;
            let hex_part = h.strip_prefix(HASH_PREFIX).ok_or_else(|| {
                NetError::Config(format!(
                    "token of client `{id}` must be stored as `{HASH_PREFIX}<64 hex digits>`"
                ))
            })?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_part, &mut digest).map_err(|_| {
                NetError::Config(format!("token hash of client `{id}` is not 64 hex digits"))
            })?;
            if hashes.contains(&digest) {
                return Err(NetError::Config(format!(
                    "client `{id}` shares its token with another client"
                )));
            }
            ids.push(id.clone());
            hashes.push(digest);
        }
        Ok(Self { ids, hashes })
    }

    /// Reads a tokens file (see [`TokensFile`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(NetError::io(path))?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| NetError::ConfigFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::from_hashes(&file.clients)
    }

    /// Every known client id, sorted.
    pub fn client_ids(&self) -> Vec<String> {
        self.ids.clone()
    }

    /// The client a token belongs to. Every stored hash is compared, in constant time.
    pub fn verify(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = 0u32;
        for (i, h) in self.hashes.iter().enumerate() {
            let candidate = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found = u32::conditional_select(&found, &candidate, h.ct_eq(&digest));
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.ids.get(index).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_by_hash_only() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        let clients = BTreeMap::from([
            ("alice".to_string(), hash_token(&a)),
            ("bob".to_string(), hash_token(&b)),
        ]);
        let store = TokenStore::from_hashes(&clients).unwrap();
        assert_eq!(store.verify(&a), Some("alice"));
        assert_eq!(store.verify(&b), Some("bob"));
        assert_eq!(store.verify("fpt_00"), None);
        assert_eq!(store.verify(""), None);
        assert_eq!(store.verify(&hash_token(&a)), None);
    }

    #[test]
    fn bad_tokens_files_are_refused() {
        let bad = BTreeMap::from([("alice".to_string(), "plaintext".to_string())]);
        assert!(TokenStore::from_hashes(&bad).is_err());
        let short = BTreeMap::from([("alice".to_string(), "sha256:abcd".to_string())]);
        assert!(TokenStore::from_hashes(&short).is_err());
        let h = hash_token("x");
        let dup = BTreeMap::from([("a".to_string(), h.clone()), ("b".to_string(), h)]);
        assert!(TokenStore::from_hashes(&dup).is_err());
        let id = BTreeMap::from([("a b".to_string(), hash_token("y"))]);
        assert!(TokenStore::from_hashes(&id).is_err());
        assert!(TokenStore::from_hashes(&BTreeMap::new()).is_err());
    }
}
