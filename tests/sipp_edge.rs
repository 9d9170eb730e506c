//! tonewall's SIP edge against sipp (Debian `sip-tester`), the independent peer, on the real
//! `tonewall serve` binary: a basic call over UDP, TCP and TLS, the first 200 lost, re-INVITE
//! hold and resume, BYE from either side, a B2BUA call with sipp as both caller and agent,
//! CANCEL toward a ringing agent, and the transfer back with REFER. Every run is one call on
//! loopback, bounded by sipp's own timeouts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sipp::{self, free_udp_port, keypad_pcap};
use common::{ServeProcess, TestCard, http, require_tool, tonewall, wait_final, write_config};

const KEYPAD: &str = "4111111111111111#,1230,321";
const CARD: TestCard = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "321" };

struct Edge {
    dir: tempfile::TempDir,
    serve: ServeProcess,
    key: String,
    processor_key: String,
}

impl Edge {
    fn start(tls: bool) -> Edge {
        Edge::start_with(tls, "")
    }

    /// With `routes` (TOML `[[sip.routes]]` tables) added to the [sip] section.
    fn start_with(tls: bool, routes: &str) -> Edge {
        Edge::start_on(tls, routes, "127.0.0.1:0")
    }

    /// With the inline route "sales" (users `sales…`) to sipp running `target_scenario`.
    fn inline(target_scenario: &str) -> (Edge, sipp::KillOnDrop) {
        let port = free_udp_port(1);
        let route = format!(
            "[[sip.routes]]\nname = \"sales\"\nuser_prefix = \"sales\"\ntarget = \"sip:queue@127.0.0.1:{port}\"\nsources = [\"127.0.0.1\"]\n"
        );
        let edge = Edge::start_with(false, &route);
        let target = sipp::spawn(edge.path(), &sipp::scenario(edge.path(), target_scenario, &[]), port, &[]);
        (edge, target)
    }

    fn start_on(tls: bool, routes: &str, sip_listen: &str) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (ok, key, err) =
            tonewall(&["api-key", "create", "--role", "agent", "--data-dir", data.to_str().unwrap()], &[]);
        assert!(ok, "{err}");
        let (ok, processor_key, err) =
            tonewall(&["api-key", "create", "--role", "processor", "--data-dir", data.to_str().unwrap()], &[]);
        assert!(ok, "{err}");
        let with_routes = format!("{routes}\n[http]");
        let mut replace = vec![("\n[http]", with_routes.as_str())];
        let tls_ca;
        if tls {
            let (ok, _, err) = tonewall(&["keys", "tls-dev", "--data-dir", data.to_str().unwrap()], &[]);
            assert!(ok, "{err}");
            replace.push(("tls_listen = \"\"", "tls_listen = \"127.0.0.1:0\""));
            // Agents over TLS serve the development certificate too: trust it.
            tls_ca = format!("tls_ca = \"{}\"", data.join("tls/cert.pem").display());
            replace.push(("tls_ca = \"\"", tls_ca.as_str()));
        }
        let config = write_config(dir.path(), &replace);
        let log = dir.path().join("server.log");
        let serve = ServeProcess::start_on(&config, &data, &log, &[("RUST_LOG", "debug")], sip_listen);
        Edge { dir, serve, key: key.trim().to_string(), processor_key: processor_key.trim().to_string() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A session; returns its id and the SIP user of its transfer URI.
    async fn session(&self, extra: &str) -> (String, String) {
        let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"edge"{extra}}}"#);
        let (s, v) = http("POST", &format!("{}/v1/sessions", self.serve.base), Some(&self.key), Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        (id.clone(), format!("pay-{id}"))
    }

    async fn session_view(&self, id: &str) -> serde_json::Value {
        wait_final(&self.serve.base, &self.key, id, Duration::from_secs(10)).await
    }

