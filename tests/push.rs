//! The push connector against a real HTTPS gateway in another process (`tests/push/
//! gateway.py`, Python's ssl module: OpenSSL, a client certificate required): a card captured
//! while the gateway is down is pushed once it is up (retried, one delivery for one
//! idempotency key), signed, with the whole card and the amount; the gateway's reference is
//! kept and the security code forgotten. A client without a certificate, or with one from
//! another CA, is refused by the gateway (judged by curl), and a tonewall holding such a
//! certificate shows the push failed. Of tonewall's files, none holds the card number; the
//! gateway's log does.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::gateway::{Certs, Gateway, SECRET_HEX, certs, free_port};
use common::{TestServer, files_under, http, require_tool, wait_final};
use serde_json::Value;
use tonewall::api::auth::Role;
use tonewall::vault::secret::SecretSource;
use tonewall_testkit::caller::{self, CallerOptions};

const PAN: &str = "4012888888881881";

async fn server(port: u16, c: &Certs, client: &(PathBuf, PathBuf), attempts: u32) -> TestServer {
    let (cert, key, ca) = (client.0.clone(), client.1.clone(), c.gateway_ca.clone());
    TestServer::start_with(move |cfg| {
        cfg.push.url = format!("https://127.0.0.1:{port}/tokenize");
        cfg.push.client_cert = cert;
        cfg.push.client_key = key;
        cfg.push.ca = ca;
        cfg.push.secret = SecretSource::Hex(SECRET_HEX.repeat(32));
        cfg.push.attempts = attempts;
        cfg.push.retry_base_ms = 300;
    })
    .await
}

