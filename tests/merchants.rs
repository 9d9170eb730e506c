//! Two merchants on one deployment, on SQLite and PostgreSQL. The deployment's admin
//! (merchant `default`) creates them over the API and hands each its first admin key; each
//! merchant's admin makes its own agent, processor and QA keys. Each takes a whole card call
//! (caller keys, tonewall tokenizes, the agent's leg is recorded). Then every key of one
//! merchant tries what an insider of the other would: read, cancel and watch its session,
//! detokenize and erase its token, list, fetch, play and purge its recordings, read its audit
//! records, create its keys, read or change its settings. Each gets the answer for what does
//! not exist, and the other merchant's data is whole afterwards. The merchants' own settings
//! (token format, language, webhook) shape their own captures only: acme's completion goes
//! to acme's webhook signed with acme's secret, globex's to the deployment's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Received, TestServer, http, receiver, wait_final};
use serde_json::{Value, json};
use tonewall::api::auth::Role;
use tonewall::vault::crypto::{SecretKey, unhex};
use tonewall::vault::secret::SecretSource;
use tonewall::vault::testing::TestDatabase;
use tonewall::vault::webhook::{SIGNATURE_HEADER, signature};
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions};

/// One merchant's keys and what its call left.
struct Merchant {
    id: &'static str,
    admin: String,
    agent: String,
    processor: String,
    qa: String,
    session: String,
    token: String,
    recording: String,
    reference: String,
}

async fn post(t: &TestServer, path: &str, key: &str, body: Value) -> (u16, Value) {
    http("POST", &format!("{}{path}", t.base), Some(key), Some(&body.to_string())).await
}

async fn get(t: &TestServer, path: &str, key: &str) -> (u16, Value) {
    http("GET", &format!("{}{path}", t.base), Some(key), None).await
}