    /// sipp as the caller toward `target` with `scenario` (after substitutions).
    fn caller(
        &self,
        scenario: &str,
        subs: &[(&str, &str)],
        user: &str,
        target: &str,
        extra: &[&str],
    ) -> sipp::KillOnDrop {
        let path = sipp::scenario(self.path(), scenario, subs);
        let mut args = vec![target, "-s", user];
        args.extend_from_slice(extra);
        sipp::spawn(self.path(), &path, free_udp_port(1), &args)
    }

    fn keypad_pcap(&self) -> PathBuf {
        let pcap = self.path().join("keypad.pcap");
        std::fs::write(&pcap, keypad_pcap(KEYPAD)).unwrap();
        pcap
    }

    /// The completed session's token detokenizes to the card [`KEYPAD`] keys.
    async fn assert_card_whole(&self, session: &serde_json::Value, case: &str) {
        common::assert_card_whole_at(&self.serve.base, &self.processor_key, session, &CARD, case).await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("server.log")).unwrap_or_default()
    }
}

fn ended_by_caller(v: &serde_json::Value) {
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"], "the caller hung up", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_call_over_udp_and_tcp_caller_hangs_up() {
    let edge = Edge::start(false);
    let target = edge.serve.sip.to_string();
    for transport in ["u1", "t1"] {
        let (id, user) = edge.session("").await;
        let sipp = edge.caller("basic_call.xml", &[("PAUSE_MS", "1000")], &user, &target, &["-t", transport]);
        sipp::passed(sipp, edge.path(), transport).await;
        ended_by_caller(&edge.session_view(&id).await);
    }
    let log = edge.log();
    assert!(log.lines().any(|l| l.contains("call answered") && l.contains("TCP")), "a call came over TCP:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_call_over_tls() {
    require_tool("socat", "apt-get install -y socat");
    let edge = Edge::start(true);
    let tls = edge.serve.tls.expect("serve listens for TLS");
    // Debian's sipp has no TLS: sipp speaks TCP to socat, which is the TLS client and checks
    // tonewall's certificate against the development pair.
    let front = common::sipp::free_tcp_port();
    let cert = edge.path().join("data/tls/cert.pem");
    let socat = Command::new("socat")
        .arg(format!("TCP-LISTEN:{front},bind=127.0.0.1,reuseaddr"))
        .arg(format!("OPENSSL:{tls},cafile={},verify=1,openssl-min-proto-version=TLS1.2", cert.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn socat");
    let _socat = sipp::KillOnDrop(Some(socat));
    // socat serves one connection, so its port is watched in the kernel's table rather
    // than probed.
    common::sipp::wait_listening(front, Duration::from_secs(10)).await;
    let (id, user) = edge.session("").await;
    let sipp =
        edge.caller("basic_call.xml", &[("PAUSE_MS", "1000")], &user, &format!("127.0.0.1:{front}"), &["-t", "t1"]);
    sipp::passed(sipp, edge.path(), "TLS").await;
    ended_by_caller(&edge.session_view(&id).await);
    let log = edge.log();
    assert!(log.lines().any(|l| l.contains("call answered") && l.contains("TLS")), "the call came over TLS:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_200_lost_is_sent_again_until_the_ack() {
    let edge = Edge::start(false);
    let (id, user) = edge.session("").await;
    let trace = edge.path().join("messages.log");
    let extra = ["-trace_msg", "-message_file", trace.to_str().unwrap()];
    let sipp = edge.caller("first_200_lost.xml", &[("PAUSE_MS", "2500")], &user, &edge.serve.sip.to_string(), &extra);
    sipp::passed(sipp, edge.path(), "first 200 lost").await;
    ended_by_caller(&edge.session_view(&id).await);
    // sipp traces each message it receives, retransmissions too: the 200 at 0, 0.5 and 1.5 s
    // before the ACK, and none in the 2.5 s after it.
    let trace = std::fs::read_to_string(&trace).unwrap();
    let oks = trace
        .split("-----------------------------------------------")
        .filter(|m| m.contains("message received") && m.contains("SIP/2.0 200 OK") && m.contains("CSeq: 1 INVITE"))
        .count();
    assert_eq!(oks, 3, "the INVITE's 200 arrived {oks} times:\n{trace}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reinvite_hold_and_resume() {
    let edge = Edge::start(false);
    let (id, user) = edge.session("").await;
    let sipp = edge.caller("hold_resume.xml", &[("PAUSE_MS", "300")], &user, &edge.serve.sip.to_string(), &[]);
    sipp::passed(sipp, edge.path(), "hold and resume").await;
    let v = edge.session_view(&id).await;
    ended_by_caller(&v);
    assert_eq!(v["on_hold"], false, "resumed before the end: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tonewall_hangs_up_after_capture() {
    let edge = Edge::start(false);
    let (id, user) = edge.session("").await;
    let pcap = edge.keypad_pcap();
    let sipp = edge.caller(
        "pay_by_keypad.xml",
        &[("PCAP_FILE", pcap.to_str().unwrap())],
        &user,
        &edge.serve.sip.to_string(),
        &[],
    );
    sipp::passed(sipp, edge.path(), "BYE from tonewall").await;
    let v = edge.session_view(&id).await;
    edge.assert_card_whole(&v, "BYE from tonewall").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn b2bua_call_with_sipp_as_caller_and_agent() {
    let edge = Edge::start(false);
    let agent_port = free_udp_port(1);
    let agent = sipp::spawn(edge.path(), &sipp::scenario(edge.path(), "agent_answers.xml", &[]), agent_port, &[]);
    let (id, user) = edge.session(&format!(r#","agent_uri":"sip:agent@127.0.0.1:{agent_port}""#)).await;
    let pcap = edge.keypad_pcap();
    let caller = edge.caller(
        "pay_then_hang_up.xml",
        &[("PCAP_FILE", pcap.to_str().unwrap())],
        &user,
        &edge.serve.sip.to_string(),
        &[],
    );
    sipp::passed(caller, edge.path(), "B2BUA caller").await;
    sipp::passed(agent, edge.path(), "B2BUA agent").await;
    let v = edge.session_view(&id).await;
    edge.assert_card_whole(&v, "B2BUA").await;
    assert_eq!(v["after_capture"], "bridge");
}

/// socat (OpenSSL) as a TLS server with `cert` and `key` on a free loopback port, relaying
/// to `to` (a socat address): Debian's sipp has no TLS. Returns it and its port.
async fn tls_server(cert: &Path, key: &Path, to: &str) -> (sipp::KillOnDrop, u16) {
    let front = common::sipp::free_tcp_port();
    let socat = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{front},bind=127.0.0.1,reuseaddr,cert={},key={},verify=0",
            cert.display(),
            key.display()
        ))
        .arg(to)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn socat");
    common::sipp::wait_listening(front, Duration::from_secs(10)).await;
    (sipp::KillOnDrop(Some(socat)), front)
}

/// The agent leg goes the way its URI says (RFC 3261 §19.1, §26.2): `;transport=tcp` over
/// TCP to sipp, and `sips:` over TLS to socat (OpenSSL) in front of sipp, with tonewall
/// checking the agent's certificate against `sip.tls_ca`; tonewall's INVITE, ACK and BYE
/// all travel on that connection and sipp, as the agent, sees the whole call.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_leg_goes_over_tcp_or_tls_as_its_uri_says() {
    require_tool("socat", "apt-get install -y socat");
    for transport in ["TCP", "TLS"] {
        let edge = Edge::start(true);
        let sipp_port = common::sipp::free_tcp_port();
        let scenario = sipp::scenario(edge.path(), "agent_answers.xml", &[]);
        let agent = sipp::spawn(edge.path(), &scenario, sipp_port, &["-t", "t1"]);
        common::sipp::wait_listening(sipp_port, Duration::from_secs(10)).await;
        let mut _socat = None;
        let agent_uri = match transport {
            "TCP" => format!("sip:agent@127.0.0.1:{sipp_port};transport=tcp"),
            _ => {
                let tls = edge.path().join("data/tls");
                let (socat, front) =
                    tls_server(&tls.join("cert.pem"), &tls.join("key.pem"), &format!("TCP:127.0.0.1:{sipp_port}"))
                        .await;
                _socat = Some(socat);
                format!("sips:agent@127.0.0.1:{front}")
            }
        };
        let (id, user) = edge.session(&format!(r#","agent_uri":"{agent_uri}""#)).await;
        let pcap = edge.keypad_pcap();
        let caller = edge.caller(
            "pay_then_hang_up.xml",
            &[("PCAP_FILE", pcap.to_str().unwrap())],
            &user,
            &edge.serve.sip.to_string(),
            &[],
        );
        sipp::passed(caller, edge.path(), "caller").await;
        sipp::passed(agent, edge.path(), &format!("agent over {transport}")).await;
        let v = edge.session_view(&id).await;
        edge.assert_card_whole(&v, transport).await;
        let log = edge.log();
        let line = log.lines().find(|l| l.contains("call answered")).unwrap_or_default();
        let agent_field = line.rsplit("agent").next().unwrap_or_default();
        assert!(agent_field.contains(&format!("\"{transport}\"")), "{line}");
    }
}

/// A peer whose TLS certificate is not from `sip.tls_ca` is not dialled: the capture goes
/// on without the agent.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_an_untrusted_tls_certificate_is_not_dialled() {
    require_tool("socat", "apt-get install -y socat");
    let edge = Edge::start(true);
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = (other.path().join("cert.pem"), other.path().join("key.pem"));
    tonewall::runtime::tls::write_dev_pair(&cert, &key).unwrap();
    let (_socat, front) = tls_server(&cert, &key, "SYSTEM:cat > /dev/null").await;
    let (id, user) = edge.session(&format!(r#","agent_uri":"sips:agent@127.0.0.1:{front}""#)).await;
    let pcap = edge.keypad_pcap();
    let caller = edge.caller(
        "pay_by_keypad.xml",
        &[("PCAP_FILE", pcap.to_str().unwrap())],
        &user,
        &edge.serve.sip.to_string(),
        &[],
    );
    sipp::passed(caller, edge.path(), "caller").await;
    let v = edge.session_view(&id).await;
    edge.assert_card_whole(&v, "agent unreachable").await;
    let log = edge.log();
    assert!(log.contains("agent unreachable") && log.contains("TLS with"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ringing_agent_is_cancelled_when_the_caller_hangs_up() {
    let edge = Edge::start(false);
    let agent_port = free_udp_port(1);
    let agent = sipp::spawn(edge.path(), &sipp::scenario(edge.path(), "agent_cancelled.xml", &[]), agent_port, &[]);
    let (id, user) = edge.session(&format!(r#","agent_uri":"sip:agent@127.0.0.1:{agent_port}""#)).await;
    let caller = edge.caller("basic_call.xml", &[("PAUSE_MS", "1500")], &user, &edge.serve.sip.to_string(), &[]);
    sipp::passed(caller, edge.path(), "caller").await;
    sipp::passed(agent, edge.path(), "cancelled agent").await;
    ended_by_caller(&edge.session_view(&id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn refer_back_to_the_agent_after_capture() {
    let edge = Edge::start(false);
    let agent_uri = "sip:agent@127.0.0.1:5099";
    let (id, user) = edge.session(&format!(r#","after_capture":"transfer","transfer_uri":"{agent_uri}""#)).await;
    let pcap = edge.keypad_pcap();
    let sipp = edge.caller(
        "refer_back.xml",
        &[("PCAP_FILE", pcap.to_str().unwrap()), ("REFER_TO", agent_uri)],
        &user,
        &edge.serve.sip.to_string(),
        &[],
    );
    sipp::passed(sipp, edge.path(), "REFER back").await;
    let v = edge.session_view(&id).await;
    edge.assert_card_whole(&v, "REFER back").await;
    assert_eq!(v["transferred"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_route_forwards_to_the_target_and_captures_on_request() {
    let (edge, agent) = Edge::inline("agent_answers.xml");
    let pcap = edge.keypad_pcap();
    let caller = edge.caller(
        "inline_call.xml",
        &[("PCAP_FILE", pcap.to_str().unwrap())],
        "sales-7",
        &edge.serve.sip.to_string(),
        &[],
    );
    // The call shows up once the target has answered; an agent sees only the number's end.
    let calls_url = format!("{}/v1/calls", edge.serve.base);
    let mut call = serde_json::Value::Null;
    for _ in 0..50 {
        let (s, v) = http("GET", &calls_url, Some(&edge.key), None).await;
        assert_eq!(s, 200, "{v}");
        if v["calls"][0]["answered"] == true {
            call = v["calls"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((call["mode"].as_str(), call["route"].as_str()), (Some("inline"), Some("sales")), "{call}");
    assert_eq!(call["caller"], "…0123", "{call}");
    let id = call["id"].as_str().unwrap();
    let body = r#"{"fields":["pan","expiry","cvv"],"reference":"inline"}"#;
    let capture_url = format!("{}/v1/calls/{id}/capture", edge.serve.base);
    // Two captures asked at the same moment: the call's task binds one and refuses the other.
    let (a, b) = tokio::join!(
        http("POST", &capture_url, Some(&edge.key), Some(body)),
        http("POST", &capture_url, Some(&edge.key), Some(body))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} / {}", a.1, b.1);
    let (s, session) = if a.0 == 201 { a } else { b };
    assert_eq!(s, 201, "{session}");
    assert_eq!(session["state"], "capturing", "{session}");
    // A second capture while this one runs is refused.
    let (s, v) = http("POST", &capture_url, Some(&edge.key), Some(body)).await;
    assert_eq!(s, 409, "{v}");
    // The keys start 3 s after the answer and take about 9 s.
    let done = wait_final(&edge.serve.base, &edge.key, session["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    edge.assert_card_whole(&done, "inline capture").await;
    sipp::passed(caller, edge.path(), "inline caller").await;
    sipp::passed(agent, edge.path(), "inline target").await;
    // Unknown call ids and users outside any route get the same answers as always.
    let (s, _) = http(
        "POST",
        &format!("{}/v1/calls/call_{}/capture", edge.serve.base, "0".repeat(32)),
        Some(&edge.key),
        Some(body),
    )
    .await;
    assert_eq!(s, 404);
    let (_, v) = http("GET", &calls_url, Some(&edge.key), None).await;
    assert_eq!(v["calls"].as_array().map(Vec::len), Some(0), "the ended call is gone: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn card_call_over_ipv6() {
    let edge = Edge::start_on(false, "", "[::1]:0");
    assert!(edge.serve.sip.is_ipv6(), "{}", edge.serve.sip);
    let (id, user) = edge.session("").await;
    let pcap = edge.keypad_pcap();
    let path = sipp::scenario(edge.path(), "pay_by_keypad.xml", &[("PCAP_FILE", pcap.to_str().unwrap())]);
    let target = edge.serve.sip.to_string();
    let caller = sipp::spawn_at(edge.path(), &path, "::1", free_udp_port(1), &[&target, "-s", &user]);
    sipp::passed(caller, edge.path(), "IPv6 caller").await;
    let v = edge.session_view(&id).await;
    edge.assert_card_whole(&v, "IPv6").await;
    let log = edge.log();
    assert!(log.lines().any(|l| l.contains("call answered") && l.contains("[::1]")), "the call came over IPv6:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_cancels_an_inline_call_while_the_target_rings() {
    let (edge, target) = Edge::inline("agent_cancelled.xml");
    let caller = edge.caller("caller_cancels.xml", &[], "sales-9", &edge.serve.sip.to_string(), &[]);
    sipp::passed(caller, edge.path(), "cancelling caller").await;
    sipp::passed(target, edge.path(), "cancelled target").await;
}
