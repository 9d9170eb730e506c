//! Bearer API keys with roles (PCI DSS 7.2 least privilege, 8.2 unique ids): one key per
//! client, shown once at creation, stored only as its SHA-256. A key may be bound to a TLS
//! client certificate (mutual TLS for processors): then it works only with that
//! certificate, and the certificate alone identifies it.
//!
//! Lifecycle (8.2.2, 8.2.6, 8.3.9): a key has a name and an owner; keys that people hold
//! (agent, qa, admin) always expire, after `DEFAULT_PERSON_KEY_DAYS` unless told otherwise
//! and at most `MAX_PERSON_KEY_DAYS`; a key unused for `IDLE_DISABLE` stops working; a key
//! can be revoked, or rotated (a new key, the old one good for an overlap, then expired).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::AnyPool;

use crate::merchant::MerchantId;
use crate::owner::Team;
use crate::vault::{crypto::hex, token::random_base62};

pub use crate::vault::actor::Role;

const KEY_PREFIX: &str = "twk_";
/// How long a key a person holds lasts unless its creator says otherwise.
pub const DEFAULT_PERSON_KEY_DAYS: u32 = 90;
pub const MAX_PERSON_KEY_DAYS: u32 = 365;
/// A key unused this long no longer works (PCI DSS 8.2.6).
pub const IDLE_DISABLE: Duration = Duration::from_secs(90 * 24 * 3600);
/// `last_used_at` is written at most this often (seconds): a write per request would cost
/// the hot path for a fact kept to the day.
const LAST_USE_RESOLUTION_S: i64 = 3600;

fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Whether people hold keys of this role (then the key must expire).
pub fn held_by_people(role: Role) -> bool {
    role != Role::Processor
}

/// What a new key is.
#[derive(Debug, Clone, Default)]
pub struct NewKey<'a> {
    /// None: `default`.
    pub merchant: Option<&'a MerchantId>,
    pub team: Option<&'a Team>,
    pub name: &'a str,
    pub owner: &'a str,
    /// Days until it expires; `None`: the default for its role (never for processors).
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error("a key people hold expires within {MAX_PERSON_KEY_DAYS} days (PCI DSS 8.3.9)")]
    TooLong,
    #[error("expiry must be at least one day")]
    NoDays,
    #[error("no key {0}")]
    NoSuchKey(String),
    #[error("key {0} is bound to a client certificate: create its successor with --client-cert, then revoke it")]
    BoundToCertificate(String),
    #[error("key {0} is revoked or expired")]
    Ended(String),
}

/// Creates a key for `role` in no team; returns its id and the key itself (the only time it
/// exists in clear).
pub async fn create_key(pool: &AnyPool, role: Role) -> Result<(String, String), sqlx::Error> {
    create_key_for(pool, role, None).await
}

/// Creates a key for `role` whose sessions its `team` shares (`crate::owner`).
pub async fn create_key_for(pool: &AnyPool, role: Role, team: Option<&Team>) -> Result<(String, String), sqlx::Error> {
    match create(pool, role, &NewKey { team, ..NewKey::default() }).await {
        Ok(made) => Ok(made),
        Err(KeyError::Store(e)) => Err(e),
        Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
    }
}

/// Creates a key; its id and the key itself.
pub async fn create(pool: &AnyPool, role: Role, new: &NewKey<'_>) -> Result<(String, String), KeyError> {
    let days = match (new.expires_in_days, held_by_people(role)) {
        (Some(0), _) => return Err(KeyError::NoDays),
        (Some(d), true) if d > MAX_PERSON_KEY_DAYS => return Err(KeyError::TooLong),
        (Some(d), _) => Some(d),
        (None, true) => Some(DEFAULT_PERSON_KEY_DAYS),
        (None, false) => None,
    };
    let key = format!("{KEY_PREFIX}{}", random_base62(40));
    let id = uuid::Uuid::new_v4().to_string();
    let now = unix_now();
    let expires = days.map(|d| now + i64::from(d) * 86_400);
    sqlx::query(
        "INSERT INTO api_keys (id, role, key_hash, created_at, team, name, owner, expires_at, merchant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(role.as_str())
    .bind(hash(&key))
    .bind(now)
    .bind(new.team.map(|t| t.0.clone()))
    .bind(new.name)
    .bind(new.owner)
    .bind(expires)
    .bind(new.merchant.map_or(crate::merchant::DEFAULT, MerchantId::as_str))
    .execute(pool)
    .await?;
    Ok((id, key))
}

/// A client certificate, named by the SHA-256 of its DER encoding (what `openssl x509
/// -fingerprint -sha256` prints, lowercase and without colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub String);

pub fn cert_fingerprint(der: &[u8]) -> ClientCert {
    ClientCert(hex(&Sha256::digest(der)))
}

/// A known key: its id, its role, its team, and the client certificate it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    pub id: String,
    pub role: Role,
    pub merchant: MerchantId,
    pub team: Option<Team>,
    pub client_cert: Option<ClientCert>,
}

