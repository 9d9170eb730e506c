//! HTTP API (axum): `/v1` JSON routes behind bearer keys with roles, the session WebSocket,
//! `/v1/openapi.json` (which describes every route and the roles that may use it),
//! `/healthz`, and for monitoring `/readyz` and `/metrics` (`monitoring`). Every error, the
//! router's own 404 and 405 included, is JSON `{"error": {"code": "...", "message": "..."}}`
//! with the matching status.

mod admin_keys;
pub mod auth;
pub mod auth_failures;
mod caller;
mod calls;
mod capture_options;
pub mod cards;
pub mod lockdown;
mod merchants;
mod monitoring;
mod oidc;
mod pages;
mod prompts;
mod recordings;
mod sessions;
mod signin;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::json;

use crate::calls::Calls;
use crate::session::Sessions;
use crate::vault::{Actor, ActorRole, Vault, audit};
pub use caller::{Caller, Scope};

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
    /// Requests with no credential at all: counted and audited the same way, never throttled
    /// (a contact center behind one address opens many pages before anyone signs in).
    pub missing_credentials: Arc<auth_failures::AuthFailures>,
    /// The pages' CSP `frame-ancestors` sources (`http.frame_ancestors`).
    pub frame_ancestors: Arc<str>,
    /// How long an embed token works (`http.embed_ttl_s`).
    pub embed_ttl: std::time::Duration,
    /// The language and back key of a capture that names neither (`[capture]`).
    pub capture_defaults: (crate::capture::plan::Language, Option<crate::capture::plan::BackKey>),
    /// Signs the short-lived URLs the QA player streams from (`recordings::audio_url`).
    pub url_key: Arc<[u8; 32]>,
    /// Signed-in people's sessions (`crate::accounts`), and how long one may last.
    pub web_sessions: Arc<crate::accounts::web_sessions::WebSessions>,
    pub session_max: std::time::Duration,
    /// Agents sign in with a one-time code too (`accounts.agent_totp`).
    pub agent_totp: bool,
    /// The contact center's identity provider, when `oidc.issuer` names one.
    pub oidc: Option<Arc<crate::accounts::oidc::Oidc>>,
    /// This node: whether it admits new calls, its calls and RTP ports (health, metrics).
    pub node: Arc<crate::runtime::Shared>,
}

/// Writes one audit record for each source whose minute of failed authentications ended
/// with more than the one already audited (`AuthFailures`). The runtime calls it every few
/// seconds.
/// What a counter of failed authentications counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failures {
    /// Unknown, ended or misused credentials: a flood of them is a security event.
    WrongCredential,
    /// No credential at all.
    NoCredential,
}

/// Audits, as one record per source, the failures of every minute that has ended.
pub async fn audit_auth_failures(
    vault: &Vault,
    failures: &auth_failures::AuthFailures,
    what: Failures,
    now: std::time::Instant,
) {
    let outcome = match what {
        Failures::WrongCredential => "unknown_key_repeated",
        Failures::NoCredential => "no_credential_repeated",
    };
    for f in failures.drain_finished(now) {
        let origin = f.source.to_string();
        let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin, merchant: None };
        let count = format!("{} more in one minute", f.more);
        if let Err(err) = vault.audit(&nobody.did("auth", outcome, &count)).await {
            tracing::error!(error = %err, "audit record not written");
        }
        let failures = f.more + 1;
        if what == Failures::WrongCredential && failures >= auth_failures::LIMIT {
            vault.alerts().raise(crate::alerts::SecurityEvent::AuthFlood { origin, failures });
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(crate::runtime::peer::PATH, post(crate::runtime::peer::release))
        .route("/readyz", get(monitoring::readyz))
        .route("/metrics", get(monitoring::metrics))
        .route("/desktop", get(pages::desktop))
        .route("/qa", get(pages::qa))
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", get(sessions::show))
        .route("/v1/sessions/{id}/cancel", post(sessions::cancel))
        .route("/v1/sessions/{id}/fields/{name}/restart", post(sessions::restart_field))
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/calls", get(calls::list))
        .route("/v1/calls/{id}/capture", post(calls::capture))
        .route("/v1/recordings", get(recordings::list).delete(recordings::purge))
        .route("/v1/recordings/{id}", get(recordings::show))
        .route("/v1/recordings/{id}/audio", get(recordings::audio))
        .route("/v1/tokenize", post(cards::tokenize))
        .route("/v1/detokenize", post(cards::detokenize))
        .route("/v1/tokens/{token}", delete(cards::erase))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/auth/sign-in", post(signin::sign_in))
        .route("/v1/auth/me", get(signin::me))
        .route("/v1/auth/sign-out", post(signin::sign_out))
        .route("/v1/auth/methods", get(oidc::methods))
        .route("/v1/admin/lockdown", get(lockdown::show).post(lockdown::start))
        .route("/v1/admin/keys", get(admin_keys::list).post(admin_keys::create))
        .route("/v1/admin/keys/{id}/revoke", post(admin_keys::revoke))
        .route("/v1/admin/keys/{id}/rotate", post(admin_keys::rotate))
        .route("/v1/admin/lockdown/lift", post(lockdown::lift))
        .route("/v1/admin/merchants", get(merchants::list).post(merchants::create))
        .route("/v1/admin/merchants/{id}", get(merchants::show).patch(merchants::update))
        .route("/v1/admin/audit", get(merchants::audit))
        .route("/v1/admin/prompts", get(prompts::list))
        .route("/v1/admin/prompts/{language}/{name}", put(prompts::upload).delete(prompts::remove))
        .route("/v1/auth/oidc/start", get(oidc::start))
        .route("/v1/auth/oidc/callback", get(oidc::callback))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method")
        })
        .layer(axum::middleware::map_response(never_cached_never_sniffed))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit_forbidden))
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
    /// Who was refused, for a 403: the audit layer (`audit_forbidden`) records it.
    refused: Option<Refused>,
    /// Seconds to wait before trying again, for a 503 (`Retry-After`).
    retry_after_s: Option<u32>,
}

