//! Simulated-time tests of a whole `Call`: SIP on both legs, RTP, timers, capture.
//! Compiled only under #[cfg(test)] (see `mod tests` in mod.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtp_rs::{RtpPacketBuilder, Seq};

use super::*;
use crate::capture::collector::{FieldName, Payment};
use crate::media::g711::Codec;
use crate::media::player::PromptAudio;
use crate::media::srtp::{MasterKey, SrtpLeg, SrtpPolicy};
use crate::media::telephone_event::TelephoneEvent;
use crate::sip::message::{Response, parse};

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

fn invite(body: &str) -> Request {
    let text = format!(
        "INVITE sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\nCall-ID: caller-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match parse(text.as_bytes()).unwrap() {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => unreachable!(),
    }
}

fn prompts() -> Arc<Prompts> {
    let short: PromptAudio = vec![500i16; 800].into(); // 100 ms each
    Arc::new(Prompts::same(short))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Where the test's peers are: the caller's phone, the agent, and the phone that takes the
/// caller's dialog over with Replaces.
const PHONE: u16 = 5070;
const AGENT: u16 = 5080;
const TRANSFEREE: u16 = 5090;

fn agent_at(uri: &str) -> AgentTarget {
    AgentTarget::udp(uri, addr(AGENT))
}

fn session(after: AfterCapture, agent: Option<&str>) -> Mode {
    Mode::Session {
        plan: CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv]),
        after,
        agent: agent.map(agent_at),
    }
}

fn config(agent: Option<&str>) -> CallConfig {
    CallConfig {
        local_sip: addr(5060),
        local_tls: None,
        caller: Flow::udp(addr(PHONE)),
        caller_rtp: addr(20000),
        agent_rtp: addr(20002),
        mode: session(if agent.is_some() { AfterCapture::Bridge } else { AfterCapture::Hangup }, agent),
        collector: CollectorConfig::default(),
        timers: Timers::default(),
        today: YearMonth { year: 2026, month: 11 },
        seed: 0xfeed,
        prompts: prompts(),
        masking: Masking { replacement: crate::media::masker::Replacement::Silence, always: false },
        record: true,
        srtp: SrtpPolicy::Optional,
        srtp_key: MasterKey::from_random(&[7; 30]),
        agent_srtp: SrtpPolicy::Off,
        agent_srtp_key: MasterKey::from_random(&[7; 30]),
        media_policy: MediaAddressPolicy::default(),
        sdes_requires_tls: false,
    }
}

/// The tests drive the call leg by leg; each input goes through `handle_input` as the
/// driver's would, from the peer of its leg.
trait Drive {
    fn handle_sip(&mut self, now: Instant, leg: LegId, msg: SipMessage);
    fn handle_rtp(&mut self, now: Instant, leg: LegId, packet: &[u8]);
    fn handle_command(&mut self, now: Instant, cmd: Command);
    fn handle_timeout(&mut self, now: Instant);
}

impl Drive for Call {
    fn handle_sip(&mut self, now: Instant, leg: LegId, msg: SipMessage) {
        let takes_over = matches!(&msg, SipMessage::Request(r) if r.header("Replaces").is_some());
        let port = match leg {
            LegId::Agent => AGENT,
            LegId::Caller if takes_over => TRANSFEREE,
            LegId::Caller | LegId::Replaced => PHONE,
        };
        self.handle_input(now, Input::Sip { leg, msg: Box::new(msg), from: Flow::udp(addr(port)) });
    }
    fn handle_rtp(&mut self, now: Instant, leg: LegId, packet: &[u8]) {
        // From where the leg's SDP says its media is (the agent's answers name port 7000).
        let from = match leg {
            LegId::Caller | LegId::Replaced => self.caller.media.params.remote,
            LegId::Agent => addr(7000),
        };
        self.handle_input(now, Input::Rtp { leg, packet, from });
    }
    fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.handle_input(now, Input::Command(cmd));
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_input(now, Input::Timeout);
    }
}

