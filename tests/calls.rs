//! Whole calls on loopback with tonewall's softphones: the card path with and without an
//! agent, invalid cards, `*` restart, and SIP requests that need no call.

mod common;

use std::time::Duration;

use common::{TestCard, TestServer, assert_card_whole, card_differences, detokenize_session, http, wait_final};
use serde_json::Value;
use tokio::net::UdpSocket;
use tonewall::api::auth::Role;
use tonewall::media::g711::Codec;
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions, CallerReport};

async fn session(t: &TestServer, key: &str, agent_uri: Option<&str>) -> (String, String) {
    let body = match agent_uri {
        Some(uri) => format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"t","agent_uri":"{uri}"}}"#),
        None => r#"{"fields":["pan","expiry","cvv"],"reference":"t"}"#.to_string(),
    };
    let (s, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(key), Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string())
}

async fn call(t: &TestServer, uri: &str, keypad: &str, codec: Codec, event_pt: u8) -> CallerReport {
    caller::place_call(CallerOptions {
        codec,
        event_pt,
        linger: Duration::from_secs(6),
        ..CallerOptions::new(t.server.sip_addr, uri, keypad)
    })
    .await
    .expect("call placed")
}

#[tokio::test]
async fn card_with_agent_completes_and_the_agent_never_receives_a_digit_packet() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let (id, uri) = session(&t, &key, Some(&agent.uri)).await;
    // PCMA with telephone-event on payload type 96: nothing assumes 0/101.
    let report = call(&t, &uri, "5555555555554444#,1230,321", Codec::Pcma, 96).await;
    assert!(report.answered);
    assert_eq!(report.keys_sent, 24);
    assert!(!report.hung_up_by_tonewall, "with an agent the call stays bridged");
    assert!(report.packets_heard > 100, "caller heard prompts and the agent: {}", report.packets_heard);
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["result"]["brand"], "mastercard");
    assert_eq!(s["result"]["last4"], "4444");
    let card = TestCard { pan: "5555555555554444", month: 12, year: 2030, code: "321" };
    // Detokenized once (the security code is released once), checked whole, and the check's
    // negative control: the code, number or expiry changed by one digit is told apart.
    let stored = detokenize_session(&t.base, &t.key(Role::Processor).await, &s, "PCMA").await;
    assert_eq!(card_differences(&stored, &card), Vec::<&str>::new(), "PCMA, telephone-event 96: the card is whole");
    for (wrong, part) in [
        (TestCard { code: "312", ..card }, "security code"),
        (TestCard { code: "322", ..card }, "security code"),
        (TestCard { pan: "5555555555554443", ..card }, "card number"),
        (TestCard { month: 11, ..card }, "expiry"),
    ] {
        assert_eq!(card_differences(&stored, &wrong), [part], "a one-digit change to the {part} is caught");
    }
    assert_eq!((s["result"]["expiry_month"].as_u64(), s["result"]["expiry_year"].as_u64()), (Some(12), Some(2030)));
    assert!(s["result"]["token"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(s["fields"][0]["masked"], "•••• •••• •••• 4444");
    let heard = agent.finish().await.unwrap();
    assert!(heard.answered && heard.hung_up, "tonewall called the agent and hung up after the caller");
    assert_eq!(heard.non_audio_packets, 0, "RFC 4733 packets reached the agent");
    assert_eq!((heard.sequence_gaps, heard.timestamp_jumps), (0, 0));
    assert!(heard.packets > 400, "the agent heard the caller for the whole call: {}", heard.packets);
    let body = serde_json::to_string(&s).unwrap();
    assert!(!body.contains("5555555555554444") && !body.contains("555555"));
    t.stop().await;
}

#[tokio::test]
async fn without_an_agent_tonewall_hangs_up_after_thanking_the_caller() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    let report = call(&t, &uri, "4111111111111111#,1230,123", Codec::Pcmu, 101).await;
    assert!(report.hung_up_by_tonewall);
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!((s["state"].as_str(), s["result"]["brand"].as_str()), (Some("completed"), Some("visa")));
    // The processor comes a second after the call is over: the security code is still
    // there, once (PCI DSS 3.3.1 allows it until authorization).
    call_over(&t).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = s["result"]["token"].as_str().unwrap();
    assert_eq!(security_code(&t, token).await, Some("123".to_string()), "a second after the hang-up");
    assert_eq!(security_code(&t, token).await, None, "released once");
    t.stop().await;
}

