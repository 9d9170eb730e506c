//! Bearer API keys with roles (PCI DSS 7.2 least privilege, 8.2 unique ids): one key per
//! client, shown once at creation, stored only as its SHA-256.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::AnyPool;

use crate::vault::{crypto::hex, token::random_base62};

pub use crate::vault::actor::Role;

const KEY_PREFIX: &str = "twk_";

fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Creates a key for `role`; returns its id and the key itself (the only time it exists in
/// clear).
pub async fn create_key(pool: &AnyPool, role: Role) -> Result<(String, String), sqlx::Error> {
    let key = format!("{KEY_PREFIX}{}", random_base62(40));
    let id = uuid::Uuid::new_v4().to_string();
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    sqlx::query("INSERT INTO api_keys (id, role, key_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(role.as_str())
        .bind(hash(&key))
        .bind(created)
        .execute(pool)
        .await?;
    Ok((id, key))
}

/// The key's id and role, if the key is known.
pub async fn lookup(pool: &AnyPool, key: &str) -> Result<Option<(String, Role)>, sqlx::Error> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
        return Ok(None);
    }
    let row: Option<(String, String)> = sqlx::query_as("SELECT id, role FROM api_keys WHERE key_hash = $1")
        .bind(hash(key))
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|(id, role)| Role::parse(&role).map(|r| (id, r))))
}
