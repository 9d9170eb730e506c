//! Monitoring (issue 19): a real Prometheus, with the shipped `sip-config/prometheus/` scrape
//! config and alert rules, scrapes a node that has just captured a card, and its queries give
//! back what the call did (keys by source, the set-up, the capture, the tokenize); promtool
//! lints the exposition. `/readyz` fails each check it makes when that thing is broken (RTP
//! ports taken, the stored data key not the one the KEK unwraps, the audit trail unwritable,
//! draining, the database closed) and recovers when it is mended; neither route answers an
//! address outside `http.monitoring_from`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::sipp::{KillOnDrop, free_tcp_port, free_udp_port};
use common::{TestCard, TestServer, assert_card_whole, create_session, require_tool, send_keys, wait_final};
use serde_json::Value;
use tokio::net::UdpSocket;
use tonewall::api::auth::Role;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{Method, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall_testkit::Ua;

const CARD: TestCard = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "321" };

/// One call that keys the card number and expiry as RFC 4733 events and the security code
/// as SIP INFO, captured whole; it ends with tonewall's BYE.
async fn capture_one_card(t: &TestServer) {
    let agent = t.key(Role::Agent).await;
    let (id, uri) = create_session(&t.base, &agent, "monitored").await;
    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp::write(([127, 0, 0, 1], rtp.local_addr().unwrap().port()).into(), 1, &[Codec::Pcmu], Some(101));
    let (invite, call_id, from_tag) = caller.invite(&uri, &offer);
    let server = t.server.sip_addr;
    let ok = caller.call(&invite, server, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let target = ok.contact_uri().unwrap().to_string();
    caller.send(&caller.in_dialog(Method::Ack, &call_id, &from_tag, ok.to(), 1, &target), server).await.unwrap();
    let media = RemoteDescription::parse(ok.body()).unwrap().remote;
    send_keys(&rtp, media, &format!("{}#", CARD.pan), 0, 51).await;
    send_keys(&rtp, media, &format!("{:02}{:02}", CARD.month, CARD.year % 100), 17, 51).await;
    for (i, digit) in CARD.code.chars().enumerate() {
        let body = format!("Signal={digit}\r\nDuration=160\r\n");
        let info =
            String::from_utf8(caller.in_dialog(Method::Info, &call_id, &from_tag, ok.to(), 2 + i as u32, &target))
                .unwrap()
                .replacen(
                    "Content-Length: 0\r\n",
                    &format!("Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n", body.len()),
                    1,
                )
                + &body;
        caller.send(info.as_bytes(), server).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = wait_final(&t.base, &agent, &id, Duration::from_secs(15)).await;
    assert_card_whole(t, &session, &CARD, "the monitored call").await;
    // Answer tonewall's BYE so the call ends now rather than when its BYE times out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (msg, from) = tokio::time::timeout(left, caller.recv()).await.expect("tonewall's BYE").unwrap();
        if let SipMessage::Request(r) = msg {
            caller.answer(&r, from).await.unwrap();
            if r.method() == Method::Bye {
                break;
            }
        }
    }
}

/// A Prometheus server on loopback with the shipped configuration, scraping `target` every
/// second.
fn start_prometheus(dir: &Path, target: SocketAddr) -> (KillOnDrop, String) {
    require_tool("prometheus", "apt-get install -y prometheus");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config/prometheus");
    let config = std::fs::read_to_string(shipped.join("prometheus.yml")).unwrap();
    for needle in ["127.0.0.1:8080", "scrape_interval: 15s", "evaluation_interval: 15s"] {
        assert!(config.contains(needle), "prometheus.yml has no {needle}");
    }
    let config = config
        .replace("127.0.0.1:8080", &target.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(shipped.join("tonewall-alerts.yml"), dir.join("tonewall-alerts.yml")).unwrap();
    let port = free_tcp_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    (KillOnDrop(Some(child)), format!("http://127.0.0.1:{port}"))
}

/// A GET of Prometheus's HTTP API; its `data`, or Null while it is not up.
async fn prometheus_api(url: String, query: Option<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent.get(&url);
        if let Some(q) = &query {
            req = req.query("query", q);
        }
        let Ok(mut resp) = req.call() else { return Value::Null };
        let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        body["data"].clone()
    })
    .await
    .unwrap()
}

