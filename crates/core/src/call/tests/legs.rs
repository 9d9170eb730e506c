//! The caller's leg under SRTP, inline calls through to the agent, and the caller's dialog
//! taken over with Replaces or transferred away: the same simulated-time driving as the
//! parent module's tests, with its helpers.

use super::*;

const CALLER_KEY: &str = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

fn savp_offer() -> String {
    OFFER.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:" + CALLER_KEY + "\r\n"
}

fn protect(leg: &mut SrtpLeg, packet: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    buf[..packet.len()].copy_from_slice(packet);
    let n = leg.protect(&mut buf, packet.len()).unwrap();
    buf[..n].to_vec()
}

#[test]
fn sdes_keys_over_sip_that_is_not_tls_are_refused_when_the_policy_says_so() {
    let t = crate::test_origin();
    let strict = || CallConfig { sdes_requires_tls: true, ..config(None) };
    // Over UDP: 488 naming why; plain RTP still goes through.
    let refused = Call::accept(&invite(&savp_offer()), strict(), t).err().expect("refused");
    let text = String::from_utf8(refused).unwrap();
    assert!(text.starts_with("SIP/2.0 488") && text.contains("SIP over TLS"), "{text}");
    assert!(Call::accept(&invite(OFFER), strict(), t).is_ok());
    // Over TLS the keys are taken.
    let tls = Flow { transport: Transport::Tls, ..Flow::udp(addr(PHONE)) };
    assert!(Call::accept(&invite(&savp_offer()), CallConfig { caller: tls, ..strict() }, t).is_ok());
}

#[test]
fn srtp_caller_keys_a_card_and_hears_protected_prompts() {
    use crate::media::srtp::CryptoAttr;
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(&savp_offer()), config(None), t).unwrap();
    let (sip, _) = drain(&mut call);
    let ok = &sip.iter().find(|(_, s)| s.starts_with("SIP/2.0 200")).unwrap().1;
    assert!(ok.contains("m=audio 20000 RTP/SAVP 0 101\r\n"), "{ok}");
    let ours = ok.lines().find_map(|l| l.strip_prefix("a=crypto:")).expect("our key in the answer");
    assert!(ours.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"), "answer keeps the offer's tag and suite");
    let ours = CryptoAttr::parse(ours).unwrap().unwrap();
    let theirs = CryptoAttr::parse(CALLER_KEY).unwrap().unwrap();
    assert_ne!(ours, theirs, "we key our direction ourselves");
    // The caller's phone: decrypts with our key, encrypts with its own.
    let mut phone = SrtpLeg::new(&ours, &theirs).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    // The first prompt goes out protected.
    call.handle_timeout(t + Duration::from_millis(20));
    let mut heard = 0;
    while let Some(p) = call.poll_packet() {
        let plain = phone.unprotect(&p.buf[..p.len]).expect("a prompt packet our phone can decrypt");
        assert_eq!(plain.as_ref()[1] & 0x7f, 0, "PCMU");
        heard += 1;
    }
    assert!(heard > 0);
    // Keys arrive as SRTP; a clear-text packet is refused and counted.
    call.handle_rtp(t, LegId::Caller, &event_packet(9000, 1, 4, true));
    assert_eq!(call.media_stats().srtp_rejected, 1);
    for (i, c) in "4111111111111111#1230123".chars().enumerate() {
        let code = Key::from_char(c).unwrap().event_code();
        for (j, end) in [false, true, true, true].into_iter().enumerate() {
            let p = event_packet(i as u16 * 4 + j as u16, 1000 + i as u32 * 2000, code, end);
            call.handle_rtp(t, LegId::Caller, &protect(&mut phone, &p));
        }
    }
    let (_, events) = drain(&mut call);
    assert!(events.iter().any(|e| matches!(e, CallEvent::PaymentCaptured(_))), "{events:?}");
    assert_eq!(call.media_stats().srtp_rejected, 1);
    // A re-INVITE that drops SRTP mid-call is refused and changes nothing.
    call.handle_sip(t, LegId::Caller, caller_with(&call, "INVITE", 2, "", "application/sdp", OFFER));
    let (sip, _) = drain(&mut call);
    assert!(sip.iter().any(|(_, s)| s.starts_with("SIP/2.0 488")), "{sip:?}");
}

#[test]
fn srtp_policy_refuses_with_488_and_says_why() {
    let cases = [
        (SrtpPolicy::Required, OFFER.to_string(), "requires SRTP"),
        (SrtpPolicy::Off, savp_offer(), "SRTP is off"),
        (SrtpPolicy::Optional, OFFER.replace("RTP/AVP", "RTP/SAVP"), "no usable crypto suite"),
    ];
    for (policy, offer, why) in cases {
        let refusal = Call::accept(&invite(&offer), CallConfig { srtp: policy, ..config(None) }, crate::test_origin())
            .err()
            .expect("refused");
        let text = String::from_utf8(refusal).unwrap();
        assert!(text.starts_with("SIP/2.0 488 ") && text.contains(why), "{text}");
        assert!(!text.contains("inline:"), "a refusal carries no key");
    }
    // Required and offered: taken.
    let cfg = CallConfig { srtp: SrtpPolicy::Required, ..config(None) };
    assert!(Call::accept(&invite(&savp_offer()), cfg, crate::test_origin()).is_ok());
}

