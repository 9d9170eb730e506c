//! Lockdown (PCI DSS 12.10.1: the incident response plan can contain an incident at once):
//! while it is on, no card leaves the vault (detokenize) and no new capture starts, in every
//! process that shares the vault's database; it is one row, so `tonewall lockdown` from a
//! shell stops a running `serve` at its next request. Only an admin lifts it.

use sqlx::AnyPool;

/// A lockdown in force.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lockdown {
    /// Unix seconds.
    pub since: i64,
    pub by_actor: String,
    pub reason: String,
}

/// The lockdown in force, if any.
pub async fn current(pool: &AnyPool) -> Result<Option<Lockdown>, sqlx::Error> {
    sqlx::query_as("SELECT since, by_actor, reason FROM lockdown WHERE id = 1").fetch_optional(pool).await
}

/// Starts a lockdown; false when one is already in force (it is kept as it was).
pub async fn start(pool: &AnyPool, by: &str, reason: &str, now: i64) -> Result<bool, sqlx::Error> {
    if current(pool).await?.is_some() {
        return Ok(false);
    }
    let done = sqlx::query("INSERT INTO lockdown (id, since, by_actor, reason) VALUES (1, $1, $2, $3)")
        .bind(now)
        .bind(by)
        .bind(reason)
        .execute(pool)
        .await;
    match done {
        Ok(_) => Ok(true),
        // Another process started one between the check and the insert.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lifts the lockdown; false when none was in force.
pub async fn lift(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM lockdown WHERE id = 1").execute(pool).await?.rows_affected() == 1)
}
