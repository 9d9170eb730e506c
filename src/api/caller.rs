//! Who calls a route. A client names itself with a bearer key in `Authorization` (RFC 6750
//! §2.1), or, on a WebSocket, which browsers cannot give headers, as the subprotocol
//! `bearer.<key>` next to `tonewall` (RFC 6455 §1.9, §11.3.4); never in a URL, where
//! proxies and browser histories keep it. A TLS client certificate bound to a key names
//! that key by itself. An embed token (`POST /v1/sessions` with `"embed": true`) names one
//! session, for a while: its holder may view it, watch it, cancel it and restart a field,
//! and nothing else.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use subtle::ConstantTimeEq as _;

use super::auth::{self, Role};
use super::auth_failures::Failure;
use super::{ApiError, AppState, audit_or_log};
use crate::accounts::Source;
use crate::accounts::web_sessions::{self, Ended};
use crate::merchant::MerchantId;
use crate::owner::{Team, Viewer};
use crate::session::{EMBED_PREFIX, SessionError, SessionId};
use crate::vault::{Actor, ActorRole};

/// What a caller may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Whatever its role allows.
    Role,
    /// One session only (an embed token).
    Session(SessionId),
}

/// The authenticated caller of a route: key id, role, team, scope, and the client's IP.
pub struct Caller {
    pub key_id: String,
    pub role: Role,
    pub merchant: MerchantId,
    pub team: Option<Team>,
    pub scope: Scope,
    pub origin: String,
    /// A person signed in with a built-in account, by session cookie.
    pub web_session: Option<web_sessions::Live>,
}

impl Caller {
    fn of_key(k: auth::KnownKey, origin: String) -> Caller {
        Caller {
            key_id: k.id,
            role: k.role,
            merchant: k.merchant,
            team: k.team,
            scope: Scope::Role,
            origin,
            web_session: None,
        }
    }

    /// Who this is, as the audit trail records it.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            id: &self.key_id,
            role: ActorRole::Key(self.role),
            origin: &self.origin,
            merchant: Some(self.merchant.as_str()),
        }
    }

    /// Records what this caller did. The actions audited this way reveal no card data, so a
    /// failed write is logged, not fatal (detokenize, which does, fails closed in the vault).
    pub async fn audit(&self, state: &AppState, action: &str, outcome: &str, resource: &str) {
        audit_or_log(state, &self.actor().did(action, outcome, resource)).await;
    }

    pub async fn audit_detail(&self, state: &AppState, action: &str, outcome: &str, resource: &str, detail: &str) {
        let actor = self.actor();
        audit_or_log(state, &crate::vault::audit::Event { detail, ..actor.did(action, outcome, resource) }).await;
    }

    /// Who this is, as ownership sees it (`crate::owner`).
    pub fn viewer(&self) -> Viewer {
        Viewer {
            id: self.key_id.clone(),
            merchant: self.merchant.clone(),
            team: self.team.clone(),
            admin: self.role == Role::Admin,
        }
    }

    /// For every route but one session's own: the role must be allowed, and an embed token
    /// is never enough.
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if self.scope != Scope::Role {
            return Err(ApiError::forbidden(self.refused(), "this token is good for its one session only"));
        }
        self.require_for_session(allowed)
    }

    /// For what touches every merchant (merchants, lockdown): an admin of `default`,
    /// the merchant that runs the deployment (`crate::merchant`).
    pub fn require_operator(&self) -> Result<(), ApiError> {
        self.require(&[Role::Admin])?;
        if self.merchant.is_default() {
            Ok(())
        } else {
            Err(ApiError::forbidden(self.refused(), "only the deployment's admins (merchant default) may do this"))
        }
    }

    /// For a session's own routes (view, events, cancel, field restart), which an embed
    /// token for that session may use too.
    pub fn require_for_session(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(self.refused(), format!("role {} may not use this route", self.role.as_str())))
        }
    }

    fn refused(&self) -> super::Refused {
        super::Refused { key_id: self.key_id.clone(), role: self.role, merchant: self.merchant.clone() }
    }

    /// Whether this caller may see `id`, by scope and by ownership.
    pub async fn may_see_session(&self, state: &AppState, id: &SessionId) -> Result<bool, SessionError> {
        Ok(match &self.scope {
            Scope::Session(only) => only == id && state.sessions.owner(id).await?.is_some(),
            Scope::Role => state.sessions.owner(id).await?.is_some_and(|owner| self.viewer().sees(&owner)),
        })
    }
}

/// The session cookie's token, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, web_sessions::COOKIE)
}

/// One cookie of a request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