fn inline_config() -> CallConfig {
    CallConfig { mode: Mode::Inline { agent: agent_at("sip:queue@127.0.0.1:5080") }, ..config(None) }
}

const AGENT_ANSWER: &str =
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

fn caller_lines(sip: &[(LegId, String)]) -> Vec<&str> {
    sip.iter().filter(|(l, _)| *l == LegId::Caller).map(|(_, s)| first_line(s)).collect()
}

#[test]
fn inline_call_is_answered_when_the_target_answers_and_captures_on_command() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), inline_config(), t).unwrap();
    let (sip, events) = drain(&mut call);
    assert_eq!(caller_lines(&sip), vec!["SIP/2.0 100 Trying"], "nothing more until the target answers");
    assert!(events.is_empty(), "{events:?}");
    let agent_invite = sip.iter().find(|(l, _)| *l == LegId::Agent).expect("target dialled").1.clone();
    assert!(agent_invite.starts_with("INVITE sip:queue@127.0.0.1:5080 SIP/2.0"));
    assert!(
        agent_invite.contains("From: <sip:caller@127.0.0.1:5060>;tag="),
        "the caller's number goes on: {agent_invite}"
    );
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 180, "ag", ""));
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 183, "ag", ""));
    assert_eq!(caller_lines(&drain(&mut call).0), vec!["SIP/2.0 180 Ringing"], "ringing once");
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 200, "ag", AGENT_ANSWER));
    let (sip, events) = drain(&mut call);
    assert_eq!(caller_lines(&sip), vec!["SIP/2.0 200 OK"]);
    assert!(events.iter().any(|e| matches!(e, CallEvent::Answered)));
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    // No capture yet: no prompt plays, the caller's audio reaches the agent unmasked.
    call.handle_timeout(t + Duration::from_millis(40));
    assert!(call.poll_packet().is_none(), "no prompt before a capture starts");
    let speech = RtpPacketBuilder::new()
        .payload_type(0)
        .ssrc(9)
        .sequence(Seq::from(1))
        .timestamp(160)
        .payload(&[0x2a; 160])
        .build()
        .unwrap();
    call.handle_rtp(t, LegId::Caller, &speech);
    let p = call.poll_packet().expect("relayed to the agent");
    assert_eq!((p.leg, crate::media::rtp::RtpReader::new(&p.buf[..p.len]).unwrap().payload()[0]), (LegId::Agent, 0x2a));
    drain(&mut call);
    // The API starts a capture: prompts to the caller, keys collected, agent path masked.
    call.handle_command(
        t,
        Command::StartCapture { plan: CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv]) },
    );
    call.handle_timeout(t + Duration::from_millis(60));
    let mut prompt = 0;
    while let Some(p) = call.poll_packet() {
        prompt += usize::from(p.leg == LegId::Caller);
    }
    assert!(prompt > 0, "the first prompt plays");
    key_all(&mut call, "4111111111111111#1230123", t + Duration::from_millis(80));
    let (_, events) = drain(&mut call);
    assert!(events.iter().any(|e| matches!(e, CallEvent::PaymentCaptured(_))), "{events:?}");
    call.handle_command(t, Command::CardStored);
    let (sip, events) = drain(&mut call);
    assert!(events.iter().any(|e| matches!(e, CallEvent::Completed)));
    assert!(sip.iter().all(|(_, s)| !s.starts_with("BYE")), "the call stays bridged after capture");
}

