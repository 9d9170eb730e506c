//! The endpoint in simulated time: every stateless answer, admission, routing, Replaces and
//! the rate limit, without a socket.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::sip::message::parse;

const PHONE: &str = "127.0.0.1:5070";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const AGENT: &str = "127.0.0.1:5080";
/// The PBX in front: the one trusted peer.
const PBX: &str = "127.0.0.2";

fn endpoint() -> Endpoint<&'static str> {
    Endpoint::new(EndpointConfig {
        rate_per_source: 5,
        inline_routes: ["cc-", "sales"]
            .map(|p| InlineRoute { user_prefix: p.into(), sources: vec!["127.0.0.0/24".parse().unwrap()] })
            .to_vec(),
        trusted_peers: vec![format!("{PBX}/32").parse().unwrap()],
    })
}

fn request(method: &str, user: &str, call_id: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} sip:{user}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK{call_id}{method};rport\r\n\
From: <sip:caller@127.0.0.1>;tag=ct\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The status line of a stateless answer, and where it goes.
fn answer(ev: EndpointEvent<&'static str>) -> (String, Flow) {
    match ev {
        EndpointEvent::Respond(t) => {
            let text = String::from_utf8(t.bytes).unwrap();
            (text.lines().next().unwrap().to_string(), t.to)
        }
        other => panic!("expected a stateless answer, got {other:?}"),
    }
}

fn status(ev: EndpointEvent<&'static str>) -> String {
    answer(ev).0
}

#[test]
fn answers_what_needs_no_call_statelessly() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    // rport: answered at the source address and port the request came from (§18.2.2, RFC 3581).
    let from = Flow::udp(addr("127.0.0.1:40000"));
    let (line, to) = answer(ep.handle(t, from, &request("OPTIONS", "anyone", "o1", "")));
    assert_eq!((line.as_str(), to), ("SIP/2.0 200 OK", from));
    let from = Flow::udp(addr(PHONE));
    assert_eq!(
        status(ep.handle(t, from, &request("BYE", "pay-x", "b1", ""))),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert_eq!(status(ep.handle(t, from, &request("REFER", "pay-x", "r1", ""))), "SIP/2.0 405 Method Not Allowed");
    assert_eq!(status(ep.handle(t, from, &request("PUBLISH", "pay-x", "p1", ""))), "SIP/2.0 405 Method Not Allowed");
    assert_eq!(status(ep.handle(t, from, &request("INVITE", "nobody", "i1", ""))), "SIP/2.0 404 Not Found");
    let required = ep.handle(t, from, &request("INVITE", "pay-x", "i2", "Require: 100rel, timer\r\n"));
    let EndpointEvent::Respond(t420) = required else { panic!("Require: 100rel is refused") };
    let text = String::from_utf8(t420.bytes).unwrap();
    assert!(text.starts_with("SIP/2.0 420 Bad Extension") && text.contains("Unsupported: 100rel"), "{text}");
    // Keep-alives, a stray ACK and a response for no call of ours: nothing at all.
    assert!(matches!(ep.handle(t, from, b"\r\n\r\n"), EndpointEvent::Nothing));
    assert!(matches!(ep.handle(t, from, &request("ACK", "pay-x", "a1", "")), EndpointEvent::Nothing));
    let stray = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:c@d>;tag=2\r\nCall-ID: nobody\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(ep.handle(t, from, stray), EndpointEvent::Nothing));
    // Malformed: 400 back to where it came from.
    let broken = b"INVITE sip:pay-x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKb\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: broken\r\nCSeq: x INVITE\r\nContent-Length: 0\r\n\r\n";
    let (line, to) = answer(ep.handle(t, from, broken));
    assert!(line.starts_with("SIP/2.0 400"), "{line}");
    assert_eq!(to, from);
}

