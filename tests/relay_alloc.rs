//! The relay path allocates nothing per packet (DESIGN.md): after warm-up, relaying caller
//! audio to the agent, masking RFC 4733 packets, and relaying the agent back make zero heap
//! allocations. Counted by `allocation-counter` (a counting global allocator, per thread).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtp_rs::{RtpPacketBuilder, Seq};
use tonewall::call::media::{Bridge, MaskLevel};
use tonewall::media::g711::Codec;
use tonewall::media::masker::Replacement;
use tonewall::media::source_lock::RtpSource;
use tonewall::media::telephone_event::TelephoneEvent;
use tonewall::sip::sdp::MediaParams;

fn params(port: u16, codec: Codec) -> MediaParams {
    MediaParams { remote: SocketAddr::from(([127, 0, 0, 1], port)), codec, event_pt: Some(101) }
}

#[test]
fn relaying_and_masking_make_no_allocation_per_packet() {
    for level in [MaskLevel::Off, MaskLevel::Tones, MaskLevel::Capture] {
        let caller = params(4000, Codec::Pcmu);
        let noise = Replacement::ComfortNoise { dbm0: -65.0 };
        let mut bridge = Bridge::new(caller, caller.remote.ip(), RtpSource::Sdp, 7, noise);
        let agent = params(5000, Codec::Pcma);
        bridge.set_agent(agent, agent.remote.ip(), None);
        // Masked: the masker, the gate and the strict detector run on every packet (and in
        // capture, the band-stop).
        bridge.set_masking(level);
        relay_without_allocating(bridge);
    }
}

fn relay_without_allocating(mut bridge: Bridge) {
    // Packets are built up front: the measurement covers tonewall's work only.
    let mut packets = Vec::new();
    for i in 0..500u32 {
        let seq = Seq::from(i as u16);
        let ts = i * 160;
        let p = if i % 10 < 3 {
            let ev = TelephoneEvent { code: 5, end: i % 10 == 2, volume: 10, duration: 160 * (i % 10 + 1) as u16 }
                .to_bytes();
            RtpPacketBuilder::new()
                .payload_type(101)
                .ssrc(1)
                .sequence(seq)
                .timestamp(ts - (i % 10) * 160)
                .payload(&ev)
                .build()
        } else {
            RtpPacketBuilder::new().payload_type(0).ssrc(1).sequence(seq).timestamp(ts).payload(&[0x55; 160]).build()
        };
        packets.push(p.unwrap());
    }
    let agent = RtpPacketBuilder::new()
        .payload_type(8)
        .ssrc(2)
        .sequence(Seq::from(1))
        .timestamp(0)
        .payload(&[0xD5; 160])
        .build()
        .unwrap();
    let t0 = Instant::now();
    let run = |bridge: &mut Bridge, range: std::ops::Range<usize>| {
        let mut sent = 0usize;
        for (i, p) in packets[range.clone()].iter().enumerate() {
            let now = t0 + Duration::from_millis(20 * (range.start + i) as u64);
            bridge.handle_caller_packet(p, params(4000, Codec::Pcmu).remote, now);
            bridge.handle_agent_packet(&agent, params(5000, Codec::Pcma).remote, now);
            while bridge.poll_packet().is_some() {
                sent += 1;
            }
        }
        sent
    };
    // The counter is live in this binary: one Vec is one allocation.
    assert_eq!(allocation_counter::measure(|| drop(std::hint::black_box(vec![1u8; 64]))).count_total, 1);
    run(&mut bridge, 0..50); // warm-up: the packet pool and queues reach their working size
    let mut sent = 0;
    let info = allocation_counter::measure(|| sent = run(&mut bridge, 50..500));
    assert!(sent >= 800, "relayed {sent} packets");
    assert_eq!(info.count_total, 0, "{} allocations for {sent} packets", info.count_total);
}
