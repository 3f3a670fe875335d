//! Encryption of secrets at rest (CRED-10) and constant-time key comparison.
//!
//! Secrets are sealed with ChaCha20-Poly1305 under a key derived from the
//! operator's `salt_key` with HKDF-SHA256. Each ciphertext is stored with the
//! id of the key that sealed it, so a [`KeyRing`] holding the old and the new
//! key can re-encrypt everything online (`rotate-key`). The record's identity is
//! bound as associated data, so a ciphertext copied onto another row fails to
//! open. This crate owns no IO and must not import storage or HTTP crates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305};
use hkdf::Hkdf;
use serde_json::{Map, Value};
use sha2::Sha256;

/// Domain separation for key derivation; changing it would orphan every ciphertext.
const HKDF_SALT: &[u8] = b"deltallm/secrets-at-rest/v1";
const NONCE_LEN: usize = 12;

/// Errors opening sealed data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ciphertext was sealed with a key this ring does not hold.
    #[error("secret was encrypted with key id '{key_id}', which is not configured")]
    UnknownKey {
        /// Key id stored beside the ciphertext.
        key_id: String,
    },
    /// Authentication failed or the blob is malformed.
    #[error("secret sealed with key id '{key_id}' could not be decrypted (wrong key or corrupted data)")]
    Corrupt {
        /// Key id stored beside the ciphertext.
        key_id: String,
    },
    /// The salt key is unusable.
    #[error("{0}")]
    BadKey(String),
}

/// One derived encryption key and its public id.
#[derive(Clone)]
pub struct Key {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Key {
    /// Derive the at-rest key from an operator salt key.
    pub fn derive(salt_key: &str) -> Result<Self, Error> {
        if salt_key.trim().is_empty() {
            return Err(Error::BadKey("salt_key must not be empty".into()));
        }
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), salt_key.as_bytes());
        let mut okm = [0u8; 32];
        let mut id = [0u8; 6];
        hk.expand(b"encryption-key", &mut okm).map_err(|e| Error::BadKey(e.to_string()))?;
        // The id is a separate HKDF output: it names the key without revealing it.
        hk.expand(b"key-id", &mut id).map_err(|e| Error::BadKey(e.to_string()))?;
        let cipher = ChaCha20Poly1305::new(&okm.into());
        okm.fill(0);
        Ok(Self { id: format!("k{}", hex::encode(id)), cipher })
    }

    /// Public key id stored beside every ciphertext.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A ciphertext and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key id.
    pub key_id: String,
    /// base64(nonce ‖ ciphertext ‖ tag).
    pub ciphertext: String,
}

/// The current key (seals) plus older keys (open only, during rotation).
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Key,
    previous: Vec<Key>,
}

impl KeyRing {
    /// A ring with one key.
    pub fn new(current: Key) -> Self {
        Self { current, previous: Vec::new() }
    }

    /// A ring that seals with `current` and can still open `previous` keys.
    pub fn with_previous(current: Key, previous: Vec<Key>) -> Self {
        Self { current, previous }
    }

    /// Id of the sealing key.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Whether a ciphertext sealed with `key_id` can be opened.
    pub fn knows(&self, key_id: &str) -> bool {
        self.find(key_id).is_some()
    }

    fn find(&self, key_id: &str) -> Option<&Key> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == key_id)
    }

    /// Seal bytes, binding `aad` (the record identity).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = self.current.cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).unwrap_or_default();
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Sealed { key_id: self.current.id.clone(), ciphertext: B64.encode(blob) }
    }

    /// Open a ciphertext sealed under any key of this ring.
    pub fn open(&self, key_id: &str, ciphertext: &str, aad: &[u8]) -> Result<Vec<u8>, Error> {
        let key = self.find(key_id).ok_or_else(|| Error::UnknownKey { key_id: key_id.to_owned() })?;
        let corrupt = || Error::Corrupt { key_id: key_id.to_owned() };
        let blob = B64.decode(ciphertext).map_err(|_| corrupt())?;
        if blob.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        key.cipher.decrypt(nonce.into(), Payload { msg: ct, aad }).map_err(|_| corrupt())
    }

    /// Seal a JSON object of secret fields.
    pub fn seal_map(&self, map: &Map<String, Value>, aad: &[u8]) -> Sealed {
        self.seal(Value::Object(map.clone()).to_string().as_bytes(), aad)
    }

    /// Open a sealed JSON object.
    pub fn open_map(&self, key_id: &str, ciphertext: &str, aad: &[u8]) -> Result<Map<String, Value>, Error> {
        let bytes = self.open(key_id, ciphertext, aad)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::Corrupt { key_id: key_id.to_owned() }),
        }
    }
}

/// Constant-time string equality (master key checks).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes per step: one masked compare per word instead of per byte
    // (this runs on every authenticated request), still with no early exit.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (a_words, a_tail) = a.split_at(a.len() - a.len() % 8);
    let (b_words, b_tail) = b.split_at(a_words.len());
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
    let words = a_words
        .chunks_exact(8)
        .zip(b_words.chunks_exact(8))
        .fold(subtle::Choice::from(1), |acc, (x, y)| acc & word(x).ct_eq(&word(y)));
    bool::from(words & a_tail.ct_eq(b_tail))
}

/// A fresh random secret of `bytes` bytes, hex encoded (generated keys).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let ring = KeyRing::new(Key::derive("salt-one").unwrap());
        let s = ring.seal(b"sk-canary", b"deployments/a");
        assert!(!s.ciphertext.contains("canary"));
        assert_eq!(ring.open(&s.key_id, &s.ciphertext, b"deployments/a").unwrap(), b"sk-canary");
        assert!(matches!(ring.open(&s.key_id, &s.ciphertext, b"deployments/b"), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a = Key::derive("salt-one").unwrap();
        assert_eq!(a.id(), Key::derive("salt-one").unwrap().id());
        assert_ne!(a.id(), Key::derive("salt-two").unwrap().id());
        assert!(Key::derive("  ").is_err());
    }

    #[test]
    fn rotation_ring_opens_old_and_seals_new() {
        let old = Key::derive("old").unwrap();
        let new = Key::derive("new").unwrap();
        let sealed = KeyRing::new(old.clone()).seal(b"x", b"r");
        let ring = KeyRing::with_previous(new.clone(), vec![old]);
        assert_eq!(ring.open(&sealed.key_id, &sealed.ciphertext, b"r").unwrap(), b"x");
        assert_eq!(ring.seal(b"x", b"r").key_id, new.id());
        let only_new = KeyRing::new(new);
        assert!(matches!(only_new.open(&sealed.key_id, &sealed.ciphertext, b"r"), Err(Error::UnknownKey { .. })));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        // Every position of a key longer than one word, in the words and the tail.
        let key = "sk-0123456789abcdefghijklmnopqrstu";
        assert!(constant_time_eq(key, key));
        for i in 0..key.len() {
            let mut other = key.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(!constant_time_eq(key, std::str::from_utf8(&other).unwrap()), "byte {i}");
        }
        assert!(constant_time_eq("", ""));
    }
}
