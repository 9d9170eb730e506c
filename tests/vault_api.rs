//! The vault through the HTTP API on a real server on loopback: who may tokenize and
//! detokenize, the security code released once, per-key limits and the bulk alarm in the
//! audit trail, and the processor webhook of a real call: signed, retried, and kept across a
//! restart.

mod common;

use std::time::Duration;

use common::{TestServer, http, receiver, wait_final};
use tonewall::api::auth::Role;
use tonewall::vault::audit;
use tonewall::vault::crypto::SecretKey;
use tonewall::vault::secret::SecretSource;
use tonewall::vault::webhook::{SIGNATURE_HEADER, signature};
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions};

#[tokio::test]
async fn processors_tokenize_and_detokenize_and_no_other_role_can() {
    let t = TestServer::start().await;
    let (agent, processor, qa) = (t.key(Role::Agent).await, t.key(Role::Processor).await, t.key(Role::Qa).await);
    let url = |p: &str| format!("{}{p}", t.base);
    let card = r#"{"pan":"4111111111111111","expiry":"1230","security_code":"737"}"#;
    for k in [&agent, &qa] {
        assert_eq!(http("POST", &url("/v1/tokenize"), Some(k), Some(card)).await.0, 403);
    }
    assert_eq!(http("POST", &url("/v1/tokenize"), None, Some(card)).await.0, 401);
    assert_eq!(http("POST", &url("/v1/detokenize"), Some("twk_guess"), Some("{}")).await.0, 401);
    let (s, v) = http("POST", &url("/v1/tokenize"), Some(&processor), Some(card)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((v["brand"].as_str(), v["last4"].as_str()), (Some("visa"), Some("1111")));
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tok_") && !v.to_string().contains("411111"));
    // Bad input never comes back in an error.
    let (s, v) = http("POST", &url("/v1/tokenize"), Some(&processor), Some(r#"{"pan":4111111111111111}"#)).await;
    assert_eq!(s, 400);
    assert!(!v.to_string().contains("4111"), "{v}");
    let (s, v) = http("POST", &url("/v1/tokenize"), Some(&processor), Some(r#"{"pan":"4111111111111112"}"#)).await;
    assert_eq!(s, 422);
    assert!(!v.to_string().contains("4111"), "{v}");

    let body = format!(r#"{{"token":"{token}"}}"#);
    for k in [&agent, &qa] {
        assert_eq!(http("POST", &url("/v1/detokenize"), Some(k), Some(&body)).await.0, 403);
    }
    let (s, v) = http("POST", &url("/v1/detokenize"), Some(&processor), Some(&body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["pan"], "4111111111111111");
    assert_eq!((v["expiry_month"].as_u64(), v["expiry_year"].as_u64()), (Some(12), Some(2030)));
    assert_eq!(v["security_code"], "737");
    let (_, v) = http("POST", &url("/v1/detokenize"), Some(&processor), Some(&body)).await;
    assert!(v["security_code"].is_null(), "released once: {v}");
    let (s, _) = http("POST", &url("/v1/detokenize"), Some(&processor), Some(r#"{"token":"tok_none"}"#)).await;
    assert_eq!(s, 404);

    let vault = &t.server.shared.vault;
    let records = audit::records(vault.pool(), 0, 100).await.unwrap();
    let detok: Vec<(&str, &str)> =
        records.iter().filter(|r| r.action == "detokenize").map(|r| (r.outcome.as_str(), r.origin.as_str())).collect();
    assert_eq!(detok, [("revealed", "127.0.0.1"), ("revealed", "127.0.0.1"), ("unknown_token", "127.0.0.1")]);
    let guess = records
        .iter()
        .find(|r| r.action == "auth" && r.outcome != "no_credential")
        .expect("the unknown key is audited");
    assert_eq!(
        (guess.outcome.as_str(), guess.resource.as_str(), guess.origin.as_str()),
        ("unknown_key", "/v1/detokenize", "127.0.0.1")
    );
    assert_eq!(audit::verify(vault.pool(), &vault.keys().audit).await.unwrap().1, vec![]);
    t.stop().await;
}

#[tokio::test]
async fn detokenize_is_limited_per_key_and_bulk_use_raises_an_alarm() {
    let t = TestServer::start_with(|c| {
        c.vault.detokenize_per_minute = 3;
        c.vault.bulk_alarm_per_hour = 2;
    })
    .await;
    let (p1, p2) = (t.key(Role::Processor).await, t.key(Role::Processor).await);
    let url = format!("{}/v1/detokenize", t.base);
    let tokenize = format!("{}/v1/tokenize", t.base);
    let (_, v) = http("POST", &tokenize, Some(&p1), Some(r#"{"pan":"4111111111111111"}"#)).await;
    let token = v["token"].as_str().unwrap().to_string();
    let body = format!(r#"{{"token":"{token}"}}"#);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http("POST", &url, Some(&p1), Some(&body)).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(http("POST", &url, Some(&p2), Some(&body)).await.0, 200, "the limit is per key");
    let vault = &t.server.shared.vault;
    let records = audit::records(vault.pool(), 0, 100).await.unwrap();
    let actions: Vec<String> = records.iter().map(|r| format!("{}:{}", r.action, r.outcome)).collect();
    assert_eq!(actions.iter().filter(|a| *a == "alarm.bulk_detokenize:raised").count(), 1, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| *a == "detokenize:rate_limited").count(), 1, "{actions:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_completed_call_sends_a_signed_webhook_retried_and_kept_across_a_restart() {
    // The processor is down while the call completes; tonewall restarts; then the processor
    // answers 500 once, then 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let secret_hex = "42".repeat(32);
    let dir = tempfile::tempdir().unwrap();
    let adjust = |c: &mut tonewall::config::Config| {
        c.storage.data_dir = dir.path().to_path_buf();
        c.webhook.url = format!("http://{hook_addr}/hook");
        c.webhook.secret = SecretSource::Hex(secret_hex.clone());
        c.webhook.retry_base_s = 1;
    };
    drop(listener);
    let t = TestServer::start_with(adjust).await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"order-77","agent_uri":"{}"}}"#, agent.uri);
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(&body)).await;
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let opts = CallerOptions {
        linger: Duration::from_secs(3),
        ..CallerOptions::new(t.server.sip_addr, &uri, "4111111111111111#,1230,737")
    };
    caller::place_call(opts).await.unwrap();
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // at least one refused attempt
    agent.finish().await.unwrap();
    t.stop().await;

    let listener = tokio::net::TcpListener::bind(hook_addr).await.unwrap();
    let got = receiver(listener, 1).await;
    let t = TestServer::start_with(adjust).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 500, then delivered");
    let secret = SecretKey::from_bytes(&tonewall::vault::crypto::unhex(&secret_hex).unwrap()).unwrap();
    for (headers, body) in &got {
        let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
        let t_value: i64 = sig.strip_prefix("t=").and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
        assert_eq!(sig, signature(&secret, t_value, body), "the processor can verify it");
    }
    assert_eq!(got[0].1, got[1].1, "the same event, the same idempotency key");
    let event: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(event["event"], "session.completed");
    assert_eq!((event["session_id"].as_str(), event["reference"].as_str()), (Some(id.as_str()), Some("order-77")));
    assert_eq!((event["brand"].as_str(), event["last4"].as_str()), (Some("visa"), Some("1111")));
    assert_eq!(event["token"], s["result"]["token"]);
    assert_eq!(got[1].0["idempotency-key"].to_str().unwrap(), event["idempotency_key"].as_str().unwrap());
    assert!(!got[1].1.contains("411111"), "no card data in the webhook");
    t.stop().await;
}

#[tokio::test]
async fn a_replay_is_audited_and_refused_when_the_audit_trail_cannot_be_written() {
    let t = TestServer::start().await;
    let qa = t.key(Role::Qa).await;
    let vault = &t.server.shared.vault;
    let mut w = tonewall::recording::Writer::create(t.dir.path(), vault, 1_700_000_000_000).unwrap();
    w.write(&[7; tonewall::call::recording::STEREO_FRAME]).unwrap();
    let meta = w
        .finish(vault.pool(), &tonewall::merchant::MerchantId::default_merchant(), "call", "session", "ref", &[])
        .await
        .unwrap();
    let url = format!("{}/v1/recordings/{}/audio", t.base, meta.id);
    let (s, _) = http("GET", &url, Some(&qa), None).await;
    assert_eq!(s, 200);
    let records = audit::records(vault.pool(), 0, 100).await.unwrap();
    assert!(records.iter().any(|r| r.action == "recording.replay" && r.resource == meta.id && r.outcome == "played"));
    sqlx::query("DROP TABLE audit_log").execute(vault.pool()).await.unwrap();
    let (s, v) = http("GET", &url, Some(&qa), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("unavailable")), "{v}");
    t.stop().await;
}

/// A flood of unknown keys from one address: the first 30 of its minute are looked up and
/// refused (401), the rest refused unread (429); the trail gets one record at once and one
/// for the other 29, not one per request, and still verifies.
/// Requests with no credential at all are invalid access attempts too (PCI DSS 10.2.1.4):
/// audited once a minute per source plus an aggregate, and never throttled, since a contact
/// center's pages load from one address before anyone signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_credential_are_audited_in_aggregate_and_not_throttled() {
    let t = TestServer::start().await;
    let url = format!("{}/v1/sessions", t.base);
    for _ in 0..60 {
        assert_eq!(http("POST", &url, None, Some("{}")).await.0, 401);
    }
    let vault = t.server.shared.vault.clone();
    let auth = |records: Vec<audit::Record>| -> Vec<(String, String)> {
        records.into_iter().filter(|r| r.action == "auth").map(|r| (r.outcome, r.resource)).collect()
    };
    let during = auth(audit::records(vault.pool(), 0, 1000).await.unwrap());
    assert_eq!(during, [("no_credential".to_string(), "/v1/sessions".to_string())]);
    let TestServer { server, dir, .. } = t;
    server.shutdown(std::time::Duration::from_secs(3)).await;
    let after = auth(audit::records(vault.pool(), 0, 1000).await.unwrap());
    assert_eq!(after[1..], [("no_credential_repeated".to_string(), "59 more in one minute".to_string())]);
    drop(dir);
}

#[tokio::test]
async fn an_unknown_key_flood_is_throttled_and_audited_in_aggregate() {
    let t = TestServer::start().await;
    let url = format!("{}/v1/detokenize", t.base);
    let body = r#"{"token":"tok_none"}"#;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let (s, _) = http("POST", &url, Some(&format!("twk_guess{i}")), Some(body)).await;
        *statuses.entry(s).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 30), (429, 170)].into_iter().collect(), "{statuses:?}");
    let vault = t.server.shared.vault.clone();
    let auth_records = |records: &[audit::Record]| -> Vec<(String, String)> {
        records.iter().filter(|r| r.action == "auth").map(|r| (r.outcome.clone(), r.resource.clone())).collect()
    };
    let during = auth_records(&audit::records(vault.pool(), 0, 1000).await.unwrap());
    assert_eq!(during, [("unknown_key".to_string(), "/v1/detokenize".to_string())], "one record at once");
    // Shutdown audits the minute's remainder as one record. The data directory must outlive
    // the server: the pool may open a new connection to read the trail afterwards.
    let TestServer { server, dir, .. } = t;
    server.shutdown(std::time::Duration::from_secs(3)).await;
    let after = auth_records(&audit::records(vault.pool(), 0, 1000).await.unwrap());
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[1], ("unknown_key_repeated".to_string(), "29 more in one minute".to_string()));
    assert_eq!(audit::verify(vault.pool(), &vault.keys().audit).await.unwrap().1, vec![]);
    drop(dir);
}

/// With `webhook.field_events`, a platform that draws its own screens gets one signed event
/// per field as the caller completes it (mask, brand once known, attempts left), and then
/// the completion; no body holds more of the card than its last four digits.
#[tokio::test]
async fn field_events_report_each_completed_field_masked_and_signed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let got = receiver(listener, 0).await;
    let secret_hex = "24".repeat(32);
    let t = TestServer::start_with(|c| {
        c.webhook.url = format!("http://{hook_addr}/hook");
        c.webhook.secret = SecretSource::Hex(secret_hex.clone());
        c.webhook.field_events = true;
    })
    .await;
    let key = t.key(Role::Agent).await;
    let body =
        r#"{"fields":["pan","expiry","cvv","postal_code"],"amount":"9.99","currency":"GBP","reference":"order-88"}"#;
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(body)).await;
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    // A wrong card number first: its field completes with one attempt fewer.
    let keys = "4111111111111112#,4111111111111111#,1230,737,94105#,1";
    let opts = CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(t.server.sip_addr, &uri, keys) };
    caller::place_call(opts).await.unwrap();
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.lock().unwrap().len() < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.lock().unwrap().clone();
    let secret = SecretKey::from_bytes(&tonewall::vault::crypto::unhex(&secret_hex).unwrap()).unwrap();
    let mut fields = Vec::new();
    for (headers, body) in &got {
        let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
        let t_value: i64 = sig.strip_prefix("t=").and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
        assert_eq!(sig, signature(&secret, t_value, body), "the processor can verify it");
        assert!(!body.contains("411111") && !body.contains("94105") && !body.contains("737"), "{body}");
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((event["session_id"].as_str(), event["reference"].as_str()), (Some(id.as_str()), Some("order-88")));
        if event["event"] == "session.field_completed" {
            let brand = event["brand"].as_str().unwrap_or("-").to_string();
            let left = event["attempts_left"].as_u64().unwrap();
            fields.push((
                event["field"].as_str().unwrap().to_string(),
                event["masked"].as_str().unwrap().to_string(),
                brand,
                left,
            ));
        }
    }
    fields.sort();
    let want = |f: &str, m: &str, b: &str, l: u64| (f.to_string(), m.to_string(), b.to_string(), l);
    assert_eq!(
        fields,
        [
            want("confirm", "confirmed", "visa", 3),
            want("cvv", "•••", "visa", 3),
            want("expiry", "12/30", "visa", 3),
            want("pan", "•••• •••• •••• 1111", "visa", 2),
            want("postal_code", "•••••", "visa", 3),
        ]
    );
    let completed = got.iter().filter(|(_, b)| b.contains("\"session.completed\"")).count();
    assert_eq!((got.len(), completed), (6, 1), "five fields, then the completion");
    t.stop().await;
}

