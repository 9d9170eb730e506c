//! What each side of a load call sends, tick by tick (20 ms): recorded speech in PCMU with a
//! frame number hidden in its first samples, and on the caller's side a card keyed once,
//! either as RFC 4733 events (RFC 4733 §2.5: updates every 20 ms, three end packets) or as
//! in-band tones over the speech.
//!
//! The frame number (the "watermark") lets the far side tell which frame it got and so
//! measure each frame's trip through tonewall, whatever tonewall did to RTP sequence numbers
//! and timestamps. It is six samples of the quietest PCMU codes (0xF0..=0xFF, at most ±31
//! of 32767), which survive tonewall's decode/re-encode in masked mode unchanged and are
//! inaudible under speech; a check byte keeps comfort noise from passing for one. During a
//! capture tonewall's DTMF band-stop rewrites every sample, so there frames are told apart
//! by their RTP timestamps instead (`media.rs`).

use std::sync::Arc;

use tonewall::capture::plan::Language;
use tonewall::media::g711::Codec;
use tonewall::media::rtp::FRAME_SAMPLES;
use tonewall::media::telephone_event::Key;
use tonewall_testkit::keypad::{self, Keying, Tick};

pub const EVENT_PT: u8 = 101;
const WATERMARK_BYTES: usize = 6;
const TONE_DBM0: f32 = -10.0;

/// A card keyed on the keypad, tick by tick (the test kit's planner).
pub struct Keypad {
    pub keying: Keying,
    pub ticks: Vec<Tick>,
    pub card: Card,
}

/// The card as keyed (test numbers only), to compare whole with what the vault stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub pan: String,
    pub expiry_month: u64,
    pub expiry_year: u64,
    pub security_code: String,
}

impl Keypad {
    pub fn new(keying: Keying, pan: &str, expiry: &str, cvv: &str) -> Keypad {
        let ticks = keypad::plan(&keypad::script(&format!("{pan}#,{expiry},{cvv}")), keying);
        let digits = |r: std::ops::Range<usize>| expiry.get(r).and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        let card = Card {
            pan: pan.to_string(),
            expiry_month: digits(0..2),
            expiry_year: 2000 + digits(2..4),
            security_code: cvv.to_string(),
        };
        Keypad { keying, ticks, card }
    }

    pub fn ticks(&self) -> u32 {
        self.ticks.len() as u32
    }
}

/// Audio shared by every call: two speech loops (caller and agent) and the key tones.
pub struct Sounds {
    pub caller: Arc<[u8]>,
    pub agent: Arc<[u8]>,
    tones: Vec<(Key, Vec<i16>)>,
}

impl Sounds {
    pub fn load() -> anyhow::Result<Sounds> {
        let prompts = tonewall::runtime::prompts::built_in()?;
        // About −22 dBm0, like a caller talking under the keys (as in the masking judge).
        let pcmu = |s: &[i16]| -> Arc<[u8]> {
            let whole = s.len() / FRAME_SAMPLES * FRAME_SAMPLES;
            s[..whole].iter().map(|x| Codec::Pcmu.encode(x / 3)).collect()
        };
        let tones =
            "0123456789*#".chars().filter_map(Key::from_char).map(|k| (k, keypad::tone(k, TONE_DBM0))).collect();
        let english = |name: &str| {
            prompts.get(Language::En, name).cloned().ok_or_else(|| anyhow::anyhow!("no English {name} prompt"))
        };
        Ok(Sounds { caller: pcmu(&english("card_number")?), agent: pcmu(&english("security_code")?), tones })
    }

    /// Writes frame `tick` of `speech` (looped, from `offset` frames in) into `out`; marks it
    /// with `tick` unless a tone goes over it.
    pub fn frame(&self, speech: &[u8], offset: u32, tick: u32, tone: Option<(Key, u8)>, out: &mut [u8]) {
        let frames = (speech.len() / FRAME_SAMPLES) as u32;
        let at = ((offset + tick) % frames) as usize * FRAME_SAMPLES;
        let out = &mut out[..FRAME_SAMPLES];
        out.copy_from_slice(&speech[at..at + FRAME_SAMPLES]);
        match tone.and_then(|(k, f)| self.tones.iter().find(|(t, _)| *t == k).map(|(_, s)| (s, f))) {
            Some((samples, f)) => {
                let tone = &samples[usize::from(f) * FRAME_SAMPLES..][..FRAME_SAMPLES];
                for (o, t) in out.iter_mut().zip(tone) {
                    *o = Codec::Pcmu.encode(Codec::Pcmu.decode(*o).saturating_add(*t));
                }
            }
            None => watermark(out, tick),
        }
    }
}