/// The value of an instant query once it equals `want`, or what it last was after 30 s.
async fn query_until(prom: &str, expr: &str, want: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let data = prometheus_api(format!("{prom}/api/v1/query"), Some(expr.to_string())).await;
        let value = data["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
        if value == Some(want) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_what_a_call_did_and_loads_the_shipped_alerts() {
    let t = TestServer::start().await;
    capture_one_card(&t).await;
    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, prom) = start_prometheus(dir.path(), t.server.http_addr);
    let expected = [
        ("up{job=\"tonewall\"}", 1.0),
        ("tonewall_keys_total{source=\"rfc4733\"}", 21.0),
        ("tonewall_keys_total{source=\"sip_info\"}", 3.0),
        ("tonewall_keys_total{source=\"in_band\"}", 0.0),
        ("tonewall_call_setups_total{result=\"answered\"}", 1.0),
        ("tonewall_captures_total{result=\"completed\"}", 1.0),
        ("tonewall_vault_operation_seconds_count{op=\"tokenize\"}", 1.0),
        ("tonewall_vault_operation_seconds_count{op=\"detokenize\"}", 1.0),
        ("tonewall_audit_write_failures_total", 0.0),
        ("tonewall_calls_active", 0.0),
        ("tonewall_sessions{state=\"completed\"}", 1.0),
        ("tonewall_node_state{state=\"serving\"}", 1.0),
        ("count(tonewall_build_info)", 1.0),
        ("tonewall_masked_frames_total > bool 0", 1.0),
    ];
    let mut wrong = Vec::new();
    for (expr, want) in expected {
        let got = query_until(&prom, expr, want).await;
        println!("{expr} = {got:?}");
        if got != Some(want) {
            wrong.push(format!("{expr}: {got:?}, want {want}"));
        }
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(wrong.is_empty(), "{wrong:#?}\nprometheus log:\n{log}");

    // The shipped alert rules load, and evaluate without error against these series.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let data = prometheus_api(format!("{prom}/api/v1/rules"), None).await;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown");
        if evaluated || tokio::time::Instant::now() > deadline {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rules.len(), 9, "{rules:#?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{}: {}", r["name"], r["lastError"]);
        assert_eq!(r["state"], "inactive", "{} fires on a healthy node", r["name"]);
    }

    // promtool, Prometheus's own linter, finds nothing wrong with the exposition.
    let (status, headers, text) = common::http_raw("GET", &format!("{}/metrics", t.base), None, None).await;
    assert_eq!(status, 200);
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Counts only: no session id, token or digit string of the card is in it.
    assert!(!text.contains(CARD.pan) && !text.contains("tok_"), "{text}");
    t.stop().await;
}

/// GET `path` from a socket bound to `source`: (status, JSON body).
async fn get_from(source: [u8; 4], server: SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).unwrap();
    let mut conn = socket.connect(server).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `/readyz` from loopback: its status and the check that failed, if one did.
async fn readyz(t: &TestServer) -> (u16, Value) {
    get_from([127, 0, 0, 1], t.server.http_addr, "/readyz").await
}

fn failed(checks: &Value) -> Vec<String> {
    checks.as_object().unwrap().iter().filter(|(_, v)| *v != "ok").map(|(k, _)| k.clone()).collect()
}

#[tokio::test]
async fn readyz_fails_each_check_when_its_thing_is_broken_and_recovers() {
    // Two even ports: room for exactly one call.
    let base = free_udp_port(6);
    let min = base + base % 2;
    let t = TestServer::start_with(|c| {
        c.media.rtp_port_min = min;
        c.media.rtp_port_max = min + 3;
        c.http.monitoring_from = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let pool = t.server.shared.vault.pool().clone();
    let seq = || async { sqlx::query_as::<_, (i64,)>("SELECT seq FROM audit_head").fetch_one(&pool).await.unwrap().0 };
    let (status, v) = readyz(&t).await;
    assert_eq!((status, failed(&v["checks"])), (200, vec![]), "{v}");
    assert_eq!(v["ready"], true);
    // Probes do not grow the audit chain.
    let before = seq().await;
    for _ in 0..5 {
        assert_eq!(readyz(&t).await.0, 200);
    }
    assert_eq!(seq().await, before, "five probes appended to the audit trail");

    // Outside monitoring_from, neither route exists; the liveness probe answers anyone.
    let stranger = [127, 0, 0, 2];
    assert_eq!(get_from(stranger, t.server.http_addr, "/readyz").await.0, 404);
    assert_eq!(get_from(stranger, t.server.http_addr, "/metrics").await.0, 404);
    assert_eq!(get_from(stranger, t.server.http_addr, "/healthz").await.0, 200);

    // Someone else holds the RTP ports.
    let held: Vec<std::net::UdpSocket> =
        [min, min + 2].iter().map(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).unwrap()).collect();
    let (status, v) = readyz(&t).await;
    assert_eq!((status, failed(&v["checks"])), (503, vec!["rtp_ports".to_string()]), "{v}");
    assert_eq!(v["ready"], false);
    drop(held);
    assert_eq!(readyz(&t).await.0, 200, "ports free again");

    // The stored data key is not the one this KEK wraps (a restored copy under another KEK,
    // or a tampered row).
    let (id, wrapped): (i64, Vec<u8>) =
        sqlx::query_as("SELECT id, wrapped FROM data_keys WHERE purpose = 'encryption' ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut tampered = wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let set = |bytes: Vec<u8>| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE id = $2")
                .bind(bytes)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    set(tampered).await;
    let (status, v) = readyz(&t).await;
    assert_eq!((status, failed(&v["checks"])), (503, vec!["kek".to_string()]), "{v}");
    set(wrapped).await;
    assert_eq!(readyz(&t).await.0, 200, "the key as stored again");

    // The audit trail cannot be written.
    sqlx::query("ALTER TABLE audit_head RENAME TO audit_head_away").execute(&pool).await.unwrap();
    let (status, v) = readyz(&t).await;
    assert_eq!((status, failed(&v["checks"])), (503, vec!["audit".to_string()]), "{v}");
    sqlx::query("ALTER TABLE audit_head_away RENAME TO audit_head").execute(&pool).await.unwrap();
    assert_eq!(readyz(&t).await.0, 200, "the audit trail writable again");

    // Draining.
    t.server.shared.drain(30);
    let (status, v) = readyz(&t).await;
    assert_eq!((status, failed(&v["checks"])), (503, vec!["admitting".to_string()]), "{v}");

    // The database gone: every check that needs it fails, and says so.
    pool.close().await;
    let (status, v) = readyz(&t).await;
    let mut broken = failed(&v["checks"]);
    broken.sort();
    assert_eq!(status, 503);
    assert_eq!(broken, ["admitting", "audit", "database", "kek"], "{v}");
}