/// Drains outputs: SIP messages per leg (known by their destination), and events.
fn drain(call: &mut Call) -> (Vec<(LegId, String)>, Vec<CallEvent>) {
    let (mut sip, mut events) = (vec![], vec![]);
    while let Some(o) = call.poll_output() {
        match o {
            Output::Transmit(Transmit { to, bytes }) => {
                let leg = match to {
                    _ if to.remote == addr(AGENT) => LegId::Agent,
                    _ if to == call.caller.flow => LegId::Caller,
                    _ => LegId::Replaced,
                };
                sip.push((leg, String::from_utf8(bytes).unwrap()));
            }
            Output::Event(e) => events.push(e),
        }
    }
    while call.poll_packet().is_some() {}
    (sip, events)
}

fn first_line(s: &str) -> &str {
    s.split("\r\n").next().unwrap()
}

fn caller_request(call: &Call, method: &str, cseq: u32) -> SipMessage {
    let text = format!(
        "{method} sip:tonewall@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>;tag={}\r\nCall-ID: caller-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        call.caller.dialog.local_tag
    );
    parse(text.as_bytes()).unwrap()
}

fn response_to(request: &str, status: u16, to_tag: &str, body: &str) -> SipMessage {
    let SipMessage::Request(req) = parse(request.as_bytes()).unwrap() else { panic!("not a request") };
    let mut b = ResponseBuilder::new(&req, status, "X").to_tag(to_tag).header("Contact", "<sip:agent@127.0.0.1:5080>");
    if !body.is_empty() {
        b = b.body("application/sdp", body.as_bytes());
    }
    parse(&b.build()).unwrap()
}

fn event_packet(seq: u16, ts: u32, code: u8, end: bool) -> Vec<u8> {
    let ev = TelephoneEvent { code, end, volume: 10, duration: 800 }.to_bytes();
    RtpPacketBuilder::new()
        .payload_type(101)
        .ssrc(9)
        .sequence(Seq::from(seq))
        .timestamp(ts)
        .payload(&ev)
        .build()
        .unwrap()
}

fn key_all(call: &mut Call, keys: &str, t: Instant) {
    key_from(call, keys, 0, t);
}

/// Keys as RFC 4733 events, the first as the `first`-th of the stream.
fn key_from(call: &mut Call, keys: &str, first: usize, t: Instant) {
    for (i, c) in keys.chars().enumerate().map(|(i, c)| (i + first, c)) {
        let code = Key::from_char(c).unwrap().event_code();
        let ts = 1000 + i as u32 * 2000;
        for end in [false, true, true, true] {
            call.handle_rtp(t, LegId::Caller, &event_packet(i as u16 * 4, ts, code, end));
        }
    }
}

#[test]
fn answers_with_100_180_200_and_resends_200_until_ack() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    let (sip, events) = drain(&mut call);
    let lines: Vec<&str> = sip.iter().map(|(_, s)| first_line(s)).collect();
    assert_eq!(lines, vec!["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]);
    assert!(sip[2].1.contains("m=audio 20000 RTP/AVP 0 101"), "answer keeps the offer's event payload type");
    assert!(matches!(events[0], CallEvent::Answered));
    // A retransmitted INVITE gets the 200 again.
    call.handle_sip(t, LegId::Caller, SipMessage::Request(invite(OFFER)));
    assert_eq!(first_line(&drain(&mut call).0[0].1), "SIP/2.0 200 OK");
    // Timer: resends at 500 ms, 1.5 s; ACK stops it.
    let due = call.poll_timeout().unwrap();
    assert!(due <= t + Duration::from_millis(500));
    call.handle_timeout(t + Duration::from_millis(500));
    assert_eq!(first_line(&drain(&mut call).0[0].1), "SIP/2.0 200 OK");
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    call.handle_timeout(t + Duration::from_millis(1500));
    assert!(drain(&mut call).0.is_empty(), "no 200 after the ACK");
    // BYE from the caller ends the call.
    call.handle_sip(t, LegId::Caller, caller_request(&call, "BYE", 2));
    let (sip, events) = drain(&mut call);
    assert_eq!(first_line(&sip[0].1), "SIP/2.0 200 OK");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::CallerHungUp))));
    assert!(events.iter().any(|e| matches!(e, CallEvent::CaptureFailed { .. })));
    assert!(call.is_ended());
}

