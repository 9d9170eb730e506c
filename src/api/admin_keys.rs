//! `/v1/admin/keys` (role admin): the API keys' lifecycle (`super::auth`) over HTTP, as
//! `tonewall api-key` does it from a shell: list (never a key), create and rotate (the new
//! key shown once, in the answer), revoke. Each change is audited. An admin reaches its own
//! merchant's keys only; `default`'s admins may also create another merchant's first keys.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, KeyError, NewKey, Role};
use super::caller::Caller;
use super::{ApiError, AppState};
use crate::owner::Team;

const ADMIN: &[Role] = &[Role::Admin];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    role: Role,
    /// Another merchant's key (only `default`'s admins); the caller's own when absent.
    #[serde(default)]
    merchant: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    #[serde(default)]
    overlap_hours: Option<u64>,
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Store(e) => {
            tracing::error!(error = %e, "key store unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable")
        }
        KeyError::NoSuchKey(_) => ApiError::new(StatusCode::NOT_FOUND, "no such key"),
        e @ (KeyError::BoundToCertificate(_) | KeyError::Ended(_)) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        e @ (KeyError::TooLong | KeyError::NoDays) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn text_ok(s: &str) -> bool {
    s.len() <= 200 && !s.chars().any(char::is_control) && !crate::capture::card::looks_like_card_number(s)
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let keys =
        auth::list(state.vault.pool(), Some(&caller.merchant)).await.map_err(|e| key_error(KeyError::Store(e)))?;
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|k| {
            json!({
                "id": k.id, "name": k.name, "owner": k.owner, "role": k.role, "merchant": k.merchant, "team": k.team,
                "created_at": k.created_at, "expires_at": k.expires_at, "last_used_at": k.last_used_at,
                "bound_to_certificate": k.bound_to_certificate, "state": k.state,
            })
        })
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<Create>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(ADMIN)?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if ![&req.name, &req.owner].iter().all(|s| text_ok(s)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name and owner: at most 200 printable characters, no card number",
        ));
    }
    let merchant = match req.merchant.as_deref() {
        None => caller.merchant.clone(),
        Some(id) => super::merchants::reachable(&state, &caller, id).await?,
    };
    let team = req.team.as_deref().and_then(Team::named);
    let new = NewKey {
        merchant: Some(&merchant),
        team: team.as_ref(),
        name: &req.name,
        owner: &req.owner,
        expires_in_days: req.expires_in_days,
    };
    let (id, key) = auth::create(state.vault.pool(), req.role, &new).await.map_err(key_error)?;
    let detail =
        format!("{}, merchant {merchant}", auth::created_detail(req.role, team.as_ref(), &req.name, &req.owner));
    caller.audit_detail(&state, "api_key.create", "created", &id, &detail).await;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "key": key }))))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    auth::revoke(state.vault.pool(), &id, Some(&caller.merchant)).await.map_err(key_error)?;
    caller.audit(&state, "api_key.revoke", "revoked", &id).await;
    Ok(Json(json!({ "id": id, "state": "revoked" })))
}

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<Rotate>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(ADMIN)?;
    let hours = body.and_then(|Json(r)| r.overlap_hours).unwrap_or(24).min(24 * 30);
    let overlap = Duration::from_secs(hours * 3600);
    let (new_id, key) =
        auth::rotate(state.vault.pool(), &id, Some(&caller.merchant), overlap).await.map_err(key_error)?;
    let detail = auth::rotated_detail(&new_id, hours);
    caller.audit_detail(&state, "api_key.rotate", "rotated", &id, &detail).await;
    Ok((StatusCode::CREATED, Json(json!({ "id": new_id, "key": key, "replaces": id, "old_key_overlap_hours": hours }))))
}
