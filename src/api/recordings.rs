//! `/v1/recordings` for QA reviewers (role `qa`): search and page through recordings, read
//! their metadata (masked spans included), and replay them as WAV with HTTP range requests
//! (RFC 9110 §14) so a browser's player can seek. Each replay is audited first and refused
//! when the audit record cannot be written (PCI DSS 10.7.2). A browser's `<audio>` cannot
//! send a bearer key, so a recording's metadata carries an `audio_url` signed for the
//! reviewer who asked (HMAC-SHA256 over the recording, the reviewer and the expiry), good
//! for `AUDIO_URL_LIFETIME`: no key ever rides in a URL.

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::Role;
use super::{ApiError, AppState, Caller};
use crate::merchant::MerchantId;
use crate::recording::{self, Metadata};
use crate::vault::{Actor, ActorRole};

const QA: &[Role] = &[Role::Qa];

/// How long a signed audio URL plays.
const AUDIO_URL_LIFETIME_S: i64 = 300;

type UrlMac = hmac::Hmac<sha2::Sha256>;

fn url_mac(key: &[u8; 32], recording: &str, reviewer: &str, expires: i64) -> UrlMac {
    use hmac::Mac as _;
    // A 32-byte key is always a valid HMAC key.
    let mut mac = <UrlMac as hmac::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in [recording, reviewer, &expires.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The signed URL that plays `recording` for `reviewer` until a few minutes from now.
fn audio_url(state: &AppState, recording: &str, reviewer: &str) -> String {
    use hmac::Mac as _;
    let expires = unix_now() + AUDIO_URL_LIFETIME_S;
    let sig = crate::vault::crypto::hex(&url_mac(&state.url_key, recording, reviewer, expires).finalize().into_bytes());
    format!("/v1/recordings/{recording}/audio?by={reviewer}&expires={expires}&sig={sig}")
}

/// The query of a signed audio URL (empty when the player sends a key instead).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    by: Option<String>,
    expires: Option<i64>,
    sig: Option<String>,
}

impl Signed {
    fn is_empty(&self) -> bool {
        self.by.is_none() && self.expires.is_none() && self.sig.is_none()
    }

    /// The reviewer it was signed for, if the signature holds and has not expired.
    fn reviewer(&self, state: &AppState, recording: &str) -> Option<&str> {
        use hmac::Mac as _;
        let (by, expires, sig) = (self.by.as_deref()?, self.expires?, self.sig.as_deref()?);
        let sig = (0..sig.len())
            .step_by(2)
            .map(|i| sig.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()?;
        let mac = url_mac(&state.url_key, recording, by, expires);
        (expires > unix_now() && mac.verify_slice(&sig).is_ok()).then_some(by)
    }
}

/// A recording's metadata, with the URL its reviewer's player streams from.
#[derive(Serialize)]
pub struct Shown {
    #[serde(flatten)]
    metadata: Metadata,
    audio_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Unix milliseconds, inclusive.
    from: Option<i64>,
    /// Unix milliseconds, exclusive.
    to: Option<i64>,
    reference: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

#[derive(Serialize)]
pub struct Page {
    recordings: Vec<Metadata>,
    page: i64,
    per_page: i64,
    total: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    reference: String,
}

/// Erasure on request (role admin): every recording of a reference, file and metadata,
/// before its retention ends; audited with how many went.
pub async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "give the reference whose recordings go: ?reference=…");
    let Query(q) = query.map_err(|_| bad())?;
    if q.reference.is_empty() || q.reference.len() > 200 || crate::capture::card::looks_like_card_number(&q.reference) {
        return Err(bad());
    }
    let which = recording::Purge::Reference(Some(&caller.merchant), &q.reference);
    let n = recording::purge(&state.vault, &state.data_dir, which).await.map_err(unavailable)?;
    let detail = format!("{n} recordings of the reference, on request");
    caller.audit_detail(&state, "recording.purge", "deleted", &q.reference, &detail).await;
    Ok(Json(serde_json::json!({ "reference": q.reference, "deleted": n })))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "recording store failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the recording store could not be read")
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    caller.require(QA)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(50).clamp(1, 200);
    let (from, to, reference) = (q.from, q.to, q.reference.as_deref());
    let (recordings, total) =
        recording::list(state.vault.pool(), &caller.merchant, from, to, reference, page, per_page)
            .await
            .map_err(unavailable)?;
    Ok(Json(Page { recordings, page, per_page, total }))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Shown>, ApiError> {
    caller.require(QA)?;
    let metadata = recording::metadata(state.vault.pool(), &id, &caller.merchant)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such recording"))?;
    let audio_url = audio_url(&state, &metadata.id, &caller.key_id);
    Ok(Json(Shown { metadata, audio_url }))
}

/// Plays a recording for a QA reviewer's key, or for the reviewer a signed URL names.
pub async fn audio(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    Query(signed): Query<Signed>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let origin = from.ip().to_string();
    // A signed URL was issued by `show`, for a recording of the reviewer's merchant.
    let row = recording::row_merchant(state.vault.pool(), &id).await.map_err(unavailable)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such recording");
    let actor = match (&caller, signed.reviewer(&state, &id)) {
        (Ok(caller), _) => {
            caller.require(QA)?;
            if row.as_ref() != Some(&caller.merchant) {
                return Err(not_found());
            }
            caller.actor()
        }
        (Err(_), Some(reviewer)) => {
            let merchant = row.as_ref().map(MerchantId::as_str);
            Actor { id: reviewer, role: ActorRole::Key(Role::Qa), origin: &origin, merchant }
        }
        (Err(_), None) if !signed.is_empty() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this audio URL is not signed for this recording or has expired",
            ));
        }
        (Err(e), None) => return Err(ApiError::new(e.status, e.message.clone())),
    };
    if row.is_none() {
        return Err(not_found());
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let detail = if range.is_empty() { "whole" } else { range };
    let event = crate::vault::audit::Event { detail, ..actor.did("recording.replay", "played", &id) };
    if let Err(e) = state.vault.audit(&event).await {
        tracing::error!(error = %e, "audit record not written: replay refused");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit trail cannot be written, so nothing is played",
        ));
    }
    let wav = recording::wav(&state.vault, &state.data_dir, &id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such recording"))?;
    let total = wav.len() as u64;
    let mut response = match byte_range(range, total) {
        Range::Whole => Response::new(Body::from(wav)),
        Range::Part(start, end) => {
            let mut r = Response::new(Body::from(wav[start as usize..=end as usize].to_vec()));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let value = format!("bytes {start}-{end}/{total}");
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).map_err(unavailable)?);
            r
        }
        Range::Unsatisfiable => {
            let mut r = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the recording").into_response();
            let value = format!("bytes */{total}");
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).map_err(unavailable)?);
            return Ok(r);
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range (first-last, first-, or -suffix); anything else is the whole body.
fn byte_range(header: &str, total: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Whole };
    if spec.contains(',') {
        return Range::Whole; // several ranges: answered whole, as RFC 9110 allows
    }
    let Some((first, last)) = spec.split_once('-') else { return Range::Whole };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(f), Ok(l)) if f <= l => Some((f, l.min(total.saturating_sub(1)))),
        (Ok(f), Err(_)) if last.is_empty() => Some((f, total.saturating_sub(1))),
        (Err(_), Ok(n)) if first.is_empty() && n > 0 => Some((total.saturating_sub(n), total.saturating_sub(1))),
        _ => return Range::Whole,
    };
    match parsed {
        Some((f, l)) if f < total && f <= l => Range::Part(f, l),
        _ => Range::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("", 100), Range::Whole);
        assert_eq!(byte_range("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(byte_range("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=50-500", 100), Range::Part(50, 99));
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(byte_range("bytes=x-y", 100), Range::Whole);
        assert_eq!(byte_range("items=0-1", 100), Range::Whole);
    }
}
