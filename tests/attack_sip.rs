//! Attacks on a live capture's dialog, against a running server: a stranger who has seen
//! the caller's SIP (Call-ID, both tags) sends, from another port, a BYE, an INFO keying a
//! digit, a re-INVITE moving the media to itself and an INVITE with Replaces taking the
//! dialog over. Each is refused with 403, the call goes on, and the card the real caller
//! keys is the one stored, whole.

mod common;

use std::time::Duration;

use common::{TestCard, TestServer, assert_card_whole, create_session, send_keys, wait_final};
use tokio::net::UdpSocket;
use tonewall::api::auth::Role;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{Method, Response, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall_testkit::Ua;

const CARD: TestCard = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "123" };

async fn next_final(ua: &Ua) -> Response {
    loop {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(5), ua.recv()).await.expect("an answer").unwrap();
        if let SipMessage::Response(r) = msg
            && r.status() >= 200
        {
            return r;
        }
    }
}

#[tokio::test]
async fn a_strangers_bye_info_reinvite_and_replaces_are_refused_and_the_call_goes_on() {
    let t = TestServer::start().await;
    let api_key = t.key(Role::Agent).await;
    let (id, uri) = create_session(&t.base, &api_key, "attack").await;
    let server = t.server.sip_addr;
    let offer = |port: u16| sdp::write(([127, 0, 0, 1], port).into(), 1, &[Codec::Pcmu], Some(101));

    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (invite, call_id, from_tag) = caller.invite(&uri, &offer(rtp.local_addr().unwrap().port()));
    caller.send(&invite, server).await.unwrap();
    let ok = next_final(&caller).await;
    assert_eq!(ok.status(), 200);
    let target = ok.contact_uri().unwrap().to_string();
    let to = ok.to().to_string();
    caller.send(&caller.in_dialog(Method::Ack, &call_id, &from_tag, &to, 1, &target), server).await.unwrap();
    let media = RemoteDescription::parse(ok.body()).unwrap().remote;
    let (first, rest) = CARD.pan.split_at(8);
    send_keys(&rtp, media, first, 0, 77).await;

    // The stranger, on the caller's IP and another port, with the dialog's Call-ID and tags.
    let stranger = Ua::bind().await.unwrap();
    let info = String::from_utf8(stranger.in_dialog(Method::Info, &call_id, &from_tag, &to, 2, &target)).unwrap();
    let info =
        info.replacen("Content-Length: 0\r\n", "Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n", 1)
            + "Signal=5\r\nDuration=160\r\n";
    let body = offer(40_100);
    let reinvite =
        String::from_utf8(stranger.in_dialog(Method::Invite, &call_id, &from_tag, &to, 3, &target)).unwrap().replacen(
            "Content-Length: 0\r\n",
            &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n", body.len()),
            1,
        ) + &body;
    let (replacing, ..) = stranger.invite(&target, &offer(40_102));
    let replaces = format!("Replaces: {call_id};to-tag={};from-tag={from_tag}\r\n", ok.to_tag().unwrap());
    let replacing = String::from_utf8(replacing).unwrap().replacen(
        "CSeq: 1 INVITE\r\n",
        &format!("CSeq: 1 INVITE\r\n{replaces}"),
        1,
    );
    let bye = String::from_utf8(stranger.in_dialog(Method::Bye, &call_id, &from_tag, &to, 4, &target)).unwrap();
    for (what, msg) in [("INFO", info), ("re-INVITE", reinvite), ("Replaces", replacing), ("BYE", bye)] {
        stranger.send(msg.as_bytes(), server).await.unwrap();
        assert_eq!(next_final(&stranger).await.status(), 403, "the stranger's {what}");
    }
    // Built the same way but sent by the caller, an INFO is taken: its source is the reason.
    caller.send(&caller.in_dialog(Method::Info, &call_id, &from_tag, &to, 5, &target), server).await.unwrap();
    assert_eq!(next_final(&caller).await.status(), 200, "the caller's own INFO");

    send_keys(&rtp, media, &format!("{rest}#"), 8, 77).await;
    send_keys(&rtp, media, &format!("{:02}{:02}", CARD.month, CARD.year % 100), 17, 77).await;
    send_keys(&rtp, media, CARD.code, 21, 77).await;
    let s = wait_final(&t.base, &api_key, &id, Duration::from_secs(10)).await;
    assert_card_whole(&t, &s, &CARD, "after the stranger's requests").await;
    // Nothing hung the caller up: the first request it gets is tonewall's own BYE, after
    // the capture completed (no agent: tonewall thanks the caller and hangs up).
    let (msg, _) = tokio::time::timeout(Duration::from_secs(10), caller.recv()).await.expect("tonewall's BYE").unwrap();
    assert!(matches!(&msg, SipMessage::Request(r) if r.method() == Method::Bye), "{msg:?}");
    t.stop().await;
}