#[test]
fn inline_target_refusal_reaches_the_caller_and_caller_cancel_reaches_the_target() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), inline_config(), t).unwrap();
    let agent_invite = drain(&mut call).0.into_iter().find(|(l, _)| *l == LegId::Agent).unwrap().1;
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 486, "ag", ""));
    let (sip, events) = drain(&mut call);
    assert_eq!(caller_lines(&sip), vec!["SIP/2.0 486 Busy Here"]);
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::AgentRefused))));
    assert!(call.is_ended());

    let mut call = Call::accept(&invite(OFFER), inline_config(), t).unwrap();
    let agent_invite = drain(&mut call).0.into_iter().find(|(l, _)| *l == LegId::Agent).unwrap().1;
    call.handle_sip(t, LegId::Agent, response_to(&agent_invite, 180, "ag", ""));
    drain(&mut call);
    let cancel = "CANCEL sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\nCall-ID: caller-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    call.handle_sip(t, LegId::Caller, parse(cancel.as_bytes()).unwrap());
    let (sip, events) = drain(&mut call);
    assert_eq!(caller_lines(&sip), vec!["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
    assert!(sip.iter().any(|(l, s)| *l == LegId::Agent && s.starts_with("CANCEL sip:queue@")), "{sip:?}");
    assert!(events.iter().any(|e| matches!(e, CallEvent::Ended(EndReason::CallerCancelled))));
}

fn replacing_invite(replaces: &str) -> SipMessage {
    let offer = OFFER.replace("m=audio 6000", "m=audio 6100");
    let text = format!(
        "INVITE sip:tonewall@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKnew{}\r\n\
From: <sip:transferee@127.0.0.1:5090>;tag=nt\r\nTo: <sip:tonewall@127.0.0.1:5060>\r\nCall-ID: new-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:transferee@127.0.0.1:5090>\r\nReplaces: {replaces}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        replaces.len(),
        offer.len()
    );
    parse(text.as_bytes()).unwrap()
}

#[test]
fn invite_with_replaces_takes_over_the_callers_dialog_and_capture_goes_on() {
    let t = crate::test_origin();
    let mut call = Call::accept(&invite(OFFER), config(None), t).unwrap();
    call.handle_sip(t, LegId::Caller, caller_request(&call, "ACK", 1));
    drain(&mut call);
    key_all(&mut call, "4111", t);
    drain(&mut call);
    let ours = call.caller.dialog.local_tag.clone();
    // Wrong tags, or early-only for a confirmed dialog: refused, nothing changes.
    for (replaces, status) in [
        ("caller-1;to-tag=nope;from-tag=ct".to_string(), "481"),
        (format!("caller-1;to-tag={ours};from-tag=ct;early-only"), "486"),
        (format!("caller-1;to-tag={ours}"), "400"),
    ] {
        call.handle_sip(t, LegId::Caller, replacing_invite(&replaces));
        let (sip, events) = drain(&mut call);
        assert!(caller_lines(&sip)[0].starts_with(&format!("SIP/2.0 {status}")), "{replaces}: {sip:?}");
        assert!(!events.iter().any(|e| matches!(e, CallEvent::CallerReplaced { .. })));
    }
    assert_eq!(call.caller_call_id(), "caller-1");
    // The right dialog: 200 on the new one, BYE on the old, the capture carries on.
    call.handle_sip(t, LegId::Caller, replacing_invite(&format!("caller-1;to-tag={ours};from-tag=ct")));
    let (sip, events) = drain(&mut call);
    assert!(matches!(events.first(), Some(CallEvent::CallerReplaced { .. })), "{events:?}");
    assert_eq!(caller_lines(&sip), vec!["SIP/2.0 200 OK"]);
    let bye = &sip.iter().find(|(l, _)| *l == LegId::Replaced).expect("BYE to the old dialog").1;
    assert!(bye.starts_with("BYE sip:caller@127.0.0.1:5070 SIP/2.0") && bye.contains("Call-ID: caller-1\r\n"), "{bye}");
    assert_eq!(call.caller_call_id(), "new-1");
    key_from(&mut call, "111111111111#1230123", 4, t);
    let (_, events) = drain(&mut call);
    let card = events.into_iter().find_map(|e| match e {
        CallEvent::PaymentCaptured(c) => match c.payment {
            Payment::Card(card) => Some(card),
            Payment::Bank(_) => None,
        },
        _ => None,
    });
    assert_eq!(card.expect("the new leg finished the card").pan.last4(), "1111");
    // The old dialog's 200 to our BYE is taken; its BYE crossing ours gets 200.
    call.handle_sip(t, LegId::Replaced, response_to(bye, 200, "ct", ""));
    assert!(!call.is_ended());
}

#[test]
fn a_transfer_that_goes_silent_fails_after_its_wait() {
    let t = crate::test_origin();
    let (mut call, _, refer) = transferring_call(t);
    let accepted = t + Duration::from_millis(400);
    call.handle_sip(accepted, LegId::Caller, response_to(&refer, 202, "ct", ""));
    // A provisional NOTIFY a minute in restarts the wait.
    let notified = accepted + Duration::from_secs(60);
    let frag = "SIP/2.0 180 Ringing\r\n";
    call.handle_sip(
        notified,
        LegId::Caller,
        caller_with(&call, "NOTIFY", 2, "Event: refer\r\n", "message/sipfrag", frag),
    );
    drain(&mut call);
    let (_, events) = run_until(&mut call, notified + caller::TRANSFER_SILENCE - Duration::from_secs(1));
    assert!(!events.iter().any(|e| matches!(e, CallEvent::TransferFailed { .. })), "{events:?}");
    let (sip, events) = run_until(&mut call, notified + caller::TRANSFER_SILENCE);
    assert!(events.iter().any(|e| matches!(e, CallEvent::TransferFailed { status: 408 })), "{events:?}");
    assert!(sip.iter().any(|(_, s)| s.starts_with("BYE sip:caller")), "the caller is not left hanging: {sip:?}");
}
