//! Arbitrary datagrams on the caller's RTP port, in capture mode and out of it: no panic.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tonewall::call::media::Bridge;
use tonewall::media::g711::Codec;
use tonewall::media::masker::Replacement;
use tonewall::sip::sdp::MediaParams;

fuzz_target!(|data: &[u8]| {
    let p = |port| MediaParams {
        remote: SocketAddr::from(([127, 0, 0, 1], port)),
        codec: Codec::Pcmu,
        event_pt: Some(101),
    };
    let now = Instant::now();
    for masked in [false, true] {
        let mut b = Bridge::new(p(4000), 1, Replacement::Silence);
        b.set_agent(Some(MediaParams { codec: Codec::Pcma, ..p(5000) }));
        b.set_masking(masked);
        // The input as one packet, then cut into several.
        b.handle_caller_packet(data, now);
        for chunk in data.chunks(data.len().max(13) / 3 + 1) {
            b.handle_caller_packet(chunk, now);
            b.handle_agent_packet(chunk, now);
        }
        while b.poll_packet().is_some() {}
    }
});
