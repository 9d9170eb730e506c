//! tonewall's in-band DTMF work on a fixed signal, for instruction counts under
//! `valgrind --tool=callgrind` side by side with spandsp (benches/README.md).
//! `dsp_cost write FILE.s16` writes the signal; `dsp_cost run FILE.s16` runs it through the
//! masker as capture mode does (shared analysis, gate, strict detector, look-ahead and
//! replacement) in 20 ms frames, and prints the digits found.

use tonewall::media::dtmf::signal::{Noise, TonePair, push_silence, push_tone, to_i16};
use tonewall::media::masker::{Feed, Masker, Replacement};
use tonewall::media::telephone_event::Key;

/// 16 keys at −10 dBm0 per tone, 100 ms on, 100 ms off, in white noise at 20 dB S/N,
/// repeated to 60 seconds.
fn signal() -> Vec<i16> {
    let mut x = Vec::new();
    while x.len() < 60 * 8000 {
        for c in "123A456B789C*0#D".chars() {
            push_tone(&mut x, TonePair::key(Key::from_char(c).unwrap(), -10.0), 100.0);
            push_silence(&mut x, 100.0);
        }
    }
    Noise::new(9).add(&mut x, -27.0);
    to_i16(&x)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: dsp_cost write|run FILE.s16");
        std::process::exit(2);
    };
    if cmd == "write" {
        let bytes: Vec<u8> = signal().iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write");
        return;
    }
    let raw = std::fs::read(path).expect("read");
    let pcm: Vec<i16> = raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut masker = Masker::new(Replacement::ComfortNoise { dbm0: -65.0 });
    let mut digits = String::new();
    let mut out = [0i16; 160];
    for frame in pcm.chunks(160) {
        if let Some(d) = masker.push(frame, Feed::Audio) {
            digits.push(d.key.to_char());
        }
        let ready = masker.ready().min(160);
        masker.pop(&mut out[..ready]);
    }
    println!("{digits}\n{} digits, {} samples replaced", digits.len(), masker.replaced);
}
