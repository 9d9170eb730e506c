//! `/v1/calls`: the calls in progress, and starting a capture on a call routed inline.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::capture_options;
use super::sessions::{AGENT_ROLES, until_view};
use super::{ApiError, AppState, Caller};
use tokio::sync::oneshot;

use std::time::Duration;

use crate::call::AfterCapture;
use crate::calls::{CallId, CallsError, CaptureAt, CaptureRefused, CaptureRequest};
use crate::runtime::cluster::{SessionCommand, forward};
use crate::session::{Holder, NewSession, SessionError, SessionState, SessionView};

/// Agents see their team's calls (`crate::owner`) and the last four digits of a caller's
/// number, enough to find their call; admins see every call, whole numbers and SIP Call-IDs.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(AGENT_ROLES)?;
    let calls = state.calls.list(&caller.viewer()).await.map_err(|e| {
        tracing::error!(error = %e, "calls not listed");
        ApiError {
            retry_after_s: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the call store is unavailable")
        }
    })?;
    Ok(Json(json!({ "calls": calls })).into_response())
}

/// An inline capture has no options of its own: the body is all capture options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartCapture {}

/// Starts a capture on an answered inline call: a session is made for it (same fields, view
/// and events as any session), the caller is prompted, and the agent's audio is masked.
pub async fn capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(AGENT_ROLES)?;
    super::lockdown::refuse_if_locked(&state).await?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    let (options, StartCapture {}) = capture_options::split(body, &[]).map_err(bad)?;
    let defaults = capture_options::Defaults::for_merchant(&state, &caller.merchant).await?;
    let (plan, reference) = options.plan(&defaults).map_err(bad)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such call");
    let call_id = CallId::parse(&id).ok_or_else(not_found)?;
    let viewer = caller.viewer();
    let at = state.calls.capture_target(&call_id, &viewer).await.map_err(|e| match e {
        CallsError::NotFound => not_found(),
        CallsError::Store(_) => ApiError::sessions(SessionError::Store(e.to_string())),
        e => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    })?;
    let new =
        NewSession { plan, reference, agent_uri: None, after_capture: AfterCapture::Bridge, owner: viewer.owner() };
    let refusal = |why: CaptureRefused| match why {
        CaptureRefused::Busy => ApiError::new(StatusCode::CONFLICT, why.to_string()),
        CaptureRefused::SessionGone | CaptureRefused::CallEnded => not_found(),
    };
    let view = match at {
        CaptureAt::Here(captures) => {
            let view = state.sessions.create(new, &state.sip_host, Holder::Here).await.map_err(ApiError::sessions)?;
            // The call's task binds the session and starts the capture in one step, or says why not.
            let (reply, answer) = oneshot::channel();
            let asked = captures.send(CaptureRequest { session: view.id.clone(), reply }).await;
            let refused = match (asked, answer.await) {
                (Ok(()), Ok(Ok(()))) => None,
                (Ok(()), Ok(Err(why))) => Some(why),
                _ => Some(CaptureRefused::CallEnded),
            };
            if let Some(why) = refused {
                let _ = state.sessions.refuse_held(&view.id, why.code(), why.to_string());
                return Err(refusal(why));
            }
            state.sessions.held_view(&view.id).unwrap_or(view)
        }
        CaptureAt::Node(node) => {
            // Made here, held by the call's node, which is told to adopt it and start.
            let holder = Holder::Node(node.clone());
            let view = state.sessions.create(new, &state.sip_host, holder).await.map_err(ApiError::sessions)?;
            let command = SessionCommand::StartCapture { call: call_id.as_str().to_string() };
            forward(&state.node, node, &view.id, command).await.map_err(ApiError::sessions)?;
            let started = |v: &SessionView| v.state != SessionState::Waiting;
            let view = until_view(&state, &view.id, FORWARDED_CAPTURE_WAIT, "start the capture", started).await?;
            if view.state != SessionState::Capturing {
                let why = view.reason.as_deref().and_then(CaptureRefused::from_code);
                return Err(refusal(why.unwrap_or(CaptureRefused::CallEnded)));
            }
            view
        }
    };
    tracing::info!(call = call_id.as_str(), session = view.id.as_str(), key = caller.key_id, "capture started");
    caller.audit(&state, "call.capture", "started", view.id.as_str()).await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// How long the node holding a call has to start (or refuse) a capture asked of it, which
/// it does within milliseconds.
const FORWARDED_CAPTURE_WAIT: Duration = Duration::from_secs(3);