#[test]
fn admits_sessions_and_inline_routes_and_nothing_else() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let from = Flow::udp(addr("127.0.0.1:40001"));
    let EndpointEvent::NewCall { invite, admission, reply_to } =
        ep.handle(t, from, &request("INVITE", "pay-s3ss10n", "n1", ""))
    else {
        panic!("a session's INVITE is a new call")
    };
    assert_eq!(admission, Admission::Session { id: "s3ss10n".into() });
    assert_eq!(invite.call_id(), "n1");
    assert_eq!(reply_to, Flow::udp(addr("127.0.0.1:40001")), "rport: the source port, not the Via's 5070");
    let EndpointEvent::NewCall { admission, .. } = ep.handle(t, from, &request("INVITE", "sales-7", "n2", "")) else {
        panic!("an inline route's INVITE is a new call")
    };
    assert_eq!(admission, Admission::Inline { route: 1 });
    // While the driver sets the call up, the INVITE's retransmission is not a second call.
    assert!(matches!(ep.handle(t, from, &request("INVITE", "sales-7", "n2", "")), EndpointEvent::Nothing));
    let SipMessage::Request(n2) = parse(&request("INVITE", "sales-7", "n2", "")).unwrap() else { unreachable!() };
    ep.refuse(&n2, from, 503, "Service Unavailable", Some(5));
    assert!(
        matches!(ep.handle(t, from, &request("INVITE", "sales-7", "n2", "")), EndpointEvent::NewCall { .. }),
        "refused, a new attempt with the same Call-ID is admitted again"
    );
    assert_eq!(status(ep.handle(t, from, &request("INVITE", "support", "n3", ""))), "SIP/2.0 404 Not Found");
    // An inline route takes INVITEs only from its sources (127.0.0.0/24 here); a session's
    // URI from anyone.
    let outsider = Flow::udp(addr("127.0.1.9:40001"));
    assert_eq!(status(ep.handle(t, outsider, &request("INVITE", "sales-8", "n5", ""))), "SIP/2.0 403 Forbidden");
    assert!(matches!(ep.handle(t, outsider, &request("INVITE", "pay-s3", "n6", "")), EndpointEvent::NewCall { .. }));
    let first = ep.handle(t, from, &request("INVITE", "cc-1", "n4", ""));
    assert!(matches!(first, EndpointEvent::NewCall { admission: Admission::Inline { route: 0 }, .. }));
    assert_eq!(ep.refusals(), Refusals { not_found: 1, forbidden: 1, ..Refusals::default() });
}

#[test]
fn routes_a_calls_messages_and_forgets_them_when_it_ends() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let phone = Flow::udp(addr(PHONE));
    let call = ep.insert_call("call 1", "caller-1", "agent-1", phone, Some(Flow::udp(addr(AGENT))));
    assert_eq!(ep.active_calls(), 1);
    let EndpointEvent::ToCall { call: inbox, leg, msg, .. } =
        ep.handle(t, phone, &request("BYE", "pay-x", "caller-1", ""))
    else {
        panic!("a BYE in the call's dialog goes to the call")
    };
    assert_eq!((inbox, leg), ("call 1", LegId::Caller));
    assert!(matches!(*msg, SipMessage::Request(_)));
    let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:c@d>;tag=2\r\nCall-ID: agent-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let agent = Flow::udp(addr("127.0.0.1:5080"));
    assert!(matches!(ep.handle(t, agent, ok), EndpointEvent::ToCall { leg: LegId::Agent, .. }));
    ep.remove_call(call);
    assert_eq!(ep.active_calls(), 0);
    assert_eq!(
        status(ep.handle(t, phone, &request("BYE", "pay-x", "caller-1", ""))),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert!(matches!(ep.handle(t, agent, ok), EndpointEvent::Nothing));
}

#[test]
fn an_invite_with_replaces_goes_to_the_call_holding_that_dialog() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let phone = Flow::udp(addr(PHONE));
    let call = ep.insert_call("call 1", "caller-1", "agent-1", phone, None);
    let desk = Flow::stream(Transport::Tcp, addr(&format!("{PBX}:41000")), ConnectionId(7));
    let replacing = request("INVITE", "pay-x", "new-1", "Replaces: caller-1;to-tag=tw1;from-tag=ct\r\n");
    let EndpointEvent::ToCall { call: inbox, leg, from, .. } = ep.handle(t, desk, &replacing) else {
        panic!("the INVITE with Replaces goes to the call")
    };
    assert_eq!((inbox, leg, from), ("call 1", LegId::Caller, desk), "over TCP it is answered on its connection");
    // Its own Call-ID routes to the call only once the call has checked the tags and taken
    // the dialog over; the old one is the Replaced leg from then on.
    assert!(matches!(ep.handle(t, desk, &request("ACK", "pay-x", "new-1", "")), EndpointEvent::Nothing));
    assert!(!ep.connection_in_use(ConnectionId(7)));
    ep.caller_replaced(call, "caller-1", "new-1", desk);
    assert!(matches!(ep.handle(t, desk, &request("ACK", "pay-x", "new-1", "")), EndpointEvent::ToCall { .. }));
    assert!(ep.connection_in_use(ConnectionId(7)), "the caller's connection now carries the call");
    let old_bye = ep.handle(t, phone, &request("BYE", "pay-x", "caller-1", ""));
    assert!(matches!(old_bye, EndpointEvent::ToCall { leg: LegId::Replaced, .. }));
    // From anyone but a trusted peer, even the caller's own phone: 403.
    let stranger = request("INVITE", "pay-x", "new-5", "Replaces: new-1;to-tag=tw1;from-tag=ct\r\n");
    assert_eq!(status(ep.handle(t, phone, &stranger)), "SIP/2.0 403 Forbidden");
    // Naming no dialog of ours: 481; a malformed header: 400.
    let unknown = request("INVITE", "pay-x", "new-2", "Replaces: nobody;to-tag=a;from-tag=b\r\n");
    assert_eq!(status(ep.handle(t, desk, &unknown)), "SIP/2.0 481 Call/Transaction Does Not Exist");
    let malformed = request("INVITE", "pay-x", "new-3", "Replaces: ;;;\r\n");
    assert_eq!(status(ep.handle(t, desk, &malformed)), "SIP/2.0 400 Bad Request");
    // Naming the agent leg's dialog is not a take-over of the caller.
    let agent_leg = request("INVITE", "pay-x", "new-4", "Replaces: agent-1;to-tag=a;from-tag=b\r\n");
    assert_eq!(status(ep.handle(t, desk, &agent_leg)), "SIP/2.0 481 Call/Transaction Does Not Exist");
}

