//! Node to node: a security code for a processor whose detokenize reached another node. The
//! code lives only in the memory of the node that captured the card (DESIGN.md: never in the
//! database, so never in a `NOTIFY` either, whose queue PostgreSQL may spill to disk). The
//! node that took the detokenize asks every other live node, at the API URL it advertised
//! (`nodes.api`, `http.advertise`), with `POST /internal/security-code`; the node holding the
//! code releases it once, audited, as it would to a processor.
//!
//! Requests are signed, not keyed: `Tonewall-Peer: key=<id>,t=<unix s>,node=<id>,mac=<hex>`,
//! the MAC an HMAC-SHA256 over the time, the sending node and the body, under a key derived
//! from data key `<id>` (which only processes holding the KEK can unwrap). A request older or
//! newer than `MAX_SKEW_S` is refused, and the code is released at most once, so a replayed
//! request gets nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Shared;
use crate::api::AppState;
use crate::api::auth::Role;
use crate::vault::crypto::{SecretKey, hex};
use crate::vault::store::Backend;
use crate::vault::{Actor, ActorRole, audit};

pub const PATH: &str = "/internal/security-code";
const HEADER: &str = "tonewall-peer";
const MAX_SKEW_S: i64 = 30;
/// How long one peer may take to answer: a code is in memory, so milliseconds.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerAuthError {
    #[error("no Tonewall-Peer header, or one that does not parse")]
    Malformed,
    #[error("the request is {0} s away from this node's clock")]
    Stale(i64),
    #[error("the signing key is unknown here")]
    UnknownKey,
    #[error("the signature does not match")]
    BadMac,
}

/// A signed request's header fields.
#[derive(Debug, PartialEq, Eq)]
struct Signed {
    key_id: i64,
    at_s: i64,
    node: String,
    mac: String,
}

fn mac(key: &SecretKey, at_s: i64, node: &str, body: &[u8]) -> String {
    // Invariant: HMAC accepts keys of any length.
    let mut derive = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.expose()).expect("any key length");
    // Its own label: a data key encrypts cards; what is derived here only signs requests.
    derive.update(b"tonewall:node-to-node:v1");
    let peer_key = derive.finalize().into_bytes();
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&peer_key).expect("any key length");
    let at = at_s.to_string();
    for field in [at.as_bytes(), node.as_bytes(), body] {
        m.update(&(field.len() as u64).to_le_bytes());
        m.update(field);
    }
    hex(&m.finalize().into_bytes())
}

/// The header value for `body`, sent by `node` at `at_s` under data key `key_id`.
pub fn sign(key_id: i64, key: &SecretKey, at_s: i64, node: &str, body: &[u8]) -> String {
    format!("key={key_id},t={at_s},node={node},mac={}", mac(key, at_s, node, body))
}

fn parse(header: &str) -> Option<Signed> {
    let mut fields = header.split(',').map(|f| f.split_once('='));
    let mut next = |name: &str| match fields.next() {
        Some(Some((k, v))) if k == name => Some(v.to_string()),
        _ => None,
    };
    let signed = Signed {
        key_id: next("key")?.parse().ok()?,
        at_s: next("t")?.parse().ok()?,
        node: next("node")?,
        mac: next("mac")?,
    };
    fields.next().is_none().then_some(signed)
}

/// Checks a request's signature; the sending node's id.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    now_s: i64,
    key: impl Fn(i64) -> Option<SecretKey>,
) -> Result<String, PeerAuthError> {
    let s = header.and_then(parse).ok_or(PeerAuthError::Malformed)?;
    let skew = s.at_s.saturating_sub(now_s);
    if skew.abs() > MAX_SKEW_S {
        return Err(PeerAuthError::Stale(skew));
    }
    let key = key(s.key_id).ok_or(PeerAuthError::UnknownKey)?;
    let expected = mac(&key, s.at_s, &s.node, body);
    // Compared in constant time: the MAC is a secret until it matches.
    if subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), s.mac.as_bytes()).into() {
        Ok(s.node)
    } else {
        Err(PeerAuthError::BadMac)
    }
}

