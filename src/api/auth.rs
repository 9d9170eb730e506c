//! Bearer API keys with roles (PCI DSS 7.2 least privilege, 8.2 unique ids): one key per
//! client, shown once at creation, stored only as its SHA-256. A key may be bound to a TLS
//! client certificate (mutual TLS for processors): then it works only with that
//! certificate, and the certificate alone identifies it.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::AnyPool;

use crate::owner::Team;
use crate::vault::{crypto::hex, token::random_base62};

pub use crate::vault::actor::Role;

const KEY_PREFIX: &str = "twk_";

fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Creates a key for `role` in no team; returns its id and the key itself (the only time it
/// exists in clear).
pub async fn create_key(pool: &AnyPool, role: Role) -> Result<(String, String), sqlx::Error> {
    create_key_for(pool, role, None).await
}

/// Creates a key for `role` whose sessions its `team` shares (`crate::owner`).
pub async fn create_key_for(pool: &AnyPool, role: Role, team: Option<&Team>) -> Result<(String, String), sqlx::Error> {
    let key = format!("{KEY_PREFIX}{}", random_base62(40));
    let id = uuid::Uuid::new_v4().to_string();
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    sqlx::query("INSERT INTO api_keys (id, role, key_hash, created_at, team) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(role.as_str())
        .bind(hash(&key))
        .bind(created)
        .bind(team.map(|t| t.0.clone()))
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
    pub team: Option<Team>,
    pub client_cert: Option<ClientCert>,
}

type KeyRow = (String, String, Option<String>, Option<String>);

fn known(row: Option<KeyRow>) -> Option<KnownKey> {
    row.and_then(|(id, role, team, cert)| {
        Some(KnownKey {
            id,
            role: Role::parse(&role)?,
            team: team.as_deref().and_then(Team::named),
            client_cert: cert.map(ClientCert),
        })
    })
}

/// The key, if it is known.
pub async fn lookup(pool: &AnyPool, key: &str) -> Result<Option<KnownKey>, sqlx::Error> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
        return Ok(None);
    }
    let row = sqlx::query_as("SELECT id, role, team, client_cert_sha256 FROM api_keys WHERE key_hash = $1")
        .bind(hash(key))
        .fetch_optional(pool)
        .await?;
    Ok(known(row))
}

/// The key bound to a client certificate, if one is.
pub async fn lookup_by_cert(pool: &AnyPool, cert: &ClientCert) -> Result<Option<KnownKey>, sqlx::Error> {
    let row = sqlx::query_as("SELECT id, role, team, client_cert_sha256 FROM api_keys WHERE client_cert_sha256 = $1")
        .bind(&cert.0)
        .fetch_optional(pool)
        .await?;
    Ok(known(row))
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
