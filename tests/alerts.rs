//! Security events reach the people on call (PCI DSS 10.4.1.1, 10.7.2, 12.10.5): every kind is
//! provoked the way an attacker or a failure would — a processor key detokenizing in bulk, a
//! password guessed until the account locks, a flood of unknown keys, a lockdown started and
//! lifted, the audit trail made unwritable, a record tampered with — and each must appear as
//! a JSON line in the security log and, signed, at a real HTTP receiver on loopback. The log
//! holds no card number, key or password.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, http, tonewall, write_config};
use serde_json::Value;
use tonewall::api::auth::Role;
use tonewall::vault::crypto::SecretKey;
use tonewall::vault::secret::SecretSource;

const SECRET: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const PASSWORD: &str = "correct horse battery staple";

type Received = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP server that keeps every POST's signature header and body.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                let sig = headers.get("Tonewall-Signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                keep.lock().unwrap().push((sig, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// Waits until the receiver holds an event of this kind, at most 20 s.
async fn received(got: &Received, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = got.lock().unwrap().iter().find_map(|(sig, body)| {
            let v: Value = serde_json::from_str(body).ok()?;
            (v["event"] == kind).then(|| (sig.clone(), body.clone(), v))
        });
        if let Some((sig, body, v)) = found {
            let t: i64 = sig.split(',').next().and_then(|t| t.strip_prefix("t=")).unwrap().parse().unwrap();
            let key = SecretKey::from_bytes(&hex(SECRET)).unwrap();
            assert_eq!(sig, tonewall::vault::webhook::signature(&key, t, &body), "{kind}: signature");
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {kind} event at the receiver: {:?}", got.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_security_event_reaches_the_log_and_the_signed_webhook() {
    let (url, got) = receiver().await;
    let hook = url.clone();
    let t = TestServer::start_with(move |c| {
        c.alerts.webhook_url = hook;
        c.alerts.webhook_secret = SecretSource::Hex(SECRET.into());
        c.vault.bulk_alarm_per_hour = 2;
    })
    .await;
    let vault = t.server.shared.vault.clone();
    let (processor, admin) = (t.key(Role::Processor).await, t.key(Role::Admin).await);

    // Bulk detokenization: the third in the hour is over the alarm level of two.
    let (s, v) =
        http("POST", &format!("{}/v1/tokenize", t.base), Some(&processor), Some(r#"{"pan":"4111111111111111"}"#)).await;
    assert_eq!(s, 201, "{v}");
    let token = format!(r#"{{"token":"{}"}}"#, v["token"].as_str().unwrap());
    for _ in 0..3 {
        assert_eq!(http("POST", &format!("{}/v1/detokenize", t.base), Some(&processor), Some(&token)).await.0, 200);
    }
    let bulk = received(&got, "bulk_detokenize").await;
    assert_eq!((bulk["per_hour"].as_u64(), bulk["severity"].as_str()), (Some(2), Some("critical")));

    // A password guessed until the account locks.
    tonewall::accounts::add(&vault, "alice", PASSWORD, Role::Agent, None, false, false).await.unwrap();
    let wrong = r#"{"username":"alice","password":"not her password at all"}"#;
    for _ in 0..10 {
        assert_eq!(http("POST", &format!("{}/v1/auth/sign-in", t.base), None, Some(wrong)).await.0, 401);
    }
    assert_eq!(received(&got, "lockout").await["username"], "alice");

    // A lockdown, then lifted.
    let start = r#"{"reason":"agent key leaked","revoke_role":"agent"}"#;
    assert_eq!(http("POST", &format!("{}/v1/admin/lockdown", t.base), Some(&admin), Some(start)).await.0, 200);
    let started = received(&got, "lockdown_started").await;
    assert_eq!(
        (started["reason"].as_str(), started["revoked_role"].as_str()),
        (Some("agent key leaked"), Some("agent"))
    );
    assert_eq!(http("POST", &format!("{}/v1/admin/lockdown/lift", t.base), Some(&admin), Some("")).await.0, 200);
    received(&got, "lockdown_lifted").await;

    // The audit trail made unwritable: detokenize fails closed, and someone is told.
    let head: (i64, String) = sqlx::query_as("SELECT seq, mac FROM audit_head").fetch_one(vault.pool()).await.unwrap();
    sqlx::query("DELETE FROM audit_head").execute(vault.pool()).await.unwrap();
    let (s, _) = http("POST", &format!("{}/v1/detokenize", t.base), Some(&processor), Some(&token)).await;
    assert_eq!(s, 503, "no audit record, no card");
    assert_eq!(received(&got, "audit_write_failed").await["action"], "detokenize");
    // ... and Prometheus would see it (the TonewallAuditWriteFailures alert).
    let (_, _, metrics) = common::http_raw("GET", &format!("{}/metrics", t.base), None, None).await;
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tonewall_audit_write_failures_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(failures.is_some_and(|n| n >= 1), "audit write failures in /metrics: {failures:?}");
    sqlx::query("INSERT INTO audit_head (id, seq, mac) VALUES (1, $1, $2)")
        .bind(head.0)
        .bind(&head.1)
        .execute(vault.pool())
        .await
        .unwrap();
    // A flood of unknown keys from one address (counted per minute; the minute ends at stop).
    for i in 0..40 {
        let guess = format!("tw_guess_{i}");
        http("POST", &format!("{}/v1/detokenize", t.base), Some(&guess), Some(&token)).await;
    }

    drop(vault);
    let TestServer { server, dir: kept, .. } = t;
    server.shutdown(Duration::from_secs(3)).await;
    let data = kept.path().to_path_buf();
    let flood = received(&got, "auth_flood").await;
    assert!(flood["failures"].as_u64().unwrap() >= 30 && flood["origin"] == "127.0.0.1", "{flood}");

    // Tampering found by `tonewall audit verify`, a process of its own with the same settings.
    let dir = tempfile::tempdir().unwrap();
    let (url_line, secret_line) =
        (format!("webhook_url = \"{url}\""), format!("webhook_secret = {{ hex = \"{SECRET}\" }}"));
    let config =
        write_config(dir.path(), &[("webhook_url = \"\"", &url_line), ("webhook_secret = \"dev_file\"", &secret_line)]);
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&data)).await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
        .execute(vault.pool())
        .await
        .unwrap();
    drop(vault);
    let (ok, out, _) =
        tonewall(&["audit", "verify", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], &[]);
    assert!(!ok, "{out}");
    let tamper = received(&got, "tamper_found").await;
    assert!(tamper["findings"][0].as_str().unwrap().contains("record 3"), "{tamper}");

    // The same events, one JSON object per line, in the security log; checkpoints too.
    let log = std::fs::read_to_string(data.join("security.jsonl")).unwrap();
    let kinds: Vec<String> =
        log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].as_str().unwrap().to_string()).collect();
    for kind in [
        "bulk_detokenize",
        "lockout",
        "lockdown_started",
        "lockdown_lifted",
        "audit_write_failed",
        "auth_flood",
        "tamper_found",
        "audit_checkpoint",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in the security log: {kinds:?}");
    }
    assert!(!got.lock().unwrap().iter().any(|(_, b)| b.contains("audit_checkpoint")), "checkpoints page nobody");
    for secret in ["4111111111111111", processor.as_str(), admin.as_str(), PASSWORD, "not her password"] {
        assert!(!log.contains(secret), "the security log holds a secret");
    }
    println!("security log: {} events: {kinds:?}", kinds.len());
}