#[test]
fn a_flood_from_one_source_gets_503_and_never_cuts_established_calls() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let flood = Flow::udp(addr("127.0.0.9:6000"));
    let mut statuses = Vec::new();
    for i in 0..30 {
        statuses.push(status(ep.handle(t, flood, &request("OPTIONS", "x", &format!("f{i}"), ""))));
    }
    let ok = statuses.iter().filter(|s| s.contains(" 200 ")).count();
    assert_eq!(ok, 10, "the burst is twice the rate of 5 per second: {statuses:?}");
    let refused = ep.handle(t, flood, &request("INVITE", "pay-x", "f-invite", ""));
    let EndpointEvent::Respond(r) = refused else { panic!("a new INVITE in the flood is refused") };
    let text = String::from_utf8(r.bytes).unwrap();
    assert!(text.starts_with("SIP/2.0 503") && text.contains("Retry-After: 1"), "{text}");
    // Another source is not limited, and neither is the flooding source's own call.
    let other = Flow::udp(addr("127.0.0.10:6000"));
    assert_eq!(status(ep.handle(t, other, &request("OPTIONS", "x", "o1", ""))), "SIP/2.0 200 OK");
    ep.insert_call("call", "in-dialog", "agent", flood, None);
    assert!(matches!(ep.handle(t, flood, &request("INFO", "pay-x", "in-dialog", "")), EndpointEvent::ToCall { .. }));
    // Tokens come back with time: 5 a second.
    let later = t + Duration::from_millis(1000);
    let back: usize = (0..10)
        .filter(|i| status(ep.handle(later, flood, &request("OPTIONS", "x", &format!("g{i}"), ""))).contains(" 200 "))
        .count();
    assert_eq!(back, 5);
    // Requests inside a call have a budget of their own, which a flood of them runs out of
    // too (back to its burst of ten a second after the first INFO above); ACKs are never
    // refused.
    let infos: Vec<bool> = (0..15)
        .map(|_| {
            matches!(ep.handle(later, flood, &request("INFO", "pay-x", "in-dialog", "")), EndpointEvent::ToCall { .. })
        })
        .collect();
    assert_eq!(infos.iter().filter(|routed| **routed).count(), 10, "{infos:?}");
    assert!(matches!(ep.handle(later, flood, &request("ACK", "pay-x", "in-dialog", "")), EndpointEvent::ToCall { .. }));
    // A trusted peer (a PBX carrying many calls) is not limited inside calls.
    let pbx = Flow::udp(addr(&format!("{PBX}:5060")));
    assert!((0..30).all(|_| matches!(
        ep.handle(later, pbx, &request("INFO", "pay-x", "in-dialog", "")),
        EndpointEvent::ToCall { .. }
    )));
    let refused = ep.refusals();
    assert_eq!((refused.rate_limited, refused.in_dialog_rate_limited), (20 + 1 + 5, 5));
}

#[test]
fn refusals_go_where_the_request_is_answered() {
    let mut ep = endpoint();
    let SipMessage::Request(req) = parse(&request("INVITE", "pay-x", "q1", "")).unwrap() else { unreachable!() };
    let from = Flow::udp(addr("127.0.0.1:40002"));
    let no_rport = ep.refuse(&req, from, 503, "Service Unavailable", Some(5));
    assert_eq!(no_rport.to.remote, addr(PHONE), "without rport stamped, the Via's port (§18.2.2)");
    let text = String::from_utf8(no_rport.bytes).unwrap();
    assert!(text.starts_with("SIP/2.0 503") && text.contains("Retry-After: 5"), "{text}");
}

