//! `/v1/admin/merchants` and `/v1/admin/audit`. `default`'s admins run the deployment: they
//! create merchants, change their settings and list them all. Any other merchant's admin reads
//! its own merchant and nothing else; another merchant's id gets 404, as one that does not
//! exist. Settings name secrets by file or environment variable on the server, so only the
//! deployment's admins set them (`crate::merchant`). Each change is audited.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::Role;
use super::caller::Caller;
use super::{ApiError, AppState};
use crate::merchant::{self, Merchant, MerchantError, MerchantId, Settings};

const ADMIN: &[Role] = &[Role::Admin];

fn merchant_error(e: MerchantError) -> ApiError {
    match e {
        MerchantError::Store(e) => {
            tracing::error!(error = %e, "merchant store unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "merchant store unavailable")
        }
        MerchantError::NoSuch(_) => ApiError::new(StatusCode::NOT_FOUND, "no such merchant"),
        e @ MerchantError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        e @ (MerchantError::BadId | MerchantError::Invalid(_)) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such merchant")
}

/// Merchant `id`, if this caller may act on it: its own, or any for the deployment's admins.
pub async fn reachable(state: &AppState, caller: &Caller, id: &str) -> Result<MerchantId, ApiError> {
    let id = MerchantId::parse(id).map_err(|_| not_found())?;
    if id == caller.merchant {
        return Ok(id);
    }
    if !caller.merchant.is_default() {
        return Err(not_found());
    }
    match merchant::get(state.vault.pool(), &id).await.map_err(merchant_error)? {
        Some(_) => Ok(id),
        None => Err(not_found()),
    }
}

fn shown(m: &Merchant) -> Value {
    json!({
        "id": m.id, "name": m.name, "settings": m.settings,
        "created_at": m.created_at, "updated_at": m.updated_at,
    })
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let all = merchant::list(state.vault.pool()).await.map_err(merchant_error)?;
    let seen: Vec<Value> =
        all.iter().filter(|m| caller.merchant.is_default() || m.id == caller.merchant).map(shown).collect();
    Ok(Json(json!({ "merchants": seen })))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let id = reachable(&state, &caller, &id).await?;
    let m = merchant::get(state.vault.pool(), &id).await.map_err(merchant_error)?.ok_or_else(not_found)?;
    Ok(Json(shown(&m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    id: String,
    name: String,
    #[serde(default)]
    settings: Settings,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<Create>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_operator()?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id = MerchantId::parse(&req.id).map_err(merchant_error)?;
    let deployment = merchant::Deployment::of(&state.node.config);
    let made = merchant::create(state.vault.pool(), &id, &req.name, &req.settings, deployment)
        .await
        .map_err(merchant_error)?;
    caller.audit(&state, "merchant.create", "created", id.as_str()).await;
    Ok((StatusCode::CREATED, Json(shown(&made))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    #[serde(default)]
    name: Option<String>,
    /// Keys with a value replace; keys with null go back to the deployment's.
    #[serde(default)]
    settings: Map<String, Value>,
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Update>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator()?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id = reachable(&state, &caller, &id).await?;
    let deployment = merchant::Deployment::of(&state.node.config);
    let updated = merchant::update(state.vault.pool(), &id, req.name.as_deref(), &req.settings, deployment)
        .await
        .map_err(merchant_error)?;
    let changed: Vec<&str> = req.settings.keys().map(String::as_str).collect();
    let detail = format!("settings changed: {}", changed.join(", "));
    caller.audit_detail(&state, "merchant.update", "updated", id.as_str(), &detail).await;
    Ok(Json(shown(&updated)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/admin/audit?after=&limit=`: the caller's merchant's audit records, oldest first
/// (PCI DSS 10.2: who did what to its data). `default`'s admins also read the records that
/// name no merchant (tonewall's own, and those from before merchants).
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    page: Result<Query<AuditPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let Query(page) = page.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let records = crate::vault::audit::records_of(state.vault.pool(), &caller.merchant, page.after, limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit read failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the audit trail is unavailable")
        })?;
    caller.audit(&state, "audit.read", "read", &format!("after {}", page.after)).await;
    Ok(Json(json!({ "records": records })))
}
