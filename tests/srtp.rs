//! SRTP with SDES keys (RFC 4568) against libsrtp, the reference implementation most PBXs and
//! SBCs use: a caller offers RTP/SAVP with its key, libsrtp (Debian's python3-pylibsrtp)
//! protects every key it presses and must decrypt every prompt tonewall sends back, for both
//! suites tonewall takes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{TestCard, TestServer, assert_card_whole, create_session, keypad_events, wait_final};
use tokio::net::UdpSocket;
use tonewall::api::auth::Role;
use tonewall::sip::message::{Method, SipMessage};
use tonewall_testkit::Ua;

const PYTHON: &str = "/usr/bin/python3";

/// libsrtp behind a pipe: one line in, one line out per packet.
struct Libsrtp {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Libsrtp {
    fn start(suite: &str, send_key: &str, receive_key: &str) -> Libsrtp {
        let ok = Command::new(PYTHON).args(["-c", "import pylibsrtp"]).status().is_ok_and(|s| s.success());
        assert!(ok, "libsrtp for Python is missing; install with: apt-get install -y python3-pylibsrtp");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/srtp/libsrtp_peer.py");
        let mut child = Command::new(PYTHON)
            .args([script, suite])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut input = child.stdin.take().unwrap();
        writeln!(input, "{send_key}\n{receive_key}").unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Libsrtp { child, input, output }
    }

    fn call(&mut self, op: &str, packet: &[u8]) -> Option<Vec<u8>> {
        let hex: String = packet.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(self.input, "{op} {hex}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let line = line.trim();
        if line == "error" {
            return None;
        }
        Some((0..line.len()).step_by(2).map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap()).collect())
    }

    fn protect(&mut self, rtp: &[u8]) -> Vec<u8> {
        self.call("p", rtp).expect("libsrtp protects")
    }

    fn unprotect(&mut self, srtp: &[u8]) -> Option<Vec<u8>> {
        self.call("u", srtp)
    }
}

impl Drop for Libsrtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn libsrtp_caller_keys_a_card_over_srtp_with_both_suites() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    for (suite, key_len) in [("AES_CM_128_HMAC_SHA1_80", 30), ("AEAD_AES_128_GCM", 28)] {
        let (id, uri) = create_session(&t.base, &key, "srtp").await;
        let uri = uri.as_str();
        let caller_key = STANDARD.encode((0..key_len).map(|_| rand::random::<u8>()).collect::<Vec<_>>());

        let ua = Ua::bind().await.unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let offer = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 {suite} inline:{caller_key}\r\n",
            rtp.local_addr().unwrap().port()
        );
        let (invite, call_id, from_tag) = ua.invite(uri, &offer);
        let answer = ua.call(&invite, t.server.sip_addr, Duration::from_secs(5)).await.expect("answered");
        assert_eq!(answer.status(), 200, "{suite}");
        let body = String::from_utf8(answer.body().to_vec()).unwrap();
        assert!(body.contains(" RTP/SAVP 0 101\r\n"), "{body}");
        let our_line = body.lines().find_map(|l| l.strip_prefix("a=crypto:")).expect("tonewall's key");
        let (tag_suite, tonewall_key) = our_line.split_once(" inline:").unwrap();
        assert_eq!(tag_suite, format!("1 {suite}"));
        let target = answer.contact_uri().unwrap().to_string();
        let to = answer.to().to_string();
        ua.send(&ua.in_dialog(Method::Ack, &call_id, &from_tag, &to, 1, &target), t.server.sip_addr).await.unwrap();
        let media_to = tonewall::sip::sdp::RemoteDescription::parse(answer.body()).unwrap().remote;

        let mut libsrtp = Libsrtp::start(suite, &caller_key, tonewall_key);
        // The first prompt: every packet must decrypt under libsrtp.
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), rtp.recv_from(&mut buf)).await.unwrap().unwrap();
            let plain =
                libsrtp.unprotect(&buf[..n]).unwrap_or_else(|| panic!("{suite}: libsrtp refused a prompt packet"));
            assert_eq!((plain[0] >> 6, plain[1] & 0x7f), (2, 0), "RTP v2, PCMU");
        }
        // Keys, protected by libsrtp.
        for key_packets in keypad_events("4111111111111111#1230123", rand::random()) {
            for packet in key_packets {
                rtp.send_to(&libsrtp.protect(&packet), media_to).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
        assert_eq!(done["state"], "completed", "{suite}: {done}");
        // The whole card, security code included, while the call still holds the code.
        let card = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "123" };
        assert_card_whole(&t, &done, &card, suite).await;
        // Tonewall thanks the caller and hangs up; we answer its BYE.
        let bye = loop {
            let (msg, from) = tokio::time::timeout(Duration::from_secs(10), ua.recv()).await.expect("BYE").unwrap();
            if let SipMessage::Request(r) = msg
                && r.method() == Method::Bye
            {
                break (r, from);
            }
        };
        ua.answer(&bye.0, bye.1).await.unwrap();
    }
    t.stop().await;
}

