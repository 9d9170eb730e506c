//! A cluster (issue 19): `scripts/cluster start 3` runs PostgreSQL, three tonewall nodes on
//! 127.0.0.2-4 sharing one vault, and Kamailio on 127.0.0.1:5070 with the shipped
//! `sip-config/kamailio/kamailio.cfg`. Sessions live in the shared database: one is created
//! through one node's API, its call goes through Kamailio to whichever node the dispatcher
//! picks (which claims it), and it is watched, asked to restart a field, cancelled and read
//! through the other nodes' APIs and WebSockets. The card is stored whole; another node
//! detokenizes it whole, the number and expiry from the shared vault and the security code
//! from the memory of the capturing node (never in the database), which releases it once. A node sent SIGTERM finishes
//! the capture it has (no call cut) while new calls go to the others, and exits; a node
//! killed with SIGKILL mid-capture: that capture shows `failed` with reason `node_lost` on
//! the node left (its lease ran out), and every new call after the probe interval succeeds.
//! At the end every acknowledged token detokenizes and the audit chain, written by three
//! processes, verifies.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestCard, card_differences, detokenize_session, http, require_tool, send_keys, tonewall};
use serde_json::Value;
use tokio::net::UdpSocket;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{Method, Response, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall::vault::crypto::SecretKey;
use tonewall_testkit::Ua;

const PROXY: &str = "127.0.0.1:5070";
const NODES: usize = 3;

fn unix_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Both tests use the same addresses and database: one cluster at a time.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The running cluster; stopped (every process, the database dropped) when dropped.
struct Cluster {
    nodes: usize,
    dir: tempfile::TempDir,
    agent: String,
    processor: String,
}

impl Cluster {
    fn script(dir: &Path, args: &[&str], extra: &str) -> (bool, String) {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(args)
            .env("TONEWALL_CLUSTER_DIR", dir)
            .env("TONEWALL_CLUSTER_EXTRA", extra)
            .env("TONEWALL_BIN", common::BIN)
            .env("TONEWALL_PROBE_INTERVAL_S", "1")
            .env("TONEWALL_NODE_LEASE_S", "2")
            .output()
            .expect("run scripts/cluster");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// `extra`: TOML every node's configuration ends with.
    fn start(nodes: usize, extra: &str) -> Cluster {
        require_tool("kamailio", "apt-get install -y kamailio");
        require_tool("psql", "apt-get install -y postgresql-client");
        let dir = tempfile::tempdir().unwrap();
        let (ok, out) = Cluster::script(dir.path(), &["start", &nodes.to_string()], extra);
        assert!(ok, "scripts/cluster start: {out}");
        println!("{out}");
        let node1 = dir.path().join("node1");
        let (cfg, data) = (node1.join("tonewall.toml"), node1.join("data"));
        let key = |role: &str| {
            let args = ["api-key", "create", "--role", role, "--config", cfg.to_str().unwrap(), "--data-dir"];
            let (ok, key, err) = tonewall(&[&args[..], &[data.to_str().unwrap()]].concat(), &[]);
            assert!(ok, "{err}");
            key.trim().to_string()
        };
        let (agent, processor) = (key("agent"), key("processor"));
        Cluster { nodes, dir, agent, processor }
    }

    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    fn api(n: usize) -> String {
        format!("http://127.0.0.{}:8080", n + 1)
    }

    fn pid(&self, n: usize) -> String {
        std::fs::read_to_string(self.node_dir(n).join("pid")).unwrap().trim().to_string()
    }

    fn signal(&self, n: usize, signal: &str) {
        let ok = std::process::Command::new("kill").args([signal, &self.pid(n)]).status().unwrap().success();
        assert!(ok, "kill {signal} node {n}");
    }

    fn running(&self, n: usize) -> bool {
        let mut probe = std::process::Command::new("kill");
        probe.args(["-0", &self.pid(n)]).stderr(std::process::Stdio::null()).status().unwrap().success()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        let nodes = (1..=self.nodes).map(|n| format!("node{n}/log"));
        for name in std::iter::once("kamailio.log".to_string()).chain(nodes) {
            let text = std::fs::read_to_string(self.dir.path().join(&name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all += &format!("--- {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (_, out) = Cluster::script(self.dir.path(), &["stop"], "");
        println!("{out}");
    }
}

/// A call in progress through the proxy, answered by some node.
struct Call {
    caller: Ua,
    rtp: UdpSocket,
    media: SocketAddr,
    /// The node that answered (1-based), from the address of its media.
    node: usize,
    session: String,
    keyed: u32,
    /// The caller's BYE, routed through the proxy.
    bye: Vec<u8>,
}

fn card(i: usize) -> TestCard {
    const PANS: [&str; 4] = ["4111111111111111", "5555555555554444", "4012888888881881", "5105105105105100"];
    const CODES: [&str; 4] = ["123", "456", "789", "302"];
    TestCard { pan: PANS[i % 4], month: 1 + (i % 12) as u64, year: 2030 + (i % 5) as u64, code: CODES[i % 4] }
}

/// The same request with the route set a 2xx recorded (RFC 3261 §12.2.1.1).
fn routed(request: Vec<u8>, ok: &Response) -> Vec<u8> {
    let text = String::from_utf8(request).unwrap();
    let (first, rest) = text.split_once("\r\n").unwrap();
    let routes: String = ok.headers_named("Record-Route").iter().map(|r| format!("Route: {r}\r\n")).collect();
    format!("{first}\r\n{routes}{rest}").into_bytes()
}

/// A whole-card session made through node `on`'s API: its id and transfer URI.
async fn create(c: &Cluster, on: usize, reference: &str) -> (String, String) {
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"{reference}"}}"#);
    let (s, v) = http("POST", &format!("{}/v1/sessions", Cluster::api(on)), Some(&c.agent), Some(&body)).await;
    assert_eq!(s, 201, "session on node {on}: {v}");
    let uri = v["transfer_uri"].as_str().unwrap().to_string();
    assert!(uri.ends_with(&format!("@{PROXY}")), "the transfer URI names the cluster, not a node: {uri}");
    (v["id"].as_str().unwrap().to_string(), uri)
}

/// Calls `uri` through the proxy.
async fn dial(c: &Cluster, session: String, uri: &str) -> Call {
    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp::write(([127, 0, 0, 1], rtp.local_addr().unwrap().port()).into(), 1, &[Codec::Pcmu], Some(101));
    let (invite, call_id, from_tag) = caller.invite(uri, &offer);
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let ok = caller.call(&invite, proxy, Duration::from_secs(15)).await.unwrap();
    assert_eq!(ok.status(), 200, "{session}: {}\n{}", ok.status(), c.logs());
    let recorded = ok.headers_named("Record-Route");
    assert!(recorded.iter().any(|r| r.contains(PROXY)), "the 200 carries the proxy's route set: {recorded:?}");
    let target = ok.contact_uri().unwrap().to_string();
    let ack = routed(caller.in_dialog(Method::Ack, &call_id, &from_tag, ok.to(), 1, &target), &ok);
    caller.send(&ack, proxy).await.unwrap();
    let media = RemoteDescription::parse(ok.body()).unwrap().remote;
    let node = match media.ip() {
        std::net::IpAddr::V4(ip) => usize::from(ip.octets()[3]) - 1,
        other => panic!("media on {other}"),
    };
    let bye = routed(caller.in_dialog(Method::Bye, &call_id, &from_tag, ok.to(), 2, &target), &ok);
    Call { caller, rtp, media, node, session, keyed: 0, bye }
}

async fn place(c: &Cluster, created_on: usize, reference: &str) -> Call {
    let (id, uri) = create(c, created_on, reference).await;
    dial(c, id, &uri).await
}

/// A node of the cluster other than `n` and the nodes in `down`, if one is left.
fn another(n: usize, down: &[usize]) -> Option<usize> {
    (1..=NODES).map(|i| (n + i - 1) % NODES + 1).find(|i| *i != n && !down.contains(i))
}

/// A node of the cluster other than `n` and the nodes in `down`.
fn other_than(n: usize, down: &[usize]) -> usize {
    another(n, down).unwrap_or_else(|| panic!("no node up besides {n} (down: {down:?})"))
}

async fn key(call: &mut Call, keys: &str) {
    send_keys(&call.rtp, call.media, keys, call.keyed, 77).await;
    call.keyed += keys.len() as u32;
}

/// Every message node `on`'s events WebSocket sends for `session`, until it closes.
fn watch(c: &Cluster, on: usize, session: &str) -> tokio::task::JoinHandle<Vec<Value>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://127.0.0.{}:8080/v1/sessions/{session}/events", on + 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", format!("tonewall, bearer.{}", c.agent).parse().unwrap());
    tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("events WebSocket");
        let mut out = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            if let Ok(v) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) {
                out.push(v);
            }
        }
        out
    })
}