/// An OPTIONS on a fresh TCP connection from `ip`: Some(status line) when it is answered,
/// None when tonewall closed the connection instead (no slot for it).
async fn options_over_tcp(server: std::net::SocketAddr, ip: [u8; 4]) -> (tokio::net::TcpStream, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
    let mut conn = socket.connect(server).await.unwrap();
    let options = format!(
        "OPTIONS sip:tonewall@{server} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{};rport\r\n\
From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:tonewall@{server}>\r\nCall-ID: cap-{}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        rand::random::<u32>(),
        rand::random::<u32>()
    );
    let mut buf = [0u8; 2048];
    // A refused connection is closed at once: the write or the read fails or reads nothing.
    if conn.write_all(options.as_bytes()).await.is_err() {
        return (conn, None);
    }
    let answer = match tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n]).lines().next().map(str::to_string),
        Ok(_) => None,
        Err(_) => panic!("neither answered nor closed within 3 s"),
    };
    (conn, answer)
}

/// One address opening connections until it holds every slot: past
/// `sip.max_connections_per_address` its connections are closed unanswered, while another
/// address and a trusted PBX (held only to the total) are still served.
#[tokio::test]
async fn one_address_cannot_take_every_sip_connection() {
    let t = TestServer::start_with(|c| {
        c.sip.tcp = true;
        c.sip.max_connections = 12;
        c.sip.max_connections_per_address = 4;
        c.sip.trusted_peers = vec!["127.0.0.3/32".parse().unwrap()];
    })
    .await;
    let server = t.server.sip_addr;
    let mut held = Vec::new();
    let mut answered = 0;
    for _ in 0..10 {
        let (conn, answer) = options_over_tcp(server, [127, 0, 0, 1]).await;
        if let Some(line) = answer {
            assert_eq!(line, "SIP/2.0 200 OK");
            answered += 1;
        }
        held.push(conn);
    }
    assert_eq!(answered, 4, "one address gets its share and no more");
    let (_other, answer) = options_over_tcp(server, [127, 0, 0, 2]).await;
    assert_eq!(answer.as_deref(), Some("SIP/2.0 200 OK"), "another address is still served");
    let mut pbx = Vec::new();
    for i in 0..7 {
        let (conn, answer) = options_over_tcp(server, [127, 0, 0, 3]).await;
        assert_eq!(answer.as_deref(), Some("SIP/2.0 200 OK"), "the trusted PBX's connection {i}");
        pbx.push(conn);
    }
    // 4 + 1 + 7 = 12, the total: now even the trusted PBX waits.
    assert_eq!(options_over_tcp(server, [127, 0, 0, 3]).await.1, None, "the total still binds");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_again, answer) = options_over_tcp(server, [127, 0, 0, 1]).await;
    assert_eq!(answer.as_deref(), Some("SIP/2.0 200 OK"), "closed connections free their slots");
    t.stop().await;
}

/// Packets that reach `socket` within `within`.
async fn packets_within(socket: &UdpSocket, within: Duration) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        n += 1;
    }
    n
}

/// The reflection attack: an INVITE from 127.0.0.1 whose SDP names a victim's address
/// (127.0.0.9) gets 488, and so does a live call's re-INVITE moving the media there; the
/// victim receives no packet while the real caller keeps getting its prompt.
#[tokio::test]
async fn an_sdp_aiming_media_at_a_third_party_gets_488_and_the_victim_gets_nothing() {
    let t = TestServer::start().await;
    let api_key = t.key(Role::Agent).await;
    let server = t.server.sip_addr;
    let victim = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    let aimed = sdp::write(victim.local_addr().unwrap(), 1, &[Codec::Pcmu], Some(101));

    let (_, uri) = create_session(&t.base, &api_key, "reflect").await;
    let attacker = Ua::bind().await.unwrap();
    let (invite, ..) = attacker.invite(&uri, &aimed);
    attacker.send(&invite, server).await.unwrap();
    assert_eq!(next_final(&attacker).await.status(), 488, "an INVITE naming the victim");

    let (_, uri) = create_session(&t.base, &api_key, "reflect-later").await;
    let caller = Ua::bind().await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp::write(rtp.local_addr().unwrap(), 1, &[Codec::Pcmu], Some(101));
    let (invite, call_id, from_tag) = caller.invite(&uri, &offer);
    caller.send(&invite, server).await.unwrap();
    let ok = next_final(&caller).await;
    assert_eq!(ok.status(), 200);
    let (target, to) = (ok.contact_uri().unwrap().to_string(), ok.to().to_string());
    caller.send(&caller.in_dialog(Method::Ack, &call_id, &from_tag, &to, 1, &target), server).await.unwrap();
    let moved = aimed.replace("o=- 1 1", "o=- 1 2");
    let reinvite =
        String::from_utf8(caller.in_dialog(Method::Invite, &call_id, &from_tag, &to, 2, &target)).unwrap().replacen(
            "Content-Length: 0\r\n",
            &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n", moved.len()),
            1,
        ) + &moved;
    caller.send(reinvite.as_bytes(), server).await.unwrap();
    assert_eq!(next_final(&caller).await.status(), 488, "a re-INVITE moving the media to the victim");
    let (to_caller, to_victim) =
        tokio::join!(packets_within(&rtp, Duration::from_secs(1)), packets_within(&victim, Duration::from_secs(1)));
    assert!(to_caller >= 25, "the caller's prompt goes on: {to_caller} packets in 1 s");
    assert_eq!(to_victim, 0, "the victim got packets");
    t.stop().await;
}
