//! `/v1/tokenize` and `/v1/detokenize`, for processors (PCI DSS 7.2: only the role that
//! must see card data can). Detokenizing is audited and fails closed (see `Vault::detokenize`),
//! limited per key per minute, and a key that detokenizes more than the hourly alarm level
//! raises an alarm in the log and the audit trail. Request bodies are parsed here, not by the
//! JSON extractor, so that no error message can echo a card number back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::Role;
use super::{ApiError, AppState, Caller};
use crate::capture::bank::AccountType;
use crate::capture::card::{Expiry, Pan, SecurityCode, looks_like_card_number};
use crate::capture::collector::{Captured, CapturedCard, Payment};
use crate::capture::plan::PaymentMethod;
use crate::vault::{Revealed, TokenRecord, VaultError, audit};

const PROCESSOR: &[Role] = &[Role::Processor];

/// Parses a JSON body without ever quoting it: serde's messages can contain the values.
fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
            _ => "the body is not valid JSON",
        };
        ApiError::new(StatusCode::BAD_REQUEST, format!("{what} (line {}, column {})", e.line(), e.column()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pan: String,
    /// MMYY.
    expiry: Option<String>,
    security_code: Option<String>,
    /// Only the caller's own merchant, if given: a key tokenizes for its merchant alone.
    #[serde(default)]
    merchant: Option<String>,
}

/// Card-on-file import: stores a card a processor already holds and returns its token.
pub async fn tokenize(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<TokenRecord>), ApiError> {
    caller.require(PROCESSOR)?;
    let req: TokenizeRequest = parse(&body)?;
    let bad = |m: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m.to_string());
    let pan = Pan::parse(req.pan.as_bytes()).map_err(|_| bad("pan is not a valid card number"))?;
    let expiry = match &req.expiry {
        Some(e) => Some(
            Expiry::parse(e.as_bytes(), crate::calendar::current_month())
                .map_err(|_| bad("expiry must be MMYY, not in the past"))?,
        ),
        None => None,
    };
    let security_code = match &req.security_code {
        Some(c) => Some(
            SecurityCode::parse(c.as_bytes(), pan.brand()).map_err(|_| bad("security_code has the wrong length"))?,
        ),
        None => None,
    };
    if let Some(named) = req.merchant.as_deref()
        && named != caller.merchant.as_str()
    {
        // Not echoed: it may be anything, a card number included.
        return Err(ApiError::new(StatusCode::FORBIDDEN, "a key tokenizes for its own merchant only"));
    }
    let actor = caller.actor();
    let card = Captured { payment: Payment::Card(CapturedCard::new(pan, expiry, security_code)), confirmed: None };
    // No session completes here, so no webhook fires.
    let record = state.vault.tokenize(card, actor, &caller.merchant, None, Instant::now()).await.map_err(|e| {
        tracing::error!(error = %e, "tokenize failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the vault could not store the card")
    })?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    token: String,
}

/// A card (`pan`, expiry, code, postal code) or a bank account (routing and account
/// numbers, type), as `payment_method` says.
#[derive(Serialize, Default)]
pub struct Detokenized {
    token: String,
    payment_method: PaymentMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_month: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_year: Option<u16>,
    /// Present only the first time, within its TTL, while the call's code is still held.
    #[serde(skip_serializing_if = "Option::is_none")]
    security_code: Option<String>,
    /// For address verification, when the call captured one.
    #[serde(skip_serializing_if = "Option::is_none")]
    postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_type: Option<AccountType>,
}