#[test]
fn a_dialog_takes_messages_only_from_its_peers_and_the_trusted() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let phone = Flow::udp(addr(PHONE));
    ep.insert_call("call 1", "caller-1", "agent-1", phone, Some(Flow::udp(addr(AGENT))));
    // The caller's IP on another port, another address, the right address over TCP: 403,
    // and the call never sees them; a stranger's ACK is dropped.
    let strangers = [
        Flow::udp(addr("127.0.0.1:5999")),
        Flow::udp(addr("127.0.0.9:5070")),
        Flow::stream(Transport::Tcp, addr(PHONE), ConnectionId(3)),
    ];
    for from in strangers {
        for method in ["BYE", "INFO", "INVITE", "REFER", "UPDATE"] {
            assert_eq!(status(ep.handle(t, from, &request(method, "pay-x", "caller-1", ""))), "SIP/2.0 403 Forbidden");
        }
        assert!(matches!(ep.handle(t, from, &request("ACK", "pay-x", "caller-1", "")), EndpointEvent::Nothing));
    }
    // Responses on the agent's leg only from the agent.
    let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:c@d>;tag=2\r\nCall-ID: agent-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(ep.handle(t, Flow::udp(addr("127.0.0.1:5081")), ok), EndpointEvent::Nothing));
    assert!(matches!(ep.handle(t, Flow::udp(addr(AGENT)), ok), EndpointEvent::ToCall { leg: LegId::Agent, .. }));
    // The caller itself, and the trusted PBX, reach the call (once the strangers on the
    // caller's IP, which shares its in-dialog budget, have been quiet for a while).
    let later = t + Duration::from_secs(10);
    assert!(matches!(ep.handle(later, phone, &request("BYE", "pay-x", "caller-1", "")), EndpointEvent::ToCall { .. }));
    let pbx = Flow::udp(addr(&format!("{PBX}:5060")));
    assert!(matches!(ep.handle(later, pbx, &request("BYE", "pay-x", "caller-1", "")), EndpointEvent::ToCall { .. }));
}

#[test]
fn an_invites_source_speaks_for_its_dialog_when_the_via_names_another_port() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    // Sent from 40002 with a Via of 5070 and no rport: answered at 5070 (§18.2.2).
    let source = Flow::udp(addr("127.0.0.1:40002"));
    let invite = String::from_utf8(request("INVITE", "pay-abc", "c-9", "")).unwrap().replace(";rport", "");
    let EndpointEvent::NewCall { reply_to, .. } = ep.handle(t, source, invite.as_bytes()) else { panic!("admitted") };
    assert_eq!(reply_to.remote, addr(PHONE));
    ep.insert_call("call", "c-9", "agent-9", reply_to, None);
    for from in [source, reply_to] {
        assert!(matches!(ep.handle(t, from, &request("INFO", "pay-abc", "c-9", "")), EndpointEvent::ToCall { .. }));
    }
}

#[test]
fn a_draining_endpoint_turns_new_calls_and_probes_away_and_keeps_its_calls() {
    let (mut ep, t) = (endpoint(), crate::test_origin());
    let phone = Flow::udp(addr(PHONE));
    ep.insert_call("call 1", "caller-1", "agent-1", phone, None);
    ep.drain(30);
    assert_eq!(ep.admitting(), Admitting::Draining { retry_after_s: 30 });
    for method in ["OPTIONS", "INVITE"] {
        let ev = ep.handle(t, phone, &request(method, "pay-x", &format!("new-{method}"), ""));
        let EndpointEvent::Respond(tx) = ev else { panic!("{method} while draining is answered") };
        let text = String::from_utf8(tx.bytes).unwrap();
        assert!(text.starts_with("SIP/2.0 503 Service Unavailable\r\n"), "{method}: {text}");
        assert!(text.contains("\r\nRetry-After: 30\r\n"), "{method}: {text}");
    }
    // The call it holds goes on: its BYE, and an in-dialog OPTIONS, reach it.
    for method in ["OPTIONS", "BYE"] {
        let ev = ep.handle(t, phone, &request(method, "pay-x", "caller-1", ""));
        assert!(matches!(ev, EndpointEvent::ToCall { leg: LegId::Caller, .. }), "{method}");
    }
    // A transfer from the PBX into a held call (Replaces) is not a new call.
    let desk = Flow::udp(addr(&format!("{PBX}:5060")));
    let replacing = request("INVITE", "pay-x", "new-1", "Replaces: caller-1;to-tag=tw1;from-tag=ct\r\n");
    assert!(matches!(ep.handle(t, desk, &replacing), EndpointEvent::ToCall { .. }));
    // Other stateless answers are unchanged.
    assert_eq!(
        status(ep.handle(t, phone, &request("BYE", "pay-x", "gone", ""))),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert_eq!(ep.refusals(), Refusals { draining: 2, ..Refusals::default() }, "the two turned away, counted");
}
