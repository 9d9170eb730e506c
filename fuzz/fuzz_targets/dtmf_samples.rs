//! Arbitrary 16-bit audio through the strict detector and the masker: no panic, and the
//! masker gives back exactly as many samples as it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonewall_core::media::dtmf::Detector;
use tonewall_core::media::masker::{Feed, LOOKAHEAD, Masker, Replacement};

fuzz_target!(|data: &[u8]| {
    let pcm: Vec<i16> = data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut d = Detector::new();
    let mut m = Masker::new(Replacement::FlatTone { hz: 2100.0, dbm0: -20.0 });
    let mut out = vec![0i16; 2048];
    let mut total = 0;
    for block in pcm.chunks(160) {
        let _ = d.process(block);
        let _ = m.push(block, Feed::Audio);
        let n = m.ready();
        m.pop(&mut out[..n]);
        total += n;
    }
    assert_eq!(total + m.buffered(), pcm.len() + LOOKAHEAD);
});