/// What a presented key comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Valid(KnownKey),
    /// A key that exists but no longer works.
    Ended(Ended),
    Unknown,
}

/// Why a known key no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Revoked,
    Expired,
    /// Unused for `IDLE_DISABLE`.
    Idle,
}

impl Ended {
    /// The audit record's outcome.
    pub fn outcome(self) -> &'static str {
        match self {
            Ended::Revoked => "revoked_key",
            Ended::Expired => "expired_key",
            Ended::Idle => "idle_key",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Ended::Revoked => "this key has been revoked",
            Ended::Expired => "this key has expired",
            Ended::Idle => "this key was disabled after 90 days unused",
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    role: String,
    merchant: String,
    team: Option<String>,
    client_cert_sha256: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl Row {
    fn ended(&self, now: i64) -> Option<Ended> {
        if self.revoked_at.is_some() {
            Some(Ended::Revoked)
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Some(Ended::Expired)
        } else if now - self.last_used_at.unwrap_or(self.created_at) >= IDLE_DISABLE.as_secs() as i64 {
            Some(Ended::Idle)
        } else {
            None
        }
    }
}

async fn judge(pool: &AnyPool, row: Option<Row>) -> Result<Lookup, sqlx::Error> {
    let Some(row) = row else { return Ok(Lookup::Unknown) };
    let now = unix_now();
    if let Some(ended) = row.ended(now) {
        return Ok(Lookup::Ended(ended));
    }
    let Some(role) = Role::parse(&row.role) else { return Ok(Lookup::Unknown) };
    if now - row.last_used_at.unwrap_or(0) >= LAST_USE_RESOLUTION_S {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&row.id)
            .execute(pool)
            .await?;
    }
    Ok(Lookup::Valid(KnownKey {
        id: row.id,
        role,
        merchant: MerchantId::from_stored(row.merchant),
        team: row.team.as_deref().and_then(Team::named),
        client_cert: row.client_cert_sha256.map(ClientCert),
    }))
}

/// The columns of `Row`, as a literal for `concat!` (sqlx takes only literal SQL).
macro_rules! key_columns {
    () => {
        "id, role, merchant, team, client_cert_sha256, created_at, expires_at, last_used_at, revoked_at"
    };
}

/// What the key is, if it is known.
pub async fn lookup(pool: &AnyPool, key: &str) -> Result<Lookup, sqlx::Error> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
        return Ok(Lookup::Unknown);
    }
    let row = sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE key_hash = $1"))
        .bind(hash(key))
        .fetch_optional(pool)
        .await?;
    judge(pool, row).await
}

/// The key bound to a client certificate, if one is.
pub async fn lookup_by_cert(pool: &AnyPool, cert: &ClientCert) -> Result<Lookup, sqlx::Error> {
    let row = sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE client_cert_sha256 = $1"))
        .bind(&cert.0)
        .fetch_optional(pool)
        .await?;
    judge(pool, row).await
}

/// A key as `api-key list` shows it: never the key or its hash.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: String,
    pub merchant: String,
    pub team: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub bound_to_certificate: bool,
    /// `active`, or why it no longer works.
    pub state: &'static str,
}

#[derive(sqlx::FromRow)]
struct ListRow {
    #[sqlx(flatten)]
    row: Row,
    name: Option<String>,
    owner: Option<String>,
}

