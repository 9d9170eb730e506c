//! `/v1/admin/prompts` (role admin): custom recordings over the built-in prompts, per
//! language and clip (`crate::runtime::prompts::PromptLibrary`). A WAV is checked before it
//! is kept (8 kHz mono 16-bit PCM, 0.1 to 30 s, not silent) and refused with the reason
//! otherwise; removing one brings the built-in clip back. Each change is audited. A merchant's
//! uploads play on its own calls; `default`'s on every merchant's, under their own.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::auth::Role;
use super::caller::Caller;
use super::{ApiError, AppState};
use crate::capture::plan::Language;
use crate::capture::speech::PromptId;
use crate::runtime::prompts::PromptError;

const ADMIN: &[Role] = &[Role::Admin];

fn prompt_error(e: PromptError) -> ApiError {
    match e {
        PromptError::Store(e) => {
            tracing::error!(error = %e, "prompt store unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the prompt store is unavailable")
        }
        e @ (PromptError::Bad { .. } | PromptError::UnknownClip { .. }) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        e @ PromptError::Missing { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn language(code: &str) -> Result<Language, ApiError> {
    Language::parse(code).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such language: en, es, fr or de"))
}

/// The languages, the prompt names, and the uploads in force.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let uploads = state.node.prompts.uploads(&caller.merchant).await.map_err(prompt_error)?;
    let languages: Vec<&str> = Language::ALL.iter().map(|l| l.code()).collect();
    let prompts: Vec<&str> = PromptId::ALL.iter().map(|p| p.name()).collect();
    Ok(Json(json!({ "languages": languages, "prompts": prompts, "uploads": uploads })))
}

pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(ADMIN)?;
    let lang = language(&code)?;
    let resource = format!("{}/{}", lang.code(), name.chars().take(40).collect::<String>());
    let custom = match state.node.prompts.upload(&caller.merchant, lang, &name, &body, &caller.key_id).await {
        Ok(c) => c,
        Err(e) => {
            let refused = prompt_error(e);
            caller.audit_detail(&state, "prompt.upload", "refused", &resource, &refused.message).await;
            return Err(refused);
        }
    };
    caller.audit_detail(&state, "prompt.upload", "stored", &resource, &format!("sha256 {}", custom.sha256)).await;
    Ok((StatusCode::CREATED, Json(json!(custom))))
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let lang = language(&code)?;
    if !state.node.prompts.remove(&caller.merchant, lang, &name).await.map_err(prompt_error)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no upload for this clip: the built-in one plays"));
    }
    caller.audit(&state, "prompt.remove", "removed", &format!("{}/{name}", lang.code())).await;
    Ok(Json(json!({ "language": lang.code(), "name": name, "plays": "built_in" })))
}
