//! Arbitrary RFC 4733 payloads and timestamps through the parser and the event tracker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonewall_core::media::telephone_event::{EventTracker, TelephoneEvent};

fuzz_target!(|data: &[u8]| {
    let mut t = EventTracker::default();
    for chunk in data.chunks(8) {
        let ts = chunk.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if let Ok(ev) = TelephoneEvent::parse(chunk) {
            assert_eq!(TelephoneEvent::parse(&ev.to_bytes()), Ok(ev));
            let _ = t.on_packet(ts, ev);
        }
    }
});