fn unix_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Serialize, Deserialize)]
struct CodeRequest {
    token: String,
    /// Who asked the node that forwards (for the holder's audit record).
    actor: String,
    /// That key's merchant, which the forwarding node checked owns the token.
    #[serde(default)]
    merchant: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CodeAnswer {
    security_code: String,
}

/// Asks every other live node for the security code of `token`; the first that holds it
/// releases it. None on SQLite (one node) and when no node has it.
pub async fn security_code_elsewhere(
    shared: &Shared,
    token: &str,
    actor: &str,
    merchant: &crate::merchant::MerchantId,
) -> Option<String> {
    if shared.vault.backend() != Backend::Postgres {
        return None;
    }
    let me = shared.sessions.node().as_str();
    let peers: Vec<(String,)> = sqlx::query_as("SELECT api FROM nodes WHERE id <> $1 AND api IS NOT NULL")
        .bind(me)
        .fetch_all(shared.vault.pool())
        .await
        .map_err(|e| tracing::warn!(error = %e, "cannot list the other nodes"))
        .ok()?;
    let request =
        CodeRequest { token: token.to_string(), actor: actor.to_string(), merchant: Some(merchant.to_string()) };
    let body = serde_json::to_vec(&request).ok()?;
    let (key_id, key) = shared.vault.keys().current();
    let header = sign(key_id, &key, unix_s(), me, &body);
    let asks = peers.into_iter().map(|(api,)| {
        let (body, header) = (body.clone(), header.clone());
        tokio::task::spawn_blocking(move || ask(&api, &header, body))
    });
    for answer in futures_util::future::join_all(asks).await {
        if let Ok(Some(code)) = answer {
            return Some(code);
        }
    }
    None
}

fn ask(api: &str, header: &str, body: Vec<u8>) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PEER_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{PATH}", api.trim_end_matches('/'));
    let mut resp = agent
        .post(&url)
        .header(HEADER, header)
        .header("content-type", "application/json")
        .send(&body[..])
        .map_err(|e| tracing::warn!(node = api, error = %e, "a node did not answer for a security code"))
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_json::<CodeAnswer>().ok().map(|a| a.security_code)
}

/// `POST /internal/security-code`: another node's request for a code this node holds.
pub async fn release(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let shared = &state.node;
    let header = headers.get(HEADER).and_then(|v| v.to_str().ok());
    let keys = |id: i64| shared.vault.keys().get(id);
    let mut from = verify(header, &body, unix_s(), keys);
    if from == Err(PeerAuthError::UnknownKey) {
        // A data key another node made since this one loaded its keys.
        if shared.vault.keys().refresh(shared.vault.pool()).await.is_ok() {
            from = verify(header, &body, unix_s(), keys);
        }
    }
    let from = match from {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!(error = %e, "a security-code request from a node refused");
            return StatusCode::UNAUTHORIZED.into_response();
        }
    };
    let Ok(req) = serde_json::from_slice::<CodeRequest>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if !shared.vault.holds_security_code(&req.token, std::time::Instant::now()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Audited before it is released, as a detokenize is: no record, no code.
    let origin = format!("node {from}");
    let merchant = req.merchant.as_deref();
    let actor = Actor { id: &req.actor, role: ActorRole::Key(Role::Processor), origin: &origin, merchant };
    let event = audit::Event {
        detail: "released to the node that took the detokenize",
        ..actor.did("security_code.release", "released", &req.token)
    };
    if let Err(e) = shared.vault.audit(&event).await {
        tracing::error!(error = %e, "audit record not written: security code kept");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match shared.vault.take_security_code(&req.token, std::time::Instant::now()) {
        Some(code) => Json(CodeAnswer { security_code: code.expose().to_string() }).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_nothing_else_does() {
        let (key, other) = (SecretKey::generate(), SecretKey::generate());
        let lookup = |id: i64| (id == 3).then(|| SecretKey::from_bytes(key.expose()).unwrap());
        let body = br#"{"token":"tok_x","actor":"key-1"}"#;
        let header = sign(3, &key, 1_000, "node-a", body);
        assert_eq!(verify(Some(&header), body, 1_010, lookup), Ok("node-a".to_string()));
        // Another body, node, time or key; too old; malformed; none.
        assert_eq!(
            verify(Some(&header), br#"{"token":"tok_y","actor":"key-1"}"#, 1_000, lookup),
            Err(PeerAuthError::BadMac)
        );
        let other_node = header.replace("node=node-a", "node=node-b");
        assert_eq!(verify(Some(&other_node), body, 1_000, lookup), Err(PeerAuthError::BadMac));
        let moved = header.replace("t=1000", "t=1001");
        assert_eq!(verify(Some(&moved), body, 1_000, lookup), Err(PeerAuthError::BadMac));
        let forged = sign(3, &other, 1_000, "node-a", body);
        assert_eq!(verify(Some(&forged), body, 1_000, lookup), Err(PeerAuthError::BadMac));
        assert_eq!(
            verify(Some(&sign(4, &key, 1_000, "node-a", body)), body, 1_000, lookup),
            Err(PeerAuthError::UnknownKey)
        );
        assert_eq!(verify(Some(&header), body, 1_031, lookup), Err(PeerAuthError::Stale(-31)));
        assert_eq!(verify(Some(&header), body, 969, lookup), Err(PeerAuthError::Stale(31)));
        assert_eq!(verify(Some("key=3,t=1000"), body, 1_000, lookup), Err(PeerAuthError::Malformed));
        assert_eq!(verify(Some(&format!("{header},x=1")), body, 1_000, lookup), Err(PeerAuthError::Malformed));
        assert_eq!(verify(None, body, 1_000, lookup), Err(PeerAuthError::Malformed));
    }
}
