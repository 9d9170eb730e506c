//! The vault: tokenizes captured cards and gives them back to processors. PAN and expiry are
//! stored only encrypted under the key ring's newest data key (`keyring`, `crypto`), looked up
//! by keyed fingerprint; the security code is held in memory only, zeroized, until it is
//! released once or its TTL ends (PCI DSS 3.3.1). Every tokenization and
//! detokenization writes an audit record (`audit`) in the same transaction, and detokenizing
//! fails closed when that record cannot be written.

pub mod actor;
pub mod anchor;
pub mod audit;
pub mod backup;
pub mod crypto;
mod erasure;
pub mod kek;
pub mod keyring;
pub mod lockdown;
pub mod payload;
pub mod secret;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod token;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{AnyPool, Connection};
use thiserror::Error;

use crate::capture::card::SecurityCode;
use crate::capture::collector::{Captured, Payment};
use crate::merchant::MerchantId;
pub use actor::{Actor, ActorRole, Role};
use crypto::CryptoError;
use kek::{Kek, KekSource};
use keyring::KeyRing;
pub use payload::{Revealed, RevealedAccount, RevealedCard, TokenRecord};
use secret::SecretSource;
pub use store::Backend;
use token::TokenFormat;

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("{0}")]
    Secret(String),
    #[error("vault configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("no such token")]
    UnknownToken,
    #[error("token expired")]
    Expired,
    #[error("no unused token after 20 draws")]
    TokensExhausted,
    #[error("the audit trail cannot be written, so the request is refused: {0}")]
    AuditUnavailable(String),
    #[error("could not create data directory {path}: {why}")]
    DataDir { path: PathBuf, why: String },
}

/// The session a tokenization completes, if any (then the processor webhook fires).
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    pub session_id: &'a str,
    pub reference: &'a str,
}

/// The vault's settings, from `[storage]`, `[vault]` and `[webhook]`.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub url: String,
    /// Run the migrations on open; false: only check that the owner has (`store`).
    pub migrate: bool,
    pub data_dir: PathBuf,
    pub kek: KekSource,
    /// The KEK being replaced, while `keys rewrap` moves data keys off it.
    pub previous_kek: Option<KekSource>,
    /// Where signed checkpoints of the audit chain's head go (`anchor`).
    pub checkpoint_file: PathBuf,
    /// The security events' JSON lines, and their webhook (`crate::alerts`).
    pub security_log: PathBuf,
    pub alert_webhook: Option<(String, SecretSource)>,
    pub production: bool,
    pub token_format: TokenFormat,
    pub convergent: bool,
    pub token_ttl: Option<Duration>,
    pub security_code_ttl: Duration,
    pub max_encryptions_per_key: i64,
    pub webhook: Option<(String, SecretSource, Duration)>,
    /// Also queue one webhook event per completed field.
    pub webhook_field_events: bool,
}

/// A card row as stored: sealed, with what opening it needs.
#[derive(sqlx::FromRow)]
struct Sealed {
    id: String,
    key_id: i64,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    expires_at: Option<i64>,
}

/// A card row with the fingerprint key that fingerprinted it.
#[derive(sqlx::FromRow)]
struct SealedFingerprint {
    #[sqlx(flatten)]
    sealed: Sealed,
    fingerprint_key_id: Option<i64>,
}

struct HeldCode {
    code: SecurityCode,
    until: Instant,
}

pub struct Vault {
    pool: AnyPool,
    backend: Backend,
    keys: KeyRing,
    options: VaultOptions,
    webhook: Option<webhook::Hook>,
    held_codes: Mutex<HashMap<String, HeldCode>>,
    alerts: crate::alerts::Alerts,
    /// The newest seq this process anchored, so an idle chain adds no checkpoint lines.
    anchored: std::sync::atomic::AtomicI64,
    metrics: crate::metrics::VaultMetrics,
}

/// What `Vault::readiness` found, check by check.
#[derive(Debug)]
pub struct Readiness {
    pub database: Result<(), VaultError>,
    pub kek: Result<(), VaultError>,
    pub audit: Result<(), VaultError>,
}

const SYSTEM_PROBE: Actor<'static> = Actor { id: "tonewall", role: ActorRole::System, origin: "local", merchant: None };

/// What `Vault::verify_audit` found.
#[derive(Debug)]
pub struct Verified {
    pub checked: i64,
    pub findings: Vec<audit::Finding>,
    /// Signed checkpoints the chain was held against.
    pub checkpoints: usize,
    /// The checkpoint file does not exist.
    pub unanchored: bool,
}