/// Waits until tonewall has no call left (the call task has cleaned up).
async fn call_over(t: &TestServer) {
    let admin = t.key(Role::Admin).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = http("GET", &format!("{}/v1/calls", t.base), Some(&admin), None).await;
        if v["calls"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the call never ended: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The security code a detokenize releases for `token`; the card number must be there.
async fn security_code(t: &TestServer, token: &str) -> Option<String> {
    let processor = t.key(Role::Processor).await;
    let body = format!(r#"{{"token":"{token}"}}"#);
    let (s, v) = http("POST", &format!("{}/v1/detokenize", t.base), Some(&processor), Some(&body)).await;
    assert_eq!((s, v["pan"].as_str().map(str::len)), (200, Some(16)), "{}", v["error"]);
    v["security_code"].as_str().map(String::from)
}

/// And never past `vault.security_code_ttl_s`, counted from the capture.
#[tokio::test]
async fn the_security_code_is_gone_once_its_ttl_ends() {
    let t = TestServer::start_with(|c| c.vault.security_code_ttl_s = 3).await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    call(&t, &uri, "4111111111111111#,1230,123", Codec::Pcmu, 101).await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    call_over(&t).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(security_code(&t, s["result"]["token"].as_str().unwrap()).await, None, "past its TTL");
    t.stop().await;
}

#[tokio::test]
async fn invalid_card_three_times_fails_and_star_restarts_a_field() {
    let t = TestServer::start_with(|c| c.capture.max_attempts = 3).await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    let report = call(&t, &uri, "4111111111111112#,4111111111111113#,4111111111111114#", Codec::Pcmu, 101).await;
    assert!(report.hung_up_by_tonewall, "a failed session ends the call without an agent");
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fields"][0]["state"], "failed");
    assert!(s["error"].as_str().unwrap().contains("too many invalid attempts"), "{s}");

    let (id, uri) = session(&t, &key, None).await;
    call(&t, &uri, "99*4111111111111111#,1230,123", Codec::Pcmu, 101).await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    t.stop().await;
}

async fn exchange(sip: std::net::SocketAddr, msg: &str) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(msg.as_bytes(), sip).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) =
        tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn request(method: &str, user: &str, extra: &str) -> String {
    format!(
        "{method} sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1;rport\r\nFrom: <sip:x@127.0.0.1>;tag=1\r\n\
To: <sip:{user}@127.0.0.1>\r\nCall-ID: probe-{user}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn sip_without_a_call_options_404_400_and_the_server_keeps_serving() {
    let t = TestServer::start().await;
    let sip = t.server.sip_addr;
    let resp = exchange(sip, &request("OPTIONS", "tonewall", "")).await;
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
    assert!(resp.contains("Allow: INVITE"));
    // The product, never its version (nothing for a scanner to match against advisories).
    assert!(resp.contains("\r\nServer: tonewall\r\n"), "{resp}");
    // Without rport the answer goes to the Via's port (§18.2.2), which nobody listens on here.
    let no_rport = request("OPTIONS", "tonewall", "").replace(";rport", "");
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(no_rport.as_bytes(), sip).await.unwrap();
    let mut buf = [0u8; 2048];
    assert!(tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await.is_err());
    let resp = exchange(sip, &request("INVITE", "pay-0123456789abcdef0123456789abcdef", "")).await;
    assert!(resp.starts_with("SIP/2.0 404 Not Found\r\n"), "{resp}");
    let resp = exchange(sip, &request("INVITE", "someone-else", "")).await;
    assert!(resp.starts_with("SIP/2.0 404"), "{resp}");
    let bad_cseq = request("INVITE", "pay-x", "").replace("CSeq: 1 INVITE", "CSeq: one INVITE");
    let resp = exchange(sip, &bad_cseq).await;
    assert!(resp.starts_with("SIP/2.0 400 Bad Request\r\n"), "{resp}");
    assert!(resp.contains("Call-ID: probe-pay-x"));
    let truncated = request("INVITE", "pay-x", "").replace("Content-Length: 0", "Content-Length: 500");
    assert!(exchange(sip, &truncated).await.starts_with("SIP/2.0 400"));
    // Garbage with no headers to answer is dropped; the next request is still served.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&[0xff, 0x00, 0x13, 0x37], sip).await.unwrap();
    sock.send_to(b"INVITE\r\n\r\n", sip).await.unwrap();
    let resp = exchange(sip, &request("OPTIONS", "tonewall", "")).await;
    assert!(resp.starts_with("SIP/2.0 200 OK"), "{resp}");
    // An unknown method is refused with Allow.
    let resp = exchange(sip, &request("SUBSCRIBE", "tonewall", "")).await;
    assert!(resp.starts_with("SIP/2.0 405"), "{resp}");
    t.stop().await;
}

#[tokio::test]
async fn a_used_session_uri_answers_like_an_unknown_one() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    let (s, _) = http("POST", &format!("{}/v1/sessions/{id}/cancel", t.base), Some(&key), None).await;
    assert_eq!(s, 200);
    let user = uri.trim_start_matches("sip:").split('@').next().unwrap();
    let resp = exchange(t.server.sip_addr, &request("INVITE", user, "")).await;
    assert!(resp.starts_with("SIP/2.0 404 Not Found"), "{resp}");
    let v: Value = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&key), None).await.1;
    assert_eq!(v["state"], "cancelled");
    t.stop().await;
}