fn events(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["event"].as_str().unwrap_or("")).collect()
}

/// Polls node `on`'s view of `session` until `done` holds of it, for up to 15 s.
async fn until(c: &Cluster, on: usize, session: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = http("GET", &format!("{}/v1/sessions/{session}", Cluster::api(on)), Some(&c.agent), None).await;
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {on} never saw {what}: {v}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers requests on the call until tonewall's BYE.
async fn until_bye(call: &mut Call) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (msg, from) = tokio::time::timeout(left, call.caller.recv()).await.expect("tonewall's BYE").unwrap();
        if let SipMessage::Request(r) = msg {
            call.caller.answer(&r, from).await.unwrap();
            if r.method() == Method::Bye {
                return;
            }
        }
    }
}

/// Keys the rest of `card` (after `first` digits of its number), waits on another node (if
/// one is up) for the session to complete, checks the card whole there (the security code
/// fetched from the capturing node, which held it) and then without the code on the
/// capturing node (released once), answers tonewall's BYE; the session (with its token).
async fn finish(c: &Cluster, mut call: Call, card: &TestCard, first: usize, down: &[usize]) -> Value {
    key(&mut call, &format!("{}#", &card.pan[first..])).await;
    key(&mut call, &format!("{:02}{:02}", card.month, card.year % 100)).await;
    key(&mut call, card.code).await;
    let elsewhere = another(call.node, down);
    let reader = elsewhere.unwrap_or(call.node);
    let session = until(c, reader, &call.session, "completed", |v| v["state"] == "completed").await;
    let mut released = false;
    if let Some(elsewhere) = elsewhere {
        let case = format!("session captured on node {} detokenized on node {elsewhere}", call.node);
        let there = detokenize_session(&Cluster::api(elsewhere), &c.processor, &session, &case).await;
        assert_eq!(card_differences(&there, card), Vec::<&str>::new(), "{case}");
        released = true;
    }
    let case = format!("session captured on node {} detokenized there", call.node);
    let stored = detokenize_session(&Cluster::api(call.node), &c.processor, &session, &case).await;
    let once: &[&str] = if released { &["security code"] } else { &[] };
    assert_eq!(card_differences(&stored, card), once, "{case}");
    until_bye(&mut call).await;
    session
}

