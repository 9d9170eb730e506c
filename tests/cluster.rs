//! A cluster (issue 19): `scripts/cluster start 3` runs PostgreSQL, three tonewall nodes on
//! 127.0.0.2-4 sharing one vault, and Kamailio on 127.0.0.1:5070 with the shipped
//! `sip-config/kamailio/kamailio.cfg`. Every call goes through Kamailio: a session's call
//! reaches the node that holds the session (the others answer 404 and the dispatcher tries
//! the next), its card is stored whole; another node detokenizes its number and expiry from
//! the shared vault, and only the capturing node has its security code (held in memory,
//! never in the database). A node sent
//! SIGTERM finishes the capture it has (no call cut) while new calls go to the others, and
//! exits; a node killed with SIGKILL is probed out, and every new call after the probe
//! interval succeeds. At the end every acknowledged token detokenizes and the audit chain,
//! written by three processes, verifies.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestCard, card_differences, detokenize_session, http, require_tool, send_keys, tonewall, wait_final};
use serde_json::Value;
use tokio::net::UdpSocket;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{Method, Response, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall_testkit::Ua;

const PROXY: &str = "127.0.0.1:5070";
const NODES: usize = 3;

/// The running cluster; stopped (every process, the database dropped) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    agent: String,
    processor: String,
}