/// A merchant created by the deployment's admin, its keys, and one whole recorded card call.
async fn onboard(t: &TestServer, operator: &str, id: &'static str, settings: Value, pan: &str) -> Merchant {
    let (s, v) = post(t, "/v1/admin/merchants", operator, json!({"id": id, "name": id, "settings": settings})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(t, "/v1/admin/keys", operator, json!({"role": "admin", "merchant": id, "name": "first"})).await;
    assert_eq!(s, 201, "{v}");
    let admin = v["key"].as_str().unwrap().to_string();
    let key = |role: &'static str| {
        let admin = admin.clone();
        async move {
            let (s, v) = post(t, "/v1/admin/keys", &admin, json!({"role": role})).await;
            assert_eq!(s, 201, "{v}");
            v["key"].as_str().unwrap().to_string()
        }
    };
    let (agent, processor, qa) = (key("agent").await, key("processor").await, key("qa").await);

    let phone = Agent::start().await.unwrap();
    let reference = format!("order-{id}");
    let body = json!({"reference": reference, "agent_uri": phone.uri});
    let (s, v) = post(t, "/v1/sessions", &agent, body).await;
    assert_eq!(s, 201, "{v}");
    let (session, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let keys = format!("{pan}#,1230,123");
    let opts = CallerOptions { linger: Duration::from_secs(2), ..CallerOptions::new(t.server.sip_addr, &uri, &keys) };
    caller::place_call(opts).await.unwrap();
    let done = wait_final(&t.base, &agent, &session, Duration::from_secs(10)).await;
    assert_eq!(done["state"], "completed", "{done}");
    phone.finish().await.unwrap();
    let token = done["result"]["token"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let recording = loop {
        let (_, v) = get(t, "/v1/recordings", &qa).await;
        if let Some(id) = v["recordings"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "{id}'s call was not recorded: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Merchant { id, admin, agent, processor, qa, session, token, recording, reference }
}

/// Every way `other`'s keys could reach `m`'s data: each answered as if it did not exist.
async fn cannot_reach(t: &TestServer, other: &Merchant, m: &Merchant) {
    let case = format!("{} → {}", other.id, m.id);
    for key in [&other.agent, &other.admin] {
        let (s, v) = get(t, &format!("/v1/sessions/{}", m.session), key).await;
        assert_eq!(s, 404, "{case}: session view {v}");
        let (s, v) = post(t, &format!("/v1/sessions/{}/cancel", m.session), key, json!({})).await;
        assert_eq!(s, 404, "{case}: cancel {v}");
        let (s, _) = get(t, &format!("/v1/sessions/{}/events", m.session), key).await;
        assert_eq!(s, 404, "{case}: events");
    }
    let (s, v) = post(t, "/v1/detokenize", &other.processor, json!({"token": m.token})).await;
    assert_eq!(s, 404, "{case}: detokenize {v}");
    for key in [&other.processor, &other.admin] {
        let (s, v) = http("DELETE", &format!("{}/v1/tokens/{}", t.base, m.token), Some(key), None).await;
        assert_eq!(s, 404, "{case}: erase {v}");
    }
    let (s, v) = post(t, "/v1/tokenize", &other.processor, json!({"pan": "4000056655665556", "merchant": m.id})).await;
    assert_eq!(s, 403, "{case}: tokenize into the other merchant {v}");

    {
        let key = &other.qa;
        let (s, v) = get(t, "/v1/recordings", key).await;
        assert_eq!(s, 200, "{v}");
        let ids: Vec<&str> = v["recordings"].as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!((ids, v["total"].as_i64()), (vec![other.recording.as_str()], Some(1)), "{case}: recordings listed");
        let (s, v) = get(t, &format!("/v1/recordings?reference={}", m.reference), key).await;
        assert_eq!((s, v["total"].as_i64()), (200, Some(0)), "{case}: the other's reference {v}");
        let (s, v) = get(t, &format!("/v1/recordings/{}", m.recording), key).await;
        assert_eq!(s, 404, "{case}: recording {v}");
        let (s, _) = get(t, &format!("/v1/recordings/{}/audio", m.recording), key).await;
        assert_eq!(s, 404, "{case}: audio");
    }
    let purge = format!("{}/v1/recordings?reference={}", t.base, m.reference);
    let (s, v) = http("DELETE", &purge, Some(&other.admin), None).await;
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(0)), "{case}: purge by the other's reference {v}");

    let (s, v) = get(t, "/v1/admin/audit?limit=1000", &other.admin).await;
    assert_eq!(s, 200, "{v}");
    let records = v["records"].as_array().unwrap();
    assert!(!records.is_empty(), "{case}: its own audit is readable");
    for r in records {
        // Its own tries at the other's ids are its records (refused, as unknown); what the
        // other merchant did is not.
        assert_eq!(r["merchant"], other.id, "{case}: {r}");
        let by_other_call = r["actor"].as_str().is_some_and(|a| a.contains(&m.session));
        let stored_other = r["action"] == "tokenize" && r["resource"] == m.token.as_str();
        assert!(!by_other_call && !stored_other, "{case}: the other's record {r}");
    }

    let (s, v) = post(t, "/v1/admin/keys", &other.admin, json!({"role": "processor", "merchant": m.id})).await;
    assert_eq!(s, 404, "{case}: a key for the other merchant {v}");
    let (s, v) = get(t, &format!("/v1/admin/merchants/{}", m.id), &other.admin).await;
    assert_eq!(s, 404, "{case}: the other's settings {v}");
    let (s, v) = get(t, "/v1/admin/merchants", &other.admin).await;
    let ids: Vec<&str> = v["merchants"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!((s, ids), (200, vec![other.id]), "{case}: merchants listed");
    let patch = json!({"settings": {"retention_days": 1}});
    let (s, v) =
        http("PATCH", &format!("{}/v1/admin/merchants/{}", t.base, m.id), Some(&other.admin), Some(&patch.to_string()))
            .await;
    assert_eq!(s, 403, "{case}: changing merchants is the deployment's {v}");
    let (s, v) = post(t, "/v1/admin/merchants", &other.admin, json!({"id": "mine", "name": "mine"})).await;
    assert_eq!(s, 403, "{case}: creating merchants is the deployment's {v}");
    let (s, v) = post(t, "/v1/admin/lockdown", &other.admin, json!({"reason": "test"})).await;
    assert_eq!(s, 403, "{case}: a lockdown stops every merchant: the deployment's {v}");
}

/// `m`'s data, whole after the other's attempts, through its own keys.
async fn still_whole(t: &TestServer, m: &Merchant, pan: &str) {
    let (s, v) = get(t, &format!("/v1/sessions/{}", m.session), &m.agent).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("completed")), "{v}");
    let (s, v) = post(t, "/v1/detokenize", &m.processor, json!({"token": m.token})).await;
    assert_eq!((s, v["pan"].as_str()), (200, Some(pan)), "{}: {v}", m.id);
    let (s, v) = get(t, &format!("/v1/recordings/{}", m.recording), &m.qa).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = get(t, &format!("/v1/recordings/{}/audio", m.recording), &m.qa).await;
    assert_eq!(s, 200);
}

/// A webhook endpoint on loopback (`common::receiver`) that keeps what it is sent; its URL.
async fn webhook() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    (url, receiver(listener, 0).await)
}

