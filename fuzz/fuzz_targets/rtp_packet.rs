//! Arbitrary datagrams on the caller's RTP port, at every masking level: no panic.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tonewall_core::call::media::{Bridge, MaskLevel};
use tonewall_core::media::g711::Codec;
use tonewall_core::media::masker::Replacement;
use tonewall_core::media::source_lock::RtpSource;
use tonewall_core::sip::sdp::MediaParams;

fuzz_target!(|data: &[u8]| {
    let p = |port| MediaParams {
        remote: SocketAddr::from(([127, 0, 0, 1], port)),
        codec: Codec::Pcmu,
        event_pt: Some(101),
    };
    let now = Instant::now();
    for level in [MaskLevel::Off, MaskLevel::Tones, MaskLevel::Capture] {
        let (caller, agent) = (p(4000), MediaParams { codec: Codec::Pcma, ..p(5000) });
        let mut b = Bridge::new(caller, caller.remote.ip(), RtpSource::Sdp, 1, Replacement::Silence);
        b.set_agent(agent, agent.remote.ip(), None);
        b.set_masking(level);
        // The input as one packet, then cut into several, from the peers (and a stranger).
        b.handle_caller_packet(data, caller.remote, now);
        for chunk in data.chunks(data.len().max(13) / 3 + 1) {
            b.handle_caller_packet(chunk, caller.remote, now);
            b.handle_caller_packet(chunk, agent.remote, now);
            b.handle_agent_packet(chunk, agent.remote, now);
        }
        while b.poll_packet().is_some() {}
    }
});
