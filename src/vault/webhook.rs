//! Webhooks to the processor: `session.completed`, and with `webhook.field_events` one
//! `session.field_completed` per field as the caller completes it. A completion is queued in the transaction that stores
//! the card (an outbox), so a crash or restart loses none; a delivery loop POSTs due events,
//! signed `Tonewall-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` (the scheme
//! the README shows processors how to check), and retries failures with exponential back-off
//! (doubling from `retry_base`, at most an hour apart) for 24 hours before giving up.
//!
//! A merchant with a webhook of its own (`crate::merchant`) has its events sent there and
//! signed with its secret; the others use the deployment's `[webhook]`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::{AnyConnection, AnyPool};

use super::crypto::{SecretKey, hex};
use super::{TokenRecord, VaultError, unix_now};

pub const SIGNATURE_HEADER: &str = "Tonewall-Signature";
const GIVE_UP_AFTER_S: i64 = 24 * 3600;
const MAX_GAP_S: i64 = 3600;
/// How long a delivery attempt holds an event, so two tonewall processes never send it twice
/// at once.
const LEASE_S: i64 = 60;

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct Hook {
    pub url: String,
    pub secret: SecretKey,
    pub retry_base: Duration,
}

/// The body a processor receives when a session completes.
#[derive(Debug, Serialize)]
pub struct Completed<'a> {
    pub event: &'static str,
    pub session_id: &'a str,
    pub reference: &'a str,
    /// What was stored: token, payment method, brand or account type, last four.
    #[serde(flatten)]
    pub stored: &'a TokenRecord,
    /// The same on every retry of this event: processors drop repeats by it.
    pub idempotency_key: &'a str,
}

/// A field the caller completed, for platforms that draw their own screens: its mask (dots
/// and at most the last four digits), the card's brand once the number is in, and the
/// attempts it had left.
#[derive(Debug, Serialize)]
pub struct FieldCompleted<'a> {
    pub session_id: &'a str,
    pub reference: &'a str,
    pub field: crate::capture::collector::FieldName,
    pub masked: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<crate::capture::card::Brand>,
    pub attempts_left: u8,
}

#[derive(Serialize)]
struct FieldEvent<'a> {
    event: &'static str,
    #[serde(flatten)]
    field: &'a FieldCompleted<'a>,
    idempotency_key: &'a str,
}