/// The completions a webhook endpoint received, each checked against `secret`: session ids.
async fn completions(got: &Received, secret_hex: &str, want: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secret = SecretKey::from_bytes(&unhex(secret_hex).unwrap()).unwrap();
    let got = got.lock().unwrap().clone();
    got.iter()
        .map(|(headers, body)| {
            let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
            let t: i64 = sig.strip_prefix("t=").and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
            assert_eq!(sig, signature(&secret, t, body), "signed with this endpoint's secret");
            let event: Value = serde_json::from_str(body).unwrap();
            event["session_id"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn two_merchants(db: TestDatabase) {
    let (deployment_hook, deployment_got) = webhook().await;
    let (acme_hook, acme_got) = webhook().await;
    let deployment_secret = "42".repeat(32);
    let acme_secret = "a5".repeat(32);
    let url = db.url.clone();
    let secret = deployment_secret.clone();
    let t = TestServer::start_with(move |c| {
        c.storage.database_url = url;
        c.webhook.url = deployment_hook;
        c.webhook.secret = SecretSource::Hex(secret);
        c.webhook.retry_base_s = 1;
    })
    .await;
    let acme_secret_file = t.dir.path().join("acme-hook.hex");
    std::fs::write(&acme_secret_file, &acme_secret).unwrap();
    std::fs::set_permissions(&acme_secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let operator = t.key(Role::Admin).await;
    // Acme sets its own token format (format-preserving, where the deployment's is random) and
    // its own webhook.
    let acme_settings = json!({
        "token_format": "format_preserving",
        "retention_days": 30,
        "webhook": {"url": acme_hook, "secret": {"file": acme_secret_file}},
    });
    let acme = onboard(&t, &operator, "acme", acme_settings, "4111111111111111").await;
    let globex = onboard(&t, &operator, "globex", json!({}), "5555555555554444").await;
    assert_eq!((&acme.token[..6], acme.token.len()), ("411111", 16), "acme's tokens keep the card's shape");
    assert!(!globex.token.starts_with("555555"), "globex's are the deployment's random ones: {}", globex.token);

    assert_eq!(completions(&acme_got, &acme_secret, 1).await, [acme.session.as_str()], "acme's webhook: acme's only");
    assert_eq!(completions(&deployment_got, &deployment_secret, 1).await, [globex.session.as_str()], "the rest");

    cannot_reach(&t, &globex, &acme).await;
    cannot_reach(&t, &acme, &globex).await;
    still_whole(&t, &acme, "4111111111111111").await;
    still_whole(&t, &globex, "5555555555554444").await;

    // The deployment's admin sees both merchants, and neither's data.
    let (_, v) = get(&t, "/v1/admin/merchants", &operator).await;
    let ids: Vec<&str> = v["merchants"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["acme", "default", "globex"]);
    let (s, _) = get(&t, &format!("/v1/sessions/{}", acme.session), &operator).await;
    assert_eq!(s, 404, "the deployment's admin is not acme's");
    let (_, v) = get(&t, "/v1/admin/audit?limit=1000", &operator).await;
    let records = v["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["merchant"].is_null()), "tonewall's own records are default's to read: {v}");
    assert!(records.iter().any(|r| r["action"] == "merchant.create" && r["resource"] == "acme"), "{v}");
    assert!(records.iter().all(|r| r["merchant"].is_null() || r["merchant"] == "default"), "only default's: {v}");
    // The deployment's admin changes acme's language and card fields: acme's next session
    // asks for them; globex's keeps the deployment's.
    let patch = json!({"settings": {"language": "es", "card_fields": ["pan", "postal_code"], "retention_days": null}});
    let url = format!("{}/v1/admin/merchants/acme", t.base);
    let (s, v) = http("PATCH", &url, Some(&operator), Some(&patch.to_string())).await;
    assert_eq!(s, 200, "{v}");
    let settings = &v["settings"];
    assert_eq!((&settings["language"], &settings["retention_days"]), (&json!("es"), &Value::Null), "{v}");
    assert_eq!(settings["token_format"], "format_preserving", "what the patch left out stays: {v}");
    let body = json!({"reference": "next", "agent_uri": "sip:desk@127.0.0.1"});
    let (_, a) = post(&t, "/v1/sessions", &acme.agent, body.clone()).await;
    let (_, g) = post(&t, "/v1/sessions", &globex.agent, body).await;
    assert_eq!(
        (&a["capture"]["language"], &a["capture"]["fields"]),
        (&json!("es"), &json!(["pan", "postal_code"])),
        "{a}"
    );
    assert_eq!(
        (&g["capture"]["language"], &g["capture"]["fields"]),
        (&json!("en"), &json!(["pan", "expiry", "cvv"])),
        "{g}"
    );
    let bad = json!({"settings": {"webhook": {"url": "https://p.example/h", "secret": {"hex": "00"}}}});
    let (s, v) = http("PATCH", &url, Some(&operator), Some(&bad.to_string())).await;
    assert_eq!(s, 400, "a secret inside the database is refused: {v}");

    // The audit chain holds every merchant's records, and verifies whole.
    let verified = t.server.shared.vault.verify_audit().await.unwrap();
    assert!(verified.findings.is_empty(), "{}: {:?}", db.label, verified.findings);
    t.stop().await;
}

#[tokio::test]
async fn two_merchants_see_nothing_of_each_others_data_on_sqlite() {
    two_merchants(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn two_merchants_see_nothing_of_each_others_data_on_postgres() {
    two_merchants(TestDatabase::postgres().await).await;
}

/// An inline route's calls belong to the merchant it names; a route naming no merchant that
/// exists is refused at start, not discovered at the first call.
#[tokio::test]
async fn a_route_naming_no_merchant_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    let route = "name = \"sales\"\nuser_prefix = \"sales\"\ntarget = \"sip:q@127.0.0.1:5999\"\nsources = [\"127.0.0.1\"]\nmerchant = \"nobody\"";
    config.sip.routes.push(toml::from_str(route).unwrap());
    let refused = tonewall::runtime::Server::start(config).await.err().expect("refused");
    let text = refused.to_string();
    assert!(text.contains("route sales names merchant nobody, which does not exist"), "{text}");
}

/// The operator's commands: `merchant create | list | update`, `api-key create --merchant`,
/// `api-key list --merchant`, `user add --merchant`; each refused with its reason where it
/// should be, and each change in the audit trail.
#[tokio::test]
async fn the_merchant_commands_create_list_update_and_scope_keys_and_people() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &[]);
    let data = dir.path().join("data");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
        match stdin {
            None => common::tonewall(&all, &[]),
            Some(input) => {
                use std::io::Write as _;
                let mut child = std::process::Command::new(common::BIN)
                    .args(&all)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                let out = child.wait_with_output().unwrap();
                let text = |b: Vec<u8>| String::from_utf8_lossy(&b).to_string();
                (out.status.success(), text(out.stdout), text(out.stderr))
            }
        }
    };
    let settings = r#"{"language":"fr","token_format":"format_preserving"}"#;
    let (ok, out, err) =
        run(&["merchant", "create", "--id", "acme", "--name", "Acme Ltd", "--settings", settings], None);
    assert!(ok && out.contains("merchant acme created"), "{out}{err}");
    let (ok, _, err) = run(&["merchant", "create", "--id", "acme", "--name", "Again"], None);
    assert!(!ok && err.contains("merchant acme already exists"), "{err}");
    let (ok, _, err) = run(&["merchant", "create", "--id", "Acme Ltd", "--name", "x"], None);
    assert!(!ok && err.contains("lowercase letters"), "{err}");
    let (ok, _, err) = run(&["merchant", "update", "--id", "acme", "--settings", r#"{"langauge":"es"}"#], None);
    assert!(!ok && err.contains("unknown field `langauge`"), "a misspelt setting: {err}");
    let hook = r#"{"webhook":{"url":"https://p.example/h","secret":{"file":"/nonexistent/acme.hex"}}}"#;
    let (ok, _, err) = run(&["merchant", "update", "--id", "acme", "--settings", hook], None);
    assert!(!ok && err.contains("webhook.secret"), "a secret file that cannot be read: {err}");
    let (ok, out, err) = run(&["merchant", "update", "--id", "acme", "--settings", r#"{"language":null}"#], None);
    assert!(ok && out.contains("merchant acme updated"), "{out}{err}");
    let (ok, list, err) = run(&["merchant", "list"], None);
    assert!(ok, "{err}");
    let acme = list.lines().find(|l| l.starts_with("acme\t")).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(acme, "acme\tAcme Ltd\t{\"token_format\":\"format_preserving\"}", "{list}");
    assert!(list.lines().any(|l| l.starts_with("default\t")), "{list}");

    let (ok, _, err) = run(&["api-key", "create", "--role", "processor", "--merchant", "nobody"], None);
    assert!(!ok && err.contains("no merchant nobody"), "{err}");
    let (ok, _, err) =
        run(&["api-key", "create", "--role", "processor", "--merchant", "acme", "--name", "acme psp"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["api-key", "create", "--role", "processor", "--name", "ours"], None);
    assert!(ok, "{err}");
    let (_, acme_keys, _) = run(&["api-key", "list", "--merchant", "acme"], None);
    assert!(acme_keys.contains("acme psp") && !acme_keys.contains("ours"), "{acme_keys}");
    assert!(acme_keys.lines().skip(1).all(|l| l.ends_with("\tacme")), "{acme_keys}");
    let password = "correct horse battery staple\n";
    let (ok, _, err) =
        run(&["user", "add", "--username", "ana", "--role", "agent", "--merchant", "acme"], Some(password));
    assert!(ok, "{err}");
    let (_, users, _) = run(&["user", "list"], None);
    assert!(users.lines().any(|l| l.starts_with("ana\tagent\t") && l.ends_with("\tacme")), "{users}");

    let (ok, out, err) = run(&["audit", "verify"], None);
    assert!(ok, "{out}{err}");
    // The records themselves, read through the library on the same data directory.
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&data)).await.unwrap();
    let records = tonewall::vault::audit::records(vault.pool(), 0, 1000).await.unwrap();
    let done: Vec<String> = records
        .iter()
        .filter(|r| r.action.starts_with("merchant.") || r.action == "api_key.create" || r.action == "user.add")
        .map(|r| format!("{}:{}", r.action, r.resource))
        .collect();
    assert_eq!(done[0], "merchant.create:acme", "{done:?}");
    assert_eq!(done[1], "merchant.update:acme", "{done:?}");
    assert!(done.iter().any(|d| d == "user.add:ana"), "{done:?}");
    assert_eq!(done.iter().filter(|d| d.starts_with("api_key.create")).count(), 2, "{done:?}");
}
