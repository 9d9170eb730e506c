//! Attacks on a live capture's media, against a running server: a stranger who can reach
//! tonewall's RTP ports sends RFC 4733 key events and in-band key tones, on both legs, from
//! the caller's own IP (another port) and from another address, while the real caller keys
//! its card. No stranger's key may register and none of their audio may reach the agent:
//! the card stored is the caller's, whole (number, expiry, code).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestCard, TestServer, assert_card_whole, create_session_for, wait_final};
use tokio::net::UdpSocket;
use tonewall::api::auth::Role;
use tonewall::media::g711::Codec;
use tonewall::media::rtp::FRAME_SAMPLES;
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions};
use tonewall_testkit::keypad;

const CARD: TestCard = TestCard { pan: "4111111111111111", month: 12, year: 2030, code: "123" };
/// Two even ports: the one call's caller leg and agent leg, so the stranger knows both.
const RTP_MIN: u16 = 41_200;
const RTP_MAX: u16 = 41_203;

/// Sends, every 20 ms for `for_ticks`, to both of tonewall's media ports from each of
/// `from`: an RFC 4733 event of a `5` and a PCMU frame of a loud `9` tone, on its own SSRC.
async fn stranger(from: Vec<UdpSocket>, for_ticks: u32) -> u64 {
    let targets: Vec<SocketAddr> = [RTP_MIN, RTP_MIN + 2].map(|p| SocketAddr::from(([127, 0, 0, 1], p))).to_vec();
    let tone = keypad::tone(tonewall::media::telephone_event::Key::Digit(9), -3.0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u64;
    for i in 0..for_ticks {
        tick.tick().await;
        let since = (i % 12) as u8;
        let event = keypad::event_payload(5, since.min(6));
        let frame = &tone[(i as usize % 5) * FRAME_SAMPLES..][..FRAME_SAMPLES];
        let audio: Vec<u8> = frame.iter().map(|s| Codec::Pcmu.encode(*s)).collect();
        for (n, sock) in from.iter().enumerate() {
            let ssrc = 0x0bad_0000 + n as u32;
            let seq = (i * 2) as u16;
            let ts = 8000 + (i - u32::from(since)) * FRAME_SAMPLES as u32;
            let packets = [
                rtp(101, seq, ts, ssrc, since == 0, &event),
                rtp(0, seq.wrapping_add(1), 8000 + i * FRAME_SAMPLES as u32, ssrc, false, &audio),
            ];
            for to in &targets {
                for p in &packets {
                    if sock.send_to(p, to).await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
    }
    sent
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marked: bool, payload: &[u8]) -> Vec<u8> {
    rtp_rs::RtpPacketBuilder::new()
        .payload_type(pt)
        .ssrc(ssrc)
        .sequence(rtp_rs::Seq::from(seq))
        .timestamp(ts)
        .marked(marked)
        .payload(payload)
        .build()
        .expect("an RTP packet")
}

#[tokio::test]
async fn a_strangers_keys_and_tones_are_not_taken_and_the_callers_card_is_captured_whole() {
    let t = TestServer::start_with(|c| {
        c.media.rtp_port_min = RTP_MIN;
        c.media.rtp_port_max = RTP_MAX;
    })
    .await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let (id, uri) = create_session_for(&t.base, &key, "attack", Some(&agent.uri)).await;
    let sip = t.server.sip_addr;
    let keys = format!("{}#,{:02}{:02},{}", CARD.pan, CARD.month, CARD.year % 100, CARD.code);
    let caller = tokio::spawn(async move {
        let opts = CallerOptions { linger: Duration::from_secs(8), ..CallerOptions::new(sip, &uri, &keys) };
        caller::place_call(opts).await.expect("call placed")
    });
    // From the caller's own IP on other ports, and from another address.
    let socks = vec![
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.9:0").await.unwrap(),
    ];
    // Throughout the keying: 24 keys of 240 ms and two one-second pauses, and then some.
    let attack = tokio::spawn(stranger(socks, 450));
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(30)).await;
    let sent = attack.await.unwrap();
    assert!(sent > 450 * 3 * 2 * 2 / 2, "the stranger sent only {sent} packets");
    // While the call is up (the security code lives as long as its call).
    assert_card_whole(&t, &s, &CARD, "under attack").await;
    let report = caller.await.unwrap();
    let heard = agent.finish().await.unwrap();
    assert_eq!(heard.non_audio_packets, 0, "an RFC 4733 packet reached the agent");
    // One frame toward the agent per tick the caller sent (its events become masking
    // frames); the stranger's 50 frames a second from each socket would show on top.
    let caller_ticks = report.sent_audio.len() as u64 / FRAME_SAMPLES as u64 + report.keys_sent as u64 * 7;
    assert!(
        heard.packets <= caller_ticks + 10,
        "the agent heard {} packets for the caller's {caller_ticks}: the stranger's audio got through",
        heard.packets
    );
    assert!(heard.packets > caller_ticks / 2, "the agent heard the caller: {} of {caller_ticks}", heard.packets);
    t.stop().await;
}
