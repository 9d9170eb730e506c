//! Envelope encryption for card records (PCI DSS 3.5.1, 3.6): AES-256-GCM data keys,
//! wrapped by a key-encrypting key (KEK) that never enters the database; a random 96-bit
//! nonce per record; the key id and record id bound as associated data, so a ciphertext moved
//! to another row or key fails to decrypt. PAN lookups use HMAC-SHA256 under a separate key
//! (PCI DSS 3.5.1.1).

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("decryption failed: wrong key, wrong record, or tampered data")]
    Decrypt,
    #[error("key material has the wrong length")]
    KeyLength,
    #[error("wrapped key is malformed")]
    Malformed,
}

/// 256 bits of key material, zeroized on drop, never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> SecretKey {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut k[..]);
        SecretKey(k)
    }

    pub fn from_bytes(b: &[u8]) -> Result<SecretKey, CryptoError> {
        let arr: [u8; KEY_LEN] = b.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(SecretKey(Zeroizing::new(arr)))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A key of its own for one `purpose` (HKDF-SHA256, RFC 5869, with this key as input), so
    /// many seals under the derived key spend none of this key's GCM nonce budget.
    pub fn derive(&self, purpose: &str) -> SecretKey {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        // Invariant: 32 bytes is far below HKDF-SHA256's 255 × 32 output limit.
        hkdf::Hkdf::<sha2::Sha256>::new(None, self.0.as_slice())
            .expand(purpose.as_bytes(), k.as_mut_slice())
            .expect("32 bytes");
        SecretKey(k)
    }

    fn cipher(&self) -> Aes256Gcm {
        // Invariant: the key is exactly 32 bytes, which AES-256 accepts.
        Aes256Gcm::new_from_slice(&self.0[..]).expect("32-byte key")
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Encrypts `plaintext` under `key` with `aad`; returns (nonce, ciphertext‖tag).
pub fn seal(key: &SecretKey, plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let nonce = Nonce::generate();
    // Invariant: AES-GCM encryption fails only for inputs over 64 GiB.
    let ct = key.cipher().encrypt(&nonce, Payload { msg: plaintext, aad }).expect("plaintext under the GCM limit");
    (nonce.to_vec(), ct)
}

pub fn open(key: &SecretKey, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
    key.cipher().decrypt(&nonce, Payload { msg: ciphertext, aad }).map(Zeroizing::new).map_err(|_| CryptoError::Decrypt)
}

/// A data key wrapped under the KEK: nonce ‖ ciphertext, bound to its id and purpose.
pub fn wrap(kek: &SecretKey, dek: &SecretKey, aad: &[u8]) -> Vec<u8> {
    let (mut nonce, ct) = seal(kek, dek.expose(), aad);
    nonce.extend_from_slice(&ct);
    nonce
}

pub fn unwrap(kek: &SecretKey, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, CryptoError> {
    if wrapped.len() < NONCE_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ct) = wrapped.split_at(NONCE_LEN);
    let plain = open(kek, nonce, ct, aad)?;
    SecretKey::from_bytes(&plain)
}

/// HMAC-SHA256 of `data` under `key`, hex.
pub fn fingerprint(key: &SecretKey, data: &[u8]) -> String {
    // Invariant: HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.expose()).expect("any key length");
    mac.update(data);
    hex(&mac.finalize().into_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_failures() {
        let k = SecretKey::generate();
        let (n, ct) = seal(&k, b"secret", b"card:1:key:1");
        assert_eq!(&open(&k, &n, &ct, b"card:1:key:1").unwrap()[..], b"secret");
        // Wrong key, wrong associated data (another row), tampered ciphertext: all refused.
        assert_eq!(open(&SecretKey::generate(), &n, &ct, b"card:1:key:1").unwrap_err(), CryptoError::Decrypt);
        assert_eq!(open(&k, &n, &ct, b"card:2:key:1").unwrap_err(), CryptoError::Decrypt);
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(open(&k, &n, &bad, b"card:1:key:1").unwrap_err(), CryptoError::Decrypt);
        // Nonces are fresh per record.
        let (n2, ct2) = seal(&k, b"secret", b"card:1:key:1");
        assert_ne!((n, ct), (n2, ct2));
    }

    #[test]
    fn wrapped_keys_need_the_kek_and_their_binding() {
        let kek = SecretKey::generate();
        let dek = SecretKey::generate();
        let w = wrap(&kek, &dek, b"dek:encryption:1");
        assert_eq!(unwrap(&kek, &w, b"dek:encryption:1").unwrap().expose(), dek.expose());
        assert!(unwrap(&SecretKey::generate(), &w, b"dek:encryption:1").is_err());
        assert!(unwrap(&kek, &w, b"dek:fingerprint:1").is_err());
        assert_eq!(unwrap(&kek, &w[..5], b"x").unwrap_err(), CryptoError::Malformed);
    }

    #[test]
    fn fingerprint_depends_on_the_key() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_eq!(fingerprint(&a, b"4111"), fingerprint(&a, b"4111"));
        assert_ne!(fingerprint(&a, b"4111"), fingerprint(&b, b"4111"));
        assert_eq!(fingerprint(&a, b"x").len(), 64);
        assert_eq!(unhex(&hex(&[0, 255, 16])).unwrap(), vec![0, 255, 16]);
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn derived_keys_are_stable_per_purpose_and_open_nothing_of_their_parent() {
        let parent = SecretKey::generate();
        let (a, b) = (parent.derive("recording:1"), parent.derive("recording:2"));
        assert_eq!(a.expose(), parent.derive("recording:1").expose());
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), parent.expose());
        let (nonce, ct) = seal(&a, b"audio", b"aad");
        assert!(open(&parent, &nonce, &ct, b"aad").is_err() && open(&b, &nonce, &ct, b"aad").is_err());
        assert_eq!(open(&a, &nonce, &ct, b"aad").unwrap().as_slice(), b"audio");
    }
}
