//! Built-in accounts against a running server (PCI DSS 8.2.8, 8.3.4, 8.4.2): a person signs
//! in with a password and, for qa (and admin, processor), a one-time code; the session
//! cookie is HttpOnly, Secure and SameSite=Strict; a state change without the CSRF token is
//! refused; a code is taken once; ten wrong passwords lock the account (the right one then
//! fails too); an idle session ends; a disabled account's session ends at its next request;
//! sign-out ends it; and each step is in the audit trail, which still verifies.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::Value;
use tonewall::accounts;
use tonewall::api::auth::Role;
use tonewall::vault::audit;

/// One request with `headers`: (status, the Set-Cookie header, JSON body).
async fn send(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: &str,
) -> (u16, String, Value) {
    let body = body.to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let result = if method == "POST" {
            let mut req = agent.post(&url).header("Content-Type", "application/json");
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            req.send(body)
        } else {
            let mut req = agent.get(&url);
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            req.call()
        };
        let mut resp = result.expect("the server answers");
        let cookie = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (resp.status().as_u16(), cookie, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

fn sign_in_body(user: &str, password: &str, code: &str) -> String {
    serde_json::json!({ "username": user, "password": password, "code": code }).to_string()
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn people_sign_in_with_a_second_factor_and_their_sessions_end() {
    let t = TestServer::start_with(|c| c.accounts.idle_timeout_s = 2).await;
    let vault = t.server.shared.vault.clone();
    let base = t.base.clone();
    let url = |path: &str| format!("{base}{path}");
    assert!(accounts::add(&vault, "qa-bob", PASSWORD, Role::Qa, None, false, false).await.is_err(), "qa needs TOTP");
    assert!(accounts::add(&vault, "short", "too short", Role::Agent, None, false, false).await.is_err());
    accounts::add(&vault, "alice", PASSWORD, Role::Agent, None, false, false).await.unwrap();
    let secret = accounts::add(&vault, "qa-bob", PASSWORD, Role::Qa, None, true, false).await.unwrap().unwrap();

    // Alice signs in: the cookie's attributes, then a state change needs the CSRF token.
    let (s, cookie, me) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("alice", PASSWORD, "")).await;
    assert_eq!(s, 200, "{me}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    let session_cookie = cookie.split(';').next().unwrap().to_string();
    let csrf = me["csrf_token"].as_str().unwrap().to_string();
    assert_eq!((me["username"].as_str(), me["role"].as_str()), (Some("alice"), Some("agent")));
    assert!(me["idle_ends_in_s"].as_u64().is_some_and(|s| s <= 2), "{me}");
    let jar = || vec![("Cookie", session_cookie.clone())];
    let body = r#"{"fields":["pan"],"reference":"signed-in"}"#;
    let (s, _, v) = send("POST", url("/v1/sessions"), jar(), body).await;
    assert_eq!(s, 403, "no CSRF token: {v}");
    let mut with_csrf = jar();
    with_csrf.push(("X-CSRF-Token", "wrong".into()));
    assert_eq!(send("POST", url("/v1/sessions"), with_csrf, body).await.0, 403, "a wrong CSRF token");
    let mut with_csrf = jar();
    with_csrf.push(("X-CSRF-Token", csrf.clone()));
    let (s, _, v) = send("POST", url("/v1/sessions"), with_csrf.clone(), body).await;
    assert_eq!(s, 201, "{v}");
    let (s, _, v) = send("GET", url(&format!("/v1/sessions/{}", v["id"].as_str().unwrap())), jar(), "").await;
    assert_eq!(s, 200, "alice sees her session: {v}");

    // Idle past the timeout: signed out.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (s, _, v) = send("GET", url("/v1/auth/me"), jar(), "").await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("idle"), "{v}");

    // Bob (qa): no code, then the right one, then the same code again.
    let (s, _, _) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("qa-bob", PASSWORD, "")).await;
    assert_eq!(s, 401, "qa without a code");
    let code = accounts::current_code(&secret).unwrap();
    let (s, cookie, me) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("qa-bob", PASSWORD, &code)).await;
    assert_eq!(s, 200, "{me}");
    // Bob signs out (at once: the idle timeout here is 2 s): the cookie stops working.
    let bob = vec![("Cookie", cookie.split(';').next().unwrap().to_string())];
    let mut out = bob.clone();
    out.push(("X-CSRF-Token", me["csrf_token"].as_str().unwrap().to_string()));
    let (s, _, v) = send("POST", url("/v1/auth/sign-out"), out, "").await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(send("GET", url("/v1/auth/me"), bob, "").await.0, 401, "signed out");
    let (s, _, _) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("qa-bob", PASSWORD, &code)).await;
    assert_eq!(s, 401, "a code is taken once");

    // Ten wrong passwords lock alice; then even the right one is refused, with the same words.
    for _ in 0..accounts::LOCKOUT_FAILURES {
        let (s, _, _) =
            send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("alice", "not her password", "")).await;
        assert_eq!(s, 401);
    }
    let (s, _, v) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("alice", PASSWORD, "")).await;
    assert_eq!(s, 401, "locked: {v}");
    let listed = accounts::list(vault.pool()).await.unwrap();
    assert!(listed.iter().any(|u| u.username == "alice" && u.locked), "{listed:?}");

    // A disabled account's open session ends at its next request.
    accounts::add(&vault, "carol", PASSWORD, Role::Agent, None, false, false).await.unwrap();
    let (_, cookie, _) = send("POST", url("/v1/auth/sign-in"), vec![], &sign_in_body("carol", PASSWORD, "")).await;
    let carol = vec![("Cookie", cookie.split(';').next().unwrap().to_string())];
    assert_eq!(send("GET", url("/v1/auth/me"), carol.clone(), "").await.0, 200);
    accounts::disable(vault.pool(), "carol").await.unwrap();
    assert_eq!(send("GET", url("/v1/auth/me"), carol, "").await.0, 401, "disabled");

    let trail: Vec<(String, String)> = audit::records(vault.pool(), 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action.starts_with("auth.sign"))
        .map(|r| (r.action, r.outcome))
        .collect();
    for (action, outcome) in [
        ("auth.sign_in", "signed_in"),
        ("auth.sign_in", "wrong_code"),
        ("auth.sign_in", "wrong_password"),
        ("auth.sign_in", "locked"),
        ("auth.sign_out", "signed_out"),
    ] {
        assert!(trail.iter().any(|(a, o)| a == action && o == outcome), "{action} {outcome} in {trail:?}");
    }
    assert_eq!(audit::verify(vault.pool(), &vault.keys().audit).await.unwrap().1, vec![]);
    t.stop().await;
}