#[test]
fn no_ack_within_64_t1_ends_the_call_with_bye() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    drain(&mut call);
    let mut resent = 0;
    let mut now = t;
    while let Some(due) = call.poll_timeout() {
        if due > t + Duration::from_secs(40) {
            break;
        }
        now = due;
        call.handle_timeout(now);
        let (sip, events) = drain(&mut call);
        resent += sip.iter().filter(|(_, s)| s.starts_with("SIP/2.0 200")).count();
        if let Some((_, bye)) = sip.iter().find(|(_, s)| s.starts_with("BYE ")) {
            assert!(bye.starts_with("BYE sip:caller@127.0.0.1:5070 SIP/2.0"));
            assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::NoAck))));
            break;
        }
    }
    assert_eq!(now - t, Duration::from_secs(32));
    // 0.5, 1.5, 3.5, 7.5, then every T2 (4 s) up to 31.5 s.
    assert_eq!(resent, 10, "T1 doubling capped at T2 within 64·T1");
}

#[test]
fn capture_by_rfc4733_tokenize_thank_and_hang_up() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    key_all(&mut call, "4111111111111111#1230123", t);
    let (_, events) = drain(&mut call);
    let card = events.into_iter().find_map(|e| match e {
        CallEvent::PaymentCaptured(c) => match c.payment {
            Payment::Card(card) => Some(card),
            Payment::Bank(_) => None,
        },
        _ => None,
    });
    let card = card.expect("card captured");
    assert_eq!(card.pan.expose(), "4111111111111111");
    assert_eq!(card.expiry.map(|e| (e.month(), e.year())), Some((12, 2030)));
    assert_eq!(card.security_code.as_ref().map(|c| c.expose()), Some("123"));
    call.handle_command(t, Command::CardStored);
    let (sip, events) = drain(&mut call);
    assert!(events.iter().any(|e| matches!(e, CallEvent::Completed)));
    assert!(sip.is_empty(), "the thank-you prompt plays before the BYE");
    // Play out the 100 ms thank-you prompt in 20 ms steps, then tonewall hangs up.
    let mut now = t;
    let mut bye = None;
    for _ in 0..20 {
        now += Duration::from_millis(20);
        call.handle_timeout(now);
        if let Some((_, b)) = drain(&mut call).0.into_iter().find(|(_, s)| s.starts_with("BYE ")) {
            bye = Some(b);
            break;
        }
    }
    let bye = bye.expect("BYE after the prompt");
    let resp = response_to(&bye, 200, "ct", "");
    call.handle_sip(now, LegId::Caller, resp);
    assert!(call.is_ended());
}

#[test]
fn agent_leg_invite_ack_and_masked_bridge() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(Some("sip:agent@127.0.0.1:5080")), t).unwrap();
    let (sip, _) = drain(&mut call);
    let (_, agent_invite) = sip.iter().find(|(leg, _)| *leg == LegId::Agent).expect("agent dialled");
    assert!(agent_invite.starts_with("INVITE sip:agent@127.0.0.1:5080 SIP/2.0"));
    assert!(agent_invite.contains("m=audio 20002 RTP/AVP 0 8\r\n"), "{agent_invite}");
    assert!(!agent_invite.contains("telephone-event"), "no events are ever offered to the agent");
    let answer = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";
    call.handle_sip(t, LegId::Agent, response_to(agent_invite, 180, "ag", ""));
    call.handle_sip(t, LegId::Agent, response_to(agent_invite, 200, "ag", answer));
    let (sip, events) = drain(&mut call);
    assert!(sip[0].1.starts_with("ACK sip:agent@127.0.0.1:5080 SIP/2.0"), "{}", sip[0].1);
    assert!(events.iter().any(|e| matches!(e, CallEvent::AgentAnswered)));
    // A retransmitted 200 is answered with the same ACK.
    call.handle_sip(t, LegId::Agent, response_to(agent_invite, 200, "ag", answer));
    assert_eq!(drain(&mut call).0[0].1, sip[0].1);
    // A key toward the agent becomes silence frames only.
    call.handle_rtp(t, LegId::Caller, &event_packet(1, 500, 4, false));
    let mut to_agent = vec![];
    while let Some(p) = call.poll_packet() {
        if p.leg == LegId::Agent {
            let r = crate::media::rtp::RtpReader::new(&p.buf[..p.len]).unwrap();
            to_agent.push((r.payload_type(), r.payload().iter().all(|b| *b == Codec::Pcmu.silence()), p.to.port()));
        }
    }
    assert!(!to_agent.is_empty());
    assert!(to_agent.iter().all(|p| *p == (0, true, 7000)), "{to_agent:?}");
    // Caller hangs up: tonewall sends BYE to the agent.
    call.handle_sip(t, LegId::Caller, caller_request(&call, "BYE", 2));
    let (sip, _) = drain(&mut call);
    assert!(sip.iter().any(|(leg, s)| *leg == LegId::Agent && s.starts_with("BYE sip:agent@127.0.0.1:5080")));
    assert!(!call.is_ended(), "waits for the agent's 200");
}

