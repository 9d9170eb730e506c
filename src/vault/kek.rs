//! The key-encrypting key (PCI DSS 3.6.1): it wraps and unwraps data keys and does nothing
//! else. Either key material loaded from a `SecretSource` (file, environment, development
//! sources), or an AES-256 key that never leaves a PKCS#11 token (feature `hsm`, through
//! cryptoki; tested against SoftHSM2): wrapping is then AES-GCM inside the token. Both write
//! the same layout, nonce ‖ ciphertext ‖ tag, with the key's purpose and id as associated data.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::VaultError;
use super::crypto::{self, SecretKey};
use super::secret::SecretSource;

/// A key in a PKCS#11 token: `vault.kek = { pkcs11 = { module = "...", token_label = "...",
/// key_label = "...", pin_env = "..." } }`. The PIN comes from the environment only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    pub pin_env: String,
}

/// Where the key-encrypting key lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum KekSource {
    Pkcs11 { pkcs11: Pkcs11Config },
    Secret(SecretSource),
}

impl KekSource {
    pub fn is_development(&self) -> bool {
        matches!(self, KekSource::Secret(s) if s.is_development())
    }
}

pub enum Kek {
    Local(SecretKey),
    #[cfg(feature = "hsm")]
    Token(hsm::TokenKey),
}

impl Kek {
    /// Opens the KEK; `dev_file` is where the development source keeps its key.
    pub fn open(source: &KekSource, dev_file: &Path) -> Result<Kek, VaultError> {
        match source {
            KekSource::Secret(s) => Ok(Kek::Local(s.load(dev_file)?)),
            #[cfg(feature = "hsm")]
            KekSource::Pkcs11 { pkcs11 } => Ok(Kek::Token(hsm::TokenKey::open(pkcs11)?)),
            #[cfg(not(feature = "hsm"))]
            KekSource::Pkcs11 { .. } => {
                Err(VaultError::Secret("this build has no PKCS#11 support: build with `--features hsm`".into()))
            }
        }
    }

    pub fn wrap(&self, key: &SecretKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        match self {
            Kek::Local(kek) => Ok(crypto::wrap(kek, key, aad)),
            #[cfg(feature = "hsm")]
            Kek::Token(t) => t.wrap(key, aad),
        }
    }

    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, VaultError> {
        match self {
            Kek::Local(kek) => Ok(crypto::unwrap(kek, wrapped, aad)?),
            #[cfg(feature = "hsm")]
            Kek::Token(t) => t.unwrap(wrapped, aad),
        }
    }
}

#[cfg(feature = "hsm")]
pub mod hsm {
    //! The KEK inside a PKCS#11 token.

    use std::sync::Mutex;

    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
    use cryptoki::session::{Session, UserType};
    use cryptoki::types::AuthPin;
    use zeroize::Zeroizing;

    use super::{Pkcs11Config, VaultError};
    use crate::vault::crypto::{CryptoError, SecretKey};

    const NONCE_LEN: usize = 12;

    pub struct TokenKey {
        /// One logged-in session; PKCS#11 sessions are not for concurrent use.
        session: Mutex<Session>,
        key: ObjectHandle,
        _context: Pkcs11,
    }

    fn fail(what: &str, e: impl std::fmt::Display) -> VaultError {
        VaultError::Secret(format!("PKCS#11: {what}: {e}"))
    }

    /// Opens a logged-in read-write session on the token labelled `c.token_label`.
    fn session(c: &Pkcs11Config) -> Result<(Pkcs11, Session), VaultError> {
        let pin = std::env::var(&c.pin_env).map_err(|_| {
            VaultError::Secret(format!("PKCS#11: environment variable {} (the PIN) not set", c.pin_env))
        })?;
        let context = Pkcs11::new(&c.module).map_err(|e| fail(&format!("loading {}", c.module.display()), e))?;
        context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).map_err(|e| fail("initialize", e))?;
        let slots = context.get_slots_with_token().map_err(|e| fail("listing slots", e))?;
        let slot = slots
            .into_iter()
            .find(|s| context.get_token_info(*s).is_ok_and(|t| t.label() == c.token_label))
            .ok_or_else(|| VaultError::Secret(format!("PKCS#11: no token labelled {:?}", c.token_label)))?;
        let session = context.open_rw_session(slot).map_err(|e| fail("opening a session", e))?;
        session.login(UserType::User, Some(&AuthPin::new(pin.into()))).map_err(|e| fail("login", e))?;
        Ok((context, session))
    }

    fn find(session: &Session, label: &str) -> Result<Option<ObjectHandle>, VaultError> {
        let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())];
        Ok(session.find_objects(&template).map_err(|e| fail("finding the key", e))?.into_iter().next())
    }

    impl TokenKey {
        pub fn open(c: &Pkcs11Config) -> Result<TokenKey, VaultError> {
            let (context, session) = session(c)?;
            let key = find(&session, &c.key_label)?.ok_or_else(|| {
                VaultError::Secret(format!(
                    "PKCS#11: no key labelled {:?} on token {:?}; create it with `tonewall keys hsm-create`",
                    c.key_label, c.token_label
                ))
            })?;
            Ok(TokenKey { session: Mutex::new(session), key, _context: context })
        }

        /// Makes the AES-256 KEK inside the token: non-extractable, sensitive, for encrypt and
        /// decrypt only. Refuses if one with that label exists.
        pub fn create(c: &Pkcs11Config) -> Result<(), VaultError> {
            let (_context, session) = session(c)?;
            if find(&session, &c.key_label)?.is_some() {
                return Err(VaultError::Secret(format!("PKCS#11: a key labelled {:?} already exists", c.key_label)));
            }
            let template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Label(c.key_label.as_bytes().to_vec()),
            ];
            session.generate_key(&Mechanism::AesKeyGen, &template).map_err(|e| fail("generating the key", e))?;
            Ok(())
        }

        fn session(&self) -> std::sync::MutexGuard<'_, Session> {
            // Each use is one whole PKCS#11 call: a poisoned lock holds a usable session.
            self.session.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub fn wrap(&self, key: &SecretKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
            let mut nonce = [0u8; NONCE_LEN];
            rand::fill(&mut nonce);
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| fail("GCM parameters", e))?;
            let sealed = self
                .session()
                .encrypt(&Mechanism::AesGcm(params), self.key, key.expose())
                .map_err(|e| fail("wrapping a data key", e))?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sealed);
            Ok(out)
        }

        pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, VaultError> {
            if wrapped.len() < NONCE_LEN {
                return Err(CryptoError::Malformed.into());
            }
            let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
            let mut iv = [0u8; NONCE_LEN];
            iv.copy_from_slice(nonce);
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| fail("GCM parameters", e))?;
            // A wrong key or moved ciphertext fails the tag inside the token.
            let plain = Zeroizing::new(
                self.session()
                    .decrypt(&Mechanism::AesGcm(params), self.key, sealed)
                    .map_err(|_| CryptoError::Decrypt)?,
            );
            Ok(SecretKey::from_bytes(&plain)?)
        }
    }
}
