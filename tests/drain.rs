//! Draining (issue 19): `tonewall serve` on SIGTERM answers OPTIONS probes and new INVITEs
//! with 503 and Retry-After (RFC 3261 §21.5.4) and the API refuses new sessions, while the
//! call in progress finishes its capture; then the process exits by itself. A call that
//! outlasts `sip.drain_timeout_s` is hung up with a BYE and the process still exits.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sipp::wait_with_timeout;
use common::{ServeProcess, TestCard, assert_card_whole_at, http_raw, send_keys, tonewall, wait_final, write_config};
use tokio::net::UdpSocket;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{Method, Response, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall_testkit::Ua;

const CARD: TestCard = TestCard { pan: "5555555555554444", month: 9, year: 2031, code: "737" };

/// A serve process with an agent and a processor key.
struct Node {
    serve: ServeProcess,
    agent: String,
    processor: String,
    _dir: tempfile::TempDir,
}

fn start(drain_timeout_s: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let timeout = format!("drain_timeout_s = {drain_timeout_s}");
    let config = write_config(dir.path(), &[("drain_timeout_s = 300", &timeout)]);
    let (cfg, data_s) = (config.to_str().unwrap(), data.to_str().unwrap());
    let key = |role: &str| {
        let (ok, key, err) =
            tonewall(&["api-key", "create", "--role", role, "--config", cfg, "--data-dir", data_s], &[]);
        assert!(ok, "{err}");
        key.trim().to_string()
    };
    let (agent, processor) = (key("agent"), key("processor"));
    let serve = ServeProcess::start(&config, &data, &dir.path().join("serve.log"), &[]);
    Node { serve, agent, processor, _dir: dir }
}

fn sigterm(serve: &ServeProcess) {
    let pid = serve.child.id().to_string();
    let ok = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success();
    assert!(ok, "kill -TERM {pid}");
}

/// A call placed and answered: the caller's UA, its RTP socket, where tonewall takes media.
struct Call {
    caller: Ua,
    rtp: UdpSocket,
    media: SocketAddr,
}

async fn place_call(node: &Node, reference: &str) -> (String, Call) {
    let (id, uri) = common::create_session(&node.serve.base, &node.agent, reference).await;
    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp::write(([127, 0, 0, 1], rtp.local_addr().unwrap().port()).into(), 1, &[Codec::Pcmu], Some(101));
    let (invite, call_id, from_tag) = caller.invite(&uri, &offer);
    let ok = caller.call(&invite, node.serve.sip, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let target = ok.contact_uri().unwrap().to_string();
    caller
        .send(&caller.in_dialog(Method::Ack, &call_id, &from_tag, ok.to(), 1, &target), node.serve.sip)
        .await
        .unwrap();
    let media = RemoteDescription::parse(ok.body()).unwrap().remote;
    (id, Call { caller, rtp, media })
}

/// An out-of-dialog OPTIONS, as Kamailio's dispatcher probes a node; its final answer.
async fn probe(to: SocketAddr) -> Response {
    let ua = Ua::bind().await.unwrap();
    let options = format!(
        "OPTIONS sip:tonewall@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\n\
From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:tonewall@{to}>\r\nCall-ID: probe-{}\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        ua.addr(),
        rand::random::<u32>(),
        rand::random::<u32>()
    );
    ua.send(options.as_bytes(), to).await.unwrap();
    loop {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(5), ua.recv()).await.expect("an answer").unwrap();
        if let SipMessage::Response(r) = msg
            && r.status() >= 200
        {
            return r;
        }
    }
}

/// The next request tonewall sends the caller, answered with 200.
async fn next_request(call: &Call, within: Duration) -> Method {
    loop {
        let (msg, from) = tokio::time::timeout(within, call.caller.recv()).await.expect("a request").unwrap();
        if let SipMessage::Request(r) = msg {
            call.caller.answer(&r, from).await.unwrap();
            return r.method();
        }
    }
}

/// Waits for the process to exit by itself; its exit status.
fn exits_within(serve: &mut ServeProcess, limit: Duration) -> std::process::ExitStatus {
    wait_with_timeout(&mut serve.child, limit).unwrap_or_else(|| {
        let _ = serve.child.kill();
        panic!("tonewall did not exit within {limit:?} of draining")
    })
}

#[tokio::test]
async fn sigterm_refuses_new_calls_and_probes_and_lets_the_capture_in_progress_finish() {
    let mut node = start(300);
    assert_eq!(probe(node.serve.sip).await.status(), 200, "a serving node answers the probe");
    let (id, call) = place_call(&node, "drain").await;
    let (first, rest) = CARD.pan.split_at(8);
    send_keys(&call.rtp, call.media, first, 0, 99).await;

    sigterm(&node.serve);
    // The signal is handled asynchronously: probe until the node says it is draining.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let answer = probe(node.serve.sip).await;
        if answer.status() == 503 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status(), 503, "the draining node's answer to a probe");
    assert_eq!(refused.header("Retry-After"), Some("300"), "Retry-After is the drain timeout");

    let newcomer = Ua::bind().await.unwrap();
    let offer = sdp::write(([127, 0, 0, 1], 40_000).into(), 1, &[Codec::Pcmu], Some(101));
    let (invite, ..) = newcomer.invite(&format!("sip:pay-whatever@{}", node.serve.sip), &offer);
    let answer = newcomer.call(&invite, node.serve.sip, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.status(), 503, "a new call to the draining node");

    let body = r#"{"fields":["pan"],"reference":"late"}"#;
    let (status, headers, text) =
        http_raw("POST", &format!("{}/v1/sessions", node.serve.base), Some(&node.agent), Some(body)).await;
    assert_eq!(status, 503, "a new session on the draining node: {text}");
    assert!(headers.to_ascii_lowercase().contains("retry-after: 300"), "{headers}");

    // The call in progress was not cut: the caller keys the rest and the card is stored whole.
    send_keys(&call.rtp, call.media, &format!("{rest}#"), 8, 99).await;
    send_keys(&call.rtp, call.media, &format!("{:02}{:02}", CARD.month, CARD.year % 100), 17, 99).await;
    send_keys(&call.rtp, call.media, CARD.code, 21, 99).await;
    let session = wait_final(&node.serve.base, &node.agent, &id, Duration::from_secs(15)).await;
    assert_card_whole_at(&node.serve.base, &node.processor, &session, &CARD, "captured while draining").await;
    assert_eq!(next_request(&call, Duration::from_secs(15)).await, Method::Bye, "tonewall ends the call itself");

    // Its last call over, the node exits long before the 300 s timeout.
    let status = exits_within(&mut node.serve, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_call_that_outlasts_the_drain_timeout_is_hung_up_and_the_node_exits() {
    let mut node = start(2);
    let (_, call) = place_call(&node, "outlasts").await;
    sigterm(&node.serve);
    assert_eq!(next_request(&call, Duration::from_secs(15)).await, Method::Bye, "the call still up at the timeout");
    let status = exits_within(&mut node.serve, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}