#[test]
fn busy_agent_is_acked_and_capture_goes_on() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(Some("sip:agent@127.0.0.1:5080")), t).unwrap();
    let (sip, _) = drain(&mut call);
    let (_, agent_invite) = sip.iter().find(|(leg, _)| *leg == LegId::Agent).unwrap();
    call.handle_sip(t, LegId::Agent, response_to(agent_invite, 486, "ag", ""));
    let (sip, events) = drain(&mut call);
    assert!(sip[0].1.starts_with("ACK sip:agent@127.0.0.1:5080"));
    assert!(sip[0].1.contains("CSeq: 1 ACK"));
    assert!(events.iter().any(|e| matches!(e, CallEvent::AgentUnavailable { status: 486 })));
    assert!(matches!(call.capture.state, CaptureState::Collecting(_)));
}

#[test]
fn unacceptable_offer_gets_488() {
    let g729 = OFFER.replace("RTP/AVP 0 101", "RTP/AVP 18");
    let Err(resp) = Call::accept(&invite(&g729), config(None), crate::test_origin()) else { panic!("accepted G.729") };
    let SipMessage::Response(r) = parse(&resp).unwrap() else { panic!() };
    assert_eq!(r.status(), 488);
    let _: &Response = &r;
}

#[test]
fn a_keypress_interrupts_the_prompt() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    drain(&mut call);
    call.handle_timeout(t);
    assert!(call.bridge.is_prompting(), "the card-number prompt plays at once");
    call.handle_rtp(t, LegId::Caller, &event_packet(1, 100, 4, false));
    assert!(!call.bridge.is_prompting(), "the first key stops it");
    call.handle_timeout(t + Duration::from_millis(20));
    let mut to_caller = 0;
    while let Some(p) = call.poll_packet() {
        to_caller += usize::from(p.leg == LegId::Caller);
    }
    assert_eq!(to_caller, 1, "only the frame sent before the key");
}

#[test]
fn sip_info_dtmf_relay_keys_count_like_rfc4733() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    for (i, key) in "4111111111111111#".chars().enumerate() {
        // Alternate the two INFO formats phones use.
        let (ct, body) = if i % 2 == 0 {
            ("application/dtmf-relay", format!("Signal={key}\r\nDuration=160\r\n"))
        } else {
            ("application/dtmf", format!("{key}\r\n"))
        };
        let text = format!(
            "INFO sip:tonewall@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{i}\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>;tag={}\r\nCall-ID: caller-1\r\nCSeq: {} INFO\r\n\
Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            call.caller.dialog.local_tag,
            i + 2,
            body.len()
        );
        call.handle_sip(t, LegId::Caller, parse(text.as_bytes()).unwrap());
    }
    let (sip, events) = drain(&mut call);
    assert_eq!(sip.iter().filter(|(_, s)| s.starts_with("SIP/2.0 200 OK")).count(), 17);
    let done = events.iter().find_map(|e| match e {
        CallEvent::FieldDone { field: FieldName::Pan, masked, .. } => Some(masked.clone()),
        _ => None,
    });
    assert_eq!(done.as_deref(), Some("•••• •••• •••• 1111"));
    let keys = call.media_stats().keys;
    assert_eq!((keys.info, keys.rfc4733, keys.in_band), (17, 0, 0), "counted by source");
    // One key as an RFC 4733 event after them: counted apart.
    call.handle_rtp(t, LegId::Caller, &event_packet(1, 100, 7, false));
    call.handle_rtp(t, LegId::Caller, &event_packet(2, 100, 7, true));
    assert_eq!(call.media_stats().keys.rfc4733, 1);
}

