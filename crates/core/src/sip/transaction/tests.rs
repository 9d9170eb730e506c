//! Every timer path of the four machines, on simulated time.

use super::*;
use crate::sip::message::{SipMessage, parse};

const INVITE: &str = "INVITE sip:agent@127.0.0.1:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKc1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:tonewall@127.0.0.1:5060>;tag=tw\r\nTo: <sip:agent@127.0.0.1:5080>\r\n\
Call-ID: t1\r\nCSeq: 1 INVITE\r\nRoute: <sip:proxy.example;lr>\r\nContent-Length: 0\r\n\r\n";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn response(to_request: &str, status: u16) -> Response {
    let req = request(to_request);
    let bytes = crate::sip::message::ResponseBuilder::new(&req, status, "X").to_tag("peer").build();
    match parse(&bytes) {
        Ok(SipMessage::Response(r)) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn bye() -> String {
    INVITE.replace("INVITE sip", "BYE sip").replace("1 INVITE", "2 BYE").replace("z9hG4bKc1", "z9hG4bKb2")
}

/// Runs a machine's timers until `until`, returning the offsets (ms) at which it transmitted.
macro_rules! run_timers {
    ($m:expr, $start:expr, $until_ms:expr) => {{
        let mut sent = vec![];
        while let Some(at) = $m.poll_timeout() {
            if at > $start + Duration::from_millis($until_ms) {
                break;
            }
            $m.handle_timeout(at);
            while $m.poll_transmit().is_some() {
                sent.push((at - $start).as_millis() as u64);
            }
        }
        sent
    }};
}

#[test]
fn timer_a_doubles_until_timer_b_times_out() {
    let t = crate::test_origin();
    let mut c = ClientInvite::new(request(INVITE), INVITE.as_bytes().to_vec(), t, Timers::default(), false);
    assert_eq!(c.poll_transmit().as_deref(), Some(INVITE.as_bytes()));
    let sent = run_timers!(c, t, 100_000);
    // Seven transmissions in all, the first at 0 (§17.1.1.2).
    assert_eq!(sent, vec![500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(c.state(), ClientInviteState::Terminated(Outcome::TimedOut));
}

#[test]
fn provisional_stops_timer_a_and_final_error_is_acked_until_timer_d() {
    let t = crate::test_origin();
    let mut c = ClientInvite::new(request(INVITE), INVITE.as_bytes().to_vec(), t, Timers::default(), false);
    c.poll_transmit();
    assert!(c.matches(&response(INVITE, 180)));
    assert!(!c.matches(&response(&bye(), 200)));
    assert_eq!(c.handle_response(t, &response(INVITE, 180)), Delivery::Deliver);
    assert_eq!(c.state(), ClientInviteState::Proceeding);
    assert_eq!(c.poll_timeout(), None, "no Timer A or B once a provisional came");
    let t1 = t + Duration::from_secs(3);
    assert_eq!(c.handle_response(t1, &response(INVITE, 486)), Delivery::Deliver);
    let SipMessage::Request(ack) = parse(&c.poll_transmit().expect("ACK")).unwrap() else { panic!() };
    assert_eq!(ack.method(), Method::Ack);
    assert_eq!(ack.branch().as_deref(), Some("z9hG4bKc1"), "same branch as the INVITE");
    assert_eq!(ack.to_tag().as_deref(), Some("peer"));
    assert_eq!(ack.cseq().seq, 1);
    assert_eq!(ack.headers_named("Route"), vec!["<sip:proxy.example;lr>"]);
    // The 486 again: ACK again, not delivered again.
    assert_eq!(c.handle_response(t1, &response(INVITE, 486)), Delivery::Absorbed);
    assert!(c.poll_transmit().is_some());
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(32)), "Timer D");
    c.handle_timeout(t1 + Duration::from_secs(32));
    assert_eq!(c.state(), ClientInviteState::Terminated(Outcome::Done));
}

#[test]
fn client_invite_over_tcp_has_no_timer_a_and_no_timer_d() {
    let t = crate::test_origin();
    let mut c = ClientInvite::new(request(INVITE), INVITE.as_bytes().to_vec(), t, Timers::default(), true);
    c.poll_transmit();
    assert_eq!(c.poll_timeout(), Some(t + Duration::from_secs(32)), "only Timer B");
    c.handle_response(t, &response(INVITE, 603));
    assert!(c.poll_transmit().is_some(), "the ACK");
    assert_eq!(c.state(), ClientInviteState::Terminated(Outcome::Done));
}

#[test]
fn client_invite_2xx_ends_the_transaction_for_the_dialog() {
    let t = crate::test_origin();
    let mut c = ClientInvite::new(request(INVITE), INVITE.as_bytes().to_vec(), t, Timers::default(), false);
    c.poll_transmit();
    assert_eq!(c.handle_response(t, &response(INVITE, 200)), Delivery::Deliver);
    assert_eq!(c.state(), ClientInviteState::Terminated(Outcome::Done));
    assert!(c.poll_transmit().is_none(), "the 2xx's ACK is the dialog's");
}

#[test]
fn timer_e_caps_at_t2_and_timer_f_times_out() {
    let t = crate::test_origin();
    let b = bye();
    let mut c = ClientNonInvite::new(Method::Bye, "z9hG4bKb2", b.into_bytes(), t, Timers::default(), false);
    c.poll_transmit();
    let sent = run_timers!(c, t, 100_000);
    assert_eq!(&sent[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
    assert_eq!(sent.len(), 10);
    assert_eq!(c.state(), ClientNonInviteState::Terminated(Outcome::TimedOut));
}

#[test]
fn provisional_sets_timer_e_to_t2_and_final_waits_timer_k() {
    let t = crate::test_origin();
    let b = bye();
    let mut c = ClientNonInvite::new(Method::Bye, "z9hG4bKb2", b.clone().into_bytes(), t, Timers::default(), false);
    c.poll_transmit();
    c.handle_timeout(t + Duration::from_millis(500));
    assert!(c.poll_transmit().is_some());
    assert_eq!(c.handle_response(t, &response(&b, 100)), Delivery::Deliver);
    assert_eq!(c.state(), ClientNonInviteState::Proceeding);
    // Next retransmission as scheduled (1.5 s), then every T2.
    let sent = run_timers!(c, t, 12_000);
    assert_eq!(sent, vec![1500, 5500, 9500]);
    let done = t + Duration::from_secs(12);
    assert_eq!(c.handle_response(done, &response(&b, 200)), Delivery::Deliver);
    assert_eq!(c.handle_response(done, &response(&b, 200)), Delivery::Absorbed);
    assert_eq!(c.poll_timeout(), Some(done + Duration::from_secs(5)), "Timer K = T4");
    c.handle_timeout(done + Duration::from_secs(5));
    assert!(c.is_terminated());
}

#[test]
fn non_invite_over_tcp_ends_at_the_final_response() {
    let t = crate::test_origin();
    let b = bye();
    let mut c = ClientNonInvite::new(Method::Bye, "z9hG4bKb2", b.clone().into_bytes(), t, Timers::default(), true);
    c.poll_transmit();
    assert_eq!(c.poll_timeout(), Some(t + Duration::from_secs(32)), "only Timer F");
    c.handle_response(t, &response(&b, 200));
    assert_eq!(c.state(), ClientNonInviteState::Terminated(Outcome::Done));
}

#[test]
fn server_invite_error_retransmits_on_timer_g_until_timer_h() {
    let t = crate::test_origin();
    let inv = request(INVITE);
    let mut s = ServerTransaction::new(&inv, Timers::default(), false);
    s.respond(t, 100, b"100".to_vec());
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"100"[..]));
    // A retransmitted INVITE gets the last provisional again.
    assert_eq!(s.handle_request(t, &inv), Retransmission::Request);
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"100"[..]));
    s.respond(t, 486, b"486".to_vec());
    s.poll_transmit();
    let sent = run_timers!(s, t, 100_000);
    assert_eq!(&sent[..5], &[500, 1500, 3500, 7500, 11500]);
    assert_eq!(s.state(), ServerState::Terminated(Outcome::TimedOut), "Timer H: the ACK never came");
}