#[tokio::test]
async fn cancelling_a_live_capture_stops_the_call_from_collecting() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    // Four digits, three seconds of nothing, then the rest of the card.
    let caller = tokio::spawn(call_owned(t.server.sip_addr, uri, "4111,,,111111111111#,1230,123"));
    let url = format!("{}/v1/sessions/{id}", t.base);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = http("GET", &url, Some(&key), None).await;
        if v["fields"][0]["digits"].as_u64() >= Some(4) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the first digits never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = http("POST", &format!("{url}/cancel"), Some(&key), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    let report = caller.await.unwrap();
    // Told by the calls registry, the call stopped the capture and, with no agent, hung up
    // before the caller had keyed the rest.
    assert!(report.hung_up_by_tonewall);
    assert!(report.keys_sent < 24, "the caller keyed the whole card: {}", report.keys_sent);
    let (_, v) = http("GET", &url, Some(&key), None).await;
    assert_eq!((v["state"].as_str(), v["result"].is_null()), (Some("cancelled"), true), "{v}");
    t.stop().await;
}

#[tokio::test]
async fn shutdown_hangs_up_active_calls_with_bye() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let (id, uri) = session(&t, &key, Some(&agent.uri)).await;
    let sip = t.server.sip_addr;
    let caller = tokio::spawn(async move {
        caller::place_call(CallerOptions { linger: Duration::from_secs(20), ..CallerOptions::new(sip, &uri, "41") })
            .await
    });
    // Until both keys have been decoded (the caller keeps the line open for 20 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = http("GET", &format!("{}/v1/sessions/{id}", t.base), Some(&key), None).await;
        if v["fields"][0]["digits"] == 2 {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "two keys never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["state"], "capturing");
    assert_eq!(v["fields"][0]["masked"], "••");
    t.server.shutdown(Duration::from_secs(5)).await;
    let report = caller.await.unwrap().unwrap();
    assert!(report.hung_up_by_tonewall, "the caller got a BYE on shutdown");
    let heard = agent.finish().await.unwrap();
    assert!(heard.hung_up, "the agent got a BYE on shutdown");
}

