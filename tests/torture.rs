//! RFC 4475 and RFC 5118 torture messages through the SIP parser: none may panic, and the
//! ones the RFCs call well-formed and that tonewall must understand do parse. (How each one
//! is answered end to end belongs to the "SIP edge" work.)

mod common;

use std::path::Path;

use tonewall::sip::message::{self, SipMessage};

fn vectors(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(dir);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn no_torture_message_panics_the_parser() {
    let all: Vec<_> = vectors("rfc4475").into_iter().chain(vectors("rfc5118")).collect();
    assert!(all.len() >= 60, "{} vectors", all.len());
    for (name, bytes) in &all {
        let outcome = std::panic::catch_unwind(|| {
            let _ = message::parse(bytes);
            if let Err(e) = message::parse(bytes) {
                let _ = message::bad_request(bytes, &e);
            }
        });
        assert!(outcome.is_ok(), "{name} panicked the parser");
    }
}

#[test]
fn well_formed_messages_parse() {
    // RFC 4475 §3.1.1.1 (short tortuous INVITE), §3.1.1.3 (escaped URI), §3.1.1.6 (unusual
    // reason phrase), §3.1.1.8 (extra trailing octets), RFC 5118 §4.1 (IPv6 in Via and SDP).
    for name in
        ["rfc4475/wsinv.dat", "rfc4475/esc01.dat", "rfc4475/unreason.dat", "rfc4475/dblreq.dat", "rfc5118/ipv6-good"]
    {
        let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap();
        match message::parse(&bytes) {
            Ok(SipMessage::Request(r)) => assert!(!r.call_id().is_empty(), "{name}"),
            Ok(SipMessage::Response(r)) => assert!(r.status() >= 100, "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

/// What tonewall must do with one torture message (RFC 4475 §3, RFC 5118 §4).
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A final response with one of these codes.
    Status(&'static [u16]),
    /// Nothing: a response for no transaction of ours (RFC 3261 §18.1.2), or an invalid
    /// message with no Via to answer.
    Silence,
}

use Expect::{Silence, Status};

/// Every vector with the answer its RFC asks for from a UAS that holds no matching call or
/// session. Valid requests are answered as any request to an unknown user would be (404 for
/// INVITE, 200 for OPTIONS, 405 for REGISTER and MESSAGE, 481 in-dialog, 501 for a method
/// nobody knows); invalid ones get 400 (505 for an unknown SIP version, 416 for an unknown
/// URI scheme, 420 for an unknown required extension). Where the RFC leaves a choice between
/// being strict and being liberal, both answers are listed.
const EXPECTED: &[(&str, Expect)] = &[
    // RFC 4475 §3.1.1: valid messages.
    // A To tag: a re-INVITE for a dialog we do not have.
    ("rfc4475/wsinv.dat", Status(&[481])),
    ("rfc4475/intmeth.dat", Status(&[501])),
    ("rfc4475/esc01.dat", Status(&[404])),
    ("rfc4475/escnull.dat", Status(&[405])),
    ("rfc4475/esc02.dat", Status(&[501])),
    ("rfc4475/lwsdisp.dat", Status(&[200])),
    ("rfc4475/longreq.dat", Status(&[404])),
    ("rfc4475/dblreq.dat", Status(&[405])),
    ("rfc4475/semiuri.dat", Status(&[200])),
    ("rfc4475/transports.dat", Status(&[200])),
    ("rfc4475/mpart01.dat", Status(&[405])),
    ("rfc4475/unreason.dat", Silence),
    ("rfc4475/noreason.dat", Silence),
    // §3.1.2: invalid messages.
    ("rfc4475/badinv01.dat", Status(&[400])),
    ("rfc4475/clerr.dat", Status(&[400])),
    ("rfc4475/ncl.dat", Status(&[400])),
    ("rfc4475/scalar02.dat", Status(&[400])),
    ("rfc4475/scalarlg.dat", Silence),
    ("rfc4475/quotbal.dat", Status(&[400])),
    ("rfc4475/ltgtruri.dat", Status(&[400])),
    ("rfc4475/lwsruri.dat", Status(&[400])),
    ("rfc4475/lwsstart.dat", Status(&[400])),
    ("rfc4475/trws.dat", Status(&[400])),
    ("rfc4475/escruri.dat", Status(&[400])),
    ("rfc4475/baddate.dat", Status(&[400, 404])),
    ("rfc4475/regbadct.dat", Status(&[400, 405])),
    ("rfc4475/badaspec.dat", Status(&[400])),
    ("rfc4475/baddn.dat", Status(&[400])),
    ("rfc4475/badvers.dat", Status(&[505])),
    ("rfc4475/mismatch01.dat", Status(&[400])),
    ("rfc4475/mismatch02.dat", Status(&[400, 501])),
    ("rfc4475/bigcode.dat", Silence),
    // §3.2: transaction layer.
    ("rfc4475/badbranch.dat", Status(&[200])),
    // §3.3: application layer.
    ("rfc4475/insuf.dat", Status(&[400])),
    ("rfc4475/unkscm.dat", Status(&[400, 416])),
    ("rfc4475/novelsc.dat", Status(&[400, 416])),
    ("rfc4475/unksm2.dat", Status(&[400, 405, 416])),
    ("rfc4475/bext01.dat", Status(&[420])),
    ("rfc4475/invut.dat", Status(&[404, 415])),
    ("rfc4475/regaut01.dat", Status(&[405])),
    ("rfc4475/multi01.dat", Status(&[400])),
    ("rfc4475/mcl01.dat", Status(&[400])),
    ("rfc4475/bcast.dat", Silence),
    ("rfc4475/zeromf.dat", Status(&[200, 483])),
    ("rfc4475/cparam01.dat", Status(&[405])),
    ("rfc4475/cparam02.dat", Status(&[405])),
    ("rfc4475/regescrt.dat", Status(&[405])),
    ("rfc4475/sdp01.dat", Status(&[404, 406])),
    // §3.4: backward compatibility.
    ("rfc4475/inv2543.dat", Status(&[404])),
    // RFC 5118 §4.
    ("rfc5118/ipv6-good", Status(&[405])),
    ("rfc5118/port-ambiguous", Status(&[405])),
    ("rfc5118/port-unambiguous", Status(&[405])),
    ("rfc5118/ipv6-bad", Status(&[400])),
    ("rfc5118/ipv6-correct-abnf-2-colons", Status(&[200])),
    ("rfc5118/ipv6-bug-abnf-3-colons", Status(&[200, 400])),
    ("rfc5118/ipv4-mapped-ipv6", Status(&[404])),
    ("rfc5118/ipv6-in-sdp", Status(&[404])),
    ("rfc5118/mult-ip-in-sdp", Status(&[404])),
    ("rfc5118/mult-ip-in-header", Status(&[481])),
    ("rfc5118/via-received-param-with-delim", Status(&[481])),
    ("rfc5118/via-received-param-no-delim", Status(&[200])),
];

const NETNS_ENV: &str = "TONEWALL_TEST_IN_NETNS";

/// Every torture message sent to a running server, one after another over UDP, then a whole
/// card call. The messages name foreign hosts in Via (and tonewall answers where Via says), so
/// the test runs in a network namespace of its own with only loopback up: no reply can leave
/// the machine. Outside one it re-runs itself under `unshare -rn`.
#[test]
fn torture_messages_get_the_right_answer_and_the_server_keeps_serving() {
    if std::env::var_os(NETNS_ENV).is_none() {
        common::require_tool("unshare", "apt-get install -y util-linux");
        common::require_tool("ip", "apt-get install -y iproute2");
        let child = std::process::Command::new("unshare")
            .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "torture_messages_get_the_right_answer_and_the_server_keeps_serving", "--nocapture"])
            .env(NETNS_ENV, "1")
            .output()
            .expect("unshare runs");
        let out = String::from_utf8_lossy(&child.stdout);
        println!("{out}{}", String::from_utf8_lossy(&child.stderr));
        assert!(child.status.success(), "the test inside the network namespace failed: {}", child.status);
        // A renamed test would make `--exact` match nothing, and zero tests pass quietly.
        assert!(out.contains("test result: ok. 1 passed"), "the child did not run exactly this test:\n{out}");
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(in_private_network());
}

async fn in_private_network() {
    use std::time::Duration;
    use tokio::net::UdpSocket;

    let all: Vec<_> = vectors("rfc4475").into_iter().chain(vectors("rfc5118")).collect();
    let names: Vec<_> = EXPECTED.iter().map(|(n, _)| *n).collect();
    for (name, _) in &all {
        let dir_name = format!("{}/{name}", if name.ends_with(".dat") { "rfc4475" } else { "rfc5118" });
        assert!(names.contains(&dir_name.as_str()), "{dir_name} has no expected outcome");
    }
    let t = common::TestServer::start().await;
    // Replies go to the Via port at the source address (received=127.0.0.1): listen on
    // every port the vectors' Vias name, and send from the default one.
    let mut ears = Vec::new();
    for port in [5060u16, 5050, 6050, 19823] {
        ears.push(UdpSocket::bind(("127.0.0.1", port)).await.expect("bind a Via port in the namespace"));
    }
    let mut failures = Vec::new();
    for (name, expect) in EXPECTED {
        let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap();
        ears[0].send_to(&bytes, t.server.sip_addr).await.unwrap();
        let wait = match expect {
            Status(_) => Duration::from_secs(2),
            Silence => Duration::from_millis(300),
        };
        let got = final_status(&ears, wait).await;
        let ok = match (expect, got) {
            (Status(codes), Some(code)) => codes.contains(&code),
            (Silence, None) => true,
            _ => false,
        };
        println!("{name:45} expected {expect:?}, got {got:?}");
        if !ok {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
    still_serves(&t).await;
    t.stop().await;
}

/// The first final status any ear hears within `wait` (provisional responses skipped).
async fn final_status(ears: &[tokio::net::UdpSocket], wait: std::time::Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 70_000];
    loop {
        let recv = async {
            loop {
                for e in ears {
                    if let Ok((n, _)) = e.try_recv_from(&mut buf) {
                        return buf[..n].to_vec();
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let Ok(msg) = tokio::time::timeout_at(deadline, recv).await else { return None };
        let text = String::from_utf8_lossy(&msg);
        let code = text.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(c) if c >= 200 => return Some(c),
            _ => continue,
        }
    }
}

/// After all that, a caller keys a card and the session completes.
async fn still_serves(t: &common::TestServer) {
    use std::time::Duration;
    use tonewall::api::auth::Role;
    use tonewall_testkit::caller::{self, CallerOptions};

    let key = t.key(Role::Agent).await;
    let (id, uri) = common::create_session(&t.base, &key, "torture").await;
    let report = caller::place_call(CallerOptions {
        linger: Duration::from_secs(6),
        ..CallerOptions::new(t.server.sip_addr, &uri, "4111111111111111#,1230,123")
    })
    .await
    .expect("call placed");
    assert!(report.answered);
    let done = common::wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(done["state"], "completed", "{done}");
}