/// An in-dialog request from the caller with extra headers and a body.
fn caller_with(call: &Call, method: &str, cseq: u32, headers: &str, ct: &str, body: &str) -> SipMessage {
    let text = format!(
        "{method} sip:tonewall@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>;tag={}\r\nCall-ID: caller-1\r\nCSeq: {cseq} {method}\r\n\
{headers}Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        call.caller.dialog.local_tag,
        body.len()
    );
    parse(text.as_bytes()).unwrap()
}

fn invite_with(headers: &str) -> Request {
    let text = format!(
        "INVITE sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\nCall-ID: caller-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\n{headers}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    );
    match parse(text.as_bytes()).unwrap() {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => unreachable!(),
    }
}

/// Runs the call's timers up to `until`, collecting what it sends and reports.
fn run_until(call: &mut Call, until: Instant) -> (Vec<(LegId, String)>, Vec<CallEvent>) {
    let (mut sip, mut events) = (vec![], vec![]);
    while let Some(due) = call.poll_timeout() {
        if due > until {
            break;
        }
        call.handle_timeout(due);
        let (s, e) = drain(call);
        sip.extend(s);
        events.extend(e);
    }
    (sip, events)
}

#[test]
fn reinvite_holds_and_resumes_and_held_caller_gets_no_audio() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    let hold = format!("{OFFER}a=sendonly\r\n").replace("o=- 1 1", "o=- 1 2");
    call.handle_sip(t, LegId::Caller, caller_with(&call, "INVITE", 2, "", "application/sdp", &hold));
    let (sip, events) = drain(&mut call);
    let ok = &sip.iter().find(|(_, s)| s.starts_with("SIP/2.0 200")).expect("200 to the re-INVITE").1;
    assert!(ok.contains("a=recvonly\r\n") && ok.contains("CSeq: 2 INVITE"), "{ok}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Hold { on: true })));
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 2));
    // The card-number prompt runs on in time but nothing goes to the held caller.
    call.handle_timeout(t + Duration::from_millis(20));
    let mut to_caller = 0;
    while let Some(p) = call.poll_packet() {
        to_caller += usize::from(p.leg == LegId::Caller);
    }
    assert_eq!(to_caller, 0);
    // Resume with a codec change to PCMA.
    let resume = OFFER.replace("RTP/AVP 0 101", "RTP/AVP 8 101").replace("a=rtpmap:0 PCMU", "a=rtpmap:8 PCMA");
    call.handle_sip(t, LegId::Caller, caller_with(&call, "INVITE", 3, "", "application/sdp", &resume));
    let (sip, events) = drain(&mut call);
    let ok = &sip.iter().find(|(_, s)| s.starts_with("SIP/2.0 200")).unwrap().1;
    assert!(ok.contains("a=sendrecv\r\n") && ok.contains("m=audio 20000 RTP/AVP 8 101"), "{ok}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Hold { on: false })));
    // A broken offer is refused and changes nothing (§14.2).
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 3));
    call.handle_sip(t, LegId::Caller, caller_with(&call, "INVITE", 4, "", "application/sdp", "v=0\r\n"));
    assert!(drain(&mut call).0[0].1.starts_with("SIP/2.0 488"));
}