/// A signed-in person's request: the session must be live, and a state change must carry
/// the session's CSRF token in `X-CSRF-Token` (a cross-site form or script cannot read it).
async fn from_web_session(parts: &Parts, state: &AppState, token: &str, origin: String) -> Result<Caller, ApiError> {
    let live = state.web_sessions.touch(token, Instant::now()).map_err(|why| {
        let message = match why {
            Ended::Idle => "signed out after being idle: sign in again",
            Ended::TooLong => "the session has reached its limit: sign in again",
            Ended::Unknown => "not signed in",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    })?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !safe && !bool::from(sent.as_bytes().ct_eq(live.csrf.as_bytes())) {
        let u = &live.user;
        let who = super::Refused { key_id: u.principal(), role: u.role, merchant: u.merchant.clone() };
        return Err(ApiError::forbidden(who, "missing or wrong X-CSRF-Token"));
    }
    let u = &live.user;
    // A provider's people are disabled at the provider; their sessions end within the idle
    // timeout and `accounts.max_session_s`.
    let enabled = u.source == Source::Provider
        || crate::accounts::is_enabled(state.vault.pool(), &u.id).await.map_err(|e| {
            tracing::error!(error = %e, "account check failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the account store is unavailable")
        })?;
    if !enabled {
        state.web_sessions.end_user(&u.id);
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "this account is disabled"));
    }
    Ok(Caller {
        key_id: u.principal(),
        role: u.role,
        merchant: u.merchant.clone(),
        team: u.team.clone(),
        scope: Scope::Role,
        origin,
        web_session: Some(live),
    })
}

/// The bearer credential of a request: `Authorization: Bearer …`, or a WebSocket
/// subprotocol `bearer.…`.
fn bearer(parts: &Parts) -> String {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(k) = header.and_then(|h| h.strip_prefix("Bearer ")) {
        return k.trim().to_string();
    }
    let protocols = parts.headers.get(axum::http::header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
    protocols
        .into_iter()
        .flat_map(|p| p.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
        .unwrap_or_default()
        .to_string()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts);
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let origin = source.map_or("unknown".into(), |ip| ip.to_string());
        let cert = parts.extensions.get::<auth::ClientCert>();
        let unavailable = |e: sqlx::Error| {
            tracing::error!(error = %e, "key lookup failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable")
        };
        if key.is_empty()
            && let Some(token) = session_cookie(&parts.headers)
        {
            return from_web_session(parts, state, token, origin).await;
        }
        let now = Instant::now();
        if key.is_empty() {
            // A client certificate the handshake verified identifies the key bound to it.
            let found = match cert {
                Some(cert) => auth::lookup_by_cert(state.vault.pool(), cert).await.map_err(unavailable)?,
                None => auth::Lookup::Unknown,
            };
            return match found {
                auth::Lookup::Valid(k) => Ok(Caller::of_key(k, origin)),
                auth::Lookup::Ended(why) => Err(refused(state, parts, source, now, why.outcome(), why.message()).await),
                auth::Lookup::Unknown => Err(no_credential(state, parts, source, now).await),
            };
        }
        if source.is_some_and(|ip| state.auth_failures.is_throttled(ip, now)) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address",
            ));
        }
        let (outcome, message) = if key.starts_with(EMBED_PREFIX) {
            match state.sessions.embedded(&key, std::time::SystemTime::now()).await.map_err(ApiError::sessions)? {
                Some(id) => {
                    let key_id = format!("embed:{}", id.as_str());
                    let owner = state.sessions.owner(&id).await.map_err(ApiError::sessions)?;
                    return Ok(Caller {
                        key_id,
                        role: Role::Agent,
                        merchant: owner.map_or_else(MerchantId::default_merchant, |o| o.merchant),
                        team: None,
                        scope: Scope::Session(id),
                        origin,
                        web_session: None,
                    });
                }
                None => ("unknown_embed_token", "unknown or expired embed token"),
            }
        } else {
            match auth::lookup(state.vault.pool(), &key).await.map_err(unavailable)? {
                auth::Lookup::Valid(k) if k.client_cert.is_none() || k.client_cert.as_ref() == cert => {
                    return Ok(Caller::of_key(k, origin));
                }
                // A bound key without its certificate is a copied key: refused and audited.
                auth::Lookup::Valid(_) => {
                    ("key_without_its_certificate", "this key works only with its client certificate")
                }
                auth::Lookup::Ended(why) => (why.outcome(), why.message()),
                auth::Lookup::Unknown => ("unknown_key", "unknown bearer key"),
            }
        };
        Err(refused(state, parts, source, now, outcome, message).await)
    }
}

/// A request with no credential (PCI DSS 10.2.1.4 counts it as an invalid access attempt):
/// the first of a source's minute audited now, the rest as one record; never throttled.
async fn no_credential(state: &AppState, parts: &Parts, source: Option<std::net::IpAddr>, now: Instant) -> ApiError {
    if source.is_none_or(|ip| state.missing_credentials.record(ip, now) == Failure::AuditNow) {
        let origin = source.map_or("unknown".into(), |ip| ip.to_string());
        let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin, merchant: None };
        audit_or_log(state, &nobody.did("auth", "no_credential", parts.uri.path())).await;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer key")
}

/// A refused credential. PCI DSS 10.2.1.4: invalid access attempts are audited (the key
/// itself is not): the first of a source's minute now, the rest as one record
/// (`AuthFailures`), which also throttles the source.
async fn refused(
    state: &AppState,
    parts: &Parts,
    source: Option<std::net::IpAddr>,
    now: Instant,
    outcome: &str,
    message: &'static str,
) -> ApiError {
    let first = source.is_none_or(|ip| state.auth_failures.record(ip, now) == Failure::AuditNow);
    if first {
        let origin = source.map_or("unknown".into(), |ip| ip.to_string());
        let nobody = Actor { id: "unknown", role: ActorRole::Unauthenticated, origin: &origin, merchant: None };
        audit_or_log(state, &nobody.did("auth", outcome, parts.uri.path())).await;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}