/// The caller a 403 refused, carried on the response to `audit_forbidden`.
#[derive(Debug, Clone)]
pub struct Refused {
    pub key_id: String,
    pub role: auth::Role,
    /// Its merchant, whose admins read the record.
    pub merchant: crate::merchant::MerchantId,
}

impl ApiError {
    /// An error whose message never repeats a card number: parsers' messages quote the
    /// offending value (serde's "invalid type: string …", "unknown variant …"), and a client
    /// may have put a card number there (PCI DSS 3.5.1).
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        if crate::capture::card::looks_like_card_number(&message) {
            message = "the request holds a value that looks like a card number; it is not repeated here".into();
        }
        ApiError { status, message, refused: None, retry_after_s: None }
    }

    /// A 403 for `caller`, audited on its way out.
    pub fn forbidden(caller: Refused, message: impl Into<String>) -> ApiError {
        ApiError { refused: Some(caller), ..ApiError::new(StatusCode::FORBIDDEN, message) }
    }

    /// A session registry's refusal: 404, 429, 503 for the store, 409 for the rest.
    pub fn sessions(e: crate::session::SessionError) -> ApiError {
        use crate::session::SessionError as E;
        match e {
            E::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such session"),
            E::TooManySubscribers => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            E::Store(why) => {
                tracing::error!(error = why, "session store unavailable");
                ApiError {
                    retry_after_s: Some(5),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the session store is unavailable")
                }
            }
            e => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }

    /// 503 while this node drains: the client tries another node, or this one later.
    pub fn draining(state: &AppState) -> Option<ApiError> {
        match state.node.admitting() {
            crate::endpoint::Admitting::Open => None,
            crate::endpoint::Admitting::Draining { retry_after_s } => Some(ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this node is draining and takes no new sessions")
            }),
        }
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
            StatusCode::LOCKED => "lockdown",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code(), "message": self.message } });
        let mut r = (self.status, Json(body)).into_response();
        if let Some(refused) = self.refused {
            r.extensions_mut().insert(refused);
        }
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// PCI DSS 10.2.1.4 (invalid logical access attempts), for an authenticated caller: every
/// 403 is audited with who, from where and what route.
async fn audit_forbidden(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Cheap copies: this runs on every request, and audits only the rare 403.
    let uri = request.uri().clone();
    let from = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let response = next.run(request).await;
    if let Some(r) = response.extensions().get::<Refused>() {
        let origin = from.map_or("unknown".to_string(), |ip| ip.to_string());
        let merchant = Some(r.merchant.as_str());
        let actor = Actor { id: &r.key_id, role: ActorRole::Key(r.role), origin: &origin, merchant };
        audit_or_log(&state, &actor.did("authz", "forbidden", uri.path())).await;
    }
    response
}

/// The API's description (OpenAPI 3.1); `x-roles` on each operation is the permission matrix
/// the route × role test checks against the running server.
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

pub(super) async fn audit_or_log(state: &AppState, e: &audit::Event<'_>) {
    if let Err(err) = state.vault.audit(e).await {
        tracing::error!(error = %err, action = e.action, "audit record not written");
    }
}