#[test]
fn session_timer_without_refresh_ends_the_call() {
    let t = crate::test_origin();
    let inv = invite_with("Supported: timer\r\nSession-Expires: 90\r\n");
    // A caller slow enough that capture does not time out first.
    let slow = CollectorConfig { first_digit: Duration::from_secs(600), ..CollectorConfig::default() };
    let mut call = Call::accept(&inv, CallConfig { collector: slow, ..config(None) }, t).unwrap();
    let (sip, _) = drain(&mut call);
    let ok = &sip.iter().find(|(_, s)| s.starts_with("SIP/2.0 200")).unwrap().1;
    assert!(ok.contains("Session-Expires: 90;refresher=uac\r\n") && ok.contains("Require: timer\r\n"), "{ok}");
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    // A refresh (UPDATE) at 40 s moves the deadline; none after it ends the call at 100 s.
    let at40 = t + Duration::from_secs(40);
    run_until(&mut call, at40);
    call.handle_sip(
        at40,
        LegId::Caller,
        caller_with(&call, "UPDATE", 2, "Supported: timer\r\nSession-Expires: 90\r\n", "text/plain", ""),
    );
    assert!(drain(&mut call).0.iter().any(|(_, s)| s.starts_with("SIP/2.0 200")));
    let (sip, events) = run_until(&mut call, t + Duration::from_secs(99));
    assert!(!sip.iter().any(|(_, s)| s.starts_with("BYE")), "the refresh moved the deadline");
    assert!(!events.iter().any(|e| matches!(e, CallEvent::Ended(_))));
    let (sip, events) = run_until(&mut call, t + Duration::from_secs(101));
    assert!(sip.iter().any(|(_, s)| s.starts_with("BYE sip:caller@127.0.0.1:5070")));
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::SessionExpired))));
    let small = invite_with("Session-Expires: 30\r\n");
    let Err(refusal) = Call::accept(&small, config(None), t) else { panic!("accepted 30 s") };
    assert!(String::from_utf8(refusal).unwrap().starts_with("SIP/2.0 422"));
}

#[test]
fn we_refresh_when_asked_and_glare_gets_491_both_ways() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite_with("Session-Expires: 90;refresher=uas\r\n"), config(None), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    let (sip, _) = run_until(&mut call, t + Duration::from_secs(45));
    let reinvite =
        sip.iter().find(|(_, s)| s.starts_with("INVITE sip:caller@127.0.0.1:5070")).expect("refresh").1.clone();
    assert!(reinvite.contains("Session-Expires: 90;refresher=uas") && reinvite.contains("CSeq: 1 INVITE"));
    // The caller's own re-INVITE crosses ours: 491 (§14.1).
    let now = t + Duration::from_secs(45);
    call.handle_sip(now, LegId::Caller, caller_with(&call, "INVITE", 2, "", "application/sdp", OFFER));
    assert!(drain(&mut call).0.iter().any(|(_, s)| s.starts_with("SIP/2.0 491")));
    // Ours gets 491 as well: we try again within 2 s, and ACK the 200 that follows.
    call.handle_sip(now, LegId::Caller, response_to(&reinvite, 491, "ct", ""));
    let (sip, _) = drain(&mut call);
    assert!(sip.iter().any(|(_, s)| s.starts_with("ACK") && s.contains("CSeq: 1 ACK")), "ACK for the 491: {sip:?}");
    let (sip, _) = run_until(&mut call, now + Duration::from_secs(2));
    let retry = sip.iter().find(|(_, s)| s.starts_with("INVITE")).expect("retried").1.clone();
    assert!(retry.contains("CSeq: 2 INVITE"));
    call.handle_sip(now, LegId::Caller, response_to(&retry, 200, "ct", OFFER));
    let (sip, _) = drain(&mut call);
    assert!(sip.iter().any(|(_, s)| s.starts_with("ACK sip:caller") && s.contains("CSeq: 2 ACK")));
    assert!(!call.is_ended());
}