async fn capture(c: &Cluster, i: usize, created_on: usize, down: &[usize]) -> (Value, TestCard) {
    let card = card(i);
    let mut call = place(c, created_on, &format!("cluster-{i}")).await;
    assert!(!down.contains(&call.node), "the call reached a node that is down");
    key(&mut call, &card.pan[..6]).await;
    (finish(c, call, &card, 6, down).await, card)
}

#[tokio::test]
async fn calls_through_kamailio_survive_a_drained_and_a_killed_node() {
    let _one = ONE_CLUSTER.lock().await;
    // The inline route "sales": calls to sales… (from the proxy) go on to this agent.
    let queue = tonewall_testkit::agent::Agent::start().await.unwrap();
    let route = format!(
        "[[sip.routes]]\nname = \"sales\"\nuser_prefix = \"sales\"\ntarget = \"{}\"\nsources = [\"127.0.0.1\"]",
        queue.uri
    );
    let c = Cluster::start(NODES, &route);
    let mut stored = Vec::new();

    // Made on node n, watched on every node, restarted and completed through nodes other
    // than the one whose call holds it.
    for n in 1..=NODES {
        let card = card(n);
        let (id, uri) = create(&c, n, &format!("cross-{n}")).await;
        let watchers: Vec<_> = (1..=NODES).map(|on| watch(&c, on, &id)).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut call = dial(&c, id.clone(), &uri).await;
        let other = other_than(call.node, &[]);
        key(&mut call, "541333").await;
        until(&c, other, &id, "six digits", |v| v["fields"][0]["digits"] == 6).await;
        let restart = format!("{}/v1/sessions/{id}/fields/pan/restart", Cluster::api(other));
        let (s, v) = http("POST", &restart, Some(&c.agent), None).await;
        assert_eq!(s, 200, "restart through node {other} for a call on node {}: {v}", call.node);
        until(&c, other, &id, "the card number asked again", |v| v["fields"][0]["digits"] == 0).await;
        key(&mut call, &card.pan[..6]).await;
        let session = finish(&c, call, &card, 6, &[]).await;
        for (on, w) in watchers.into_iter().enumerate() {
            let messages = w.await.unwrap();
            let seen = events(&messages);
            for want in ["snapshot", "call_started", "field_restarted", "field_done", "completed", "call_ended"] {
                assert!(seen.contains(&want), "node {}'s WebSocket missed {want}: {seen:?}", on + 1);
            }
            let digits = seen.iter().filter(|e| **e == "digit").count();
            assert_eq!(digits, 6 + 16 + 4 + 3, "node {}'s WebSocket digits: {seen:?}", on + 1);
            let all = serde_json::to_string(&messages).unwrap();
            assert!(!all.contains(&card.pan[6..]) && !all.contains(&card.pan[..6]), "a digit on a WebSocket");
        }
        stored.push((session, card));
    }

    // The route between nodes takes no request it cannot verify: none signed, or signed
    // with a key that is not the vault's.
    let token = stored[0].0["result"]["token"].as_str().unwrap().to_string();
    let body = format!(r#"{{"token":"{token}","actor":"intruder"}}"#);
    let forged = tonewall::runtime::peer::sign(1, &SecretKey::generate(), unix_s(), "node-x", body.as_bytes());
    for header in [None, Some(forged)] {
        let (url, body) = (format!("{}{}", Cluster::api(1), tonewall::runtime::peer::PATH), body.clone());
        let status = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut req = agent.post(&url).header("content-type", "application/json");
            if let Some(h) = header {
                req = req.header("tonewall-peer", &h);
            }
            req.send(body.as_bytes()).unwrap().status().as_u16()
        })
        .await
        .unwrap();
        assert_eq!(status, 401, "an unsigned or forged request for a security code");
    }

    // Cancelled through a node that does not hold the call: the holder stops the capture
    // and hangs up.
    let mut cancelled = place(&c, 1, "cancelled").await;
    key(&mut cancelled, "4111").await;
    let other = other_than(cancelled.node, &[]);
    until(&c, other, &cancelled.session, "four digits", |v| v["fields"][0]["digits"] == 4).await;
    let url = format!("{}/v1/sessions/{}/cancel", Cluster::api(other), cancelled.session);
    let (s, v) = http("POST", &url, Some(&c.agent), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "cancel through node {other}: {v}");
    until_bye(&mut cancelled).await;
    let third = other_than(other, &[cancelled.node]);
    until(&c, third, &cancelled.session, "cancelled", |v| v["state"] == "cancelled").await;

    // An inline call that reached one node, listed and captured through another; a second
    // capture asked meanwhile is refused by the node holding the call; once the caller hangs
    // up, no node lists the call.
    let mut inline = dial(&c, String::new(), &format!("sip:sales-1@{PROXY}")).await;
    let other = other_than(inline.node, &[]);
    let calls_url = format!("{}/v1/calls", Cluster::api(other));
    let listed = |v: &Value| v["calls"].as_array().into_iter().flatten().find(|call| call["mode"] == "inline").cloned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let call = loop {
        let (s, v) = http("GET", &calls_url, Some(&c.agent), None).await;
        assert_eq!(s, 200, "{v}");
        if let Some(call) = listed(&v).filter(|call| call["answered"] == true) {
            break call;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {other} never listed the inline call: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(call["route"], "sales", "{call}");
    assert!(call.get("sip_call_id").is_none(), "an agent sees no SIP Call-ID: {call}");
    let capture_url = format!("{}/v1/calls/{}/capture", Cluster::api(other), call["id"].as_str().unwrap());
    let body = r#"{"fields":["pan","expiry","cvv"],"reference":"inline"}"#;
    let (s, v) = http("POST", &capture_url, Some(&c.agent), Some(body)).await;
    assert_eq!((s, v["state"].as_str()), (201, Some("capturing")), "capture through node {other}: {v}");
    let (s, again) = http("POST", &capture_url, Some(&c.agent), Some(body)).await;
    assert_eq!(s, 409, "a second capture on a call already capturing: {again}");
    inline.session = v["id"].as_str().unwrap().to_string();
    let inline_card = card(7);
    key(&mut inline, &format!("{}#", inline_card.pan)).await;
    key(&mut inline, &format!("{:02}{:02}", inline_card.month, inline_card.year % 100)).await;
    key(&mut inline, inline_card.code).await;
    let done = until(&c, other, &inline.session, "the inline capture completed", |v| v["state"] == "completed").await;
    let case = format!("inline call on node {} captured through node {other}", inline.node);
    let stored_card = detokenize_session(&Cluster::api(inline.node), &c.processor, &done, &case).await;
    assert_eq!(card_differences(&stored_card, &inline_card), Vec::<&str>::new(), "{case}");
    inline.caller.send(&inline.bye, PROXY.parse().unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = http("GET", &calls_url, Some(&c.agent), None).await;
        if listed(&v).is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ended inline call is still listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queue.finish().await.unwrap().answered, "the route's target answered the inline call");

    // SIGTERM the node holding a call in the middle of its capture.
    let draining_card = card(10);
    let mut held = place(&c, 1, "drained").await;
    let drained = held.node;
    key(&mut held, &draining_card.pan[..8]).await;
    c.signal(drained, "-TERM");
    // Once the node has taken the signal, a new session (here an empty, invalid one: 400
    // until then) gets 503.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let url = format!("{}/v1/sessions", Cluster::api(drained));
        let (s, v) = http("POST", &url, Some(&c.agent), Some("{}")).await;
        if s == 503 {
            break;
        }
        assert_eq!(s, 400, "{v}");
        assert!(tokio::time::Instant::now() < deadline, "node {drained} never refused new sessions: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New calls meanwhile go to the other nodes, whichever node Kamailio tries first.
    let up = other_than(drained, &[]);
    stored.push(capture(&c, 20, up, &[drained]).await);
    assert!(c.running(drained), "node {drained} still carries its call");
    let more = async {
        let mut done = Vec::new();
        for i in 1..4 {
            done.push(capture(&c, 20 + i, up, &[drained]).await);
        }
        done
    };
    let (finished, more) = tokio::join!(finish(&c, held, &draining_card, 8, &[]), more);
    stored.push((finished, draining_card));
    stored.extend(more);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.running(drained) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.running(drained), "node {drained} exits once its last call is over\n{}", c.logs());

    // SIGKILL the node holding a call mid-capture. Its lease (2 s) runs out, the node left
    // fails that capture as node_lost and tells its WebSocket; after the probe interval
    // (1 s, one failed probe) every new call succeeds.
    let mut lost = place(&c, up, "lost").await;
    let (killed, left) = (lost.node, other_than(lost.node, &[drained]));
    key(&mut lost, "4012").await;
    until(&c, left, &lost.session, "four digits", |v| v["fields"][0]["digits"] == 4).await;
    let watcher = watch(&c, left, &lost.session);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.signal(killed, "-KILL");
    let failed = until(&c, left, &lost.session, "node_lost", |v| v["state"] == "failed").await;
    assert_eq!(failed["reason"], "node_lost", "{failed}");
    let seen = watcher.await.unwrap();
    assert_eq!(events(&seen).last(), Some(&"node_lost"), "{:?}", events(&seen));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..5 {
        stored.push(capture(&c, 40 + i, left, &[drained, killed]).await);
    }

    // Every acknowledged token detokenizes through the node still up (the security code was
    // released at the first detokenize; the card number and expiry stay).
    for (session, card) in &stored {
        let token = session["result"]["token"].as_str().unwrap();
        let (s, v) = http(
            "POST",
            &format!("{}/v1/detokenize", Cluster::api(left)),
            Some(&c.processor),
            Some(&format!(r#"{{"token":"{token}"}}"#)),
        )
        .await;
        assert_eq!((s, v["pan"].as_str()), (200, Some(card.pan)), "{token}");
    }
    println!("{} captures through Kamailio, all detokenized; node {drained} drained, node {killed} lost", stored.len());

    // Three processes wrote one audit chain, with the lost capture in it; it verifies.
    let node = c.node_dir(left);
    let (cfg, data) = (node.join("tonewall.toml"), node.join("data"));
    let (ok, out, err) =
        tonewall(&["audit", "verify", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "audit verify: {out}{err}");
    println!("{}", out.trim());
}

/// The load tool (`loadtest`, built by `cargo test --workspace`) through Kamailio against two
/// nodes, sessions made on both APIs in turn; node 2 is killed (SIGKILL) four seconds in,
/// while calls are still being set up. Every call dialled after the probe interval and a
/// margin succeeds; every session ends either completed with its card read back whole
/// through node 1 (number, expiry and the security code, which node 1 fetches from the node
/// that captured the card; no card completes on node 2 before the kill, since keying starts
/// a second after the answer and 23 keys take over four) or failed as node_lost; no digit
/// leaks; the audit chain the two nodes wrote verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_through_kamailio_rides_out_a_killed_node() {
    let _one = ONE_CLUSTER.lock().await;
    let load = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debug/loadtest");
    assert!(
        Path::new(load).exists(),
        "no load tool at {load}: cargo build -p tonewall-loadtest (cargo test --workspace builds it)"
    );
    let c = Cluster::start(2, "");
    let json = c.dir.path().join("report.json");
    let (victim, survivor) = (c.pid(2), c.pid(1));
    let apis = format!("{},{}", Cluster::api(1), Cluster::api(2));
    let out = std::process::Command::new(load)
        .args(["--target", PROXY, "--api", &apis, "--api-key", &c.agent, "--processor-key", &c.processor])
        .args(["--calls", "24", "--rate", "2", "--duration", "6", "--server-pid", &survivor])
        .args(["--kill-pid", &victim, "--kill-after", "4", "--kill-grace", "3"])
        .arg("--json")
        .arg(&json)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run loadtest");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "loadtest failed:\n{text}\n{}", c.logs());
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let num = |path: &str| report.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path}: {report}"));
    assert!(!c.running(2), "node 2 was killed");
    assert!(num("/failover/up_at_kill") >= 4, "calls were up when node 2 died: {report}");
    assert!(num("/failover/dialled_after_grace") >= 8, "calls were dialled after the kill: {report}");
    assert_eq!(num("/failover/failed_after_grace"), 0, "a call after the probe interval failed: {text}");
    let sessions = report["sessions"].as_object().unwrap();
    let completed = sessions.get("completed").and_then(Value::as_u64).unwrap_or(0);
    let lost = sessions.get("failed:node_lost").and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(completed + lost, sessions.values().filter_map(Value::as_u64).sum::<u64>(), "{sessions:?}");
    assert!(lost >= 1, "the killed node's captures show node_lost: {sessions:?}");
    assert!(completed >= 12, "{sessions:?}");
    let right = num("/capture/rfc4733/right") + num("/capture/in_band/right");
    assert_eq!(right, completed, "every completed card stored whole as keyed: {report}");
    assert_eq!((num("/leaks/digits"), num("/leaks/rfc4733_packets")), (0, 0), "{report}");
    let node = c.node_dir(1);
    let (cfg, data) = (node.join("tonewall.toml"), node.join("data"));
    let (ok, out, err) =
        tonewall(&["audit", "verify", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "audit verify: {out}{err}");
    println!("{completed} completed, {lost} lost with node 2; {}", out.trim());
}
