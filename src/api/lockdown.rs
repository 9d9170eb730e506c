//! `/v1/admin/lockdown` (role admin): see, start and lift a lockdown
//! (`crate::vault::lockdown`). While it is on, detokenize and new captures get 423; starting
//! one can also revoke every key of a role. Each step is audited.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Role};
use super::caller::Caller;
use super::{ApiError, AppState};
use crate::capture::card::looks_like_card_number;
use crate::vault::lockdown::{self, Lockdown};

const ADMIN: &[Role] = &[Role::Admin];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    reason: String,
    /// Also revoke every key of this role (a leaked agent key, say).
    revoke_role: Option<Role>,
}

fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "lockdown state unavailable");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the vault is unavailable")
}

fn view(l: Option<Lockdown>) -> Json<Value> {
    Json(match l {
        Some(l) => json!({ "locked": true, "since": l.since, "by": l.by_actor, "reason": l.reason }),
        None => json!({ "locked": false }),
    })
}

/// 423 while a lockdown is in force: checked by detokenize and by every new capture, against
/// the database each time, so a lockdown from any process takes effect at the next request.
pub async fn refuse_if_locked(state: &AppState) -> Result<(), ApiError> {
    match lockdown::current(state.vault.pool()).await.map_err(unavailable)? {
        Some(l) => Err(ApiError::new(
            StatusCode::LOCKED,
            format!(
                "tonewall is in lockdown ({}): detokenize and new captures are stopped until an admin lifts it",
                l.reason
            ),
        )),
        None => Ok(()),
    }
}

pub async fn show(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    Ok(view(lockdown::current(state.vault.pool()).await.map_err(unavailable)?))
}

pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<Start>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) || looks_like_card_number(reason)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason must be 1-500 printable characters, no card number",
        ));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let pool = state.vault.pool();
    if lockdown::start(pool, &caller.key_id, reason, now).await.map_err(unavailable)? {
        tracing::error!(by = caller.key_id, reason, "LOCKDOWN: detokenize and new captures stopped");
        caller.audit(&state, "lockdown.start", "locked", reason).await;
    }
    if let Some(role) = req.revoke_role {
        let n = auth::revoke_role(pool, role).await.map_err(unavailable)?;
        let detail = format!("{n} {} keys revoked", role.as_str());
        caller.audit(&state, "lockdown.revoke_role", "revoked", &detail).await;
    }
    Ok(view(lockdown::current(pool).await.map_err(unavailable)?))
}

pub async fn lift(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    if lockdown::lift(state.vault.pool()).await.map_err(unavailable)? {
        tracing::warn!(by = caller.key_id, "lockdown lifted");
        caller.audit(&state, "lockdown.lift", "lifted", "").await;
    }
    Ok(view(None))
}
