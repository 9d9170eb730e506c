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
use crate::alerts::SecurityEvent;
use crate::capture::card::looks_like_card_number;
use crate::vault::lockdown::{self, Lockdown};
use crate::vault::{Actor, Vault, VaultError};

const ADMIN: &[Role] = &[Role::Admin];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    reason: String,
    /// Also revoke every key of this role (a leaked agent key, say).
    revoke_role: Option<Role>,
}

/// What `impose` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imposed {
    /// False when a lockdown was already in force (it is kept as it was).
    pub started: bool,
    /// Keys revoked with it.
    pub revoked: Option<(Role, u64)>,
}

/// Starts a lockdown and optionally revokes every key of a role, for the API and the CLI
/// alike: each step audited and raised as a security event.
pub async fn impose(
    vault: &Vault,
    actor: Actor<'_>,
    reason: &str,
    revoke_role: Option<Role>,
) -> Result<Imposed, VaultError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let started = lockdown::start(vault.pool(), actor.id, reason, now).await?;
    if started {
        tracing::error!(by = actor.id, reason, "LOCKDOWN: detokenize and new captures stopped");
        vault.audit(&actor.did("lockdown.start", "locked", reason)).await?;
    }
    let mut revoked = None;
    if let Some(role) = revoke_role {
        let n = auth::revoke_role(vault.pool(), role).await?;
        let detail = format!("{n} {} keys revoked", role.as_str());
        vault.audit(&actor.did("lockdown.revoke_role", "revoked", &detail)).await?;
        revoked = Some((role, n));
    }
    if started || revoked.is_some() {
        let (by, reason) = (actor.id.to_string(), reason.to_string());
        let revoked_role = revoke_role.map(|r| r.as_str().to_string());
        vault.alerts().raise(SecurityEvent::LockdownStarted { by, reason, revoked_role });
    }
    Ok(Imposed { started, revoked })
}

/// Lifts the lockdown (the caller checked the admin role); audited and raised.
pub async fn release(vault: &Vault, actor: Actor<'_>) -> Result<bool, VaultError> {
    let lifted = lockdown::lift(vault.pool()).await?;
    if lifted {
        tracing::warn!(by = actor.id, "lockdown lifted");
        vault.audit(&actor.did("lockdown.lift", "lifted", "")).await?;
        vault.alerts().raise(SecurityEvent::LockdownLifted { by: actor.id.to_string() });
    }
    Ok(lifted)
}

fn vault_down(e: VaultError) -> ApiError {
    tracing::error!(error = %e, "lockdown not recorded");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the vault is unavailable")
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
    caller.require_operator()?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) || looks_like_card_number(reason)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason must be 1-500 printable characters, no card number",
        ));
    }
    impose(&state.vault, caller.actor(), reason, req.revoke_role).await.map_err(vault_down)?;
    Ok(view(lockdown::current(state.vault.pool()).await.map_err(unavailable)?))
}

pub async fn lift(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_operator()?;
    release(&state.vault, caller.actor()).await.map_err(vault_down)?;
    Ok(view(None))
}
