//! HTTP API (axum): `/v1` JSON routes behind bearer keys with roles, the session WebSocket,
//! and `/healthz`. Errors are JSON `{"error": "..."}` with the right status; request bodies
//! that do not parse are 400 with the parser's message.

pub mod auth;
pub mod cards;
mod sessions;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::session::Sessions;
use crate::vault::Vault;
use auth::Role;

#[derive(Clone)]
pub struct AppState {
    pub sessions: Arc<Sessions>,
    pub vault: Arc<Vault>,
    /// host:port written into transfer URIs.
    pub sip_host: String,
    pub limits: Arc<cards::Limits>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", get(sessions::show))
        .route("/v1/sessions/{id}/cancel", post(sessions::cancel))
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/tokenize", post(cards::tokenize))
        .route("/v1/detokenize", post(cards::detokenize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// The authenticated caller of a route: key id and role.
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, format!("role {} may not use this route", self.role.as_str())))
        }
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let key = match header.and_then(|h| h.strip_prefix("Bearer ")) {
            Some(k) => k.trim().to_string(),
            // Browsers cannot set headers on a WebSocket: allow the key as a query parameter there.
            None => {
                Query::<TokenQuery>::try_from_uri(&parts.uri).ok().and_then(|q| q.0.access_token).unwrap_or_default()
            }
        };
        if key.is_empty() {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer key"));
        }
        match auth::lookup(state.vault.pool(), &key).await {
            Ok(Some((key_id, role))) => Ok(Caller { key_id, role }),
            Ok(None) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown bearer key")),
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable"))
            }
        }
    }
}
