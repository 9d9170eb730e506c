//! Arbitrary SDP offers: no panic; an accepted one yields an answer that parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonewall::sip::sdp::{self, RemoteDescription};

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = RemoteDescription::parse(data) {
        let m = offer.negotiate();
        let answer = sdp::write("127.0.0.1:20000".parse().unwrap(), 1, &[m.codec], m.event_pt);
        assert!(RemoteDescription::parse(answer.as_bytes()).is_ok());
    }
});