#[tokio::test]
async fn websocket_shows_masked_progress_and_never_a_digit() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    // As a browser sends it: the key as a subprotocol, no Authorization header.
    let mut req = format!("ws://{}/v1/sessions/{id}/events", t.server.http_addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", format!("tonewall, bearer.{key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    call(&t, &uri, "378282246310005#,1230,1234", Codec::Pcmu, 101).await;
    let mut messages = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(text) = m.into_text().map(|t| t.to_string())
            && !text.is_empty()
        {
            messages.push(text);
        }
    }
    let events: Vec<String> = messages
        .iter()
        .map(|m| serde_json::from_str::<Value>(m).unwrap()["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "digit").count(), 15 + 4 + 4, "{events:?}");
    for want in ["snapshot", "call_started", "field_done", "tokenizing", "completed", "call_ended"] {
        assert!(events.iter().any(|e| e == want), "{want} missing from {events:?}");
    }
    let all = messages.join("\n");
    assert!(all.contains("•••• •••• ••• 0005"), "amex masked with last four");
    for needle in ["378282246310005", "3782822463", "82246310005", "1234\""] {
        assert!(!all.contains(needle), "WebSocket payload contains {needle}");
    }
    t.stop().await;
}

#[tokio::test]
async fn the_agent_asks_again_for_the_card_number_and_the_second_one_is_captured() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    let url = |p: &str| format!("{}/v1/sessions/{id}{p}", t.base);
    let (s, v) = http("POST", &url("/fields/expiry/restart"), Some(&key), None).await;
    assert_eq!(s, 409, "no call yet: {v}");
    // The caller keys one card, waits four seconds, then keys another and the rest.
    let keypad = "4111111111111111#,,,,5555555555554444#,1230,321";
    let caller = tokio::spawn(call_owned(t.server.sip_addr, uri, keypad));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = http("GET", &url(""), Some(&key), None).await;
        if v["fields"][0]["state"] == "done" {
            assert_eq!(v["fields"][0]["masked"], "•••• •••• •••• 1111");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the first card never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = http("POST", &url("/fields/cvv/restart"), Some(&key), None).await;
    assert_eq!(s, 409, "cvv not reached yet: {v}");
    let (s, v) = http("POST", &url("/fields/zip/restart"), Some(&key), None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = http("POST", &url("/fields/pan/restart"), Some(&key), None).await;
    assert_eq!(s, 200, "{v}");
    // The call task applies the restart: poll until the view shows it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let (_, v) = http("GET", &url(""), Some(&key), None).await;
        let field = (v["fields"][0]["state"].as_str(), v["fields"][0]["digits"].as_u64());
        if field == (Some("entering"), Some(0)) {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the restart never showed: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["fields"][1]["state"], "pending");
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(20)).await;
    assert_eq!((s["state"].as_str(), s["result"]["last4"].as_str()), (Some("completed"), Some("4444")), "{s}");
    let card = TestCard { pan: "5555555555554444", month: 12, year: 2030, code: "321" };
    assert_card_whole(&t, &s, &card, "the second card after the restart").await;
    caller.await.unwrap();
    let records = tonewall::vault::audit::records(t.server.shared.vault.pool(), 0, 100).await.unwrap();
    assert!(records.iter().any(|r| r.action == "session.field_restart" && r.resource == id));
    t.stop().await;
}

async fn call_owned(sip: std::net::SocketAddr, uri: String, keypad: &'static str) -> CallerReport {
    caller::place_call(CallerOptions { linger: Duration::from_secs(2), ..CallerOptions::new(sip, &uri, keypad) })
        .await
        .expect("call placed")
}

#[tokio::test]
async fn tcp_frames_by_content_length_and_refuses_a_message_without_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestServer::start().await;
    let mut conn = tokio::net::TcpStream::connect(t.server.sip_addr).await.unwrap();
    // Two OPTIONS in one write, the second split across two: two answers on the connection.
    let options = request("OPTIONS", "tonewall", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let both = format!("{options}{options}");
    let (first, second) = both.as_bytes().split_at(options.len() + 20);
    conn.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.write_all(second).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("SIP/2.0 200 OK").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await.expect("answers").unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // On a stream Content-Length is mandatory (RFC 3261 §18.3): 400, then the connection closes.
    let unframed = options.replace("Content-Length: 0\r\n", "");
    conn.write_all(unframed.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("SIP/2.0 400 Bad Request\r\n"), "{rest}");
    t.stop().await;
}

/// The next final response (provisional ones skipped), or the next request, within 5 s.
async fn next_final(ua: &tonewall_testkit::Ua) -> tonewall::sip::message::Response {
    loop {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(5), ua.recv()).await.expect("an answer").unwrap();
        if let tonewall::sip::message::SipMessage::Response(r) = msg
            && r.status() >= 200
        {
            return r;
        }
    }
}

/// Attended transfer into tonewall (RFC 3891): a PBX replaces the caller's dialog with a new
/// one from elsewhere; tonewall answers it, hangs up the old one, and the card keyed on the
/// new leg completes the same session.
#[tokio::test]
async fn invite_with_replaces_moves_the_caller_and_the_capture_carries_on() {
    use tonewall::sip::message::{Method, SipMessage};
    use tonewall::sip::sdp::{self, RemoteDescription};
    use tonewall_testkit::Ua;

    // The PBX that replaces dialogs is at 127.0.0.2, the one trusted peer.
    let t = TestServer::start_with(|c| c.sip.trusted_peers = vec!["127.0.0.2/32".parse().unwrap()]).await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, None).await;
    let server = t.server.sip_addr;
    let offer = |port: u16| sdp::write(([127, 0, 0, 1], port).into(), 1, &[Codec::Pcmu], Some(101));
    let pbx = std::net::IpAddr::from([127, 0, 0, 2]);

    let first = Ua::bind().await.unwrap();
    let (invite, call_id, from_tag) = first.invite(&uri, &offer(40_000));
    first.send(&invite, server).await.unwrap();
    let ok = next_final(&first).await;
    assert_eq!(ok.status(), 200);
    let target = ok.contact_uri().unwrap().to_string();
    first.send(&first.in_dialog(Method::Ack, &call_id, &from_tag, ok.to(), 1, &target), server).await.unwrap();

    // The PBX naming no dialog of ours: 481; anyone else naming the real one: 403. The call
    // goes on.
    let replacing = |ua: &Ua, port: u16, replaces: &str| {
        let (invite, call_id, tag) = ua.invite(&target, &offer(port));
        let text = String::from_utf8(invite).unwrap().replacen(
            "CSeq: 1 INVITE\r\n",
            &format!("CSeq: 1 INVITE\r\nReplaces: {replaces}\r\n"),
            1,
        );
        (text, call_id, tag)
    };
    let real = format!("{call_id};to-tag={};from-tag={from_tag}", ok.to_tag().unwrap());
    let lost = Ua::bind_on(pbx).await.unwrap();
    lost.send(replacing(&lost, 40_002, "nosuch@pbx;to-tag=a;from-tag=b").0.as_bytes(), server).await.unwrap();
    assert_eq!(next_final(&lost).await.status(), 481);
    let stranger = Ua::bind().await.unwrap();
    stranger.send(replacing(&stranger, 40_004, &real).0.as_bytes(), server).await.unwrap();
    assert_eq!(next_final(&stranger).await.status(), 403, "a Replaces from an untrusted peer");

    let second = Ua::bind_on(pbx).await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (text, new_call_id, new_tag) = replacing(&second, rtp.local_addr().unwrap().port(), &real);
    second.send(text.as_bytes(), server).await.unwrap();
    let ok2 = next_final(&second).await;
    assert_eq!(ok2.status(), 200, "the replacing INVITE is answered");
    assert_ne!(ok2.to_tag(), ok.to_tag(), "a new dialog");
    second.send(&second.in_dialog(Method::Ack, &new_call_id, &new_tag, ok2.to(), 1, &target), server).await.unwrap();
    // The old dialog is hung up.
    let (bye, from) = tokio::time::timeout(Duration::from_secs(5), first.recv()).await.unwrap().unwrap();
    let SipMessage::Request(bye) = bye else { panic!("expected BYE") };
    assert_eq!((bye.method(), bye.call_id()), (Method::Bye, call_id.as_str()));
    first.answer(&bye, from).await.unwrap();

    // The card, keyed on the new leg's media.
    let media = RemoteDescription::parse(ok2.body()).unwrap().remote;
    for key_packets in common::keypad_events("4111111111111111#1230123", 77) {
        for packet in key_packets {
            rtp.send_to(&packet, media).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!((s["state"].as_str(), s["result"]["last4"].as_str()), (Some("completed"), Some("1111")), "{s}");
    let card = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "123" };
    assert_card_whole(&t, &s, &card, "keyed on the new leg").await;
    t.stop().await;
}
