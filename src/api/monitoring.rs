//! What operators' tools read: `/metrics` (Prometheus text format, `crate::metrics`) and
//! `/readyz` (is this node fit to take calls now: database, KEK, audit trail, RTP ports,
//! not draining). Both answer only `http.monitoring_from`; elsewhere they do not exist (404).
//! `/healthz`, the liveness probe, answers anyone and checks nothing but the process.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::endpoint::Admitting;

/// A check that has not answered by then has failed: a probe must not hang on a stalled
/// database or HSM.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

fn allowed(state: &AppState, from: SocketAddr) -> Result<(), ApiError> {
    let ip = from.ip().to_canonical();
    match state.node.config.http.monitoring_from.iter().any(|net| net.contains(&ip)) {
        true => Ok(()),
        false => Err(ApiError::new(StatusCode::NOT_FOUND, "no such route")),
    }
}

pub async fn metrics(State(state): State<AppState>, ConnectInfo(from): ConnectInfo<SocketAddr>) -> Response {
    if let Err(e) = allowed(&state, from) {
        return e.into_response();
    }
    let snapshot = state.node.metrics_snapshot().await;
    let body = crate::metrics::encode(&state.node.metrics, state.vault.metrics(), &snapshot);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// One check's result: "ok", or what failed (never a secret: errors name what, not values).
#[derive(Debug, Serialize)]
struct Checks {
    database: String,
    kek: String,
    audit: String,
    rtp_ports: String,
    admitting: String,
}

#[derive(Debug, Serialize)]
struct Ready {
    ready: bool,
    checks: Checks,
}

pub async fn readyz(State(state): State<AppState>, ConnectInfo(from): ConnectInfo<SocketAddr>) -> Response {
    if let Err(e) = allowed(&state, from) {
        return e.into_response();
    }
    let verdict = |r: Result<(), crate::vault::VaultError>| r.map_or_else(|e| e.to_string(), |()| "ok".into());
    let (database, kek, audit) = match tokio::time::timeout(CHECK_TIMEOUT, state.vault.readiness()).await {
        Ok(r) => (verdict(r.database), verdict(r.kek), verdict(r.audit)),
        Err(_) => {
            let late = || format!("no answer within {} s", CHECK_TIMEOUT.as_secs());
            (late(), late(), late())
        }
    };
    let rtp_ports = match state.node.rtp_ports_free().await {
        true => "ok".into(),
        false => "the RTP port range is used up".into(),
    };
    let admitting = match state.node.admitting() {
        Admitting::Open => "ok".into(),
        Admitting::Draining { .. } => "draining: new calls are refused".into(),
    };
    let checks = Checks { database, kek, audit, rtp_ports, admitting };
    let ready = [&checks.database, &checks.kek, &checks.audit, &checks.rtp_ports, &checks.admitting]
        .iter()
        .all(|c| c.as_str() == "ok");
    if !ready {
        tracing::warn!(?checks, "not ready");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Ready { ready, checks })).into_response()
}
