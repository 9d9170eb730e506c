//! `/v1/auth`: people sign in to the pages with a built-in account (`crate::accounts`):
//! `sign-in` checks the password and one-time code and sets the session cookie
//! (`HttpOnly; Secure; SameSite=Strict`, RFC 6265bis §4.1.2.7), `me` says who is signed in
//! and when the session ends if idle, `sign-out` ends it. Every sign-in, failure, lockout
//! and sign-out is audited (PCI DSS 10.2.1.4, 10.2.1.5). Failed sign-ins count toward the
//! same per-address throttle as unknown keys.

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth_failures::Failure;
use super::caller::{Caller, session_cookie};
use super::{ApiError, AppState, audit_or_log};
use crate::accounts::{self, SignInFailure, web_sessions};
use crate::vault::{Actor, ActorRole};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    username: String,
    password: String,
    #[serde(default)]
    code: String,
}

/// The `Set-Cookie` of a new web session.
pub fn session_cookie_header(token: &str, max: std::time::Duration) -> Result<HeaderValue, ApiError> {
    let cookie = format!(
        "{}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        web_sessions::COOKIE,
        max.as_secs()
    );
    HeaderValue::from_str(&cookie).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cookie"))
}

fn who(live: &web_sessions::Live, now: Instant) -> serde_json::Value {
    json!({
        "username": live.user.username,
        "role": live.user.role.as_str(),
        "team": live.user.team.as_ref().map(|t| t.0.clone()),
        "signed_in_with": live.user.source.as_str(),
        "csrf_token": live.csrf,
        "idle_ends_in_s": live.idle_ends.saturating_duration_since(now).as_secs(),
    })
}

pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let now = Instant::now();
    if state.auth_failures.is_throttled(from.ip(), now) {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed sign-ins from this address"));
    }
    let origin = from.ip().to_string();
    let checked = accounts::sign_in(&state.vault, &req.username, &req.password, &req.code, state.agent_totp)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "sign-in check failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the account store is unavailable")
        })?;
    match checked {
        Ok(user) => {
            let merchant = Some(user.merchant.as_str());
            let actor = Actor { id: &user.id, role: ActorRole::Key(user.role), origin: &origin, merchant };
            audit_or_log(&state, &actor.did("auth.sign_in", "signed_in", &user.username)).await;
            let (token, live) = state.web_sessions.open(user, now);
            let mut r = Json(who(&live, now)).into_response();
            r.headers_mut().insert(header::SET_COOKIE, session_cookie_header(&token, state.session_max)?);
            Ok(r)
        }
        Err((why, user_id)) => {
            let _ = state.auth_failures.record(from.ip(), now) == Failure::AuditNow;
            let id = user_id.unwrap_or_else(|| "unknown".into());
            let actor = Actor { id: &id, role: ActorRole::Unauthenticated, origin: &origin, merchant: None };
            let outcome = match why {
                SignInFailure::Locked => "locked",
                SignInFailure::Disabled => "disabled",
                SignInFailure::UnknownUser => "unknown_user",
                SignInFailure::WrongPassword => "wrong_password",
                SignInFailure::WrongCode => "wrong_code",
            };
            audit_or_log(&state, &actor.did("auth.sign_in", outcome, &req.username)).await;
            // One answer for every failure: which part was wrong is for the audit trail only.
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "sign-in refused: wrong username, password or code, or the account is locked",
            ))
        }
    }
}

/// Who is signed in, with the CSRF token for state changes and the idle deadline.
pub async fn me(caller: Caller) -> Response {
    match &caller.web_session {
        Some(live) => Json(who(live, Instant::now())).into_response(),
        None => Json(json!({ "key": caller.key_id, "role": caller.role.as_str() })).into_response(),
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = session_cookie(&headers)
        && let Some(user) = state.web_sessions.close(token)
    {
        caller.audit(&state, "auth.sign_out", "signed_out", &user.username).await;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let expired = format!("{}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0", web_sessions::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&expired) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}