pub const KEK_FILE: &str = "kek.dev.hex";
/// `webhook.retry_base_s`'s default, for merchants' webhooks when the deployment has none.
const DEFAULT_WEBHOOK_RETRY_BASE: Duration = Duration::from_secs(30);
pub const WEBHOOK_SECRET_FILE: &str = "webhook.dev.hex";
pub const ALERTS_SECRET_FILE: &str = "alerts.dev.hex";
pub use store::DB_FILE;

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn record_aad(record_id: &str, key_id: i64) -> String {
    format!("tonewall:card:{record_id}:key:{key_id}")
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Vault {
    /// Opens (or on first run creates) the vault.
    pub async fn open(options: VaultOptions) -> Result<Vault, VaultError> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| VaultError::DataDir { path: dir.clone(), why: e.to_string() })?;
        if options.production && options.kek.is_development() {
            return Err(VaultError::Config("production mode refuses the development key-encrypting key".into()));
        }
        let kek = Kek::open(&options.kek, &dir.join(KEK_FILE))?;
        let webhook = match &options.webhook {
            Some((url, secret, retry_base)) => Some(webhook::Hook {
                url: url.clone(),
                secret: secret.load(&dir.join(WEBHOOK_SECRET_FILE))?,
                retry_base: *retry_base,
            }),
            None => None,
        };
        let alert_webhook = match &options.alert_webhook {
            Some((url, secret)) => Some((url.clone(), secret.load(&dir.join(ALERTS_SECRET_FILE))?)),
            None => None,
        };
        let alerts = crate::alerts::Alerts::new(options.security_log.clone(), alert_webhook);
        let (pool, backend) = store::open(&options.url, options.migrate).await?;
        if options.production
            && backend == Backend::Postgres
            && let Some(why) = store::audit_rewritable_by_us(&pool).await?
        {
            return Err(VaultError::Config(why));
        }
        let previous = match &options.previous_kek {
            Some(source) => Some(Kek::open(source, &dir.join(KEK_FILE))?),
            None => None,
        };
        let keys = KeyRing::load(&pool, kek, previous).await?;
        Ok(Vault {
            pool,
            backend,
            keys,
            options,
            webhook,
            held_codes: Mutex::new(HashMap::new()),
            alerts,
            anchored: std::sync::atomic::AtomicI64::new(0),
            metrics: crate::metrics::VaultMetrics::default(),
        })
    }

    /// Readiness (`/readyz`): the database answers, the KEK unwraps the stored data key, and
    /// an audit record can be written (appended in a transaction that is rolled back, so the
    /// chain does not grow with every probe).
    pub async fn readiness(&self) -> Readiness {
        let database = sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ()).map_err(VaultError::from);
        let kek = self.keys.check_kek(&self.pool).await;
        let audit = async {
            let mut tx = self.pool.begin().await?;
            let probe = SYSTEM_PROBE.did("health.audit", "probed", "readyz");
            audit::append_in(&mut tx, &self.keys.audit, &probe).await?;
            tx.rollback().await?;
            Ok::<(), VaultError>(())
        }
        .await;
        Readiness { database, kek, audit }
    }

    pub fn metrics(&self) -> &crate::metrics::VaultMetrics {
        &self.metrics
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn webhook(&self) -> Option<&webhook::Hook> {
        self.webhook.as_ref()
    }

    /// The first retry's delay for every webhook, the deployment's and the merchants'.
    pub fn webhook_retry_base(&self) -> Duration {
        self.webhook.as_ref().map_or(DEFAULT_WEBHOOK_RETRY_BASE, |h| h.retry_base)
    }

    /// Anchors the audit chain's head outside the database, when it moved since this process
    /// last did (`anchor`).
    pub async fn checkpoint(&self) -> Result<Option<anchor::Checkpoint>, VaultError> {
        use std::sync::atomic::Ordering;
        let after = self.anchored.load(Ordering::Relaxed);
        let written = anchor::write(&self.pool, &self.keys.audit, &self.options.checkpoint_file, after).await?;
        if let Some(c) = &written {
            self.anchored.fetch_max(c.seq, Ordering::Relaxed);
            let (seq, mac, sig) = (c.seq, c.mac.clone(), c.sig.clone());
            self.alerts.raise(crate::alerts::SecurityEvent::AuditCheckpoint { seq, mac, sig });
        }
        Ok(written)
    }

    /// An online, encrypted copy of a SQLite vault (`backup`), audited.
    pub async fn backup(&self, to: &std::path::Path, actor: &actor::Actor<'_>) -> Result<backup::Summary, VaultError> {
        if self.backend != Backend::Sqlite {
            return Err(VaultError::Config(
                "tonewall backup copies a SQLite vault; back PostgreSQL up with pg_dump or a base backup".into(),
            ));
        }
        let summary = backup::write(&self.pool, self.keys.kek(), &self.options.checkpoint_file, to).await?;
        let detail = format!("{} bytes, audit up to {}", summary.database_bytes, summary.audit_seq);
        self.audit(&audit::Event { detail: &detail, ..actor.did("backup.create", "ok", "vault") }).await?;
        Ok(summary)
    }

    /// Queues a `session.field_completed` event, when the webhook sends them
    /// (`webhook.field_events`); its own transaction, as the field's completion is a fact
    /// of the call, not of the vault.
    pub async fn field_completed(
        &self,
        merchant: &MerchantId,
        event: &webhook::FieldCompleted<'_>,
    ) -> Result<(), VaultError> {
        if !self.options.webhook_field_events {
            return Ok(());
        }
        let settings =
            crate::merchant::settings(&self.pool, merchant).await.map_err(|e| VaultError::Config(e.to_string()))?;
        let own = settings.webhook.map(|w| w.url);
        let Some(url) = own.or_else(|| self.webhook.as_ref().map(|h| h.url.clone())) else { return Ok(()) };
        let mut conn = self.pool.acquire().await?;
        webhook::enqueue_field_in(&mut conn, &url, merchant.as_str(), event).await
    }

    /// Keeps the processor gateway's reference for a card pushed to it (`crate::push`).
    pub async fn set_gateway_reference(&self, token: &str, reference: &str) -> Result<(), VaultError> {
        sqlx::query("UPDATE cards SET gateway_ref = $1 WHERE token = $2")
            .bind(reference)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Walks the audit chain and holds it against the signed checkpoints.
    pub async fn verify_audit(&self) -> Result<Verified, VaultError> {
        let anchors = anchor::read(&self.keys.audit, &self.options.checkpoint_file)?;
        let (checked, findings) = audit::verify_anchored(&self.pool, &self.keys.audit, &anchors).await?;
        Ok(Verified { checked, findings, checkpoints: anchors.valid.len(), unanchored: anchors.missing })
    }

    pub fn checkpoint_file(&self) -> &std::path::Path {
        &self.options.checkpoint_file
    }

    /// Security events: the security log and the alert webhook.
    pub fn alerts(&self) -> &crate::alerts::Alerts {
        &self.alerts
    }

    /// Writes one audit record in a transaction of its own; a failure is also a security event.
    pub async fn audit(&self, e: &audit::Event<'_>) -> Result<i64, VaultError> {
        let timed = self.metrics.time("audit");
        let written = audit::append(&self.pool, &self.keys.audit, e).await;
        drop(timed);
        if let Err(why) = &written {
            self.metrics.audit_failed();
            let (action, error) = (e.action.to_string(), why.to_string());
            self.alerts.raise(crate::alerts::SecurityEvent::AuditWriteFailed { action, error });
        }
        written
    }

    /// Encrypts and stores the card or bank account and returns its token, or with
    /// convergent tokens the token `merchant` already has for it; holds a card's security
    /// code in memory. The audit record and, for a session, the processor webhook commit in
    /// the same transaction.
    pub async fn tokenize(
        &self,
        captured: Captured,
        actor: Actor<'_>,
        merchant: &MerchantId,
        completion: Option<Completion<'_>>,
        now: Instant,
    ) -> Result<TokenRecord, VaultError> {
        let _timed = self.metrics.time("tokenize");
        // The merchant's token format, convergent tokens and webhook; the deployment's where
        // it sets none.
        let settings =
            crate::merchant::settings(&self.pool, merchant).await.map_err(|e| VaultError::Config(e.to_string()))?;
        let convergent = settings.convergent.unwrap_or(self.options.convergent);
        let token_format = settings.token_format.unwrap_or(self.options.token_format);
        let webhook_url =
            settings.webhook.as_ref().map(|w| w.url.as_str()).or(self.webhook.as_ref().map(|h| h.url.as_str()));
        let merchant = merchant.as_str();
        let (key_id, key) = self.keys.current();
        let payload::Sealable { plaintext, fingerprinted, brand_column, mut record } =
            payload::sealable(&captured, String::new());
        let (fingerprint_key_id, fingerprint_key) = self.keys.fingerprint();
        let fingerprint = crypto::fingerprint(&fingerprint_key, fingerprinted.as_bytes());
        // While fingerprint keys rotate, a convergent twin may still carry an older fingerprint.
        let fingerprints: Vec<String> = match convergent {
            true => {
                self.keys.fingerprints().iter().map(|(_, k)| crypto::fingerprint(k, fingerprinted.as_bytes())).collect()
            }
            false => Vec::new(),
        };
        let expires_at = self.options.token_ttl.map(|t| unix_now() + t.as_secs() as i64);
        let mut tx = self.pool.begin().await?;
        let (used,): (i64,) =
            sqlx::query_as("UPDATE data_keys SET encryptions = encryptions + 1 WHERE id = $1 RETURNING encryptions")
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?;
        let mut outcome = "stored";
        let mut token = None;
        for _ in 0..20 {
            for f in &fingerprints {
                let existing: Option<(String,)> =
                    sqlx::query_as("SELECT token FROM cards WHERE merchant = $1 AND fingerprint = $2 AND convergent")
                        .bind(merchant)
                        .bind(f)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((t,)) = existing {
                    outcome = "existing";
                    token = Some(t);
                    break;
                }
            }
            if token.is_some() {
                break;
            }
            let candidate = match &captured.payment {
                Payment::Card(card) => token_format.generate(card.pan.expose()),
                // A format-preserving token of a short account number would show all of it.
                Payment::Bank(_) => token::new_token(),
            };
            let record_id = uuid::Uuid::new_v4().to_string();
            let (nonce, ciphertext) =
                crypto::seal(&key, plaintext.as_bytes(), record_aad(&record_id, key_id).as_bytes());
            // A savepoint, so a collision (token, or a convergent twin stored meanwhile)
            // leaves the transaction usable on PostgreSQL.
            let mut attempt = tx.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO cards (id, token, key_id, nonce, ciphertext, fingerprint, brand, last4, created_at, merchant, convergent, expires_at, fingerprint_key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(&record_id)
            .bind(&candidate)
            .bind(key_id)
            .bind(nonce)
            .bind(ciphertext)
            .bind(&fingerprint)
            .bind(brand_column)
            .bind(&record.last4)
            .bind(unix_now())
            .bind(merchant)
            .bind(convergent)
            .bind(expires_at)
            .bind(fingerprint_key_id)
            .execute(&mut *attempt)
            .await;
            match inserted {
                Ok(_) => {
                    attempt.commit().await?;
                    token = Some(candidate);
                    break;
                }
                Err(e) if is_unique_violation(&e) => attempt.rollback().await?,
                Err(e) => return Err(e.into()),
            }
        }
        record.token = token.ok_or(VaultError::TokensExhausted)?;
        let event = audit::Event {
            detail: completion.map_or("", |c| c.session_id),
            ..actor.did("tokenize", outcome, &record.token)
        };
        audit::append_in(&mut tx, &self.keys.audit, &event).await?;
        if let (Some(url), Some(c)) = (webhook_url, completion) {
            webhook::enqueue_in(&mut tx, url, merchant, c.session_id, c.reference, &record).await?;
        }
        tx.commit().await?;
        if let Payment::Card(crate::capture::collector::CapturedCard { security_code: Some(code), .. }) =
            captured.payment
        {
            let held = HeldCode { code, until: now + self.options.security_code_ttl };
            self.held().insert(record.token.clone(), held);
        }
        if used >= self.options.max_encryptions_per_key {
            // Another tokenization may have rotated already: only the first moves on.
            if self.keys.current().0 == key_id {
                let id = self.keys.rotate(&self.pool).await?;
                let detail = format!("data key {key_id} reached its budget of {used} encryptions");
                let system = Actor { id: "tonewall", role: ActorRole::System, origin: "local", merchant: None };
                self.audit(&audit::Event { detail: &detail, ..system.did("key.rotate", "created", &id.to_string()) })
                    .await?;
            }
        }
        Ok(record)
    }

    /// Decrypts a stored card for a processor, with the security code if still held (then
    /// forgotten). Fails closed: without its audit record, nothing is revealed.
    /// Only `merchant`'s tokens: another merchant's is `UnknownToken`, as one that does not
    /// exist.
    pub async fn detokenize(
        &self,
        token: &str,
        merchant: &MerchantId,
        actor: Actor<'_>,
        now: Instant,
    ) -> Result<Revealed, VaultError> {
        let _timed = self.metrics.time("detokenize");
        let result = self.reveal(token, merchant).await;
        let outcome = match &result {
            Ok(_) => "revealed",
            Err(VaultError::UnknownToken) => "unknown_token",
            Err(VaultError::Expired) => "expired",
            Err(_) => "error",
        };
        if let Err(e) = self.audit(&actor.did("detokenize", outcome, token)).await {
            tracing::error!(error = %e, "audit record not written: detokenize refused");
            return Err(VaultError::AuditUnavailable(e.to_string()));
        }
        let mut revealed = result?;
        if let Revealed::Card(card) = &mut revealed {
            card.security_code = self.take_security_code(token, now);
        }
        Ok(revealed)
    }

    async fn reveal(&self, token: &str, merchant: &MerchantId) -> Result<Revealed, VaultError> {
        let row: Option<Sealed> = sqlx::query_as(
            "SELECT id, key_id, nonce, ciphertext, expires_at FROM cards WHERE token = $1 AND merchant = $2",
        )
        .bind(token)
        .bind(merchant.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let sealed = row.ok_or(VaultError::UnknownToken)?;
        if sealed.expires_at.is_some_and(|t| t <= unix_now()) {
            return Err(VaultError::Expired);
        }
        self.open_sealed(sealed).await
    }

    /// Decrypts a stored row, whatever its expiry.
    async fn open_sealed(
        &self,
        Sealed { id, key_id, nonce, ciphertext: ct, .. }: Sealed,
    ) -> Result<Revealed, VaultError> {
        let key = match self.keys.get(key_id) {
            Some(k) => k,
            None => {
                // Sealed under a key another process made since we loaded ours.
                self.keys.refresh(&self.pool).await?;
                self.keys.get(key_id).ok_or(CryptoError::Decrypt)?
            }
        };
        let plain = crypto::open(&key, &nonce, &ct, record_aad(&id, key_id).as_bytes())?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Decrypt)?;
        Ok(payload::reveal(text)?)
    }

    /// Moves up to `limit` records sealed under older keys onto the newest key; returns how
    /// many moved. Each record moves in one conditional UPDATE, so this is safe beside
    /// traffic and another process doing the same, and resumes wherever a crash stopped it.
    pub async fn reencrypt(&self, limit: i64) -> Result<u64, VaultError> {
        let (new_id, new_key) = self.keys.current();
        let rows: Vec<Sealed> =
            sqlx::query_as("SELECT id, key_id, nonce, ciphertext, expires_at FROM cards WHERE key_id <> $1 LIMIT $2")
                .bind(new_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        let mut moved = 0;
        for Sealed { id, key_id: old_id, nonce, ciphertext: ct, .. } in rows {
            if old_id > new_id {
                // Another process rotated past our newest key: catch up first.
                self.keys.refresh(&self.pool).await?;
                break;
            }
            let old = self.keys.get(old_id).ok_or(CryptoError::Decrypt)?;
            let plain = crypto::open(&old, &nonce, &ct, record_aad(&id, old_id).as_bytes())?;
            let (nonce, ct) = crypto::seal(&new_key, &plain, record_aad(&id, new_id).as_bytes());
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE data_keys SET encryptions = encryptions + 1 WHERE id = $1")
                .bind(new_id)
                .execute(&mut *tx)
                .await?;
            moved +=
                sqlx::query("UPDATE cards SET key_id = $1, nonce = $2, ciphertext = $3 WHERE id = $4 AND key_id = $5")
                    .bind(new_id)
                    .bind(nonce)
                    .bind(ct)
                    .bind(&id)
                    .bind(old_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
        }
        Ok(moved)
    }

    /// Moves up to `limit` cards fingerprinted under older fingerprint keys onto the newest
    /// (decrypting each PAN to fingerprint it again); returns how many moved. One conditional
    /// UPDATE per card: resumable, and safe beside traffic and another process.
    pub async fn refingerprint(&self, limit: i64) -> Result<u64, VaultError> {
        let (new_id, new_key) = self.keys.fingerprint();
        let rows: Vec<SealedFingerprint> = sqlx::query_as(
            "SELECT id, key_id, nonce, ciphertext, expires_at, fingerprint_key_id FROM cards \
             WHERE fingerprint_key_id IS NULL OR fingerprint_key_id <> $1 LIMIT $2",
        )
        .bind(new_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut moved = 0;
        for SealedFingerprint { sealed, fingerprint_key_id: old_id } in rows {
            if old_id.is_some_and(|old| old > new_id) {
                self.keys.refresh(&self.pool).await?; // another process rotated past us
                break;
            }
            // Expired cards too: otherwise they would be picked again on every pass.
            let id = sealed.id.clone();
            let revealed = self.open_sealed(sealed).await?;
            let fingerprint = crypto::fingerprint(&new_key, revealed.fingerprinted().as_bytes());
            moved += sqlx::query(
                "UPDATE cards SET fingerprint = $1, fingerprint_key_id = $2 WHERE id = $3 \
                 AND (fingerprint_key_id IS NULL OR fingerprint_key_id = $4)",
            )
            .bind(fingerprint)
            .bind(new_id)
            .bind(&id)
            .bind(old_id.unwrap_or(-1))
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(moved)
    }

    /// Destroys data keys (encryption and fingerprint) that nothing can need again: a newer
    /// key of the same purpose has served new records for at least `grace` (longer than any call, so no recording or tokenization
    /// still holds the old one), and no card or recording is sealed under them. The wrapped
    /// key is deleted (SQLite overwrites freed pages: `secure_delete`) and the copy in memory
    /// zeroized; each destruction is audited. Returns the ids destroyed.
    pub async fn destroy_retired_keys(&self, grace: Duration) -> Result<Vec<i64>, VaultError> {
        let retired_before = unix_now() - grace.as_secs() as i64;
        let ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT k.id FROM data_keys k WHERE \
             (SELECT MIN(n.created_at) FROM data_keys n WHERE n.purpose = k.purpose AND n.id > k.id) <= $1 \
             AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.key_id = k.id OR c.fingerprint_key_id = k.id) \
             AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.key_id = k.id)",
        )
        .bind(retired_before)
        .fetch_all(&self.pool)
        .await?;
        let system = Actor { id: "tonewall", role: ActorRole::System, origin: "local", merchant: None };
        let mut destroyed = Vec::new();
        for (id,) in ids {
            let mut tx = self.pool.begin().await?;
            // Checked again inside the transaction that deletes, against a record sealed meanwhile.
            let gone = sqlx::query(
                "DELETE FROM data_keys WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.key_id = $1 OR c.fingerprint_key_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.key_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone == 0 {
                continue;
            }
            let resource = id.to_string();
            let detail = "no card or recording is sealed under it";
            audit::append_in(
                &mut tx,
                &self.keys.audit,
                &audit::Event { detail, ..system.did("key.destroy", "destroyed", &resource) },
            )
            .await?;
            tx.commit().await?;
            self.keys.forget(id);
            destroyed.push(id);
        }
        Ok(destroyed)
    }

    /// Deletes cards whose token has expired; returns how many.
    pub async fn purge_expired_tokens(&self) -> Result<u64, VaultError> {
        let n = sqlx::query("DELETE FROM cards WHERE expires_at IS NOT NULL AND expires_at <= $1")
            .bind(unix_now())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            let detail = format!("{n} cards");
            let system = Actor { id: "system", role: ActorRole::System, origin: "local", merchant: None };
            self.audit(&audit::Event { detail: &detail, ..system.did("token.expire", "deleted", "cards") }).await?;
        }
        Ok(n)
    }

    /// Hands out the held security code once, then forgets it.
    pub fn take_security_code(&self, token: &str, now: Instant) -> Option<SecurityCode> {
        let held = self.held().remove(token)?;
        (held.until > now).then_some(held.code)
    }

    /// Whether this process holds the security code of `token` (within its TTL).
    pub fn holds_security_code(&self, token: &str, now: Instant) -> bool {
        self.held().get(token).is_some_and(|h| h.until > now)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> MerchantId {
        MerchantId::parse(id).unwrap()
    }
    use crate::capture::card::{Brand, Expiry, Pan, YearMonth};
    use crate::capture::collector::CapturedCard;
    use testing::TestDatabase;

    const ACTOR: Actor<'static> =
        Actor { id: "test", role: ActorRole::Key(Role::Processor), origin: "127.0.0.1", merchant: None };

    fn card(pan: &str, cvv: &str) -> Captured {
        let pan = Pan::parse(pan.as_bytes()).unwrap();
        let brand = pan.brand();
        let expiry = Some(Expiry::parse(b"1230", YearMonth { year: 2026, month: 1 }).unwrap());
        let code = Some(SecurityCode::parse(cvv.as_bytes(), brand).unwrap());
        Captured { payment: Payment::Card(CapturedCard::new(pan, expiry, code)), confirmed: None }
    }

    async fn store(vault: &Vault, pan: &str) -> TokenRecord {
        let code = if pan.len() == 15 { "1234" } else { "123" }; // American Express has four digits
        vault.tokenize(card(pan, code), ACTOR, &MerchantId::default_merchant(), None, Instant::now()).await.unwrap()
    }

    #[tokio::test]
    async fn tokenize_stores_only_ciphertext_and_detokenizes_with_the_key() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let now = Instant::now();
            let rec = vault
                .tokenize(card("5555555555554444", "321"), ACTOR, &MerchantId::default_merchant(), None, now)
                .await
                .unwrap();
            assert_eq!(
                (rec.brand, rec.last4.as_str(), rec.expiry_month, rec.expiry_year),
                (Some(Brand::Mastercard), "4444", Some(12), Some(2030)),
                "{}",
                db.label
            );
            let c = vault
                .detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, now)
                .await
                .unwrap()
                .into_card()
                .unwrap();
            assert_eq!((c.pan.as_str(), c.expiry.as_str()), ("5555555555554444", "1230"));
            assert_eq!(c.security_code.unwrap().expose(), "321", "the code is released once");
            assert!(
                vault
                    .detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, now)
                    .await
                    .unwrap()
                    .into_card()
                    .unwrap()
                    .security_code
                    .is_none(),
                "then gone"
            );
            assert!(matches!(
                vault.detokenize("tok_nope", &MerchantId::default_merchant(), ACTOR, now).await,
                Err(VaultError::UnknownToken)
            ));
            // A ciphertext moved to another row no longer decrypts (associated data binds the id).
            let rec2 = store(&vault, "4111111111111111").await;
            let (nonce, ct): (Vec<u8>, Vec<u8>) =
                sqlx::query_as("SELECT nonce, ciphertext FROM cards WHERE token = $1")
                    .bind(&rec.token)
                    .fetch_one(vault.pool())
                    .await
                    .unwrap();
            sqlx::query("UPDATE cards SET nonce = $1, ciphertext = $2 WHERE token = $3")
                .bind(nonce)
                .bind(ct)
                .bind(&rec2.token)
                .execute(vault.pool())
                .await
                .unwrap();
            assert!(matches!(
                vault.detokenize(&rec2.token, &MerchantId::default_merchant(), ACTOR, now).await,
                Err(VaultError::Crypto(CryptoError::Decrypt))
            ));
            // Every detokenize, refused ones included, is in the audit trail, which verifies.
            let (checked, findings) = audit::verify(vault.pool(), &vault.keys().audit).await.unwrap();
            assert_eq!((checked, findings), (6, vec![]), "{}: 2 tokenizations, 4 detokenizations", db.label);
            let outcomes: Vec<String> =
                audit::records(vault.pool(), 0, 100).await.unwrap().into_iter().map(|r| r.outcome).collect();
            assert_eq!(outcomes, ["stored", "revealed", "revealed", "unknown_token", "stored", "error"]);
        }
    }

    #[tokio::test]
    async fn reopening_needs_the_same_kek() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let rec = store(&vault, "4111111111111111").await;
            drop(vault);
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            assert!(
                vault.detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, Instant::now()).await.is_ok(),
                "{}",
                db.label
            );
            drop(vault);
            std::fs::remove_file(dir.path().join(KEK_FILE)).unwrap();
            assert!(matches!(Vault::open(db.options(dir.path())).await, Err(VaultError::Crypto(CryptoError::Decrypt))));
        }
    }

    #[tokio::test]
    async fn rotation_moves_records_to_the_new_key_and_old_tokens_still_work() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let old: Vec<TokenRecord> = futures_util::future::join_all(
                ["4111111111111111", "5555555555554444", "378282246310005"].map(|p| store(&vault, p)),
            )
            .await;
            let first = vault.keys().current().0;
            let second = vault.keys().rotate(vault.pool()).await.unwrap();
            assert!(second > first);
            let new = store(&vault, "6011111111111117").await;
            let status = keyring::status(vault.pool()).await.unwrap();
            let records = |id| status.iter().find(|k| k.id == id).unwrap().records;
            assert_eq!((records(first), records(second)), (3, 1), "{}: new records under the new key", db.label);
            // Re-encryption in batches of two: resumable, ends with nothing under the old key.
            assert_eq!(vault.reencrypt(2).await.unwrap(), 2);
            assert_eq!(vault.reencrypt(2).await.unwrap(), 1);
            assert_eq!(vault.reencrypt(2).await.unwrap(), 0);
            let status = keyring::status(vault.pool()).await.unwrap();
            let k = |id| status.iter().find(|k| k.id == id).unwrap().clone();
            assert_eq!((k(first).records, k(second).records, k(second).current), (0, 4, true));
            assert_eq!(k(second).encryptions, 4, "one new record and three moved");
            for rec in old.iter().chain([&new]) {
                assert!(
                    vault.detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, Instant::now()).await.is_ok()
                );
            }
        }
    }

    #[tokio::test]
    async fn retired_keys_are_destroyed_once_nothing_is_sealed_under_them() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let first = vault.keys().current().0;
            let card = store(&vault, "4111111111111111").await;
            let second = vault.keys().rotate(vault.pool()).await.unwrap();
            // A recording sealed under the second key keeps it alive after the third arrives.
            sqlx::query(
                "INSERT INTO recordings (id, call_id, session_id, reference, started_at, duration_ms, key_id, masked_spans, file) \
                 VALUES ('r1', 'c1', 's1', 'ref', 0, 0, $1, '[]', 'r1.twrec')",
            )
            .bind(second)
            .execute(vault.pool())
            .await
            .unwrap();
            let third = vault.keys().rotate(vault.pool()).await.unwrap();
            let (hour, none) = (Duration::from_secs(3600), Vec::<i64>::new());
            assert_eq!(vault.destroy_retired_keys(hour).await.unwrap(), none, "{}: within the grace", db.label);
            assert_eq!(vault.destroy_retired_keys(Duration::ZERO).await.unwrap(), none, "the card is under the first");
            while vault.reencrypt(100).await.unwrap() > 0 {}
            assert_eq!(vault.destroy_retired_keys(Duration::ZERO).await.unwrap(), vec![first], "{}", db.label);
            assert!(vault.keys().get(first).is_none(), "gone from memory too");
            let ids: Vec<i64> = keyring::status(vault.pool()).await.unwrap().into_iter().map(|k| k.id).collect();
            assert!(!ids.contains(&first) && ids.contains(&second) && ids.contains(&third), "{ids:?}");
            assert!(
                vault.detokenize(&card.token, &MerchantId::default_merchant(), ACTOR, Instant::now()).await.is_ok()
            );
            let actions: Vec<(String, String)> = audit::records(vault.pool(), 0, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.action, r.resource))
                .collect();
            assert!(actions.contains(&("key.destroy".into(), first.to_string())), "{actions:?}");
        }
    }

    #[tokio::test]
    async fn fingerprint_rotation_keeps_convergent_tokens_and_retires_the_old_key() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let mut options = db.options(dir.path());
            options.convergent = true;
            let vault = Vault::open(options).await.unwrap();
            let now = Instant::now();
            let shop = m("shop");
            let same = || vault.tokenize(card("4111111111111111", "123"), ACTOR, &shop, None, now);
            let first = same().await.unwrap().token;
            let other = vault.tokenize(card("5555555555554444", "123"), ACTOR, &m("shop"), None, now).await.unwrap();
            let old = vault.keys().fingerprint().0;
            let new = vault.keys().rotate_fingerprint(vault.pool()).await.unwrap();
            assert_eq!(same().await.unwrap().token, first, "{}: found under the old fingerprint", db.label);
            assert_eq!(vault.refingerprint(1).await.unwrap(), 1);
            assert_eq!(vault.refingerprint(10).await.unwrap(), 1);
            assert_eq!(vault.refingerprint(10).await.unwrap(), 0);
            assert_eq!(same().await.unwrap().token, first, "and under the new one");
            let status = keyring::status(vault.pool()).await.unwrap();
            let k = |id| status.iter().find(|k| k.id == id).unwrap().clone();
            assert_eq!((k(old).records, k(new).records, k(new).current), (0, 2, true), "{}", db.label);
            assert!(vault.destroy_retired_keys(Duration::ZERO).await.unwrap().contains(&old));
            assert_eq!(same().await.unwrap().token, first, "after the old key is gone");
            assert_eq!(
                vault.detokenize(&other.token, &m("shop"), ACTOR, now).await.unwrap().into_card().unwrap().pan.as_str(),
                "5555555555554444"
            );
        }
    }

    #[tokio::test]
    async fn a_key_is_retired_after_its_encryption_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::development(dir.path());
        options.max_encryptions_per_key = 3;
        let vault = Vault::open(options).await.unwrap();
        let first = vault.keys().current().0;
        for _ in 0..3 {
            store(&vault, "4111111111111111").await;
        }
        assert_ne!(vault.keys().current().0, first, "the third encryption retired the key");
        let rotated =
            audit::records(vault.pool(), 0, 100).await.unwrap().into_iter().find(|r| r.action == "key.rotate");
        assert!(rotated.is_some_and(|r| r.detail.contains("budget of 3")), "the automatic rotation is audited");
    }

    #[tokio::test]
    async fn token_formats_convergence_and_expiry() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let mut options = db.options(dir.path());
            options.token_format = TokenFormat::FormatPreserving;
            options.convergent = true;
            let vault = Vault::open(options.clone()).await.unwrap();
            let now = Instant::now();
            let a = vault.tokenize(card("4111111111111111", "123"), ACTOR, &m("shop-a"), None, now).await.unwrap();
            assert_eq!((&a.token[..6], &a.token[12..], a.token.len()), ("411111", "1111", 16), "{}", db.label);
            assert_ne!(a.token, "4111111111111111");
            let again = vault.tokenize(card("4111111111111111", "123"), ACTOR, &m("shop-a"), None, now).await.unwrap();
            assert_eq!(again.token, a.token, "same card, same merchant: same token");
            let b = vault.tokenize(card("4111111111111111", "123"), ACTOR, &m("shop-b"), None, now).await.unwrap();
            assert_ne!(b.token, a.token, "another merchant gets its own");
            // Concurrent first tokenizations of one card still converge on one token.
            let shop_c = m("shop-c");
            let racing = futures_util::future::join_all(
                (0..8).map(|_| vault.tokenize(card("5555555555554444", "123"), ACTOR, &shop_c, None, now)),
            )
            .await;
            let tokens: std::collections::HashSet<String> = racing.into_iter().map(|r| r.unwrap().token).collect();
            assert_eq!(tokens.len(), 1, "{}: {tokens:?}", db.label);
            drop(vault);
            // Expiry: a token past its TTL is refused, then purged.
            options.token_ttl = Some(Duration::ZERO);
            options.convergent = false;
            let vault = Vault::open(options).await.unwrap();
            let gone = vault.tokenize(card("4111111111111111", "123"), ACTOR, &m("shop-a"), None, now).await.unwrap();
            assert!(matches!(vault.detokenize(&gone.token, &m("shop-a"), ACTOR, now).await, Err(VaultError::Expired)));
            assert_eq!(vault.purge_expired_tokens().await.unwrap(), 1);
            assert!(matches!(
                vault.detokenize(&gone.token, &MerchantId::default_merchant(), ACTOR, now).await,
                Err(VaultError::UnknownToken)
            ));
        }
    }

    #[tokio::test]
    async fn security_codes_expire() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(VaultOptions::development(dir.path())).await.unwrap();
        let now = Instant::now();
        let rec = store(&vault, "4111111111111111").await;
        assert_eq!(vault.purge_security_codes(now), 1);
        assert_eq!(vault.purge_security_codes(now + Duration::from_secs(301)), 0);
        assert!(vault.take_security_code(&rec.token, now).is_none());
    }

    #[tokio::test]
    async fn detokenize_fails_closed_without_the_audit_trail() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(VaultOptions::development(dir.path())).await.unwrap();
        let rec = store(&vault, "4111111111111111").await;
        sqlx::query("DROP TABLE audit_log").execute(vault.pool()).await.unwrap();
        let refused = vault.detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, Instant::now()).await;
        assert!(matches!(refused, Err(VaultError::AuditUnavailable(_))));
    }

    #[tokio::test]
    async fn production_refuses_the_development_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::development(dir.path());
        options.production = true;
        assert!(matches!(Vault::open(options).await, Err(VaultError::Config(_))));
        assert!(!dir.path().join(KEK_FILE).exists(), "refused before anything was created");
    }
}