/// `sip.agent_srtp = "required"`: tonewall's INVITE to the agent offers RTP/SAVP with its
/// SDES key; the agent (libsrtp) answers with its own, and every packet tonewall sends it
/// while the caller keys its card decrypts under libsrtp, and carries silence (masked),
/// never a key. An agent that answers plain RTP instead is hung up on.
#[tokio::test]
async fn the_agent_leg_is_srtp_under_libsrtp_when_required() {
    use tonewall::media::srtp::SrtpPolicy;
    use tonewall::sip::message::ResponseBuilder;
    let t = TestServer::start_with(|c| {
        c.sip.agent_srtp = SrtpPolicy::Required;
        c.capture.masking = tonewall::media::masker::Replacement::Silence;
    })
    .await;
    let key = t.key(Role::Agent).await;
    for agent_answers_srtp in [true, false] {
        let agent = Ua::bind().await.unwrap();
        let agent_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let agent_uri = format!("sip:agent@{}", agent.addr());
        let (id, uri) = common::create_session_for(&t.base, &key, "srtp-agent", Some(&agent_uri)).await;
        let caller = Ua::bind().await.unwrap();
        let caller_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let offer = tonewall::sip::sdp::write(
            caller_rtp.local_addr().unwrap(),
            1,
            &[tonewall::media::g711::Codec::Pcmu],
            Some(101),
        );
        let (invite, ..) = caller.invite(&uri, &offer);
        caller.send(&invite, t.server.sip_addr).await.unwrap();

        let (msg, from) = tokio::time::timeout(Duration::from_secs(5), agent.recv()).await.expect("dialled").unwrap();
        let SipMessage::Request(inv) = msg else { panic!("{msg:?}") };
        let body = String::from_utf8(inv.body().to_vec()).unwrap();
        assert!(body.contains(" RTP/SAVP 0 8\r\n"), "{body}");
        let tonewall_key = body
            .lines()
            .find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
            .expect("tonewall's key")
            .to_string();
        let agent_key = STANDARD.encode((0..30).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
        let port = agent_rtp.local_addr().unwrap().port();
        let answer = match agent_answers_srtp {
            true => format!(
                "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/SAVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{agent_key}\r\n"
            ),
            false => format!(
                "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n"
            ),
        };
        let ok = ResponseBuilder::new(&inv, 200, "OK")
            .to_tag("agent1")
            .header("Contact", &format!("<{agent_uri}>"))
            .body("application/sdp", answer.as_bytes())
            .build();
        agent.send(&ok, from).await.unwrap();
        // The ACK, then (without SRTP) tonewall's BYE.
        let mut got_bye = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((SipMessage::Request(r), from))) = tokio::time::timeout_at(deadline, agent.recv()).await {
            got_bye |= r.method() == Method::Bye;
            agent.answer(&r, from).await.unwrap();
        }
        assert_eq!(got_bye, !agent_answers_srtp, "an agent answering plain RTP is hung up on");

        let media_to = caller_answer_media(&caller, t.server.sip_addr).await;
        let mut libsrtp = Libsrtp::start("AES_CM_128_HMAC_SHA1_80", &agent_key, &tonewall_key);
        let keys = tokio::spawn(async move {
            for key_packets in keypad_events("4111111111111111#1230123", rand::random()) {
                for packet in key_packets {
                    caller_rtp.send_to(&packet, media_to).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            caller_rtp
        });
        let mut buf = [0u8; 2048];
        let mut decrypted = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, agent_rtp.recv_from(&mut buf)).await {
            let plain = libsrtp.unprotect(&buf[..n]).expect("libsrtp decrypts every packet to the agent");
            assert_eq!((plain[0] >> 6, plain[1] & 0x7f), (2, 0), "RTP v2, PCMU");
            assert!(plain[12..].iter().all(|b| *b == 0xff), "the agent hears silence while the caller keys");
            decrypted += 1;
        }
        assert_eq!(decrypted > 0, agent_answers_srtp, "{decrypted} packets reached the agent");
        let _ = keys.await;
        let done = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
        assert_eq!(done["state"], "completed", "{done}");
    }
    t.stop().await;
}

/// The caller's side of the call placed above: its 200 (ACKed), and where its media goes.
async fn caller_answer_media(caller: &Ua, server: std::net::SocketAddr) -> std::net::SocketAddr {
    loop {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(5), caller.recv()).await.expect("answered").unwrap();
        if let SipMessage::Response(r) = msg
            && r.status() == 200
        {
            let (target, to) = (r.contact_uri().unwrap().to_string(), r.to().to_string());
            let from_tag = r.from_tag().unwrap();
            caller.send(&caller.in_dialog(Method::Ack, r.call_id(), &from_tag, &to, 1, &target), server).await.unwrap();
            return tonewall::sip::sdp::RemoteDescription::parse(r.body()).unwrap().remote;
        }
    }
}