/// A call set to transfer the caller back, its card taken and tokenized, run until the
/// thank-you prompt has played: what it reported, and its REFER.
fn transferring_call(t: Instant) -> (Call, Vec<CallEvent>, String) {
    let cfg =
        CallConfig { mode: session(AfterCapture::Transfer("sip:agent@127.0.0.1:5080".into()), None), ..config(None) };
    let mut call = Call::accept(&invite(OFFER), cfg, t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    key_all(&mut call, "4111111111111111#1230123", t);
    drain(&mut call);
    call.handle_command(t, Command::CardStored);
    let (sip, events) = run_until(&mut call, t + Duration::from_millis(400));
    let refer = sip.iter().find(|(_, s)| s.starts_with("REFER ")).expect("REFER").1.clone();
    (call, events, refer)
}

#[test]
fn transfer_back_with_refer_and_notify_sipfrag() {
    let t = crate::test_origin();
    let (mut call, events, refer) = transferring_call(t);
    assert!(refer.starts_with("REFER sip:caller@127.0.0.1:5070 SIP/2.0"), "{refer}");
    assert!(refer.contains("Refer-To: <sip:agent@127.0.0.1:5080>\r\n"), "{refer}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Transferring)));
    call.handle_sip(t, LegId::Caller, response_to(&refer, 202, "ct", ""));
    let frag = "SIP/2.0 100 Trying\r\n";
    call.handle_sip(t, LegId::Caller, caller_with(&call, "NOTIFY", 2, "Event: refer\r\n", "message/sipfrag", frag));
    let (sip, _) = drain(&mut call);
    assert!(sip[0].1.starts_with("SIP/2.0 200") && sip.len() == 1, "{sip:?}");
    let frag = "SIP/2.0 200 OK\r\n";
    call.handle_sip(t, LegId::Caller, caller_with(&call, "NOTIFY", 3, "Event: refer\r\n", "message/sipfrag", frag));
    let (sip, events) = drain(&mut call);
    assert!(sip.iter().any(|(_, s)| s.starts_with("BYE sip:caller")), "{sip:?}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::Transferred))));
}

#[test]
fn cancel_crossed_by_the_agents_200_gets_ack_and_bye() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(Some("sip:agent@127.0.0.1:5080")), t).unwrap();
    let (sip, _) = drain(&mut call);
    let agent_invite = sip.iter().find(|(leg, _)| *leg == LegId::Agent).unwrap().1.clone();
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 180, "ag", ""));
    call.handle_sip(t, LegId::Caller, caller_request(&call, "BYE", 2));
    let (sip, _) = drain(&mut call);
    assert!(sip.iter().any(|(leg, s)| *leg == LegId::Agent && s.starts_with("CANCEL sip:agent")), "{sip:?}");
    let answer = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 200, "ag", answer));
    let (sip, _) = drain(&mut call);
    let lines: Vec<&str> = sip.iter().filter(|(l, _)| *l == LegId::Agent).map(|(_, s)| first_line(s)).collect();
    assert_eq!(lines, vec!["ACK sip:agent@127.0.0.1:5080 SIP/2.0", "BYE sip:agent@127.0.0.1:5080 SIP/2.0"]);
    assert!(!call.is_ended(), "until the agent answers the BYE");
}

#[test]
fn timeouts_end_the_call_cleanly() {
    // Timer B: an agent that never answers is given up after 64·T1.
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(Some("sip:agent@127.0.0.1:5080")), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    let (sip, events) = run_until(&mut call, t + Duration::from_secs(33));
    assert_eq!(sip.iter().filter(|(l, s)| *l == LegId::Agent && s.starts_with("INVITE")).count(), 6, "Timer A");
    assert!(events.iter().any(|e| matches!(e, CallEvent::AgentUnavailable { status: 408 })));
    // Timer F: a caller that never answers our BYE; the call still ends, so its ports go.
    call.handle_command(t + Duration::from_secs(33), Command::Hangup);
    drain(&mut call);
    let (_, events) = run_until(&mut call, t + Duration::from_secs(70));
    assert!(call.is_ended());
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(_))));
}

/// The caller's SDES key in the SAVP offers below (RFC 4568 §9.1's example key).
mod legs;

