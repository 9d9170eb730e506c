//! Arbitrary datagrams through the SIP parser and the 400 builder: no panic; whatever
//! parses can be answered, and the answer parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonewall_core::sip::message::{self, ResponseBuilder, SipMessage};

fuzz_target!(|data: &[u8]| {
    match message::parse(data) {
        Ok(SipMessage::Request(r)) => {
            let resp = ResponseBuilder::new(&r, 200, "OK").to_tag("t").build();
            assert!(message::parse(&resp).is_ok());
        }
        Ok(SipMessage::Response(_)) => {}
        Err(e) => {
            let _ = message::bad_request(data, &e);
        }
    }
});
