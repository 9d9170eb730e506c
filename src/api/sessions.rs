//! `/v1/sessions`: agents create payment sessions, watch their masked progress, cancel them.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Role;
use super::{ApiError, AppState, Caller, capture_options};
use crate::call::{AfterCapture, Command};
use crate::capture::collector::FieldName;
use crate::runtime::cluster::{SessionCommand, forward};
use crate::session::{Change, Holder, NewSession, Reach, SessionError, SessionId, SessionView};
use crate::targets::{AllowedTargets, Verdict};

pub(super) const AGENT_ROLES: &[Role] = &[Role::Agent, Role::Admin];

/// A session's own options; the rest of the body is its capture (`capture_options`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    agent_uri: Option<String>,
    /// "bridge" (the default with an agent_uri), "transfer" or "hangup" (the default without).
    after_capture: Option<String>,
    /// Where "transfer" sends the caller; the agent_uri when absent.
    transfer_uri: Option<String>,
    /// Also return a `desktop_url` whose token opens this session alone, for a while.
    #[serde(default)]
    embed: bool,
}

const SESSION_KEYS: &[&str] = &["agent_uri", "after_capture", "transfer_uri", "embed"];

/// A new session, and for `embed`, the desktop URL that opens it.
#[derive(serde::Serialize)]
pub struct Created {
    #[serde(flatten)]
    view: SessionView,
    /// `/desktop#session=…&token=…`: the token rides in the fragment, which browsers never
    /// send to a server.
    #[serde(skip_serializing_if = "Option::is_none")]
    desktop_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embed_expires_in_s: Option<u64>,
}

fn sip_uri_ok(uri: &str) -> bool {
    uri.len() <= 256
        && (uri.starts_with("sip:") || uri.starts_with("sips:"))
        && crate::targets::transport_of(uri).is_some()
        && uri.contains('@')
        && !uri.contains(['<', '>', ' ', '\r', '\n', '"'])
}

/// What happens after capture, from the request's `after_capture` and URIs.
fn after_capture(req: &CreateSession) -> Result<AfterCapture, String> {
    match req.after_capture.as_deref() {
        None if req.agent_uri.is_some() => Ok(AfterCapture::Bridge),
        None | Some("hangup") => Ok(AfterCapture::Hangup),
        Some("bridge") if req.agent_uri.is_some() => Ok(AfterCapture::Bridge),
        Some("bridge") => Err("after_capture \"bridge\" needs an agent_uri".into()),
        Some("transfer") => match req.transfer_uri.as_ref().or(req.agent_uri.as_ref()) {
            Some(uri) => Ok(AfterCapture::Transfer(uri.clone())),
            None => Err("after_capture \"transfer\" needs a transfer_uri or an agent_uri".into()),
        },
        Some(_) => Err("after_capture must be \"bridge\", \"transfer\" or \"hangup\"".into()),
    }
}

fn validate(req: &CreateSession, allowed: &AllowedTargets) -> Result<(), String> {
    // tonewall resolves an agent_uri itself (and checks the address then); a transfer_uri
    // goes to the caller's side in a REFER, so it must be allowed as written.
    let agent_is_transfer_target = req.after_capture.as_deref() == Some("transfer") && req.transfer_uri.is_none();
    for (name, uri, resolved_here) in
        [("agent_uri", &req.agent_uri, !agent_is_transfer_target), ("transfer_uri", &req.transfer_uri, false)]
    {
        let Some(uri) = uri.as_deref() else { continue };
        if !sip_uri_ok(uri) {
            return Err(format!(
                "{name} must be a sip: or sips: URI such as sip:agent@10.0.0.5:5060 (transport udp, tcp or tls)"
            ));
        }
        match allowed.check_uri(uri) {
            Verdict::Allowed => {}
            Verdict::IfResolvedInside if resolved_here => {}
            Verdict::IfResolvedInside | Verdict::Refused => {
                return Err(format!("{name} names a host outside sip.allowed_targets"));
            }
        }
    }
    after_capture(req).map(|_| ())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(AGENT_ROLES)?;
    super::lockdown::refuse_if_locked(&state).await?;
    if let Some(e) = ApiError::draining(&state) {
        return Err(e);
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    let (options, req): (_, CreateSession) = capture_options::split(body, SESSION_KEYS).map_err(bad)?;
    let defaults = capture_options::Defaults::for_merchant(&state, &caller.merchant).await?;
    let (plan, reference) = options.plan(&defaults).map_err(bad)?;
    validate(&req, &state.allowed_targets).map_err(bad)?;
    // Checked by `validate` above.
    let after = after_capture(&req).unwrap_or(AfterCapture::Hangup);
    let new =
        NewSession { plan, reference, agent_uri: req.agent_uri, after_capture: after, owner: caller.viewer().owner() };
    let view = state.sessions.create(new, &state.sip_host, Holder::Nobody).await.map_err(ApiError::sessions)?;
    tracing::info!(session = view.id.as_str(), key = caller.key_id, "session created");
    caller.audit(&state, "session.create", "created", view.id.as_str()).await;
    let mut created = Created { view, desktop_url: None, embed_expires_in_s: None };
    if req.embed {
        let id = &created.view.id;
        let until = std::time::SystemTime::now() + state.embed_ttl;
        let token = state.sessions.embed_token(id, until).await.map_err(ApiError::sessions)?;
        created.desktop_url = token.map(|t| format!("/desktop#session={}&token={t}", id.as_str()));
        created.embed_expires_in_s = Some(state.embed_ttl.as_secs());
        caller.audit(&state, "session.embed", "issued", id.as_str()).await;
    }
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The session `raw` names, if it exists and `caller` may see it: someone else's session
/// gets the same 404 as none at all (`crate::owner`), and so does any session but its own
/// for an embed token.
async fn owned_session(state: &AppState, caller: &Caller, raw: &str) -> Result<SessionId, ApiError> {
    caller.require_for_session(AGENT_ROLES)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such session");
    let id = SessionId::parse(raw).ok_or_else(not_found)?;
    if caller.may_see_session(state, &id).await.map_err(ApiError::sessions)? { Ok(id) } else { Err(not_found()) }
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let id = owned_session(&state, &caller, &id).await?;
    let view = state.sessions.view(&id).await.map_err(ApiError::sessions)?;
    view.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))
}

