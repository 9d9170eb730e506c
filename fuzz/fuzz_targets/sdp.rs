//! Arbitrary SDP offers: no panic; an accepted one yields an answer (SRTP-keyed when the offer
//! carried a usable a=crypto line) that parses back to the same stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonewall_core::media::srtp::{CryptoAttr, MasterKey};
use tonewall_core::sip::sdp::{self, Direction, RemoteDescription};

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = RemoteDescription::parse(data) {
        let m = offer.negotiate();
        let ours = offer.crypto.first().map(|c| CryptoAttr::answer(c, &MasterKey::from_random(&[7; 30])));
        let local = "127.0.0.1:20000".parse().unwrap();
        let answer = sdp::write_version(local, 1, 1, &[m.codec], m.event_pt, Direction::SendRecv, ours.as_ref());
        let back = RemoteDescription::parse(answer.as_bytes()).expect("our answer parses");
        assert_eq!(back.crypto.first(), ours.as_ref());
    }
});
