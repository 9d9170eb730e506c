//! `/v1/auth/oidc`: sign-in through the contact center's identity provider
//! (`crate::accounts::oidc`). `start` sends the browser to the provider with the binding
//! cookie (`SameSite=Lax`, RFC 6265bis §5.6.7.1, so it comes back on the provider's
//! top-level redirect); `callback` checks what comes back, opens the same web session as a
//! built-in sign-in, and hands over to the page with a same-site refresh, since a
//! `SameSite=Strict` cookie is not sent on a navigation that began at the provider.
//! Every sign-in and refusal is audited (PCI DSS 10.2.1.4, 10.2.1.5).

use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::auth_failures::Failure;
use super::caller::cookie;
use super::signin::session_cookie_header;
use super::{ApiError, AppState, audit_or_log};
use crate::accounts::oidc::{Answer, BINDING_COOKIE, OidcError, PENDING_TTL, Page};
use crate::vault::{Actor, ActorRole};

#[derive(Deserialize)]
pub struct StartQuery {
    #[serde(default)]
    then: String,
}

pub async fn start(State(state): State<AppState>, Query(q): Query<StartQuery>) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or(ApiError::new(StatusCode::NOT_FOUND, "no identity provider is configured"))?;
    let then = Page::parse(&q.then).unwrap_or(Page::Desktop);
    let started = oidc.begin(then, Instant::now()).await.map_err(|e| match e {
        OidcError::Busy => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        e => {
            tracing::error!(error = %e, "identity provider unavailable");
            ApiError::new(StatusCode::BAD_GATEWAY, "the identity provider cannot be reached")
        }
    })?;
    let cookie = format!(
        "{BINDING_COOKIE}={}; HttpOnly; Secure; SameSite=Lax; Path=/v1/auth/oidc; Max-Age={}",
        started.binding,
        PENDING_TTL.as_secs()
    );
    let mut r = StatusCode::SEE_OTHER.into_response();
    let headers = r.headers_mut();
    headers.insert(header::LOCATION, header_value(&started.authorize_url)?);
    headers.insert(header::SET_COOKIE, header_value(&cookie)?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// What the provider sends back (RFC 6749 §4.1.2 and §4.1.2.1).
#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    state: String,
    code: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or(ApiError::new(StatusCode::NOT_FOUND, "no identity provider is configured"))?;
    let now = Instant::now();
    if state.auth_failures.is_throttled(from.ip(), now) {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed sign-ins from this address"));
    }
    let answer = match (&q.code, &q.error) {
        (_, Some(e)) => Answer::Error(e),
        (Some(c), None) => Answer::Code(c),
        (None, None) => Answer::Error("no code"),
    };
    let binding = cookie(&headers, BINDING_COOKIE);
    let origin = from.ip().to_string();
    match oidc.finish(&q.state, answer, q.iss.as_deref(), binding, now).await {
        Ok((user, then)) => {
            let merchant = Some(user.merchant.as_str());
            let actor = Actor { id: &user.id, role: ActorRole::Key(user.role), origin: &origin, merchant };
            audit_or_log(&state, &actor.did("auth.sign_in", "signed_in", &user.principal())).await;
            let (token, _) = state.web_sessions.open(user, now);
            let mut r = hand_over(then.path()).into_response();
            let headers = r.headers_mut();
            headers.append(header::SET_COOKIE, session_cookie_header(&token, state.session_max)?);
            headers.append(header::SET_COOKIE, header_value(&expired_binding())?);
            Ok(r)
        }
        Err(why) => {
            let _ = state.auth_failures.record(from.ip(), now) == Failure::AuditNow;
            let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin, merchant: None };
            let event = nobody.did("auth.sign_in", why.outcome(), "identity_provider");
            audit_or_log(&state, &crate::vault::audit::Event { detail: why.detail(), ..event }).await;
            let mut r = (StatusCode::UNAUTHORIZED, refused_page(&why.to_string())).into_response();
            r.headers_mut().append(header::SET_COOKIE, header_value(&expired_binding())?);
            Ok(r)
        }
    }
}

fn expired_binding() -> String {
    format!("{BINDING_COOKIE}=; HttpOnly; Secure; SameSite=Lax; Path=/v1/auth/oidc; Max-Age=0")
}

fn header_value(v: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(v).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "header"))
}

/// A page that moves on to `path` by itself: a navigation this origin starts, so the
/// `SameSite=Strict` session cookie goes with it.
fn hand_over(path: &'static str) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={path}\"><title>Signed in</title><p>Signed in. <a href=\"{path}\">Continue</a>"
    );
    with_page_headers(Html(html).into_response())
}

fn refused_page(why: &str) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Sign-in refused</title><h1>Sign-in refused</h1><p id=why>{}</p><p><a href=\"/desktop\">Back to sign-in</a>",
        why.replace('&', "&amp;").replace('<', "&lt;")
    );
    with_page_headers(Html(html).into_response())
}

fn with_page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// How people may sign in, for the pages' sign-in form.
pub async fn methods(State(state): State<AppState>) -> Response {
    let provider = state.oidc.as_ref().map(|o| serde_json::json!({ "name": o.name(), "start": "/v1/auth/oidc/start" }));
    axum::Json(serde_json::json!({ "password": true, "provider": provider })).into_response()
}
