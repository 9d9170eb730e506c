//! The key ring (envelope encryption, PCI DSS 3.6, 3.7): AES-256 data keys wrapped under the
//! key-encrypting key, with versions. New records are sealed under the newest encryption key;
//! older ones only decrypt until re-encryption has moved every record off them. The
//! fingerprint key (HMAC lookups, convergent tokens) and the audit key (the audit chain's
//! MACs) are one key each.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;
use sqlx::AnyPool;

use super::audit::AuditKeys;
use super::crypto::SecretKey;
use super::kek::Kek;
use super::{VaultError, unix_now};

pub struct KeyRing {
    kek: Kek,
    /// The KEK being rotated away from: unwraps what `rewrap` has not moved yet.
    previous: Option<Kek>,
    /// Every encryption key by id; the newest (largest id) seals new records.
    encryption: RwLock<BTreeMap<i64, SecretKey>>,
    /// Every fingerprint key by id; the newest fingerprints new cards, the older ones are
    /// still looked up until `Vault::refingerprint` has moved every card off them.
    fingerprints: RwLock<BTreeMap<i64, SecretKey>>,
    pub audit: AuditKeys,
}

/// One key version as `tonewall keys status` shows it: no key material.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    pub id: i64,
    pub purpose: String,
    pub created_at: i64,
    pub encryptions: i64,
    pub records: i64,
    pub current: bool,
}

fn key_aad(purpose: &str, id: i64) -> String {
    format!("tonewall:dek:{purpose}:{id}")
}

impl KeyRing {
    /// Loads every key, creating the first of each purpose on first run.
    pub async fn load(pool: &AnyPool, kek: Kek, previous: Option<Kek>) -> Result<KeyRing, VaultError> {
        let keks = Keks { current: &kek, previous: previous.as_ref() };
        if newest_id(pool, "encryption").await?.is_none() {
            create(pool, &kek, "encryption").await?;
        }
        if newest_id(pool, "fingerprint").await?.is_none() {
            create(pool, &kek, "fingerprint").await?;
        }
        first_audit_key(pool, keks).await?;
        let ring = KeyRing {
            kek,
            previous,
            encryption: RwLock::new(BTreeMap::new()),
            fingerprints: RwLock::new(BTreeMap::new()),
            audit: AuditKeys::default(),
        };
        ring.refresh(pool).await?;
        Ok(ring)
    }

    /// The newest encryption key and its id.
    pub fn current(&self) -> (i64, SecretKey) {
        let keys = self.read();
        // Invariant: `load` leaves at least one encryption key in the ring.
        let (id, key) = keys.last_key_value().expect("an encryption key");
        (*id, key.clone())
    }

    pub fn get(&self, id: i64) -> Option<SecretKey> {
        self.read().get(&id).cloned()
    }

    /// The newest fingerprint key and its id.
    pub fn fingerprint(&self) -> (i64, SecretKey) {
        let keys = self.fingerprints.read().unwrap_or_else(|p| p.into_inner());
        // Invariant: `load` leaves at least one fingerprint key in the ring.
        let (id, key) = keys.last_key_value().expect("a fingerprint key");
        (*id, key.clone())
    }

    /// Every fingerprint key, newest first: a card fingerprinted under any of them is found.
    pub fn fingerprints(&self) -> Vec<(i64, SecretKey)> {
        let keys = self.fingerprints.read().unwrap_or_else(|p| p.into_inner());
        keys.iter().rev().map(|(id, k)| (*id, k.clone())).collect()
    }