/// Queues a field event.
pub async fn enqueue_field_in(
    conn: &mut AnyConnection,
    url: &str,
    merchant: &str,
    field: &FieldCompleted<'_>,
) -> Result<(), VaultError> {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_string(&FieldEvent { event: "session.field_completed", field, idempotency_key: &id })
        .map_err(|e| VaultError::Config(e.to_string()))?;
    insert(conn, &id, url, merchant, &body).await
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub fn signature(secret: &SecretKey, t: i64, body: &str) -> String {
    // Invariant: HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(secret.expose()).expect("any key length");
    m.update(format!("{t}.").as_bytes());
    m.update(body.as_bytes());
    format!("t={t},v1={}", hex(&m.finalize().into_bytes()))
}

/// Queues the completion event inside the caller's transaction.
pub async fn enqueue_in(
    conn: &mut AnyConnection,
    url: &str,
    merchant: &str,
    session_id: &str,
    reference: &str,
    card: &TokenRecord,
) -> Result<(), VaultError> {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_string(&Completed {
        event: "session.completed",
        session_id,
        reference,
        stored: card,
        idempotency_key: &id,
    })
    .map_err(|e| VaultError::Config(e.to_string()))?;
    insert(conn, &id, url, merchant, &body).await
}

/// Puts one event in the outbox, due now.
async fn insert(conn: &mut AnyConnection, id: &str, url: &str, merchant: &str, body: &str) -> Result<(), VaultError> {
    let now = unix_now();
    sqlx::query(
        "INSERT INTO webhooks (id, url, merchant, body, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(url)
    .bind(merchant)
    .bind(body)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    url: String,
    merchant: String,
    body: String,
    attempts: i64,
    next_attempt_at: i64,
    created_at: i64,
}

/// Delivery counts for one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub delivered: usize,
    pub failed: usize,
    pub given_up: usize,
}

/// Webhooks waiting (neither delivered nor given up on): how many, and when the oldest was
/// made (unix seconds).
pub async fn queue(pool: &AnyPool) -> Result<(i64, Option<i64>), VaultError> {
    let row: (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM webhooks WHERE delivered_at IS NULL AND given_up_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// Sends every event that is due; returns what happened.
/// The secret that signs a merchant's events: its own webhook's, else the deployment's.
async fn secret_for(pool: &AnyPool, merchant: &str, deployment: Option<&Hook>) -> Result<SecretKey, String> {
    let id = crate::merchant::MerchantId::from_stored(merchant.to_string());
    let settings = crate::merchant::settings(pool, &id).await.map_err(|e| e.to_string())?;
    match (settings.webhook, deployment) {
        // Merchants' secrets come from a file or the environment only (`Settings::check`).
        (Some(own), _) => own.secret.load(std::path::Path::new("/nonexistent")).map_err(|e| e.to_string()),
        (None, Some(hook)) => Ok(hook.secret.clone()),
        (None, None) => Err(format!("merchant {merchant} has no webhook and the deployment none")),
    }
}

/// Sends the due events: each signed with its merchant's secret (`secret_for`), retried from
/// the deployment's `retry_base`.
pub async fn deliver_due(pool: &AnyPool, deployment: Option<&Hook>, retry_base: Duration) -> Result<Pass, VaultError> {
    let now = unix_now();
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, url, merchant, body, attempts, next_attempt_at, created_at FROM webhooks \
         WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT 50",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut pass = Pass::default();
    let mut secrets: std::collections::HashMap<String, Result<SecretKey, String>> = Default::default();
    for Due { id, url, merchant, body, attempts, next_attempt_at: next_at, created_at } in due {
        // Claim it: only the process whose update matches sends it.
        let claimed = sqlx::query("UPDATE webhooks SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at = $3")
            .bind(now + LEASE_S)
            .bind(&id)
            .bind(next_at)
            .execute(pool)
            .await?
            .rows_affected();
        if claimed != 1 {
            continue;
        }
        if !secrets.contains_key(&merchant) {
            let secret = secret_for(pool, &merchant, deployment).await;
            secrets.insert(merchant.clone(), secret);
        }
        let result = match &secrets[&merchant] {
            Ok(secret) => post(url, body.clone(), signature(secret, unix_now(), &body), id.clone()).await,
            Err(why) => Err(why.clone()),
        };
        let attempts = attempts + 1;
        match result {
            Ok(()) => {
                sqlx::query("UPDATE webhooks SET delivered_at = $1, attempts = $2 WHERE id = $3")
                    .bind(unix_now())
                    .bind(attempts)
                    .bind(&id)
                    .execute(pool)
                    .await?;
                pass.delivered += 1;
            }
            Err(why) if unix_now() - created_at >= GIVE_UP_AFTER_S => {
                tracing::error!(webhook = %id, attempts, error = %why, "webhook given up after 24 hours");
                sqlx::query("UPDATE webhooks SET given_up_at = $1, attempts = $2, last_error = $3 WHERE id = $4")
                    .bind(unix_now())
                    .bind(attempts)
                    .bind(why)
                    .bind(&id)
                    .execute(pool)
                    .await?;
                pass.given_up += 1;
            }
            Err(why) => {
                let gap = backoff(retry_base, attempts);
                tracing::warn!(webhook = %id, attempts, retry_in_s = gap, error = %why, "webhook delivery failed");
                sqlx::query("UPDATE webhooks SET next_attempt_at = $1, attempts = $2, last_error = $3 WHERE id = $4")
                    .bind(unix_now() + gap)
                    .bind(attempts)
                    .bind(why)
                    .bind(&id)
                    .execute(pool)
                    .await?;
                pass.failed += 1;
            }
        }
    }
    Ok(pass)
}

/// Seconds before attempt `attempts + 1`: base · 2^(attempts − 1), at most an hour.
fn backoff(base: Duration, attempts: i64) -> i64 {
    let base = base.as_secs().max(1) as i64;
    base.saturating_mul(1i64 << (attempts - 1).clamp(0, 20)).min(MAX_GAP_S)
}

pub(crate) async fn post(url: String, body: String, signature: String, id: String) -> Result<(), String> {
    let blocking = move || -> Result<u16, ureq::Error> {
        // A redirect is not followed (the signed event goes to the configured URL only) and
        // is not a delivery either.
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).max_redirects(0).build().into();
        let resp = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .header("Idempotency-Key", &id)
            .send(body)?;
        Ok(resp.status().as_u16())
    };
    match tokio::task::spawn_blocking(blocking).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("the endpoint answered {status}, not 2xx (redirects are not followed)")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_t_dot_body() {
        let secret = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        let sig = signature(&secret, 1_700_000_000, "{\"a\":1}");
        let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(b"1700000000.{\"a\":1}");
        assert_eq!(sig, format!("t=1700000000,v1={}", hex(&m.finalize().into_bytes())));
        assert_ne!(sig, signature(&secret, 1_700_000_001, "{\"a\":1}"), "the time is signed");
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(5);
        assert_eq!((1..=4).map(|a| backoff(base, a)).collect::<Vec<_>>(), vec![5, 10, 20, 40]);
        assert_eq!(backoff(base, 30), 3600);
        // Over 24 hours that is about 30 attempts, not thousands.
        let (mut t, mut n) = (0, 0);
        while t < GIVE_UP_AFTER_S {
            n += 1;
            t += backoff(base, n);
        }
        assert!((25..40).contains(&n), "{n}");
    }
}
