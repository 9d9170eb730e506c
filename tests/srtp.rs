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