    /// Makes a new audit key: records from now on are MACed under it (the older keys stay, to
    /// verify the records they made). Returns its id.
    pub async fn rotate_audit(&self, pool: &AnyPool) -> Result<i64, VaultError> {
        let mut tries = 0;
        loop {
            let (id,): (i64,) =
                sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM audit_keys").fetch_one(pool).await?;
            let wrapped = self.kek.wrap(&SecretKey::generate(), key_aad("audit", id).as_bytes())?;
            let inserted = sqlx::query("INSERT INTO audit_keys (id, wrapped, created_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(wrapped)
                .bind(unix_now())
                .execute(pool)
                .await;
            match inserted {
                Ok(_) => {
                    self.refresh(pool).await?;
                    return Ok(id);
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && tries < 5 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes a new fingerprint key for new cards; `Vault::refingerprint` moves the others.
    pub async fn rotate_fingerprint(&self, pool: &AnyPool) -> Result<i64, VaultError> {
        let (id, _) = create(pool, &self.kek, "fingerprint").await?;
        self.refresh(pool).await?;
        tracing::info!(key_id = id, "new fingerprint key: cards are re-fingerprinted under it");
        Ok(id)
    }

    /// Loads keys another process (`tonewall keys rotate`) added; returns whether any were new.
    /// (Only keys newer than the newest known: a destroyed older key is not loaded again.)
    pub async fn refresh(&self, pool: &AnyPool) -> Result<bool, VaultError> {
        let mut any = false;
        for (purpose, map) in [("encryption", &self.encryption), ("fingerprint", &self.fingerprints)] {
            let known = map.read().unwrap_or_else(|p| p.into_inner()).keys().next_back().copied().unwrap_or(0);
            let rows: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT id, wrapped FROM data_keys WHERE purpose = $1 AND id > $2 ORDER BY id")
                    .bind(purpose)
                    .bind(known)
                    .fetch_all(pool)
                    .await?;
            let mut fresh = Vec::new();
            for (id, wrapped) in &rows {
                fresh.push((*id, self.keks().unwrap(wrapped, key_aad(purpose, *id).as_bytes())?));
            }
            map.write().unwrap_or_else(|p| p.into_inner()).extend(fresh);
            any |= !rows.is_empty();
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, wrapped FROM audit_keys WHERE id > $1 ORDER BY id")
            .bind(self.audit.newest_id())
            .fetch_all(pool)
            .await?;
        for (id, wrapped) in &rows {
            self.audit.insert(*id, self.keks().unwrap(wrapped, key_aad("audit", *id).as_bytes())?);
        }
        Ok(any || !rows.is_empty())
    }

    /// Readiness: the newest encryption key as stored, unwrapped under the KEK (in the HSM
    /// when there is one), is the key in memory. Fails when the KEK is gone or changed, or
    /// the HSM does not answer.
    pub async fn check_kek(&self, pool: &AnyPool) -> Result<(), VaultError> {
        use subtle::ConstantTimeEq;
        let (id, key) = self.current();
        let (wrapped,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM data_keys WHERE purpose = 'encryption' AND id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
        let stored = self.keks().unwrap(&wrapped, key_aad("encryption", id).as_bytes())?;
        match bool::from(stored.expose().ct_eq(key.expose())) {
            true => Ok(()),
            false => Err(VaultError::Config(format!("data key {id} as stored is not the one in use"))),
        }
    }

    /// Makes a new encryption key, which seals every record from now on; returns its id.
    pub async fn rotate(&self, pool: &AnyPool) -> Result<i64, VaultError> {
        let (id, _) = create(pool, &self.kek, "encryption").await?;
        self.refresh(pool).await?;
        tracing::info!(key_id = id, "new data key: new records are sealed under it");
        Ok(id)
    }

    /// Drops a destroyed key from memory (zeroized on drop). Never a current one.
    pub fn forget(&self, id: i64) {
        for map in [&self.encryption, &self.fingerprints] {
            let mut keys = map.write().unwrap_or_else(|p| p.into_inner());
            if keys.last_key_value().is_some_and(|(newest, _)| *newest != id) {
                keys.remove(&id);
            }
        }
    }

    /// The key-encrypting key new keys are wrapped under.
    pub(crate) fn kek(&self) -> &Kek {
        &self.kek
    }

    fn keks(&self) -> Keks<'_> {
        Keks { current: &self.kek, previous: self.previous.as_ref() }
    }

    /// Re-wraps up to `limit` data keys (and the audit key) still under the previous KEK under
    /// the current one; returns how many moved and how many are left. Each key moves in one
    /// conditional UPDATE (only if its wrapping is still the one read), so this resumes
    /// wherever a crash stopped it and is safe beside traffic and a second rewrap.
    pub async fn rewrap(&self, pool: &AnyPool, limit: usize) -> Result<Rewrapped, VaultError> {
        let mut done = Rewrapped::default();
        let Some(previous) = &self.previous else {
            return Err(VaultError::Config("vault.previous_kek is not set: there is no KEK to rewrap from".into()));
        };
        let data: Vec<(i64, String, Vec<u8>)> =
            sqlx::query_as("SELECT id, purpose, wrapped FROM data_keys ORDER BY id").fetch_all(pool).await?;
        let audit: Vec<(i64, String, Vec<u8>)> =
            sqlx::query_as("SELECT id, 'audit', wrapped FROM audit_keys").fetch_all(pool).await?;
        for (table, rows) in [("data_keys", data), ("audit_keys", audit)] {
            for (id, purpose, wrapped) in rows {
                let aad = key_aad(&purpose, id);
                if self.kek.unwrap(&wrapped, aad.as_bytes()).is_ok() {
                    continue;
                }
                if done.moved >= limit {
                    done.left += 1;
                    continue;
                }
                let key = previous.unwrap(&wrapped, aad.as_bytes())?;
                let rewrapped = self.kek.wrap(&key, aad.as_bytes())?;
                let sql = match table {
                    "data_keys" => "UPDATE data_keys SET wrapped = $1 WHERE id = $2 AND wrapped = $3",
                    _ => "UPDATE audit_keys SET wrapped = $1 WHERE id = $2 AND wrapped = $3",
                };
                let n = sqlx::query(sql).bind(rewrapped).bind(id).bind(wrapped).execute(pool).await?.rows_affected();
                done.moved += n as usize;
            }
        }
        Ok(done)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<i64, SecretKey>> {
        // Writers only extend the map; a poisoned lock still holds a consistent map.
        self.encryption.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every data key with its use counts, oldest first.
pub async fn status(pool: &AnyPool) -> Result<Vec<KeyStatus>, VaultError> {
    let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT k.id, k.purpose, k.created_at, k.encryptions, \
         (SELECT COUNT(*) FROM cards c WHERE c.key_id = k.id OR c.fingerprint_key_id = k.id) \
         FROM data_keys k ORDER BY k.id",
    )
    .fetch_all(pool)
    .await?;
    let newest = |purpose: &str| rows.iter().filter(|r| r.1 == purpose).map(|r| r.0).max();
    let (encryption, fingerprint) = (newest("encryption"), newest("fingerprint"));
    Ok(rows
        .into_iter()
        .map(|(id, purpose, created_at, encryptions, records)| KeyStatus {
            current: Some(id) == if purpose == "encryption" { encryption } else { fingerprint },
            id,
            purpose,
            created_at,
            encryptions,
            records,
        })
        .collect())
}

async fn newest_id(pool: &AnyPool, purpose: &str) -> Result<Option<i64>, VaultError> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM data_keys WHERE purpose = $1 ORDER BY id DESC LIMIT 1")
        .bind(purpose)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.0))
}

/// What one `rewrap` pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewrapped {
    pub moved: usize,
    /// Keys still under the previous KEK after this pass.
    pub left: usize,
}

/// The current KEK and, while rotating, the previous one.
#[derive(Clone, Copy)]
struct Keks<'a> {
    current: &'a Kek,
    previous: Option<&'a Kek>,
}

impl Keks<'_> {
    /// Unwraps under the current KEK, else the previous.
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, VaultError> {
        match (self.current.unwrap(wrapped, aad), self.previous) {
            (Ok(k), _) => Ok(k),
            (Err(_), Some(p)) => p.unwrap(wrapped, aad),
            (Err(e), None) => Err(e),
        }
    }
}

/// Creates and stores a wrapped key. Two processes racing for the same id: one insert fails
/// on the primary key and is retried with the next id.
async fn create(pool: &AnyPool, kek: &Kek, purpose: &str) -> Result<(i64, SecretKey), VaultError> {
    let mut tries = 0;
    loop {
        let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM data_keys").fetch_one(pool).await?;
        let key = SecretKey::generate();
        let wrapped = kek.wrap(&key, key_aad(purpose, id).as_bytes())?;
        let inserted = sqlx::query("INSERT INTO data_keys (id, purpose, wrapped, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(purpose)
            .bind(wrapped)
            .bind(unix_now())
            .execute(pool)
            .await;
        match inserted {
            Ok(_) => return Ok((id, key)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && tries < 5 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates audit key 1 on first run (`refresh` then loads every audit key).
async fn first_audit_key(pool: &AnyPool, keks: Keks<'_>) -> Result<(), VaultError> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM audit_keys WHERE id = 1").fetch_optional(pool).await?;
    if row.is_some() {
        return Ok(());
    }
    let key = SecretKey::generate();
    let wrapped = keks.current.wrap(&key, key_aad("audit", 1).as_bytes())?;
    // Two first starts racing: the loser reads the winner's key.
    let inserted = sqlx::query("INSERT INTO audit_keys (id, wrapped, created_at) VALUES (1, $1, $2)")
        .bind(wrapped)
        .bind(unix_now())
        .execute(pool)
        .await;
    match inserted {
        // Two first starts racing: the loser uses the winner's key.
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