impl Cluster {
    fn script(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(args)
            .env("TONEWALL_CLUSTER_DIR", dir)
            .env("TONEWALL_BIN", common::BIN)
            .env("TONEWALL_PROBE_INTERVAL_S", "1")
            .output()
            .expect("run scripts/cluster");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn start() -> Cluster {
        require_tool("kamailio", "apt-get install -y kamailio");
        require_tool("psql", "apt-get install -y postgresql-client");
        let dir = tempfile::tempdir().unwrap();
        let (ok, out) = Cluster::script(dir.path(), &["start", &NODES.to_string()]);
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
        Cluster { dir, agent, processor }
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
        std::process::Command::new("kill").args(["-0", &self.pid(n)]).status().unwrap().success()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["kamailio.log", "node1/log", "node2/log", "node3/log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all += &format!("--- {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (_, out) = Cluster::script(self.dir.path(), &["stop"]);
        println!("{out}");
    }
}

/// A call in progress through the proxy, answered by some node.
struct Call {
    caller: Ua,
    rtp: UdpSocket,
    media: SocketAddr,
    /// The node that answered, from its Contact.
    node_ip: String,
    session: String,
    created_on: usize,
    keyed: u32,
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

async fn place(c: &Cluster, created_on: usize, reference: &str) -> Call {
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"{reference}"}}"#);
    let (s, v) = http("POST", &format!("{}/v1/sessions", Cluster::api(created_on)), Some(&c.agent), Some(&body)).await;
    assert_eq!(s, 201, "session on node {created_on}: {v}");
    let uri = v["transfer_uri"].as_str().unwrap().to_string();
    assert!(uri.ends_with(&format!("@{PROXY}")), "the transfer URI names the cluster, not a node: {uri}");
    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp::write(([127, 0, 0, 1], rtp.local_addr().unwrap().port()).into(), 1, &[Codec::Pcmu], Some(101));
    let (invite, call_id, from_tag) = caller.invite(&uri, &offer);
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let ok = caller.call(&invite, proxy, Duration::from_secs(15)).await.unwrap();
    assert_eq!(ok.status(), 200, "{reference}: {}\n{}", ok.status(), c.logs());
    let recorded = ok.headers_named("Record-Route");
    assert!(recorded.iter().any(|r| r.contains(PROXY)), "the 200 carries the proxy's route set: {recorded:?}");
    let target = ok.contact_uri().unwrap().to_string();
    let ack = routed(caller.in_dialog(Method::Ack, &call_id, &from_tag, ok.to(), 1, &target), &ok);
    caller.send(&ack, proxy).await.unwrap();
    let media = RemoteDescription::parse(ok.body()).unwrap().remote;
    let node_ip = media.ip().to_string();
    Call { caller, rtp, media, node_ip, session: v["id"].as_str().unwrap().to_string(), created_on, keyed: 0 }
}

async fn key(call: &mut Call, keys: &str) {
    send_keys(&call.rtp, call.media, keys, call.keyed, 77).await;
    call.keyed += keys.len() as u32;
}

/// Keys the rest of `card` (after `first` digits of its number), waits for the session to
/// complete, checks the card whole through `detokenize_on`, answers tonewall's BYE; the
/// session (with its token).
async fn finish(c: &Cluster, mut call: Call, card: &TestCard, first: usize, detokenize_on: usize) -> Value {
    key(&mut call, &format!("{}#", &card.pan[first..])).await;
    key(&mut call, &format!("{:02}{:02}", card.month, card.year % 100)).await;
    key(&mut call, card.code).await;
    let api = Cluster::api(call.created_on);
    let session = wait_final(&api, &c.agent, &call.session, Duration::from_secs(20)).await;
    assert_eq!(session["state"], "completed", "{session}\n{}", c.logs());
    // Another node reads the card from the shared vault; the security code is only in the
    // memory of the node that captured it (never in the database), so it is not there.
    if detokenize_on != call.created_on {
        let case = format!("session of node {} detokenized on node {detokenize_on}", call.created_on);
        let elsewhere = detokenize_session(&Cluster::api(detokenize_on), &c.processor, &session, &case).await;
        assert_eq!(card_differences(&elsewhere, card), ["security code"], "{case}: {elsewhere}");
    }
    let case = format!("session of node {} detokenized there", call.created_on);
    let stored = detokenize_session(&api, &c.processor, &session, &case).await;
    assert_eq!(card_differences(&stored, card), Vec::<&str>::new(), "{case}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (msg, from) = tokio::time::timeout(left, call.caller.recv()).await.expect("tonewall's BYE").unwrap();
        if let SipMessage::Request(r) = msg {
            call.caller.answer(&r, from).await.unwrap();
            if r.method() == Method::Bye {
                break;
            }
        }
    }
    session
}

async fn capture(c: &Cluster, i: usize, created_on: usize, detokenize_on: usize) -> (Value, TestCard) {
    let card = card(i);
    let mut call = place(c, created_on, &format!("cluster-{i}")).await;
    assert_eq!(call.node_ip, format!("127.0.0.{}", created_on + 1), "the call reached the session's node");
    key(&mut call, &card.pan[..6]).await;
    (finish(c, call, &card, 6, detokenize_on).await, card)
}

#[tokio::test]
async fn calls_through_kamailio_survive_a_drained_and_a_killed_node() {
    let c = Cluster::start();
    let mut stored = Vec::new();
    // Each node's sessions, reached through the proxy, detokenized through the next node.
    for n in 1..=NODES {
        stored.push(capture(&c, n, n, n % NODES + 1).await);
    }

    // SIGTERM node 3 in the middle of a capture.
    let draining_card = card(10);
    let mut held = place(&c, 3, "drained").await;
    key(&mut held, &draining_card.pan[..8]).await;
    c.signal(3, "-TERM");
    let (s, _) = http("POST", &format!("{}/v1/sessions", Cluster::api(3)), Some(&c.agent), Some("{}")).await;
    assert_eq!(s, 503, "a draining node takes no new session");
    // New calls meanwhile go to the other nodes, whichever node Kamailio tries first: one
    // while node 3 holds its call, then more while that call finishes and node 3 exits.
    stored.push(capture(&c, 20, 1, 2).await);
    assert!(c.running(3), "node 3 still carries its call");
    let more = async {
        let mut done = Vec::new();
        for i in 1..4 {
            done.push(capture(&c, 20 + i, 1 + i % 2, 2 - i % 2).await);
        }
        done
    };
    let (drained, more) = tokio::join!(finish(&c, held, &draining_card, 8, 1), more);
    stored.push((drained, draining_card));
    stored.extend(more);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.running(3) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.running(3), "node 3 exits once its last call is over\n{}", c.logs());

    // SIGKILL node 2. After the probe interval (1 s, and one failed probe), every new call
    // succeeds.
    c.signal(2, "-KILL");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..5 {
        stored.push(capture(&c, 40 + i, 1, 1).await);
    }

    // Every acknowledged token detokenizes through the node still up (the security code was
    // released at the first detokenize; the card number and expiry stay).
    for (session, card) in &stored {
        let token = session["result"]["token"].as_str().unwrap();
        let (s, v) = http(
            "POST",
            &format!("{}/v1/detokenize", Cluster::api(1)),
            Some(&c.processor),
            Some(&format!(r#"{{"token":"{token}"}}"#)),
        )
        .await;
        assert_eq!((s, v["pan"].as_str()), (200, Some(card.pan)), "{token}");
    }
    println!("{} captures through Kamailio, all detokenized", stored.len());

    // Three processes wrote one audit chain; it verifies.
    let node1 = c.node_dir(1);
    let (cfg, data) = (node1.join("tonewall.toml"), node1.join("data"));
    let (ok, out, err) =
        tonewall(&["audit", "verify", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "audit verify: {out}{err}");
    println!("{}", out.trim());
}
