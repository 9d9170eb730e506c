//! The HTTP API through a real socket: authentication and roles, bad input, the session
//! life cycle and its WebSocket.

mod common;

use std::time::Duration;

use common::{TestServer, contains, files_under, http};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonewall::api::auth::Role;
use tonewall::vault::audit;

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
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["message"].as_str()),
        (Some("unauthorized"), Some("missing bearer key"))
    );
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
    assert!(v["error"]["message"].as_str().unwrap().contains("parse"), "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
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
        assert!(v["error"]["message"].as_str().unwrap().contains(want), "{body}: {v}");
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

/// Every operation in `/v1/openapi.json` × every role (and no key): 401 without a key, 403
/// for a role its `x-roles` leaves out, never 401/403 for one it lists; every error in the
/// one JSON shape.
#[tokio::test]
async fn openapi_describes_every_route_and_the_permission_matrix_holds() {
    let t = TestServer::start().await;
    let (s, spec) = http("GET", &format!("{}/v1/openapi.json", t.base), None, None).await;
    assert_eq!((s, spec["openapi"].as_str()), (200, Some("3.1.0")));
    let mut paths: Vec<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/admin/audit",
            "/v1/admin/keys",
            "/v1/admin/keys/{id}/revoke",
            "/v1/admin/keys/{id}/rotate",
            "/v1/admin/lockdown",
            "/v1/admin/lockdown/lift",
            "/v1/admin/merchants",
            "/v1/admin/merchants/{id}",
            "/v1/admin/prompts",
            "/v1/admin/prompts/{language}/{name}",
            "/v1/auth/me",
            "/v1/auth/methods",
            "/v1/auth/oidc/callback",
            "/v1/auth/oidc/start",
            "/v1/auth/sign-in",
            "/v1/auth/sign-out",
            "/v1/calls",
            "/v1/calls/{id}/capture",
            "/v1/detokenize",
            "/v1/openapi.json",
            "/v1/recordings",
            "/v1/recordings/{id}",
            "/v1/recordings/{id}/audio",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/cancel",
            "/v1/sessions/{id}/events",
            "/v1/sessions/{id}/fields/{name}/restart",
            "/v1/tokenize",
            "/v1/tokens/{token}",
        ],
        "the routes the server has"
    );
    let roles = [Role::Agent, Role::Processor, Role::Qa, Role::Admin];
    let mut keys = Vec::new();
    for r in roles {
        keys.push((r, t.key(r).await));
    }
    let agent = &keys[0].1;
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(agent), Some(BODY)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let mut checked = 0;
    let mut forbidden = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        let url = format!(
            "{}{}",
            t.base,
            path.replace("{id}", &id)
                .replace("{name}", "pan")
                .replace("{language}", "fr")
                .replace("{token}", "tok_none")
        );
        for (method, op) in ops.as_object().unwrap().iter().filter(|(m, _)| *m != "parameters") {
            let method = match method.as_str() {
                "post" => "POST",
                "put" => "PUT",
                "patch" => "PATCH",
                "delete" => "DELETE",
                _ => "GET",
            };
            let allowed: Vec<&str> = op["x-roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            let public = allowed == ["public"];
            let (s, v) = http(method, &url, None, Some("{}")).await;
            if public {
                assert!(![401, 403].contains(&s), "{method} {path} is public: {s}");
            } else {
                assert_eq!(
                    (s, v["error"]["code"].as_str()),
                    (401, Some("unauthorized")),
                    "{method} {path} without a key"
                );
            }
            for (role, key) in &keys {
                let (s, v) = http(method, &url, Some(key), Some("{}")).await;
                if public || allowed.contains(&role.as_str()) {
                    assert!(![401, 403].contains(&s), "{method} {path} as {}: {s} {v}", role.as_str());
                } else {
                    assert_eq!(
                        (s, v["error"]["code"].as_str()),
                        (403, Some("forbidden")),
                        "{method} {path} as {}",
                        role.as_str()
                    );
                    forbidden += 1;
                }
                if s >= 400 {
                    assert!(
                        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                        "{method} {path}: {v}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 39 * roles.len());
    // PCI DSS 10.2.1.4, 10.2.1.6: every 403 is audited with its key and route, and so is the
    // start of the service.
    let trail = audit::records(t.server.shared.vault.pool(), 0, 100_000).await.unwrap();
    let audited = trail.iter().filter(|r| r.action == "authz" && r.outcome == "forbidden").count();
    assert!(forbidden > 20, "{forbidden}");
    assert_eq!(audited, forbidden, "one audit record per 403");
    assert!(trail.iter().any(|r| r.action == "service.start" && r.role == "system"), "the start is audited");
    let (s, v) = http("GET", &format!("{}/v1/nowhere", t.base), Some(agent), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = http("GET", &format!("{}/v1/tokenize", t.base), Some(agent), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    t.stop().await;
}

/// An API client cannot have tonewall dial, or send a paid caller, anywhere: agent and
/// transfer URIs must name a host within `sip.allowed_targets`.
#[tokio::test]
async fn sessions_only_send_calls_within_the_allowed_targets() {
    let t = TestServer::start_with(|c| {
        c.sip.allowed_targets = serde_json::from_str(r#"["127.0.0.0/8", "pbx.example.com"]"#).expect("targets");
    })
    .await;
    let key = t.key(Role::Agent).await;
    let url = format!("{}/v1/sessions", t.base);
    let create = |extra: &str| format!(r#"{{"fields":["pan"],"reference":"r"{extra}}}"#);
    for (extra, status) in [
        (r#","agent_uri":"sip:agent@127.0.0.1:5070""#, 201),
        (r#","agent_uri":"sip:agent@queue.pbx.example.com""#, 201),
        (r#","agent_uri":"sip:agent@agents.elsewhere.test""#, 201),
        (r#","agent_uri":"sip:agent@198.51.100.7:5060""#, 400),
        (r#","agent_uri":"sip:agent@[2001:db8::7]""#, 400),
        (r#","after_capture":"transfer","transfer_uri":"sip:queue@203.0.113.1""#, 400),
        (r#","after_capture":"transfer","transfer_uri":"sip:queue@unknown.example.org""#, 400),
        (r#","after_capture":"transfer","transfer_uri":"sip:queue@pbx.example.com""#, 201),
        (r#","after_capture":"transfer","agent_uri":"sip:agent@agents.elsewhere.test""#, 400),
    ] {
        let (s, v) = http("POST", &url, Some(&key), Some(&create(extra))).await;
        assert_eq!(s, status, "{extra}: {v}");
        if s == 400 {
            assert!(v["error"]["message"].as_str().unwrap().contains("sip.allowed_targets"), "{v}");
        }
    }
    t.stop().await;
}

/// The pages run only their own inline script and style (by hash): an injected `<script>`
/// or `onclick` would not run, and only the configured ancestors may frame them.
#[tokio::test]
async fn the_pages_allow_only_their_own_scripts_and_the_configured_frames() {
    let t = TestServer::start_with(|c| {
        c.http.frame_ancestors = vec!["'self'".into(), "https://crm.example.com".into()];
    })
    .await;
    for page in ["desktop", "qa"] {
        let url = format!("{}/{page}", t.base);
        let csp = tokio::task::spawn_blocking(move || {
            let resp = ureq::get(&url).call().unwrap();
            resp.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string()
        })
        .await
        .unwrap();
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{page}: {csp}");
        assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{page}: {csp}");
        assert!(csp.contains("frame-ancestors 'self' https://crm.example.com"), "{page}: {csp}");
        assert!(csp.contains("connect-src 'self'") && !csp.contains("ws:"), "{page}: {csp}");
    }
    t.stop().await;
}

/// A session's event stream is bounded: past eight open subscribers the next upgrade gets
/// 429 (a closed one frees its place), and a client message over 4 KiB ends its stream.
#[tokio::test]
async fn event_subscribers_and_client_messages_are_bounded() {
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (_, created) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(BODY)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let open = || {
        let mut req = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr).into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {key}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let mut streams = Vec::new();
    for i in 0..tonewall::session::MAX_SUBSCRIBERS {
        let (mut ws, _) = open().await.unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
        assert!(ws.next().await.unwrap().unwrap().into_text().unwrap().contains("snapshot"));
        streams.push(ws);
    }
    match open().await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 429, "one subscriber too many"),
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    // The last stream sends 64 KiB: its stream ends, and its place is free again.
    let mut big = streams.pop().unwrap();
    big.send(Message::Text("x".repeat(64 * 1024).into())).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(m)) = big.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an oversized client message ends the stream");
    drop(big);
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = open().await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed subscriber frees its place");
    t.stop().await;
}

/// PCI DSS 7.2: a session is its creator's and its team's. Agent B of another team gets the
/// same 404 for agent A's session, its events, its cancel and a field restart as for a
/// session that does not exist, and B's call list does not show A's call; A's team-mate and
/// an admin see it; only the admin sees SIP Call-IDs.
#[tokio::test]
async fn another_teams_agent_finds_nothing_of_a_session() {
    use tonewall::api::auth::create_key_for;
    use tonewall::owner::Team;
    let t = TestServer::start().await;
    let pool = t.server.shared.vault.pool();
    let key = |team: &'static str, role| async move {
        create_key_for(pool, role, Team::named(team).as_ref()).await.unwrap().1
    };
    let (a, b, mate, admin) = (
        key("sales", Role::Agent).await,
        key("support", Role::Agent).await,
        key("sales", Role::Agent).await,
        t.key(Role::Admin).await,
    );
    let (_, created) = http("POST", &format!("{}/v1/sessions", t.base), Some(&a), Some(BODY)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let none = "0123456789abcdef0123456789abcdef";
    for (method, path) in [("GET", ""), ("POST", "/cancel"), ("POST", "/fields/pan/restart")] {
        let theirs = http(method, &format!("{}/v1/sessions/{id}{path}", t.base), Some(&b), None).await;
        let missing = http(method, &format!("{}/v1/sessions/{none}{path}", t.base), Some(&b), None).await;
        assert_eq!(theirs.0, 404, "{method} {path}: {}", theirs.1);
        assert_eq!(theirs, missing, "{method} {path}: someone else's session looks like none");
    }
    let mut ws = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr).into_client_request().unwrap();
    ws.headers_mut().insert("Authorization", format!("Bearer {b}").parse().unwrap());
    match tokio_tungstenite::connect_async(ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("B watched A's session: {:?}", other.map(|(_, r)| r.status())),
    }
    for (who, k) in [("A", &a), ("A's team-mate", &mate), ("an admin", &admin)] {
        let (s, v) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(k), None).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("waiting")), "{who}: {v}");
    }

    // A call for A's session: on A's list (no SIP Call-ID), the admin's (with it), not B's.
    let caller = tonewall_testkit::Ua::bind().await.unwrap();
    let offer = tonewall::sip::sdp::write(
        "127.0.0.1:40990".parse().unwrap(),
        1,
        &[tonewall::media::g711::Codec::Pcmu],
        Some(101),
    );
    let (invite, sip_call_id, _) = caller.invite(created["transfer_uri"].as_str().unwrap(), &offer);
    caller.send(&invite, t.server.sip_addr).await.unwrap();
    let calls_url = format!("{}/v1/calls", t.base);
    let list = |k: String| {
        let url = calls_url.clone();
        async move { http("GET", &url, Some(&k), None).await.1 }
    };
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = list(a.clone()).await;
        if listed["calls"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["calls"][0]["session_id"], id.as_str(), "{listed}");
    assert!(listed["calls"][0].get("sip_call_id").is_none(), "an agent sees no SIP Call-ID: {listed}");
    assert_eq!(list(b.clone()).await["calls"], serde_json::json!([]), "B sees no call of A's");
    assert_eq!(list(admin.clone()).await["calls"][0]["sip_call_id"], sip_call_id.as_str());
    t.stop().await;
}

/// An embed token opens its one session, for `http.embed_ttl_s`: view, events (the token as
/// a WebSocket subprotocol), cancel; another session is 404, other routes 403, and once
/// expired it is 401. No route takes a key in the URL any more, and a forged audio URL
/// plays nothing.
#[tokio::test]
async fn an_embed_token_opens_one_session_for_a_while() {
    let t = TestServer::start_with(|c| c.http.embed_ttl_s = 2).await;
    let key = t.key(Role::Agent).await;
    let embed_body = BODY.replacen('{', r#"{"embed":true,"#, 1);
    let (s, created) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(&embed_body)).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let url = created["desktop_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("/desktop#session={id}&token=twe_")), "{url}");
    assert_eq!(created["embed_expires_in_s"], 2);
    let token = url.split("token=").nth(1).unwrap().to_string();
    let (_, other) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(BODY)).await;
    let other = other["id"].as_str().unwrap();

    let (s, v) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&token), None).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(id.as_str())), "{v}");
    assert_eq!(http("GET", &format!("{}/v1/sessions/{other}", t.base), Some(&token), None).await.0, 404);
    assert_eq!(http("POST", &format!("{}/v1/sessions", t.base), Some(&token), Some(BODY)).await.0, 403);
    assert_eq!(http("POST", &format!("{}/v1/tokenize", t.base), Some(&token), Some("{}")).await.0, 403);
    let events = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr);
    let mut req = events.as_str().into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", format!("tonewall, bearer.{token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("the token as a subprotocol");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tonewall");
    assert!(ws.next().await.unwrap().unwrap().into_text().unwrap().contains("snapshot"));
    // Keys in URLs are refused everywhere now.
    let in_url = format!("{events}?access_token={key}");
    assert!(tokio_tungstenite::connect_async(in_url).await.is_err(), "a key in the URL");
    let (s, _) = http("GET", &format!("{}/v1/calls?access_token={key}", t.base), None, None).await;
    assert_eq!(s, 401);
    let forged = format!("{}/v1/recordings/rec_x/audio?by=k&expires=99999999999&sig=00", t.base);
    assert_eq!(http("GET", &forged, None, None).await.0, 403, "a forged audio URL");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (s, v) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&token), None).await;
    assert_eq!(s, 401, "expired: {v}");
    let (s, _) = http("POST", &format!("{}/v1/sessions/{id}/cancel", t.base), Some(&key), None).await;
    assert_eq!(s, 200, "the key that made it still can");
    t.stop().await;
}

/// PCI DSS 3.5.1: a card number pasted into free text (a session's reference, a merchant
/// name) or into a field a parser quotes back is refused with 400, not repeated in the
/// answer, and written nowhere: no file under the data directory holds it, nor does the
/// audit trail.
#[tokio::test]
async fn a_card_number_in_free_text_is_refused_and_kept_nowhere() {
    let t = TestServer::start().await;
    let agent = t.key(Role::Agent).await;
    let processor = t.key(Role::Processor).await;
    let url = format!("{}/v1/sessions", t.base);
    let session = |reference: &str| {
        format!(
            r#"{{"fields":["pan","expiry","cvv"],"reference":"{reference}","agent_uri":"sip:agent@127.0.0.1:5070"}}"#
        )
    };
    let pasted = [
        ("4111 1111 1111 1111", "4111"),
        ("order-5555-5555-5555-4444", "5555"),
        ("caller said 378282246310005", "378282246310005"),
        ("6011.1111.1111.1117", "6011"),
    ];
    for (reference, digits) in pasted {
        let (s, v) = http("POST", &url, Some(&agent), Some(&session(reference))).await;
        assert_eq!(s, 400, "{reference}: {v}");
        assert!(!v.to_string().contains(digits), "the answer repeats it: {v}");
    }
    // Parsers quote what they refuse: not when it is a card number.
    for body in [
        r#"{"fields":"4012888888881881","reference":"r","agent_uri":"sip:a@127.0.0.1"}"#,
        r#"{"fields":["4012888888881881"],"reference":"r","agent_uri":"sip:a@127.0.0.1"}"#,
        r#"{"fields":["pan"],"reference":"r","agent_uri":"sip:a@127.0.0.1","4012888888881881":1}"#,
    ] {
        let (s, v) = http("POST", &url, Some(&agent), Some(body)).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(!v.to_string().contains("4012888888881881"), "the answer repeats it: {v}");
    }
    let tokenize = format!("{}/v1/tokenize", t.base);
    let card = r#"{"pan":"4000056655665556","merchant":"4222 2222 2222 2"}"#;
    let (s, v) = http("POST", &tokenize, Some(&processor), Some(card)).await;
    assert_eq!(s, 403, "a key tokenizes for its own merchant only: {v}");
    assert!(!v.to_string().contains("4222"), "{v}");
    // The controls: references and merchants with digits that are not card numbers.
    for reference in ["order-123", "4111 1111 1111 1112", "2026-12-02 14:30 #41111111"] {
        let (s, v) = http("POST", &url, Some(&agent), Some(&session(reference))).await;
        assert_eq!(s, 201, "{reference}: {v}");
    }
    let card = r#"{"pan":"4000056655665556","merchant":"default"}"#;
    assert_eq!(http("POST", &tokenize, Some(&processor), Some(card)).await.0, 201, "its own merchant named");

    let vault = &t.server.shared.vault;
    let trail = audit::records(vault.pool(), 0, 10_000).await.unwrap();
    let stored = files_under(t.dir.path());
    assert!(!stored.is_empty());
    for needle in
        ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011.1111", "4012888888881881", "4222 2222"]
    {
        for (path, bytes) in &stored {
            assert!(!contains(bytes, needle.as_bytes()), "{path} holds a pasted card number");
        }
        for r in &trail {
            assert!(!format!("{} {} {}", r.resource, r.detail, r.actor).contains(needle), "the audit trail holds one");
        }
    }
    t.stop().await;
}

/// The free-text check swept: eight brands' test numbers × five ways of writing them × three
/// places in the text are all refused, the same numbers with the last digit changed (Luhn
/// fails) are all accepted, and no refused one is stored anywhere in any of its spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_text_check_holds_over_brands_spellings_and_places() {
    let t = TestServer::start().await;
    let agent = t.key(Role::Agent).await;
    let url = format!("{}/v1/sessions", t.base);
    let pans = [
        ("visa", "4111111111111111"),
        ("mastercard", "5555555555554444"),
        ("amex", "378282246310005"),
        ("discover", "6011111111111117"),
        ("jcb", "3530111333300000"),
        ("diners", "36227206271667"),
        ("unionpay", "6200000000000005"),
        ("visa-13", "4222222222222"),
    ];
    let spell = |pan: &str, sep: &str| -> String {
        let groups: Vec<String> = pan.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        groups.join(sep)
    };
    let separators = [("plain", ""), ("spaces", " "), ("dashes", "-"), ("dots", "."), ("mixed", "")];
    let places = [("alone", "", ""), ("after text", "caller read ", ""), ("before text", "", " for order 12")];
    let mut refused = 0;
    let mut accepted = 0;
    let mut spellings = Vec::new();
    let mut table = String::from("| brand | refused (of 15) | Luhn-failing twins accepted (of 15) |\n|---|---|---|\n");
    for (brand, pan) in pans {
        let twin = format!("{}{}", &pan[..pan.len() - 1], (pan.as_bytes()[pan.len() - 1] - b'0' + 1) % 10);
        let (mut r, mut a) = (0, 0);
        for (style, sep) in separators {
            for (_, before, after) in places {
                for (number, must_refuse) in [(pan, true), (twin.as_str(), false)] {
                    let written = match style {
                        // Spaces, dashes and dots in one number.
                        "mixed" => {
                            let g = spell(number, "|");
                            let mut seps = [" ", "-", "."].iter().cycle();
                            g.split('|').collect::<Vec<_>>().iter().fold(String::new(), |acc, part| {
                                if acc.is_empty() {
                                    part.to_string()
                                } else {
                                    format!("{acc}{}{part}", seps.next().unwrap())
                                }
                            })
                        }
                        _ => spell(number, sep),
                    };
                    let reference = format!("{before}{written}{after}");
                    let body = format!(
                        r#"{{"fields":["pan"],"reference":"{reference}","agent_uri":"sip:agent@127.0.0.1:5070"}}"#
                    );
                    let (s, v) = http("POST", &url, Some(&agent), Some(&body)).await;
                    if must_refuse {
                        assert_eq!(s, 400, "{brand} {style} {reference:?}: {v}");
                        r += 1;
                        spellings.push(written);
                    } else {
                        assert_eq!(s, 201, "{brand} {style} twin {reference:?}: {v}");
                        a += 1;
                    }
                }
            }
        }
        table.push_str(&format!("| {brand} | {r} | {a} |\n"));
        refused += r;
        accepted += a;
    }
    println!("{table}");
    assert_eq!((refused, accepted), (120, 120));
    let stored = files_under(t.dir.path());
    let trail = audit::records(t.server.shared.vault.pool(), 0, 100_000).await.unwrap();
    let trail: String = trail.iter().map(|r| format!("{} {} {}\n", r.resource, r.detail, r.actor)).collect();
    for (written, (_, pan)) in spellings.iter().zip(pans.iter().flat_map(|p| std::iter::repeat_n(p, 15))) {
        for needle in [written.as_str(), pan] {
            for (path, bytes) in &stored {
                assert!(!contains(bytes, needle.as_bytes()), "{path} holds {needle:?}");
            }
            assert!(!trail.contains(needle), "the audit trail holds {needle:?}");
        }
    }
    t.stop().await;
}
