//! Lockdown (PCI DSS 12.10.1): `tonewall lockdown start` from a shell stops a running
//! server's detokenize and new captures at its very next request (423, and 503 to a
//! session's caller); agents and processors cannot lift it, an admin can; the API can start
//! one too and revoke every key of a role with it; each step is audited.

mod common;

use common::{TestServer, http, tonewall};
use tonewall::api::auth::Role;
use tonewall::vault::audit;
use tonewall_testkit::SoftphoneError;
use tonewall_testkit::caller::{self, CallerOptions};

const SESSION: &str =
    r#"{"fields":["pan","expiry","cvv"],"reference":"lockdown","agent_uri":"sip:agent@127.0.0.1:5070"}"#;

#[tokio::test]
async fn a_lockdown_stops_detokenize_and_captures_at_the_next_request_until_an_admin_lifts_it() {
    let t = TestServer::start().await;
    let data = t.dir.path().to_str().unwrap().to_string();
    let (processor, agent, admin) = (t.key(Role::Processor).await, t.key(Role::Agent).await, t.key(Role::Admin).await);
    let url = |p: &str| format!("{}{p}", t.base);
    let (s, v) = http("POST", &url("/v1/tokenize"), Some(&processor), Some(r#"{"pan":"4000056655665556"}"#)).await;
    assert_eq!(s, 201, "{v}");
    let detokenize = format!(r#"{{"token":"{}"}}"#, v["token"].as_str().unwrap());
    let detokenize_url = url("/v1/detokenize");
    let detok = || http("POST", &detokenize_url, Some(&processor), Some(&detokenize));
    assert_eq!(detok().await.0, 200);
    let (s, before) = http("POST", &url("/v1/sessions"), Some(&agent), Some(SESSION)).await;
    assert_eq!(s, 201);

    let (ok, out, err) = tonewall(&["lockdown", "start", "--reason", "suspected key leak", "--data-dir", &data], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("lockdown in force"), "{out}");
    let (s, v) = detok().await;
    assert_eq!((s, v["error"]["code"].as_str()), (423, Some("lockdown")), "the very next detokenize: {v}");
    assert_eq!(http("POST", &url("/v1/sessions"), Some(&agent), Some(SESSION)).await.0, 423, "new captures");
    // A session made before the lockdown: its caller is turned away, and it keeps waiting.
    let uri = before["transfer_uri"].as_str().unwrap();
    let options = CallerOptions::new(t.server.sip_addr, uri, "4111111111111111#");
    match caller::place_call(options).await {
        Err(SoftphoneError::Refused(status)) => assert_eq!(status, 503),
        other => panic!("a caller got through the lockdown: {:?}", other.map(|r| r.answered)),
    }
    let (_, v) =
        http("GET", &url(&format!("/v1/sessions/{}", before["id"].as_str().unwrap())), Some(&agent), None).await;
    assert_eq!(v["state"], "waiting", "{v}");
    let (s, v) = http("GET", &url("/v1/admin/lockdown"), Some(&admin), None).await;
    assert_eq!((s, v["locked"].as_bool(), v["by"].as_str()), (200, Some(true), Some("cli")), "{v}");
    for key in [&agent, &processor] {
        assert_eq!(
            http("POST", &url("/v1/admin/lockdown/lift"), Some(key), None).await.0,
            403,
            "only an admin lifts it"
        );
    }
    assert_eq!(detok().await.0, 423, "still locked");
    let (s, v) = http("POST", &url("/v1/admin/lockdown/lift"), Some(&admin), None).await;
    assert_eq!((s, v["locked"].as_bool()), (200, Some(false)));
    assert_eq!(detok().await.0, 200, "lifted");

    // From the API, revoking every agent key with it.
    let body = r#"{"reason":"agent keys copied to a wiki","revoke_role":"agent"}"#;
    let (s, v) = http("POST", &url("/v1/admin/lockdown"), Some(&admin), Some(body)).await;
    assert_eq!((s, v["locked"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(detok().await.0, 423);
    assert_eq!(http("GET", &url("/v1/auth/me"), Some(&agent), None).await.0, 401, "the agent key is revoked");
    let (ok, out, _) = tonewall(&["lockdown", "status", "--data-dir", &data], &[]);
    assert!(ok && out.contains("agent keys copied to a wiki"), "{out}");
    let (ok, _, err) = tonewall(&["lockdown", "lift", "--data-dir", &data], &[]);
    assert!(ok, "{err}");
    assert_eq!(detok().await.0, 200);

    let pool = t.server.shared.vault.pool();
    let trail = audit::records(pool, 0, 10_000).await.unwrap();
    let count = |action: &str| trail.iter().filter(|r| r.action == action).count();
    assert_eq!((count("lockdown.start"), count("lockdown.lift"), count("lockdown.revoke_role")), (2, 2, 1));
    assert_eq!(count("authz"), 2, "the refused lifts");
    let vault = &t.server.shared.vault;
    assert_eq!(audit::verify(pool, &vault.keys().audit).await.unwrap().1, vec![]);
    t.stop().await;
}

/// Under traffic: four processors detokenize in a loop while `tonewall lockdown start` runs in
/// another process. Every request sent after the command returned gets 423; none is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_traffic_no_detokenize_sent_after_the_lockdown_is_served() {
    let t = TestServer::start_with(|c| {
        c.vault.detokenize_per_minute = 1_000_000;
        c.vault.bulk_alarm_per_hour = 1_000_000;
    })
    .await;
    let data = t.dir.path().to_str().unwrap().to_string();
    let processor = t.key(Role::Processor).await;
    let (s, v) =
        http("POST", &format!("{}/v1/tokenize", t.base), Some(&processor), Some(r#"{"pan":"4000056655665556"}"#)).await;
    assert_eq!(s, 201, "{v}");
    let body = format!(r#"{{"token":"{}"}}"#, v["token"].as_str().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, key, body, stop) =
                (format!("{}/v1/detokenize", t.base), processor.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = std::time::Instant::now();
                    seen.push((sent, http("POST", &url, Some(&key), Some(&body)).await.0));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        tonewall(&["lockdown", "start", "--reason", "under traffic", "--data-dir", &data], &[])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let locked_at = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let before = seen.iter().filter(|(at, s)| *at < locked_at && *s == 200).count();
    let after: Vec<u16> = seen.iter().filter(|(at, _)| *at >= locked_at).map(|(_, s)| *s).collect();
    println!("{before} served before the lockdown returned, {} sent after it: all {:?}", after.len(), after.first());
    assert!(before > 10 && after.len() > 10, "traffic on both sides: {before}, {}", after.len());
    assert!(after.iter().all(|s| *s == 423), "a detokenize sent after the lockdown was not refused: {after:?}");
    t.stop().await;
}
