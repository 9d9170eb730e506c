//! The HTTP API through a real socket: authentication and roles, bad input, the session
//! life cycle and its WebSocket.

mod common;

use common::{TestServer, http};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonewall::api::auth::Role;

const BODY: &str =
    r#"{"fields":["pan","expiry","cvv"],"reference":"order-123","agent_uri":"sip:agent@127.0.0.1:5070"}"#;

#[tokio::test]
async fn keys_and_roles_guard_every_route() {
    let t = TestServer::start().await;
    let agent = t.key(Role::Agent).await;
    let processor = t.key(Role::Processor).await;
    let url = format!("{}/v1/sessions", t.base);
    let (s, v) = http("POST", &url, None, Some(BODY)).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"], "missing bearer key");
    assert_eq!(http("POST", &url, Some("twk_notakey"), Some(BODY)).await.0, 401);
    let (s, v) = http("POST", &url, Some(&processor), Some(BODY)).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = http("POST", &url, Some(&agent), Some(BODY)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    for path in [format!("/v1/sessions/{id}"), format!("/v1/sessions/{id}/cancel")] {
        let method = if path.ends_with("cancel") { "POST" } else { "GET" };
        assert_eq!(http(method, &format!("{}{path}", t.base), None, None).await.0, 401, "{path}");
        assert_eq!(http(method, &format!("{}{path}", t.base), Some(&processor), None).await.0, 403, "{path}");
    }
    assert_eq!(http("GET", &format!("{}/healthz", t.base), None, None).await.0, 200);
    t.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_400_or_404() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let url = format!("{}/v1/sessions", t.base);
    let (s, v) = http("POST", &url, Some(&key), Some("{not json")).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("parse"), "{v}");
    let cases = [
        (r#"{"fields":["expiry"]}"#, "pan"),
        (r#"{"fields":["pan","pan"]}"#, "repeat"),
        (r#"{"fields":["pan","cvv","expiry"]}"#, "order"),
        (r#"{"fields":["pan","pin"]}"#, "unknown variant"),
        (r#"{"fields":["pan"],"agent_uri":"http://x"}"#, "sip:"),
        (r#"{"fields":["pan"],"colour":"red"}"#, "unknown field"),
    ];
    for (body, want) in cases {
        let (s, v) = http("POST", &url, Some(&key), Some(body)).await;
        assert_eq!(s, 400, "{body}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    let (s, _) = http("GET", &format!("{url}/0123456789abcdef0123456789abcdef"), Some(&key), None).await;
    assert_eq!(s, 404);
    assert_eq!(http("GET", &format!("{url}/..%2f..%2fetc"), Some(&key), None).await.0, 404);
    t.stop().await;
}

#[tokio::test]
async fn session_life_cycle_and_websocket() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (s, created) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(BODY)).await;
    assert_eq!(s, 201);
    assert_eq!(created["state"], "waiting");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["transfer_uri"], format!("sip:pay-{id}@{}", t.server.sip_addr));
    let (_, shown) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&key), None).await;
    assert_eq!(shown["reference"], "order-123");
    assert_eq!(shown["fields"].as_array().unwrap().len(), 3);
    assert_eq!(shown["fields"][0]["state"], "pending");
    assert_eq!(shown["result"], Value::Null);

    let mut req = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first: Value = serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(first["event"], "snapshot");

    let (s, v) = http("POST", &format!("{}/v1/sessions/{id}/cancel", t.base), Some(&key), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")));
    let update: Value = serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(update["event"], "cancelled");
    assert_eq!(update["session"]["state"], "cancelled");
    let (s, _) = http("POST", &format!("{}/v1/sessions/{id}/cancel", t.base), Some(&key), None).await;
    assert_eq!(s, 409);

    // Without a key the WebSocket upgrade is refused.
    let bare = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr);
    assert!(tokio_tungstenite::connect_async(bare).await.is_err());
    t.stop().await;
}