/// Every key of `merchant` (of every merchant with None), oldest first.
pub async fn list(pool: &AnyPool, merchant: Option<&MerchantId>) -> Result<Vec<Listed>, sqlx::Error> {
    let rows: Vec<ListRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        ", name, owner FROM api_keys WHERE $1 = '' OR merchant = $1 ORDER BY created_at, id"
    ))
    .bind(merchant.map_or("", MerchantId::as_str))
    .fetch_all(pool)
    .await?;
    let now = unix_now();
    Ok(rows
        .into_iter()
        .map(|r| {
            let state = r.row.ended(now).map_or("active", |e| match e {
                Ended::Revoked => "revoked",
                Ended::Expired => "expired",
                Ended::Idle => "disabled (unused 90 days)",
            });
            Listed {
                id: r.row.id,
                name: r.name.unwrap_or_default(),
                owner: r.owner.unwrap_or_default(),
                role: r.row.role,
                merchant: r.row.merchant,
                team: r.row.team,
                created_at: r.row.created_at,
                expires_at: r.row.expires_at,
                last_used_at: r.row.last_used_at,
                bound_to_certificate: r.row.client_cert_sha256.is_some(),
                state,
            }
        })
        .collect())
}

/// Revokes key `id` of `merchant` (of any with None) at once.
pub async fn revoke(pool: &AnyPool, id: &str, merchant: Option<&MerchantId>) -> Result<(), KeyError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND ($3 = '' OR merchant = $3)",
    )
    .bind(unix_now())
    .bind(id)
    .bind(merchant.map_or("", MerchantId::as_str))
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 { Ok(()) } else { Err(KeyError::NoSuchKey(id.to_string())) }
}

/// Revokes every live key of `role` (a lockdown's option); how many.
pub async fn revoke_role(pool: &AnyPool, role: Role) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE role = $2 AND revoked_at IS NULL")
        .bind(unix_now())
        .bind(role.as_str())
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The audit detail of a key's creation, the same from the CLI and the API.
pub fn created_detail(role: Role, team: Option<&Team>, name: &str, owner: &str) -> String {
    let team = team.map_or(String::new(), |t| format!(", team {}", t.0));
    format!("{}{team}, name {name:?}, owner {owner:?}", role.as_str())
}

/// The audit detail of a key's rotation.
pub fn rotated_detail(new_id: &str, overlap_hours: u64) -> String {
    format!("replaced by {new_id}; the old key works for {overlap_hours} h more")
}

/// Rotates key `id` of `merchant` (of any with None): a new key with its merchant, role, team,
/// name and owner (and its role's default expiry); the old one keeps working for `overlap`, then expires. The new key's id and key.
pub async fn rotate(
    pool: &AnyPool,
    id: &str,
    merchant: Option<&MerchantId>,
    overlap: Duration,
) -> Result<(String, String), KeyError> {
    let row: Option<ListRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        ", name, owner FROM api_keys WHERE id = $1 AND ($2 = '' OR merchant = $2)"
    ))
    .bind(id)
    .bind(merchant.map_or("", MerchantId::as_str))
    .fetch_optional(pool)
    .await?;
    let r = row.ok_or_else(|| KeyError::NoSuchKey(id.to_string()))?;
    if r.row.ended(unix_now()).is_some() {
        return Err(KeyError::Ended(id.to_string()));
    }
    if r.row.client_cert_sha256.is_some() {
        return Err(KeyError::BoundToCertificate(id.to_string()));
    }
    let role = Role::parse(&r.row.role).ok_or_else(|| KeyError::NoSuchKey(id.to_string()))?;
    let team = r.row.team.as_deref().and_then(Team::named);
    let (name, owner) = (r.name.unwrap_or_default(), r.owner.unwrap_or_default());
    let of = MerchantId::from_stored(r.row.merchant.clone());
    let new = NewKey { merchant: Some(&of), team: team.as_ref(), name: &name, owner: &owner, expires_in_days: None };
    let made = create(pool, role, &new).await?;
    let until = unix_now() + overlap.as_secs() as i64;
    let old_end = r.row.expires_at.map_or(until, |e| e.min(until));
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2").bind(old_end).bind(id).execute(pool).await?;
    Ok(made)
}

/// Binds key `id` to a client certificate: from now on it is good only on a connection
/// that presents it. False when there is no such key.
pub async fn bind_client_cert(pool: &AnyPool, id: &str, cert: &ClientCert) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET client_cert_sha256 = $1 WHERE id = $2")
        .bind(&cert.0)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