/// Right to erasure: a processor (or an admin) deletes a stored card; the token then answers
/// 404 to detokenize and to a second erasure, an agent may not erase, and each attempt is in
/// the audit trail. An admin purges a reference's recordings before their retention ends.
#[tokio::test]
async fn erasure_deletes_the_card_and_the_references_recordings_and_the_audit_says_so() {
    let t = TestServer::start().await;
    let (processor, admin, agent) = (t.key(Role::Processor).await, t.key(Role::Admin).await, t.key(Role::Agent).await);
    let mut tokens = Vec::new();
    for pan in ["4111111111111111", "5555555555554444"] {
        let body = format!(r#"{{"pan":"{pan}","expiry":"1230","security_code":"123"}}"#);
        let (s, v) = http("POST", &format!("{}/v1/tokenize", t.base), Some(&processor), Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    let erase = |token: &str| format!("{}/v1/tokens/{token}", t.base);
    let detokenize = |token: &str| format!(r#"{{"token":"{token}"}}"#);
    assert_eq!(http("DELETE", &erase(&tokens[0]), Some(&agent), None).await.0, 403, "agents may not erase");
    let (s, v) = http("DELETE", &erase(&tokens[0]), Some(&processor), None).await;
    assert_eq!((s, v["erased"].as_bool()), (200, Some(true)), "{v}");
    let (s, _) =
        http("POST", &format!("{}/v1/detokenize", t.base), Some(&processor), Some(&detokenize(&tokens[0]))).await;
    assert_eq!(s, 404, "an erased token reveals nothing");
    assert_eq!(http("DELETE", &erase(&tokens[0]), Some(&processor), None).await.0, 404, "nothing left to erase");
    assert_eq!(http("DELETE", &erase(&tokens[1]), Some(&admin), None).await.0, 200, "an admin may erase");
    let (rows,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM cards").fetch_one(t.server.shared.vault.pool()).await.unwrap();
    assert_eq!(rows, 0);
    assert_eq!(
        http("DELETE", &erase("4111111111111111"), Some(&admin), None).await.0,
        404,
        "a card number is no token"
    );

    // A call recorded under a reference, then purged on request.
    let phone = Agent::start().await.unwrap();
    let body = format!(r#"{{"fields":["pan"],"reference":"erase-me","agent_uri":"{}"}}"#, phone.uri);
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(&agent), Some(&body)).await;
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let opts = CallerOptions {
        linger: Duration::from_secs(2),
        ..CallerOptions::new(t.server.sip_addr, &uri, "4111111111111111#")
    };
    caller::place_call(opts).await.unwrap();
    wait_final(&t.base, &agent, &id, Duration::from_secs(5)).await;
    phone.finish().await.unwrap();
    let qa = t.key(Role::Qa).await;
    let listed = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, v) = http("GET", &format!("{}/v1/recordings?reference=erase-me", t.base), Some(&qa), None).await;
            let n = v["total"].as_i64().unwrap_or(0);
            if n > 0 || tokio::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(listed().await, 1, "the call was recorded");
    let files = || std::fs::read_dir(t.dir.path().join("recordings")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files(), 1);
    let purge = format!("{}/v1/recordings?reference=erase-me", t.base);
    assert_eq!(http("DELETE", &purge, Some(&qa), None).await.0, 403, "QA replays, only admins purge");
    let (s, v) = http("DELETE", &purge, Some(&admin), None).await;
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!((listed().await, files()), (0, 0), "metadata and file gone");

    let records = audit::records(t.server.shared.vault.pool(), 0, 1000).await.unwrap();
    let erasures: Vec<String> = records
        .iter()
        .filter(|r| r.action == "token.erase" || r.action == "recording.purge")
        .map(|r| format!("{}:{}:{}", r.action, r.outcome, r.role))
        .collect();
    assert_eq!(
        erasures,
        [
            "token.erase:erased:processor",
            "token.erase:unknown_token:processor",
            "token.erase:erased:admin",
            "recording.purge:deleted:admin"
        ]
    );
    t.stop().await;
}