/// A media address no one vouches for (RFC 4566 §5.7 `c=`): the INVITE, a re-INVITE and
/// the agent's answer that name one get 488 (the agent leg is hung up), and the media
/// already agreed stays where it was.
#[test]
fn an_sdp_aiming_media_at_a_third_party_is_refused() {
    let victim = |sdp: &str| sdp.replace("c=IN IP4 127.0.0.1", "c=IN IP4 203.0.113.50");
    let t = crate::test_origin();
    let Err(resp) = Call::accept(&invite(&victim(OFFER)), config(None), t) else { panic!("accepted") };
    assert!(String::from_utf8_lossy(&resp).starts_with("SIP/2.0 488"));
    let mut relaxed = config(None);
    relaxed.media_policy.peer_networks = vec!["203.0.113.0/24".parse().unwrap()];
    assert!(Call::accept(&invite(&victim(OFFER)), relaxed, t).is_ok(), "inside media.peer_networks");

    let mut call = Call::accept(&invite(OFFER), config(Some("sip:agent@127.0.0.1:5080")), t).unwrap();
    let (sip, _) = drain(&mut call);
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    let moved = victim(OFFER).replace("o=- 1 1", "o=- 1 2");
    call.handle_sip(t, LegId::Caller, caller_with(&call, "INVITE", 2, "", "application/sdp", &moved));
    assert!(drain(&mut call).0[0].1.starts_with("SIP/2.0 488"), "the re-INVITE");
    assert_eq!(call.caller.media.params.remote, addr(6000), "the caller's media did not move");

    let (_, agent_invite) = sip.iter().find(|(leg, _)| *leg == LegId::Agent).expect("agent dialled");
    let answer = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";
    call.handle_sip(t, LegId::Agent, response_to(agent_invite, 200, "ag", &victim(answer)));
    let (sip, events) = drain(&mut call);
    assert!(sip.iter().any(|(leg, s)| *leg == LegId::Agent && s.starts_with("BYE ")), "{sip:?}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::AgentUnavailable { status: 488 })), "{events:?}");
    call.handle_timeout(t + Duration::from_millis(20));
    while let Some(p) = call.poll_packet() {
        assert_eq!((p.leg, p.to), (LegId::Caller, addr(6000)), "only the caller's agreed address gets media");
    }
}

/// What the agent's INVITE offers under each `sip.agent_srtp` (RFC 4568 §6.1): optional
/// puts the key on RTP/AVP (best-effort), off offers none, and with SDES keys held to TLS a
/// UDP agent gets no key, or, when SRTP is required, no INVITE at all.
#[test]
fn the_agent_offer_follows_the_srtp_policy() {
    let t = crate::test_origin();
    for (policy, tls_only, expect) in [
        (SrtpPolicy::Optional, false, Some("RTP/AVP 0 8\r\n")),
        (SrtpPolicy::Required, false, Some("RTP/SAVP 0 8\r\n")),
        (SrtpPolicy::Off, false, Some("RTP/AVP 0 8\r\n")),
        (SrtpPolicy::Optional, true, Some("RTP/AVP 0 8\r\n")),
        (SrtpPolicy::Required, true, None),
    ] {
        let mut cfg = config(Some("sip:agent@127.0.0.1:5080"));
        cfg.agent_srtp = policy;
        cfg.sdes_requires_tls = tls_only;
        let mut call = Call::accept(&invite(OFFER), cfg, t).unwrap();
        let (sip, events) = drain(&mut call);
        let offer = sip.iter().find(|(leg, _)| *leg == LegId::Agent).map(|(_, s)| s.clone());
        let case = format!("{policy:?}, TLS only {tls_only}");
        match expect {
            None => {
                assert!(offer.is_none(), "{case}: dialled anyway");
                assert!(events.iter().any(|e| matches!(e, CallEvent::AgentUnavailable { status: 488 })), "{case}");
            }
            Some(profile) => {
                let offer = offer.expect("agent dialled");
                assert!(offer.contains(&format!("m=audio 20002 {profile}")), "{case}: {offer}");
                let keyed = policy != SrtpPolicy::Off && !tls_only;
                assert_eq!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"), keyed, "{case}: {offer}");
            }
        }
    }
}

#[test]
fn the_answer_carries_the_route_set_the_proxies_recorded() {
    // RFC 3261 §12.1.1: without the Record-Route in the 2xx, the caller's ACK and BYE
    // would skip the proxy in front (Kamailio), which then refuses them.
    let t = crate::test_origin();
    let recorded = "Record-Route: <sip:10.0.0.1;lr;ftag=ct>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n";
    let mut call = Call::accept(&invite_with(recorded), config(None), t).unwrap();
    let (sip, _) = drain(&mut call);
    let ok = &sip.iter().find(|(_, s)| s.starts_with("SIP/2.0 200")).expect("the 200").1;
    let routes: Vec<&str> = ok.lines().filter(|l| l.starts_with("Record-Route:")).collect();
    assert_eq!(routes, ["Record-Route: <sip:10.0.0.1;lr;ftag=ct>", "Record-Route: <sip:10.0.0.2;lr>"], "{ok}");
}
