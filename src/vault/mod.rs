//! The vault: tokenizes captured cards. PAN and expiry are stored only encrypted (see
//! `crypto`), looked up by keyed fingerprint; the security code is held in memory only,
//! zeroized, until it is released once, its TTL ends, or its call ends (PCI DSS 3.3.1).

pub mod crypto;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::SqlitePool;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::capture::card::{Brand, SecurityCode};
use crate::capture::collector::CapturedCard;
use crypto::{CryptoError, SecretKey};

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("key file {path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("no such token")]
    UnknownToken,
    #[error("could not create data directory {path}: {why}")]
    DataDir { path: PathBuf, why: String },
}

/// What the agent, the processor webhook and the session result may see of a stored card.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub token: String,
    pub brand: Brand,
    pub last4: String,
    pub expiry_month: Option<u8>,
    pub expiry_year: Option<u16>,
}

/// A stored card decrypted for a processor. Zeroized on drop; no Debug.
pub struct RevealedCard {
    pub pan: Zeroizing<String>,
    pub expiry: Zeroizing<String>,
}

struct HeldCode {
    code: SecurityCode,
    until: Instant,
}

pub struct Vault {
    pool: SqlitePool,
    encryption_key: (i64, SecretKey),
    fingerprint_key: SecretKey,
    held_codes: Mutex<HashMap<String, HeldCode>>,
    security_code_ttl: Duration,
}