#[test]
fn server_invite_ack_confirms_then_timer_i() {
    let t = crate::test_origin();
    let inv = request(INVITE);
    let mut s = ServerTransaction::new(&inv, Timers::default(), false);
    s.respond(t, 404, b"404".to_vec());
    s.poll_transmit();
    let ack = request(&INVITE.replace("INVITE sip", "ACK sip").replace("1 INVITE", "1 ACK"));
    assert_eq!(TransactionKey::of(&ack), TransactionKey::of(&inv), "§17.2.3: ACK matches its INVITE");
    assert_eq!(s.handle_request(t, &ack), Retransmission::Ack);
    assert_eq!(s.state(), ServerState::Confirmed);
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)), "Timer I = T4");
    s.handle_timeout(t + Duration::from_secs(5));
    assert_eq!(s.state(), ServerState::Terminated(Outcome::Done));
}

#[test]
fn server_invite_2xx_leaves_retransmission_to_the_dialog() {
    let t = crate::test_origin();
    let mut s = ServerTransaction::new(&request(INVITE), Timers::default(), false);
    s.respond(t, 200, b"200".to_vec());
    assert_eq!(s.state(), ServerState::Terminated(Outcome::Done));
    s.respond(t, 486, b"486".to_vec());
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"200"[..]), "nothing after the final response");
    assert!(s.poll_transmit().is_none());
}

