//! The agent desktop's side of the HTTP API, as a small client: create a session, read it
//! back. The demo and the load generator drive tonewall through it, as a desktop would.

use serde_json::Value;

use super::SoftphoneError;

/// `POST /v1/sessions` with `body`; the created session.
pub async fn create_session(base: &str, key: &str, body: Value) -> Result<Value, SoftphoneError> {
    call(format!("{base}/v1/sessions"), key, Some(body)).await
}

/// `GET /v1/sessions/{id}`.
pub async fn session(base: &str, key: &str, id: &str) -> Result<Value, SoftphoneError> {
    call(format!("{base}/v1/sessions/{id}"), key, None).await
}

async fn call(url: String, key: &str, body: Option<Value>) -> Result<Value, SoftphoneError> {
    let auth = format!("Bearer {key}");
    let blocking = move || -> Result<Value, ureq::Error> {
        let mut resp = match body {
            Some(b) => ureq::post(&url).header("Authorization", &auth).send_json(b)?,
            None => ureq::get(&url).header("Authorization", &auth).call()?,
        };
        resp.body_mut().read_json::<Value>()
    };
    tokio::task::spawn_blocking(blocking)
        .await
        .map_err(|e| SoftphoneError::Http(e.to_string()))?
        .map_err(|e| SoftphoneError::Http(e.to_string()))
}