/// How long the API waits for another node to carry out a cancel it forwarded.
const FORWARDED_CANCEL_WAIT: Duration = Duration::from_secs(3);

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let id = owned_session(&state, &caller, &id).await?;
    let view = match state.sessions.cancel(&id).await.map_err(ApiError::sessions)? {
        Reach::Here(view) => {
            state.calls.tell_session(&id, Command::Cancel);
            *view
        }
        Reach::HeldBy(node) => {
            forward(&state.node, node, &id, SessionCommand::Cancel).await.map_err(ApiError::sessions)?;
            until_view(&state, &id, FORWARDED_CANCEL_WAIT, "confirm the cancel", |v| v.state.is_final()).await?
        }
    };
    tracing::info!(session = id.as_str(), key = caller.key_id, "session cancelled");
    caller.audit(&state, "session.cancel", "cancelled", id.as_str()).await;
    Ok(Json(view))
}

/// The view once `done` holds of it: the node holding the call acts within milliseconds of
/// hearing a forwarded command; after `wait`, 504 saying that it did not do `what` in time.
pub(super) async fn until_view(
    state: &AppState,
    id: &SessionId,
    wait: Duration,
    what: &str,
    done: impl Fn(&SessionView) -> bool,
) -> Result<SessionView, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = state.sessions.view(id).await.map_err(ApiError::sessions)?;
        let view = view.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))?;
        if done(&view) {
            return Ok(view);
        }
        if tokio::time::Instant::now() >= deadline {
            let message = format!("the node holding the call did not {what} in time");
            return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, message));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn restart_field(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, field)): Path<(String, String)>,
) -> Result<Json<SessionView>, ApiError> {
    let id = owned_session(&state, &caller, &id).await?;
    let field = FieldName::parse(&field).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such field: pan, expiry, cvv, postal_code, routing_number, account_number, account_type or confirm",
        )
    })?;
    let view = match state.sessions.restart_field(&id, field).await.map_err(ApiError::sessions)? {
        Reach::Here(view) => {
            // A race with the caller's own keys can make it moot, which is harmless.
            state.calls.tell_session(&id, Command::RestartField(field));
            *view
        }
        Reach::HeldBy(node) => {
            forward(&state.node, node, &id, SessionCommand::RestartField(field)).await.map_err(ApiError::sessions)?;
            state
                .sessions
                .view(&id)
                .await
                .map_err(ApiError::sessions)?
                .ok_or_else(|| ApiError::sessions(SessionError::NotFound))?
        }
    };
    caller.audit(&state, "session.field_restart", "requested", id.as_str()).await;
    Ok(Json(view))
}

/// The largest WebSocket message or frame a client may send; a larger one ends the stream.
const MAX_CLIENT_MESSAGE: usize = 4096;

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = owned_session(&state, &caller, &id).await?;
    let ws =
        ws.map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "this route is a WebSocket: send an upgrade request"))?;
    let (view, rx) = state.sessions.subscribe(&id).await.map_err(ApiError::sessions)?;
    // Clients only close or ping: nothing they send needs more than a few bytes. A browser
    // that sent its key as the `bearer.…` subprotocol is answered with `tonewall`.
    let ws = ws.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE).protocols(["tonewall"]);
    Ok(ws.on_upgrade(move |socket| stream(socket, view, rx)))
}

/// Sends the current view, then every change, until the client leaves or the call ends.
async fn stream(
    mut socket: WebSocket,
    view: SessionView,
    mut rx: tokio::sync::broadcast::Receiver<crate::session::SessionUpdate>,
) {
    let first = serde_json::json!({ "event": "snapshot", "session": view });
    if socket.send(Message::Text(first.to_string().into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Ok(u) => {
                    let text = serde_json::to_string(&u).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                    if matches!(u.event, Change::CallEnded | Change::NodeLost) {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