#[test]
fn server_non_invite_absorbs_retransmissions_until_timer_j() {
    let t = crate::test_origin();
    let b = request(&bye());
    let mut s = ServerTransaction::new(&b, Timers::default(), false);
    s.respond(t, 200, b"200".to_vec());
    s.poll_transmit();
    assert_eq!(s.handle_request(t + Duration::from_secs(1), &b), Retransmission::Request);
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"200"[..]));
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(32)), "Timer J = 64·T1");
    s.handle_timeout(t + Duration::from_secs(32));
    assert_eq!(s.state(), ServerState::Terminated(Outcome::Done));
    let mut reliable = ServerTransaction::new(&b, Timers::default(), true);
    reliable.respond(t, 200, b"200".to_vec());
    assert_eq!(reliable.state(), ServerState::Terminated(Outcome::Done), "Timer J is 0 over TCP");
}

#[test]
fn keys_tell_transactions_apart() {
    let inv = request(INVITE);
    let cancel = request(&INVITE.replace("INVITE sip", "CANCEL sip").replace("1 INVITE", "1 CANCEL"));
    assert_ne!(TransactionKey::of(&inv), TransactionKey::of(&cancel), "CANCEL is its own transaction");
    let other_host = request(&INVITE.replace("127.0.0.1:5060;branch", "10.0.0.1:5060;branch"));
    assert_ne!(TransactionKey::of(&inv), TransactionKey::of(&other_host), "sent-by is part of the key");
    // RFC 2543 peers (no magic cookie) are matched by their dialog identifiers and CSeq.
    let old = INVITE.replace("branch=z9hG4bKc1", "branch=1");
    assert_eq!(TransactionKey::of(&request(&old)), TransactionKey::of(&request(&old)));
    let old_next = old.replace("1 INVITE", "2 INVITE");
    assert_ne!(TransactionKey::of(&request(&old)), TransactionKey::of(&request(&old_next)));
}

#[test]
fn t1_t2_t4_are_configurable() {
    let t = crate::test_origin();
    let fast = Timers { t1: Duration::from_millis(100), t2: Duration::from_millis(400), t4: Duration::from_secs(1) };
    let b = bye();
    let mut c = ClientNonInvite::new(Method::Bye, "z9hG4bKb2", b.into_bytes(), t, fast, false);
    c.poll_transmit();
    let sent = run_timers!(c, t, 100_000);
    assert_eq!(&sent[..4], &[100, 300, 700, 1100]);
    assert_eq!(c.state(), ClientNonInviteState::Terminated(Outcome::TimedOut));
    assert!(sent.last().is_some_and(|&l| l < 6400));
}

#[test]
fn dialog_2xx_retransmission_caps_at_t2() {
    let t = crate::test_origin();
    let mut r = Retransmit::invite_2xx(b"200".to_vec(), t, Timers::default());
    assert_eq!(r.handle_timeout(t + Duration::from_millis(499)), RetransmitStep::Wait);
    let mut sends = vec![];
    loop {
        let at = r.poll_timeout();
        match r.handle_timeout(at) {
            RetransmitStep::Send(_) => sends.push((at - t).as_millis() as u64),
            RetransmitStep::GiveUp => break,
            RetransmitStep::Wait => unreachable!("poll_timeout is always due"),
        }
    }
    assert_eq!(&sends[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
}