pub async fn detokenize(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Detokenized>, ApiError> {
    caller.require(PROCESSOR)?;
    super::lockdown::refuse_if_locked(&state).await?;
    let req: DetokenizeRequest = parse(&body)?;
    let actor = caller.actor();
    match state.limits.admit(&caller.key_id, Instant::now()) {
        Admit::Yes => {}
        Admit::YesWithAlarm => {
            tracing::error!(key = caller.key_id, "ALARM: bulk detokenization by one API key");
            let detail = "hourly detokenize count over vault.bulk_alarm_per_hour";
            let e = audit::Event { detail, ..actor.did("alarm.bulk_detokenize", "raised", actor.id) };
            state.vault.audit(&e).await.map_err(|_| audit_down())?;
            let (key_id, per_hour) = (caller.key_id.clone(), state.limits.alarm_per_hour());
            state.vault.alerts().raise(crate::alerts::SecurityEvent::BulkDetokenize { key_id, per_hour });
        }
        Admit::No => {
            state.vault.audit(&actor.did("detokenize", "rate_limited", &req.token)).await.map_err(|_| audit_down())?;
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "detokenize rate limit for this key"));
        }
    }
    let revealed =
        state.vault.detokenize(&req.token, &caller.merchant, actor, Instant::now()).await.map_err(|e| match e {
            VaultError::UnknownToken => ApiError::new(StatusCode::NOT_FOUND, "no such token"),
            VaultError::Expired => ApiError::new(StatusCode::GONE, "token expired"),
            VaultError::AuditUnavailable(_) => audit_down(),
            other => {
                tracing::error!(error = %other, "detokenize failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the vault could not read the card")
            }
        })?;
    let card = match revealed {
        Revealed::Bank(account) => {
            return Ok(Json(Detokenized {
                token: req.token,
                payment_method: PaymentMethod::Ach,
                routing_number: Some(account.routing_number.to_string()),
                account_number: Some(account.account_number.to_string()),
                account_type: account.account_type,
                ..Detokenized::default()
            }));
        }
        Revealed::Card(card) => card,
    };
    // Held only by the node that captured the card: another node is asked for it.
    let mut security_code = card.security_code.as_ref().map(|c| c.expose().to_string());
    if security_code.is_none() {
        let (node, merchant) = (&state.node, &caller.merchant);
        security_code = crate::runtime::peer::security_code_elsewhere(node, &req.token, &caller.key_id, merchant).await;
    }
    Ok(Json(Detokenized {
        token: req.token,
        payment_method: PaymentMethod::Card,
        pan: Some(card.pan.to_string()),
        expiry_month: card.expiry.get(0..2).and_then(|m| m.parse().ok()),
        expiry_year: card.expiry.get(2..4).and_then(|y| y.parse::<u16>().ok()).map(|y| 2000 + y),
        security_code,
        postal_code: (!card.postal_code.is_empty()).then(|| card.postal_code.to_string()),
        ..Detokenized::default()
    }))
}

/// Right to erasure: the stored card or account is deleted and the audit says so; the token
/// answers 404 from then on.
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Role::Processor, Role::Admin])?;
    if token.len() > 64 || looks_like_card_number(&token) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such token"));
    }
    state.vault.erase(&token, &caller.merchant, caller.actor()).await.map_err(|e| match e {
        VaultError::UnknownToken => ApiError::new(StatusCode::NOT_FOUND, "no such token"),
        other => {
            tracing::error!(error = %other, "erasure failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the vault could not erase the record; nothing was erased")
        }
    })?;
    tracing::info!(key = caller.key_id, "token erased");
    Ok(Json(serde_json::json!({ "token": token, "erased": true })))
}

fn audit_down() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the audit trail cannot be written, so nothing is revealed")
}

/// Per-key detokenize counting: a fixed one-minute window for the limit, a fixed one-hour
/// window for the bulk alarm (raised once per key per hour).
pub struct Limits {
    per_minute: u32,
    alarm_per_hour: u32,
    keys: Mutex<HashMap<String, Window>>,
}

struct Window {
    minute_from: Instant,
    minute: u32,
    hour_from: Instant,
    hour: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    YesWithAlarm,
    No,
}

impl Limits {
    pub fn new(per_minute: u32, alarm_per_hour: u32) -> Limits {
        Limits { per_minute, alarm_per_hour, keys: Mutex::new(HashMap::new()) }
    }

    pub fn alarm_per_hour(&self) -> u32 {
        self.alarm_per_hour
    }

    pub fn admit(&self, key: &str, now: Instant) -> Admit {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let w = keys.entry(key.to_string()).or_insert(Window { minute_from: now, minute: 0, hour_from: now, hour: 0 });
        if now.duration_since(w.minute_from) >= Duration::from_secs(60) {
            (w.minute_from, w.minute) = (now, 0);
        }
        if now.duration_since(w.hour_from) >= Duration::from_secs(3600) {
            (w.hour_from, w.hour) = (now, 0);
        }
        if w.minute >= self.per_minute {
            return Admit::No;
        }
        w.minute += 1;
        w.hour += 1;
        if w.hour == self.alarm_per_hour + 1 { Admit::YesWithAlarm } else { Admit::Yes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_minute_and_alarm_once_per_hour() {
        let l = Limits::new(3, 4);
        let t0 = Instant::now();
        let admits: Vec<Admit> = (0..4).map(|_| l.admit("k", t0)).collect();
        assert_eq!(admits, [Admit::Yes, Admit::Yes, Admit::Yes, Admit::No]);
        assert_eq!(l.admit("other", t0), Admit::Yes, "per key");
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(l.admit("k", t1), Admit::Yes);
        assert_eq!(l.admit("k", t1), Admit::YesWithAlarm, "fifth in the hour");
        assert_eq!(l.admit("k", t1), Admit::Yes, "raised once");
    }

    #[test]
    fn parse_errors_never_quote_the_body() {
        let body = Bytes::from_static(b"{\"pan\": 4111111111111111}");
        let e = parse::<TokenizeRequest>(&body).err().unwrap();
        assert!(!format!("{e:?}").contains("4111"), "{e:?}");
        let e = parse::<TokenizeRequest>(&Bytes::from_static(b"{\"pan\": \"4111111111111111\"")).err().unwrap();
        assert!(!format!("{e:?}").contains("4111"), "{e:?}");
    }
}