async fn pay(t: &TestServer, key: &str) -> String {
    let body =
        r#"{"fields":["pan","expiry","cvv","postal_code"],"amount":"12.50","currency":"USD","reference":"push-1"}"#;
    let (s, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(key), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let keys = format!("{PAN}#,1230,737,94105#,1");
    let opts = CallerOptions { linger: Duration::from_secs(2), ..CallerOptions::new(t.server.sip_addr, &uri, &keys) };
    caller::place_call(opts).await.unwrap();
    let s = wait_final(&t.base, key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    id
}

/// The session once its push is no longer pending.
async fn pushed(t: &TestServer, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (_, s) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(key), None).await;
        if s["push"]["state"] != "pending" || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn curl(port: u16, c: &Certs, client: Option<&(PathBuf, PathBuf)>) -> bool {
    require_tool("curl", "apt-get install -y curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "--max-time", "5", "--cacert"]).arg(&c.gateway_ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.args(["-X", "POST", "-d", "{}", &format!("https://127.0.0.1:{port}/tokenize")]);
    cmd.status().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_is_pushed_over_mutual_tls_once_the_gateway_is_up_and_its_code_is_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let port = free_port();
    let t = server(port, &c, &c.ours, 8).await;
    let key = t.key(Role::Agent).await;
    // The gateway is down while the caller keys the card.
    let id = pay(&t, &key).await;
    let (_, s) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&key), None).await;
    assert_eq!(s["push"]["state"], "pending", "{s}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gateway = Gateway::start(port, &c, dir.path());
    let s = pushed(&t, &key, &id).await;
    assert_eq!(s["push"]["state"], "delivered", "{s}");
    assert_eq!(s["push"]["reference"], "gw-1");
    assert!(s["push"]["attempts"].as_u64().unwrap() >= 2, "tried while the gateway was down: {s}");

    let accepted = gateway.accepted();
    assert_eq!(accepted.len(), 1, "one delivery: {accepted:?}");
    let (delivered, client) = (&accepted[0]["body"], &accepted[0]["client"]);
    assert_eq!(client, "tonewall", "the gateway saw tonewall's client certificate");
    assert_eq!((delivered["pan"].as_str(), delivered["expiry"].as_str()), (Some(PAN), Some("1230")));
    assert_eq!((delivered["security_code"].as_str(), delivered["postal_code"].as_str()), (Some("737"), Some("94105")));
    assert_eq!(delivered["amount"], serde_json::json!({"minor": 1250, "currency": "USD"}));
    assert_eq!(delivered["token"], s["result"]["token"]);
    assert_eq!(delivered["session_id"], id.as_str());

    // The code was the push's to use: a processor pulling the card later gets none.
    let processor = t.key(Role::Processor).await;
    let token = s["result"]["token"].as_str().unwrap();
    let (status, card) = http(
        "POST",
        &format!("{}/v1/detokenize", t.base),
        Some(&processor),
        Some(&format!(r#"{{"token":"{token}"}}"#)),
    )
    .await;
    assert_eq!((status, card["pan"].as_str(), card.get("security_code")), (200, Some(PAN), None));
    let (reference,): (Option<String>,) = sqlx::query_as("SELECT gateway_ref FROM cards WHERE token = $1")
        .bind(token)
        .fetch_one(t.server.shared.vault.pool())
        .await
        .unwrap();
    assert_eq!(reference.as_deref(), Some("gw-1"), "kept beside tonewall's token");
    let records = tonewall::vault::audit::records(t.server.shared.vault.pool(), 0, 1000).await.unwrap();
    assert!(records.iter().any(|r| r.action == "push" && r.outcome == "delivered" && r.resource == token));
    assert!(
        records.iter().any(|r| r.action == "detokenize" && r.actor == "push-connector"),
        "the read-back is audited"
    );

    // The gateway checks certificates: none, or one from another CA, is refused (curl).
    assert!(!curl(port, &c, None), "no client certificate");
    assert!(!curl(port, &c, Some(&c.rogue)), "a certificate from another CA");
    // Positive control: curl with tonewall's certificate passes the handshake (401: unsigned).
    let mut ok = Command::new("curl");
    ok.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"]).arg(&c.gateway_ca);
    ok.arg("--cert").arg(&c.ours.0).arg("--key").arg(&c.ours.1);
    ok.args(["-X", "POST", "-d", "{}", &format!("https://127.0.0.1:{port}/tokenize")]);
    assert_eq!(
        String::from_utf8(ok.output().unwrap().stdout).unwrap(),
        "401",
        "handshake passes, the signature does not"
    );

    // Of tonewall's files, none holds the card number; the gateway's log does.
    let ours: Vec<String> = files_under(t.dir.path())
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(PAN.len()).any(|w| w == PAN.as_bytes()))
        .map(|(name, _)| name)
        .collect();
    assert!(ours.is_empty(), "tonewall's files hold the card number: {ours:?}");
    assert!(std::fs::read_to_string(&gateway.log).unwrap().contains(PAN));
    t.stop().await;

    // A tonewall holding a certificate of another CA: the gateway refuses it, the session
    // shows the push failed, and nothing was delivered.
    let t = server(port, &c, &c.rogue, 2).await;
    let key = t.key(Role::Agent).await;
    let id = pay(&t, &key).await;
    let s = pushed(&t, &key, &id).await;
    assert_eq!((s["push"]["state"].as_str(), s["push"]["attempts"].as_u64()), (Some("failed"), Some(2)), "{s}");
    assert_eq!(gateway.accepted().len(), 1, "nothing more delivered");
    t.stop().await;
}

/// A merchant with a gateway of its own: its cards go there, signed with its secret (the
/// gateway refuses any other signature), over the deployment's client certificate; the
/// deployment's merchant's cards still go to the deployment's gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_cards_go_to_its_own_gateway_signed_with_its_own_secret() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let (port, acme_port) = (free_port(), free_port());
    let acme_dir = dir.path().join("acme");
    std::fs::create_dir(&acme_dir).unwrap();
    let acme_secret = "a5".repeat(32);
    let deployment_gateway = Gateway::start(port, &c, dir.path());
    let acme_gateway = Gateway::start_signed(acme_port, &c, &acme_dir, &acme_secret);
    let t = server(port, &c, &c.ours, 3).await;
    let secret_file = t.dir.path().join("acme-push.hex");
    std::fs::write(&secret_file, &acme_secret).unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let operator = t.key(Role::Admin).await;
    let push =
        serde_json::json!({"url": format!("https://127.0.0.1:{acme_port}/tokenize"), "secret": {"file": secret_file}});
    let body = serde_json::json!({"id": "acme", "name": "Acme", "settings": {"push": push}}).to_string();
    let (s, v) = http("POST", &format!("{}/v1/admin/merchants", t.base), Some(&operator), Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    let body = r#"{"role":"agent","merchant":"acme"}"#;
    let (s, v) = http("POST", &format!("{}/v1/admin/keys", t.base), Some(&operator), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let acme_agent = v["key"].as_str().unwrap().to_string();
    let default_agent = t.key(Role::Agent).await;

    let acme_session = pay(&t, &acme_agent).await;
    let default_session = pay(&t, &default_agent).await;
    for (key, id) in [(&acme_agent, &acme_session), (&default_agent, &default_session)] {
        let s = pushed(&t, key, id).await;
        assert_eq!(s["push"]["state"], "delivered", "{s}");
    }
    let sessions = |g: &Gateway| -> Vec<String> {
        g.accepted().iter().map(|a| a["body"]["session_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(sessions(&acme_gateway), [acme_session], "acme's gateway: acme's card only");
    assert_eq!(sessions(&deployment_gateway), [default_session], "the deployment's: the rest");
    assert_eq!(acme_gateway.accepted()[0]["client"], "tonewall", "the deployment's client certificate");
    t.stop().await;
}