fn check_byte(k: u16) -> u8 {
    (k as u8) ^ ((k >> 8) as u8) ^ 0xA5
}

/// Hides the low 16 bits of `tick` in the frame's first six samples.
pub fn watermark(frame: &mut [u8], tick: u32) {
    let k = tick as u16;
    let c = check_byte(k);
    let nibbles = [k & 15, (k >> 4) & 15, (k >> 8) & 15, k >> 12, u16::from(c & 15), u16::from(c >> 4)];
    for (o, n) in frame.iter_mut().zip(nibbles) {
        *o = 0xF0 | n as u8;
    }
}

/// The frame number hidden by `watermark`, if the frame carries a valid one.
pub fn read_watermark(frame: &[u8]) -> Option<u16> {
    let m = frame.get(..WATERMARK_BYTES)?;
    if m.iter().any(|b| b & 0xF0 != 0xF0) {
        return None;
    }
    let n = |i: usize| u16::from(m[i] & 15);
    let k = n(0) | n(1) << 4 | n(2) << 8 | n(3) << 12;
    let c = (n(4) | n(5) << 4) as u8;
    (c == check_byte(k)).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_survives_decoding_and_reencoding_and_comfort_noise_does_not_pass_for_one() {
        for tick in [0u32, 1, 255, 4096, 65535, 70000] {
            let mut f = [0x55u8; FRAME_SAMPLES];
            watermark(&mut f, tick);
            // tonewall's masked path decodes and re-encodes every sample.
            let again: Vec<u8> = f.iter().map(|b| Codec::Pcmu.encode(Codec::Pcmu.decode(*b))).collect();
            assert_eq!(read_watermark(&again), Some(tick as u16));
        }
        let silence = [Codec::Pcmu.silence(); FRAME_SAMPLES];
        assert_eq!(read_watermark(&silence), None);
        let mut f = [0u8; FRAME_SAMPLES];
        watermark(&mut f, 7);
        f[4] ^= 1;
        assert_eq!(read_watermark(&f), None, "a wrong check byte");
    }

    #[test]
    fn keypads_key_the_whole_card_once() {
        let k = Keypad::new(Keying::Rfc4733, "4111111111111111", "1230", "123");
        // 24 keys of 12 ticks and two one-second pauses.
        assert_eq!(k.ticks(), 24 * 12 + 2 * 50);
        assert_eq!(k.ticks.iter().filter(|t| t.event.is_some_and(|e| e.since == 0)).count(), 24);
        let whole =
            Card { pan: "4111111111111111".into(), expiry_month: 12, expiry_year: 2030, security_code: "123".into() };
        assert_eq!(k.card, whole);
        let k = Keypad::new(Keying::InBand, "4111111111111111", "1230", "123");
        assert!(k.ticks.iter().all(|t| t.event.is_none()));
        assert_eq!(k.ticks.iter().filter(|t| t.tone.is_some_and(|e| e.since == 0)).count(), 24);
    }

    #[test]
    fn tone_frames_carry_the_key_and_no_watermark() {
        let s = Sounds::load().unwrap();
        let mut f = [0u8; FRAME_SAMPLES];
        s.frame(&s.caller, 3, 10, None, &mut f);
        assert_eq!(read_watermark(&f), Some(10));
        let five = Key::from_char('5').unwrap();
        let mut d = tonewall::media::dtmf::detector::Detector::new();
        let mut heard = None;
        for frame in 0..keypad::TONE_TICKS as u8 {
            s.frame(&s.caller, 3, 10 + u32::from(frame), Some((five, frame)), &mut f);
            assert_eq!(read_watermark(&f), None);
            let pcm: Vec<i16> = f.iter().map(|b| Codec::Pcmu.decode(*b)).collect();
            heard = heard.or(d.process(&pcm));
        }
        assert_eq!(heard.map(|h| h.key), Key::from_char('5'));
    }
}
