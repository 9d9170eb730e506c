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

    let all: Vec<_> = vectors("rfc4475").into_iter().chain(vectors("rfc5118")).collect();
    let names: Vec<_> = EXPECTED.iter().map(|(n, _)| *n).collect();
    for (name, _) in &all {
        let dir_name = format!("{}/{name}", if name.ends_with(".dat") { "rfc4475" } else { "rfc5118" });
        assert!(names.contains(&dir_name.as_str()), "{dir_name} has no expected outcome");
    }
    let t = common::TestServer::start().await;
    let mut ears = Ears::bind().await;
    let mut failures = Vec::new();
    let mut stale = 0;
    for (n, (name, expect)) in EXPECTED.iter().enumerate() {
        let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap();
        // Whatever came late for an earlier vector is counted and dropped, never taken for
        // this one's answer.
        stale += ears.drain();
        let ids = Ids::of(&String::from_utf8_lossy(&bytes));
        ears.send(&bytes, t.server.sip_addr).await;
        let got = match expect {
            Status(_) => ears.final_status(&ids, Duration::from_secs(2)).await,
            // Silence is proved by a probe sent after the vector: tonewall answers datagrams
            // in order, so once the probe's answer is in, any answer to the vector would be.
            Silence => {
                let probe = probe(n);
                ears.send(probe.as_bytes(), t.server.sip_addr).await;
                let probe_answer = ears.final_status(&Ids::of(&probe), Duration::from_secs(2)).await;
                assert_eq!(probe_answer, Some(200), "{name}: the OPTIONS probe after it was not answered");
                ears.answered(&ids)
            }
        };
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
    println!("{stale} late or unmatched datagrams dropped between vectors");
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
    still_serves(&t).await;
    t.stop().await;
}

/// An OPTIONS to nobody, which tonewall answers 200 (RFC 3261 §11.2), from the 5060 ear.
fn probe(n: usize) -> String {
    format!(
        "OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKprobe{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=p{n}\r\nTo: <sip:probe@127.0.0.1>\r\n\
         Call-ID: probe-{n}@torture\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// What ties a response to its request (RFC 3261 §17.1.3, §8.2.6.2): the Call-ID, the CSeq
/// and the top Via's branch, read leniently from the raw text (some vectors are malformed on
/// purpose). A part the request lacks is not compared.
#[derive(Debug, Default, PartialEq)]
struct Ids {
    call_id: Option<String>,
    cseq: Option<String>,
    branch: Option<String>,
}

impl Ids {
    fn of(text: &str) -> Ids {
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        // Folded header lines (RFC 3261 §7.3.1) joined first.
        let head = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let mut ids = Ids::default();
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "call-id" | "i" if ids.call_id.is_none() => ids.call_id = Some(value.to_string()),
                // "0009 INVITE" and "9 INVITE" are one CSeq.
                "cseq" if ids.cseq.is_none() => {
                    let mut parts = value.split_whitespace();
                    let number = parts.next().and_then(|n| n.parse::<u32>().ok());
                    ids.cseq = number.map(|n| format!("{n} {}", parts.next().unwrap_or_default()));
                }
                "via" | "v" if ids.branch.is_none() => {
                    let top = value.split(',').next().unwrap_or_default();
                    ids.branch = top.split(';').skip(1).find_map(|param| {
                        let (k, v) = param.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("branch").then(|| v.trim().to_string())
                    });
                }
                _ => {}
            }
        }
        ids
    }

    /// Whether `reply` answers the request these came from.
    fn answered_by(&self, reply: &Ids) -> bool {
        let same = |ours: &Option<String>, theirs: &Option<String>| ours.is_none() || ours == theirs;
        same(&self.call_id, &reply.call_id) && same(&self.cseq, &reply.cseq) && same(&self.branch, &reply.branch)
    }
}

/// UDP sockets on every port the vectors' Vias name (replies go to the Via port at the
/// source address, received=127.0.0.1), each read by a task into one queue.
struct Ears {
    send_from: std::sync::Arc<tokio::net::UdpSocket>,
    heard: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    /// Responses heard while waiting for another request's answer.
    others: Vec<Vec<u8>>,
}

impl Ears {
    async fn bind() -> Ears {
        let (tx, heard) = tokio::sync::mpsc::unbounded_channel();
        let mut send_from = None;
        for port in [5060u16, 5050, 6050, 19823] {
            let socket =
                tokio::net::UdpSocket::bind(("127.0.0.1", port)).await.expect("bind a Via port in the namespace");
            let socket = std::sync::Arc::new(socket);
            send_from.get_or_insert_with(|| socket.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 70_000];
                while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            });
        }
        Ears { send_from: send_from.expect("an ear"), heard, others: Vec::new() }
    }

    async fn send(&self, bytes: &[u8], to: std::net::SocketAddr) {
        self.send_from.send_to(bytes, to).await.expect("send a vector");
    }

    /// Drops everything heard so far; returns how many datagrams that was.
    fn drain(&mut self) -> usize {
        let mut n = self.others.drain(..).count();
        while self.heard.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    /// The first final status answering `ids` within `wait`; other datagrams are kept aside.
    async fn final_status(&mut self, ids: &Ids, wait: std::time::Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.heard.recv()).await.ok()??;
            match status_of(&msg) {
                Some(code) if code >= 200 && ids.answered_by(&Ids::of(&String::from_utf8_lossy(&msg))) => {
                    return Some(code);
                }
                Some(code) if code < 200 => continue,
                _ => self.others.push(msg),
            }
        }
    }

    /// A final status answering `ids` among what has been heard so far.
    fn answered(&mut self, ids: &Ids) -> Option<u16> {
        while let Ok(msg) = self.heard.try_recv() {
            self.others.push(msg);
        }
        self.others
            .iter()
            .filter(|m| ids.answered_by(&Ids::of(&String::from_utf8_lossy(m))))
            .find_map(|m| status_of(m).filter(|c| *c >= 200))
    }
}

#[test]
fn a_reply_is_matched_to_its_own_request_only() {
    let reply = |branch: &str, cseq: &str| {
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};received=127.0.0.1\r\n\
             Call-ID: probe-1@torture\r\nCSeq: {cseq}\r\n\r\n"
        )
    };
    let request = Ids::of(&probe(1));
    assert!(request.answered_by(&Ids::of(&reply("z9hG4bKprobe1", "1 OPTIONS"))));
    assert!(!Ids::of(&probe(2)).answered_by(&Ids::of(&reply("z9hG4bKprobe1", "1 OPTIONS"))), "another call");
    assert!(!request.answered_by(&Ids::of(&reply("z9hG4bKprobe1", "2 OPTIONS"))), "another CSeq");
    assert!(!request.answered_by(&Ids::of(&reply("z9hG4bKother", "1 OPTIONS"))), "another transaction");
    // RFC 4475 §3.1.1.1's folded, spaced headers read as the plain ones would.
    let wsinv = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475/wsinv.dat")).unwrap();
    let ids = Ids::of(&String::from_utf8_lossy(&wsinv));
    let expected = ("wsinv.ndaksdj@192.0.2.1", "9 INVITE", "390skdjuw");
    assert_eq!(
        (ids.call_id.as_deref(), ids.cseq.as_deref(), ids.branch.as_deref()),
        (Some(expected.0), Some(expected.1), Some(expected.2))
    );
}

fn status_of(msg: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(msg);
    text.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok())
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