pub const KEK_FILE: &str = "kek.dev.hex";
pub const DB_FILE: &str = "vault.db";

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Vault {
    /// Opens (or on first run creates) the vault under `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| VaultError::DataDir { path: data_dir.to_path_buf(), why: e.to_string() })?;
        let kek = load_or_create_kek(&data_dir.join(KEK_FILE))?;
        let pool = store::open(&data_dir.join(DB_FILE)).await?;
        let encryption_key = data_key(&pool, &kek, "encryption").await?;
        let fingerprint_key = data_key(&pool, &kek, "fingerprint").await?.1;
        Ok(Vault {
            pool,
            encryption_key,
            fingerprint_key,
            held_codes: Mutex::new(HashMap::new()),
            security_code_ttl: Duration::from_secs(300),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Encrypts and stores the card, returns its new token; holds the security code in memory.
    pub async fn tokenize(&self, card: CapturedCard, now: Instant) -> Result<TokenRecord, VaultError> {
        let record_id = uuid::Uuid::new_v4().to_string();
        let (key_id, key) = &self.encryption_key;
        let expiry = card.expiry.map(|e| format!("{:02}{:02}", e.month(), e.year() % 100)).unwrap_or_default();
        let plaintext = Zeroizing::new(format!("{}|{}", card.pan.expose(), expiry));
        let (nonce, ciphertext) = crypto::seal(key, plaintext.as_bytes(), record_aad(&record_id, *key_id).as_bytes());
        let fingerprint = crypto::fingerprint(&self.fingerprint_key, card.pan.expose().as_bytes());
        let brand = card.pan.brand();
        let last4 = card.pan.last4().to_string();
        let token = loop {
            let t = token::new_token();
            let taken: Option<(i64,)> =
                sqlx::query_as("SELECT 1 FROM cards WHERE token = ?").bind(&t).fetch_optional(&self.pool).await?;
            if taken.is_none() {
                break t;
            }
        };
        sqlx::query(
            "INSERT INTO cards (id, token, key_id, nonce, ciphertext, fingerprint, brand, last4, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&record_id)
        .bind(&token)
        .bind(key_id)
        .bind(nonce)
        .bind(ciphertext)
        .bind(fingerprint)
        .bind(brand.as_str())
        .bind(&last4)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        if let Some(code) = card.security_code {
            let held = HeldCode { code, until: now + self.security_code_ttl };
            self.held().insert(token.clone(), held);
        }
        Ok(TokenRecord {
            token,
            brand,
            last4,
            expiry_month: card.expiry.map(|e| e.month()),
            expiry_year: card.expiry.map(|e| e.year()),
        })
    }

    /// Decrypts a stored card. Used by the processor API; every use must be audited there.
    pub async fn reveal(&self, token: &str) -> Result<RevealedCard, VaultError> {
        let row: Option<(String, i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT id, key_id, nonce, ciphertext FROM cards WHERE token = ?")
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
        let (id, key_id, nonce, ct) = row.ok_or(VaultError::UnknownToken)?;
        let (current_id, key) = &self.encryption_key;
        if key_id != *current_id {
            return Err(CryptoError::Decrypt.into());
        }
        let plain = crypto::open(key, &nonce, &ct, record_aad(&id, key_id).as_bytes())?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Decrypt)?;
        let (pan, expiry) = text.split_once('|').ok_or(CryptoError::Decrypt)?;
        Ok(RevealedCard { pan: Zeroizing::new(pan.to_string()), expiry: Zeroizing::new(expiry.to_string()) })
    }

    /// Hands out the held security code once, then forgets it.
    pub fn take_security_code(&self, token: &str, now: Instant) -> Option<SecurityCode> {
        let held = self.held().remove(token)?;
        (held.until > now).then_some(held.code)
    }

    /// Forgets the security code of a card whose call ended.
    pub fn drop_security_code(&self, token: &str) {
        self.held().remove(token);
    }

    /// Forgets every security code past its TTL; returns how many are still held.
    pub fn purge_security_codes(&self, now: Instant) -> usize {
        let mut held = self.held();
        held.retain(|_, h| h.until > now);
        held.len()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldCode>> {
        // A panic while holding this lock cannot leave the map inconsistent (single ops).
        self.held_codes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn record_aad(record_id: &str, key_id: i64) -> String {
    format!("tonewall:card:{record_id}:key:{key_id}")
}

fn key_aad(purpose: &str, id: i64) -> String {
    format!("tonewall:dek:{purpose}:{id}")
}

/// The newest data key for `purpose`, created and wrapped under the KEK on first use.
async fn data_key(pool: &SqlitePool, kek: &SecretKey, purpose: &str) -> Result<(i64, SecretKey), VaultError> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, wrapped FROM data_keys WHERE purpose = ? ORDER BY id DESC LIMIT 1")
            .bind(purpose)
            .fetch_optional(pool)
            .await?;
    if let Some((id, wrapped)) = row {
        return Ok((id, crypto::unwrap(kek, &wrapped, key_aad(purpose, id).as_bytes())?));
    }
    let mut tx = pool.begin().await?;
    let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM data_keys").fetch_one(&mut *tx).await?;
    let dek = SecretKey::generate();
    let wrapped = crypto::wrap(kek, &dek, key_aad(purpose, id).as_bytes());
    sqlx::query("INSERT INTO data_keys (id, purpose, wrapped, created_at) VALUES (?, ?, ?, ?)")
        .bind(id)
        .bind(purpose)
        .bind(wrapped)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((id, dek))
}

/// The development KEK: a hex file readable by its owner only, created on first run.
fn load_or_create_kek(path: &Path) -> Result<SecretKey, VaultError> {
    let fail = |why: String| VaultError::KeyFile { path: path.to_path_buf(), why };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(fail("must be readable by its owner only (chmod 600)".into()));
            }
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
            let bytes = Zeroizing::new(crypto::unhex(&text).ok_or_else(|| fail("not hex".into()))?);
            SecretKey::from_bytes(&bytes).map_err(|_| fail("must hold 32 bytes (64 hex digits)".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kek = SecretKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            f.write_all(crypto::hex(kek.expose()).as_bytes()).map_err(|e| fail(e.to_string()))?;
            f.sync_all().map_err(|e| fail(e.to_string()))?;
            tracing::warn!(
                path = %path.display(),
                "DEVELOPMENT KEY CREATED: card data is encrypted under a key-encrypting key stored next to the \
                 database. Fine for trying tonewall; never for real cards."
            );
            Ok(kek)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::card::{Expiry, Pan, YearMonth};

    fn card(pan: &str, cvv: &str) -> CapturedCard {
        let pan = Pan::parse(pan.as_bytes()).unwrap();
        let brand = pan.brand();
        CapturedCard {
            pan,
            expiry: Some(Expiry::parse(b"1230", YearMonth { year: 2026, month: 1 }).unwrap()),
            security_code: Some(SecurityCode::parse(cvv.as_bytes(), brand).unwrap()),
        }
    }

    #[tokio::test]
    async fn tokenize_stores_only_ciphertext_and_reveals_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).await.unwrap();
        let now = Instant::now();
        let rec = vault.tokenize(card("5555555555554444", "321"), now).await.unwrap();
        assert_eq!(
            (rec.brand, rec.last4.as_str(), rec.expiry_month, rec.expiry_year),
            (Brand::Mastercard, "4444", Some(12), Some(2030))
        );
        let revealed = vault.reveal(&rec.token).await.unwrap();
        assert_eq!((revealed.pan.as_str(), revealed.expiry.as_str()), ("5555555555554444", "1230"));
        // The security code is released once, then gone.
        assert_eq!(vault.take_security_code(&rec.token, now).unwrap().expose(), "321");
        assert!(vault.take_security_code(&rec.token, now).is_none());
        // A ciphertext moved to another row no longer decrypts (associated data binds the id).
        let rec2 = vault.tokenize(card("4111111111111111", "123"), now).await.unwrap();
        sqlx::query("UPDATE cards SET nonce = (SELECT nonce FROM cards WHERE token = ?1), ciphertext = (SELECT ciphertext FROM cards WHERE token = ?1) WHERE token = ?2")
            .bind(&rec.token)
            .bind(&rec2.token)
            .execute(vault.pool())
            .await
            .unwrap();
        assert!(matches!(vault.reveal(&rec2.token).await, Err(VaultError::Crypto(CryptoError::Decrypt))));
        // Reopening with the same key file reads old records; with another KEK, nothing opens.
        drop(vault);
        let vault = Vault::open(dir.path()).await.unwrap();
        assert!(vault.reveal(&rec.token).await.is_ok());
        drop(vault);
        let kek = dir.path().join(KEK_FILE);
        std::fs::remove_file(&kek).unwrap();
        assert!(matches!(Vault::open(dir.path()).await, Err(VaultError::Crypto(CryptoError::Decrypt))));
    }

    #[tokio::test]
    async fn security_codes_expire() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).await.unwrap();
        let now = Instant::now();
        let rec = vault.tokenize(card("4111111111111111", "123"), now).await.unwrap();
        assert_eq!(vault.purge_security_codes(now), 1);
        assert_eq!(vault.purge_security_codes(now + Duration::from_secs(301)), 0);
        assert!(vault.take_security_code(&rec.token, now).is_none());
    }

    #[tokio::test]
    async fn kek_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Vault::open(dir.path()).await.unwrap());
        let kek = dir.path().join(KEK_FILE);
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Vault::open(dir.path()).await, Err(VaultError::KeyFile { .. })));
    }
}
