//! The primitives, all from maintained crates: X25519 key agreement (`x25519-dalek`),
//! HKDF-SHA256 key derivation (`hkdf`, `sha2`), ChaCha20 as the mask generator
//! (`rand_chacha`), ChaCha20-Poly1305 for the shares relayed by the server
//! (`chacha20poly1305`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use super::SecAggError;

/// Version tag mixed into every derived key.
const DOMAIN: &[u8] = b"fedprompt-secagg-v1";

/// An X25519 key pair; the secret is kept for the whole round (and shared, for the
/// masking key, so that the server can recover a dropped client's masks).
pub(crate) struct KeyPair {
    pub secret: StaticSecret,
    pub public: [u8; 32],
}

impl KeyPair {
    /// A fresh key pair from `rng`.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_secret_bytes(bytes)
    }

    /// The key pair of secret `bytes` (clamped by X25519).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }
}

/// Distinguishes the two uses of key agreement.
#[derive(Clone, Copy)]
pub(crate) enum Purpose {
    /// Pairwise masks.
    Mask,
    /// Encryption of the shares sent from `a` to `b`.
    Cipher,
}

/// A 32-byte key for `purpose` between clients `a` and `b` in session `session` (round and
/// graph seed): HKDF-SHA256 over the X25519 shared secret of `secret` and `peer_public`.
/// Errors when the peer's key is a low-order point (the shared secret would be known).
pub(crate) fn agree(
    secret: &StaticSecret,
    peer_public: &[u8; 32],
    purpose: Purpose,
    session: &[u8],
    a: &str,
    b: &str,
) -> Result<[u8; 32], SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(SecAggError::Malformed(
            "a public key is a low-order point; key agreement refused".into(),
        ));
    }
    let hk = Hkdf::<Sha256>::new(Some(session), shared.as_bytes());
    let label: &[u8] = match purpose {
        Purpose::Mask => b"mask",
        Purpose::Cipher => b"cipher",
    };
    let mut info = Vec::with_capacity(DOMAIN.len() + label.len() + a.len() + b.len() + 3);
    for part in [DOMAIN, label, a.as_bytes(), b.as_bytes()] {
        info.extend_from_slice(part);
        info.push(0xff);
    }
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
    hk.expand(&info, &mut out)
        .map_err(|_| SecAggError::Malformed("HKDF output length".into()))?;
    Ok(out)
}

/// The session bytes of a round: domain, round number and graph seed.
pub(crate) fn session(round: u64, graph_seed: u64) -> Vec<u8> {
    let mut s = DOMAIN.to_vec();
    s.extend(round.to_le_bytes());
    s.extend(graph_seed.to_le_bytes());
    s
}

/// `len` mask words modulo `2^bits` (`mask = 2^bits − 1`) from the ChaCha20 stream of `seed`.
pub(crate) fn prg(seed: &[u8; 32], len: usize, mask: u32) -> impl Iterator<Item = u32> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    (0..len).map(move |_| rng.next_u32() & mask)
}

/// Encrypts `plaintext` under a one-time `key` (each derived key encrypts one message, so
/// the fixed nonce is never reused), binding `aad` (sender, recipient, round).
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecAggError> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SecAggError::Malformed("encryption failed".into()))
}

/// Decrypts what [`seal`] made; `None` when the key, the data or the bound `aad` differ.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_key_and_nothing_else_does() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (a, b, c) = (
            KeyPair::generate(&mut rng),
            KeyPair::generate(&mut rng),
            KeyPair::generate(&mut rng),
        );
        let s = session(3, 9);
        let ab = agree(&a.secret, &b.public, Purpose::Mask, &s, "a", "b").unwrap();
        let ba = agree(&b.secret, &a.public, Purpose::Mask, &s, "a", "b").unwrap();
        assert_eq!(ab, ba);
        let ac = agree(&a.secret, &c.public, Purpose::Mask, &s, "a", "b").unwrap();
        let ab_cipher = agree(&a.secret, &b.public, Purpose::Cipher, &s, "a", "b").unwrap();
        let ab_next = agree(
            &a.secret,
            &b.public,
            Purpose::Mask,
            &session(4, 9),
            "a",
            "b",
        )
        .unwrap();
        assert!(ac != ab && ab_cipher != ab && ab_next != ab);
        // The all-zero point is of low order: refused.
        assert!(agree(&a.secret, &[0u8; 32], Purpose::Mask, &s, "a", "b").is_err());
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_aad() {
        let key = [7u8; 32];
        let ct = seal(&key, b"a->b", b"share").unwrap();
        assert_eq!(open(&key, b"a->b", &ct).as_deref(), Some(&b"share"[..]));
        assert!(open(&[8u8; 32], b"a->b", &ct).is_none());
        assert!(open(&key, b"c->b", &ct).is_none());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(open(&key, b"a->b", &bad).is_none());
    }

    #[test]
    fn prg_is_deterministic_and_respects_the_modulus() {
        let a: Vec<u32> = prg(&[1; 32], 1000, 0xffff).collect();
        let b: Vec<u32> = prg(&[1; 32], 1000, 0xffff).collect();
        let c: Vec<u32> = prg(&[2; 32], 1000, 0xffff).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&v| v <= 0xffff));
        // Roughly uniform: the mean of 1000 draws is near 2^15.
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        assert!((mean - 32767.5).abs() < 3000.0, "{mean}");
    }
}
