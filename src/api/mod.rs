//! HTTP API (axum): `/v1` JSON routes behind bearer keys with roles, the session WebSocket,
//! `/v1/openapi.json` (which describes every route and the roles that may use it) and
//! `/healthz`. Every error, the router's own 404 and 405 included, is JSON
//! `{"error": {"code": "...", "message": "..."}}` with the matching status.

pub mod auth;
pub mod auth_failures;
mod calls;
pub mod cards;
mod pages;
mod recordings;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::calls::Calls;
use crate::session::Sessions;
use crate::vault::{Actor, ActorRole, Vault, audit};
use auth::Role;
use auth_failures::Failure;

#[derive(Clone)]
pub struct AppState {
    pub sessions: Arc<Sessions>,
    pub calls: Arc<Calls>,
    pub vault: Arc<Vault>,
    /// host:port written into transfer URIs.
    pub sip_host: String,
    pub limits: Arc<cards::Limits>,
    /// Where recordings are kept.
    pub data_dir: std::path::PathBuf,
    /// Where sessions may send calls (`sip.allowed_targets`).
    pub allowed_targets: Arc<crate::targets::AllowedTargets>,
    /// Failed authentications per source: aggregated audit records and the throttle.
    pub auth_failures: Arc<auth_failures::AuthFailures>,
    /// The pages' CSP `frame-ancestors` sources (`http.frame_ancestors`).
    pub frame_ancestors: Arc<str>,
}

/// Writes one audit record for each source whose minute of failed authentications ended
/// with more than the one already audited (`AuthFailures`). The runtime calls it every few
/// seconds.
pub async fn audit_auth_failures(vault: &Vault, failures: &auth_failures::AuthFailures, now: std::time::Instant) {
    for f in failures.drain_finished(now) {
        let origin = f.source.to_string();
        let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin };
        let count = format!("{} more in one minute", f.more);
        if let Err(err) = vault.audit(&nobody.did("auth", "unknown_key_repeated", &count)).await {
            tracing::error!(error = %err, "audit record not written");
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/desktop", get(pages::desktop))
        .route("/qa", get(pages::qa))
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", get(sessions::show))
        .route("/v1/sessions/{id}/cancel", post(sessions::cancel))
        .route("/v1/sessions/{id}/fields/{name}/restart", post(sessions::restart_field))
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/calls", get(calls::list))
        .route("/v1/calls/{id}/capture", post(calls::capture))
        .route("/v1/recordings", get(recordings::list))
        .route("/v1/recordings/{id}", get(recordings::show))
        .route("/v1/recordings/{id}/audio", get(recordings::audio))
        .route("/v1/tokenize", post(cards::tokenize))
        .route("/v1/detokenize", post(cards::detokenize))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method")
        })
        .layer(axum::middleware::map_response(never_cached_never_sniffed))
        .with_state(state)
}

/// Every answer: never stored by a cache or proxy (tokens, card data, session state), and
/// never content-sniffed into something it is not.
async fn never_cached_never_sniffed(mut r: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let h = r.headers_mut();
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
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

impl ApiError {
    /// A stable, machine-readable name for the status.
    fn code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::GONE => "gone",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code(), "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The API's description (OpenAPI 3.1); `x-roles` on each operation is the permission matrix
/// the route × role test checks against the running server.
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn audit_or_log(state: &AppState, e: &audit::Event<'_>) {
    if let Err(err) = state.vault.audit(e).await {
        tracing::error!(error = %err, action = e.action, "audit record not written");
    }
}

/// The authenticated caller of a route: key id, role, team, and the client's IP.
pub struct Caller {
    pub key_id: String,
    pub role: Role,
    pub team: Option<crate::owner::Team>,
    pub origin: String,
}

impl Caller {
    /// Who this is, as the audit trail records it.
    pub fn actor(&self) -> Actor<'_> {
        Actor { id: &self.key_id, role: ActorRole::Key(self.role), origin: &self.origin }
    }

    /// Records what this caller did. The actions audited this way reveal no card data, so a
    /// failed write is logged, not fatal (detokenize, which does, fails closed in the vault).
    pub async fn audit(&self, state: &AppState, action: &str, outcome: &str, resource: &str) {
        audit_or_log(state, &self.actor().did(action, outcome, resource)).await;
    }

    /// Who this is, as ownership sees it (`crate::owner`).
    pub fn viewer(&self) -> crate::owner::Viewer {
        crate::owner::Viewer { id: self.key_id.clone(), team: self.team.clone(), admin: self.role == Role::Admin }
    }

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
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let origin = source.map_or("unknown".into(), |ip| ip.to_string());
        let cert = parts.extensions.get::<auth::ClientCert>();
        let unavailable = |e: sqlx::Error| {
            tracing::error!(error = %e, "key lookup failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable")
        };
        if key.is_empty() {
            // A client certificate the handshake verified identifies the key bound to it.
            if let Some(cert) = cert
                && let Some(k) = auth::lookup_by_cert(state.vault.pool(), cert).await.map_err(unavailable)?
            {
                return Ok(Caller { key_id: k.id, role: k.role, team: k.team, origin });
            }
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer key"));
        }
        let now = std::time::Instant::now();
        if source.is_some_and(|ip| state.auth_failures.is_throttled(ip, now)) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address",
            ));
        }
        let (outcome, message) = match auth::lookup(state.vault.pool(), &key).await.map_err(unavailable)? {
            Some(k) if k.client_cert.is_none() || k.client_cert.as_ref() == cert => {
                return Ok(Caller { key_id: k.id, role: k.role, team: k.team, origin });
            }
            // A bound key without its certificate is a copied key: refused and audited.
            Some(_) => ("key_without_its_certificate", "this key works only with its client certificate"),
            None => ("unknown_key", "unknown bearer key"),
        };
        // PCI DSS 10.2.1.4: invalid access attempts are audited (the key itself is not): the
        // first of a source's minute now, the rest as one record (`AuthFailures`).
        let first = source.is_none_or(|ip| state.auth_failures.record(ip, now) == Failure::AuditNow);
        if first {
            let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin };
            audit_or_log(state, &nobody.did("auth", outcome, parts.uri.path())).await;
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
    }
}
