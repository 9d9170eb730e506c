//! The whole sans-IO path a caller's bytes take: the endpoint, then a `Call` driven only
//! through `handle_input`, with SIP on both legs, RTP on both legs, commands and time chosen
//! by the input. No panic, and every transmit has a destination on one of the call's legs.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tonewall_core::call::{
    AfterCapture, AgentTarget, Call, CallConfig, Command, Input, LegId, Masking, Mode, Output, Prompts,
};
use tonewall_core::capture::card::YearMonth;
use tonewall_core::capture::collector::{CollectorConfig, FieldName};
use tonewall_core::capture::plan::{Amount, BackKey, CapturePlan, Currency, PaymentMethod};
use tonewall_core::endpoint::{Endpoint, EndpointConfig};
use tonewall_core::media::masker::Replacement;
use tonewall_core::media::srtp::{MasterKey, SrtpPolicy};
use tonewall_core::sip::message::{self, SipMessage};
use tonewall_core::sip::stream::Flow;
use tonewall_core::sip::transaction::Timers;

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn call(now: Instant) -> Option<Call> {
    let text = format!(
        "INVITE sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\nCall-ID: caller-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    );
    let Ok(SipMessage::Request(invite)) = message::parse(text.as_bytes()) else { return None };
    let prompt: Arc<[i16]> = vec![0i16; 800].into();
    let cfg = CallConfig {
        local_sip: addr(5060),
        local_tls: None,
        caller: Flow::udp(addr(5070)),
        caller_rtp: addr(20000),
        agent_rtp: addr(20002),
        mode: Mode::Session {
            // Every step the collector has: postal code, the back key and the read-back.
            plan: CapturePlan {
                amount: Some(Amount { minor: 1250, currency: Currency::Eur }),
                back_key: BackKey::parse("*"),
                ..CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv, FieldName::PostalCode])
            },
            after: AfterCapture::Bridge,
            agent: Some(AgentTarget::udp("sip:agent@127.0.0.1:5080", addr(5080))),
        },
        collector: CollectorConfig::default(),
        timers: Timers::default(),
        today: YearMonth { year: 2026, month: 12 },
        seed: 7,
        prompts: Arc::new(Prompts::same(prompt)),
        masking: Masking { replacement: Replacement::Silence, always: false },
        record: true,
        srtp: SrtpPolicy::Optional,
        srtp_key: MasterKey::from_random(&[7; 30]),
        agent_srtp: SrtpPolicy::Off,
        agent_srtp_key: MasterKey::from_random(&[7; 30]),
        media_policy: Default::default(),
        sdes_requires_tls: false,
    };
    Call::accept(&invite, cfg, now).ok()
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let Some(mut call) = call(now) else { return };
    let mut endpoint: Endpoint<()> =
        Endpoint::new(EndpointConfig { rate_per_source: 100, inline_routes: vec![], trusted_peers: vec![] });
    endpoint.insert_call((), "caller-1", call.agent_call_id(), Flow::udp(addr(5070)), Some(Flow::udp(addr(5080))));
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let (chunk, next) = tail.split_at((*len as usize).min(tail.len()));
        rest = next;
        let leg = if kind & 1 == 0 { LegId::Caller } else { LegId::Agent };
        let from = Flow::udp(addr(if leg == LegId::Caller { 5070 } else { 5080 }));
        match kind >> 1 & 3 {
            0 => {
                if let tonewall_core::endpoint::EndpointEvent::ToCall { leg, msg, from, .. } =
                    endpoint.handle(now, from, chunk)
                {
                    call.handle_input(now, Input::Sip { leg, msg, from });
                }
            }
            1 => {
                // From the leg's SDP address (the offer's 6000, an agent answer's 7000), or,
                // half the time, from a stranger.
                let port = match (leg, kind & 8 == 0) {
                    (_, false) => 9999,
                    (LegId::Caller, true) => 6000,
                    _ => 7000,
                };
                call.handle_input(now, Input::Rtp { leg, packet: chunk, from: addr(port) })
            }
            2 => {
                let cmd = match chunk.first().copied().unwrap_or(0) % 6 {
                    0 => Command::Cancel,
                    1 => Command::RestartField(FieldName::Pan),
                    2 => Command::CardStored,
                    3 => Command::CardNotStored,
                    4 => Command::StartCapture {
                        plan: CapturePlan {
                            method: PaymentMethod::Ach,
                            require_matching_inputs: true,
                            ..CapturePlan::card(PaymentMethod::Ach.default_fields())
                        },
                    },
                    _ => Command::Hangup,
                };
                call.handle_input(now, Input::Command(cmd));
            }
            _ => {
                now += Duration::from_millis(u64::from(*len) * 20);
                while let Some(due) = call.poll_timeout().filter(|d| *d <= now) {
                    call.handle_input(due, Input::Timeout);
                }
            }
        }
        while let Some(out) = call.poll_output() {
            if let Output::Transmit(t) = out {
                assert!([addr(5070), addr(5080)].contains(&t.to.remote), "a transmit to nowhere: {:?}", t.to);
            }
        }
        while call.poll_packet().is_some() {}
    }
});
