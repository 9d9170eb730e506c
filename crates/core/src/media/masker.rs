//! The masker (DESIGN.md, the masking contract): caller audio bound for the agent passes
//! through a 20 ms look-ahead. Two layers, so that masking never depends on detection:
//! - during a capture, everything that leaves goes through the DTMF band-stop
//!   (`dtmf::bandstop`), so a tone nothing detected is still 50 dB down, under whatever
//!   background hid it from the gate;
//! - the tone-presence gate watches every sample as it enters, and when it opens,
//!   everything still in the look-ahead back to the tone's onset is replaced, as is
//!   everything until the gate closes plus a hang-over, so over a quiet background not even
//!   the residue passes.
//!
//! RFC 4733 spans enter already marked, and `replace_span` marks an event's in-band copy
//! that is already in the look-ahead. The replacement is the same for every key: silence,
//! comfort noise, or one flat non-DTMF tone.

use serde::Deserialize;

use super::dtmf::analysis::Analysis;
use super::dtmf::bandstop::BandStop;
use super::dtmf::dbm0_to_amplitude;
use super::dtmf::detector::{Detection, DetectorState};
use super::dtmf::gate::GateState;
use super::dtmf::signal::Noise;

/// The look-ahead: 20 ms at 8 kHz, the delay capture mode adds toward the agent.
pub const LOOKAHEAD: usize = 160;
/// How far back from the gate's opening to replace: the gate opens at most 20 ms after a
/// tone's onset, so 24 ms covers the onset with a margin.
const LOOKBACK: usize = 192;
/// Replaced after the gate closes: the gate closes at most a few ms after the tone ends.
const HANGOVER: usize = 80;
/// A power of two, so a sample's slot is a mask, not a division.
const RING: usize = 4096;
const NOISE_LEN: usize = 4096;

/// What is being appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Caller audio: analysed by the gate and the detector.
    Audio,
    /// Filler for a lost packet: not analysed, so a concealed gap neither splits a key in two
    /// nor opens the gate; replaced if what it repeats was being replaced.
    Concealment,
    /// An RFC 4733 span: replaced, not analysed.
    Replaced,
}

/// What the agent hears instead of a tone.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replacement {
    Silence,
    ComfortNoise { dbm0: f32 },
    FlatTone { hz: f32, dbm0: f32 },
}

impl Default for Replacement {
    fn default() -> Self {
        Replacement::ComfortNoise { dbm0: -65.0 }
    }
}

pub struct Masker {
    /// One analysis feeds both the gate (what to replace) and the strict detector (which key).
    analysis: Analysis,
    gate: GateState,
    detector: DetectorState,
    /// On for a capture (`set_band_stop`); a fresh filter each time it is switched on.
    bandstop: Option<BandStop>,
    replacement: Replacement,
    ring: Box<[i16; RING]>,
    masked: Box<[bool; RING]>,
    written: u64,
    read: u64,
    mask_until: u64,
    /// Peak amplitude of the flat tone.
    scale: f32,
    /// Half a second of comfort noise at its level (empty in other modes), drawn once per
    /// masker: replacing is then a copy.
    noise: Box<[i16]>,
    noise_at: usize,
    phase: f32,
    /// Index of the sample after the last one marked for replacement.
    last_marked: u64,
    /// Samples replaced so far.
    pub replaced: u64,
}

impl Masker {
    /// Starts with the look-ahead full of silence, so output begins at once, 20 ms late.
    pub fn new(replacement: Replacement) -> Masker {
        Masker {
            analysis: Analysis::new(),
            gate: GateState::default(),
            detector: DetectorState::default(),
            bandstop: Some(BandStop::new()),
            replacement,
            ring: Box::new([0; RING]),
            masked: Box::new([false; RING]),
            written: LOOKAHEAD as u64,
            read: 0,
            mask_until: 0,
            scale: match replacement {
                Replacement::FlatTone { dbm0, .. } => dbm0_to_amplitude(dbm0),
                _ => 0.0,
            },
            noise: match replacement {
                Replacement::ComfortNoise { dbm0 } => {
                    let rms = dbm0_to_amplitude(dbm0) / 2f32.sqrt();
                    let mut n = Noise::new(0x746f_6e65);
                    // `as` saturates at the i16 range.
                    (0..NOISE_LEN).map(|_| (n.gaussian() * rms) as i16).collect()
                }
                _ => Box::default(),
            },
            noise_at: 0,
            phase: 0.0,
            last_marked: 0,
            replaced: 0,
        }
    }

    /// Appends samples. At most `RING - LOOKAHEAD` samples may wait unread. Returns a key
    /// the strict detector decided in this audio, if any.
    pub fn push(&mut self, pcm: &[i16], feed: Feed) -> Option<Detection> {
        let mut found = None;
        // Concealment repeats what came before: if that was being replaced, so is this.
        let continues_mask = feed == Feed::Concealment && self.written < self.mask_until.max(self.last_marked + 1);
        let mask = feed == Feed::Replaced || continues_mask;
        if continues_mask {
            self.mask_until = self.mask_until.max(self.written + pcm.len() as u64 + HANGOVER as u64);
        }
        let mut rest = pcm;
        while !rest.is_empty() {
            // Up to the end of the analysis hop (a whole block when not analysing).
            let (used, hop) = if feed == Feed::Audio { self.analysis.feed(rest) } else { (rest.len(), None) };
            let start = self.written;
            let end = start + used as u64;
            let (first, second) = slots(start, used);
            let split = first.len();
            self.ring[first].copy_from_slice(&rest[..split]);
            self.ring[second].copy_from_slice(&rest[split..used]);
            let marked_to = if mask { end } else { self.mask_until.clamp(start, end) };
            mark(&mut self.masked, start, marked_to, true);
            mark(&mut self.masked, marked_to, end, false);
            if marked_to > start {
                self.last_marked = marked_to;
            }
            self.written = end;
            rest = &rest[used..];
            let Some(hop) = hop else { continue };
            found = self.detector.on_hop(&hop).or(found);
            if self.gate.on_hop(&hop) {
                mark(&mut self.masked, self.read.max(end.saturating_sub(LOOKBACK as u64)), end, true);
                self.mask_until = self.mask_until.max(end + HANGOVER as u64);
                self.last_marked = end;
            }
        }
        found
    }

    /// Samples written so far (the look-ahead's initial silence included): the position
    /// `replace_span` counts in.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Replaces samples `from..to` (positions as `written` counts them): those still in the
    /// look-ahead now, those not yet written as they arrive. Earlier ones are gone already.
    pub fn replace_span(&mut self, from: u64, to: u64) {
        let from = from.max(self.read);
        if from < self.written {
            mark(&mut self.masked, from, to.min(self.written), true);
            self.last_marked = self.last_marked.max(to.min(self.written));
        }
        self.mask_until = self.mask_until.max(to);
    }

    /// Samples written since the last one marked for replacement.
    pub fn quiet_for(&self) -> u64 {
        self.written - self.last_marked
    }

    /// Samples past the look-ahead, ready to leave.
    pub fn ready(&self) -> usize {
        (self.written.saturating_sub(LOOKAHEAD as u64 + self.read)) as usize
    }

    /// Everything written and not yet read, look-ahead included (for flushing at the end).
    pub fn buffered(&self) -> usize {
        (self.written - self.read) as usize
    }

    /// Takes the next `out.len()` samples (at most `buffered()`), replacing marked ones, all
    /// of it through the band-stop when that is on.
    pub fn pop(&mut self, out: &mut [i16]) {
        let mut done = 0;
        while done < out.len() {
            // A run of samples marked alike, up to the ring's end.
            let i = (self.read as usize) & (RING - 1);
            let replace = self.masked[i];
            let most = (out.len() - done).min(RING - i);
            let run = self.masked[i..i + most].iter().position(|m| *m != replace).unwrap_or(most);
            let dst = &mut out[done..done + run];
            if replace {
                self.replace(dst);
                self.replaced += run as u64;
            } else {
                dst.copy_from_slice(&self.ring[i..i + run]);
            }
            self.read += run as u64;
            done += run;
        }
        if let Some(f) = self.bandstop.as_mut() {
            f.process(out);
        }
    }

    /// Switches the DTMF band-stop on (a capture) or off (the gate alone). It starts on.
    pub fn set_band_stop(&mut self, on: bool) {
        if on != self.bandstop.is_some() {
            self.bandstop = on.then(BandStop::new);
        }
    }

    pub fn band_stop(&self) -> bool {
        self.bandstop.is_some()
    }

    fn replace(&mut self, out: &mut [i16]) {
        match self.replacement {
            Replacement::Silence => out.fill(0),
            Replacement::ComfortNoise { .. } => {
                let mut rest = out;
                while !rest.is_empty() {
                    let n = rest.len().min(NOISE_LEN - self.noise_at);
                    rest[..n].copy_from_slice(&self.noise[self.noise_at..self.noise_at + n]);
                    self.noise_at = (self.noise_at + n) % NOISE_LEN;
                    rest = &mut rest[n..];
                }
            }
            Replacement::FlatTone { hz, .. } => {
                for o in out {
                    self.phase += 2.0 * std::f32::consts::PI * hz / 8000.0;
                    if self.phase > 2.0 * std::f32::consts::PI {
                        self.phase -= 2.0 * std::f32::consts::PI;
                    }
                    *o = (self.scale * self.phase.sin()) as i16;
                }
            }
        }
    }
}

/// Marks samples `from..to` for replacement or not.
fn mark(masked: &mut [bool; RING], from: u64, to: u64, replace: bool) {
    let (first, second) = slots(from, to.saturating_sub(from) as usize);
    masked[first].fill(replace);
    masked[second].fill(replace);
}

/// The ring slots of samples `from..from + len` (len ≤ RING), as at most two ranges.
fn slots(from: u64, len: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let start = (from as usize) & (RING - 1);
    let first = len.min(RING - start);
    (start..start + first, 0..len - first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::signal::{TonePair, power_dbm0, push_silence, push_sines, push_tone, to_i16};
    use crate::media::telephone_event::Key;

    /// Runs `x` through a masker in 20 ms blocks; returns the output aligned with the input
    /// and how many samples were replaced.
    fn run_counting(x: &[i16], r: Replacement) -> (Vec<i16>, u64) {
        let mut m = Masker::new(r);
        let mut out = Vec::new();
        for block in x.chunks(160) {
            m.push(block, Feed::Audio);
            let mut o = vec![0; m.ready()];
            m.pop(&mut o);
            out.extend(o);
        }
        let mut rest = vec![0; m.buffered()];
        m.pop(&mut rest);
        out.extend(rest);
        (out[LOOKAHEAD..].to_vec(), m.replaced)
    }

    fn run(x: &[i16], r: Replacement) -> Vec<i16> {
        run_counting(x, r).0
    }

    /// Level of one frequency in `x`, dBm0 (Hann-windowed DFT).
    fn level_at(x: &[i16], hz: f32) -> f32 {
        let n = x.len() as f32;
        let (re, im) = x.iter().enumerate().fold((0.0f32, 0.0f32), |(re, im), (i, s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n).cos();
            let t = 2.0 * std::f32::consts::PI * hz * i as f32 / 8000.0;
            (re + w * f32::from(*s) * t.cos(), im - w * f32::from(*s) * t.sin())
        });
        crate::media::dtmf::amplitude_to_dbm0((re * re + im * im).sqrt() * 4.0 / n)
    }

    #[test]
    fn replaces_a_tone_from_its_onset_to_its_end_over_speech_like_audio() {
        for onset_ms in [100.0, 103.0, 107.5, 112.25] {
            let mut x = Vec::new();
            // A loud 300 Hz + 2600 Hz "voice" throughout, the tone on top of it from onset_ms.
            push_sines(&mut x, &[(300.0, -20.0), (2600.0, -26.0)], 400.0);
            let mut tone = Vec::new();
            push_silence(&mut tone, onset_ms);
            let onset = tone.len();
            push_tone(&mut tone, TonePair::key(Key::Digit(5), -8.0), 80.0);
            let end = tone.len();
            crate::media::dtmf::signal::mix(&mut x, &tone, 0);
            let (out, replaced) = run_counting(&to_i16(&x), Replacement::Silence);
            assert!(replaced >= (end - onset) as u64, "onset {onset_ms}: at least the tone's length replaced");
            // What is left where the tone was is the band-stop's ring-down of the voice.
            for hz in [770.0, 1336.0] {
                let left = level_at(&out[onset..end], hz);
                assert!(left < -60.0, "onset {onset_ms}: {left:.1} dBm0 of the tone's {hz} Hz left");
            }
            let voice = |from: usize, to: usize| level_at(&out[from..to], 300.0);
            assert!(voice(0, onset - LOOKBACK) > -21.5, "the voice well before the tone passes");
            assert!(voice(end + HANGOVER + 64, out.len()) > -21.5, "the voice after the tone passes again");
        }
    }

    #[test]
    fn replacement_modes_are_the_same_for_every_key() {
        let mut outs = Vec::new();
        for key in [Key::Digit(1), Key::Digit(0), Key::Hash] {
            let mut x = Vec::new();
            push_silence(&mut x, 100.0);
            push_tone(&mut x, TonePair::key(key, -10.0), 100.0);
            push_silence(&mut x, 100.0);
            outs.push(run_counting(&to_i16(&x), Replacement::FlatTone { hz: 2100.0, dbm0: -20.0 }));
        }
        // The spans differ by a few samples with the gate's timing; the sound is identical.
        let trimmed: Vec<&[i16]> = outs
            .iter()
            .map(|(o, _)| {
                let start = o.iter().position(|s| *s != 0).unwrap_or(0);
                &o[start..]
            })
            .collect();
        let common = outs.iter().map(|(_, replaced)| *replaced as usize).min().unwrap();
        assert!(common > 700, "about 100 ms replaced: {common}");
        assert!(
            trimmed[0][..common] == trimmed[1][..common] && trimmed[1][..common] == trimmed[2][..common],
            "same sound for 1, 0 and #"
        );
        let noise = run(&vec![0; 800], Replacement::ComfortNoise { dbm0: -60.0 });
        assert!(noise.iter().all(|s| *s == 0), "nothing is replaced without a tone");
        let mut x = Vec::new();
        push_silence(&mut x, 100.0);
        push_tone(&mut x, TonePair::key(Key::Digit(8), -10.0), 200.0);
        let out = run(&to_i16(&x), Replacement::ComfortNoise { dbm0: -60.0 });
        let lvl = power_dbm0(&out[1000..2200].iter().map(|s| f32::from(*s)).collect::<Vec<_>>());
        // White noise at its level, less the quarter of the band (665–1705 Hz of 4 kHz) the
        // band-stop takes out: −61.3 dBm0, within the filter's 1 dB ripple.
        assert!((lvl + 61.3).abs() < 1.5, "comfort noise at its level: {lvl}");
    }

    #[test]
    fn forced_spans_and_the_lookahead_delay() {
        let mut m = Masker::new(Replacement::Silence);
        assert_eq!(m.ready(), 0);
        let mut voice = Vec::new();
        push_sines(&mut voice, &[(300.0, -20.0)], 20.0);
        let voice = to_i16(&voice);
        m.push(&voice, Feed::Audio);
        assert_eq!(m.ready(), 160);
        let mut o = [0; 160];
        m.pop(&mut o);
        assert_eq!(o, [0; 160], "the first 20 ms out is the look-ahead's silence");
        m.push(&voice, Feed::Replaced);
        m.pop(&mut o);
        assert!(level_at(&o, 300.0) > -22.0, "the first real audio comes out 20 ms late");
        assert_eq!(m.replaced, 0);
        m.push(&voice, Feed::Concealment);
        m.pop(&mut o);
        assert_eq!(m.replaced, 160, "the forced span is replaced");
        assert!(level_at(&o, 300.0) < -40.0, "{}", level_at(&o, 300.0));
    }

    #[test]
    fn a_span_marked_late_is_replaced_back_into_the_lookahead_and_ahead() {
        let mut m = Masker::new(Replacement::Silence);
        let mut voice = Vec::new();
        push_sines(&mut voice, &[(300.0, -20.0)], 60.0);
        let voice = to_i16(&voice);
        m.push(&voice[..160], Feed::Audio);
        let mut o = [0; 160];
        m.pop(&mut o); // the look-ahead's silence
        // An event names the frame just written (still in the look-ahead) and the next one.
        let at = m.written() - 160;
        m.replace_span(at, at + 320);
        m.push(&voice[160..320], Feed::Audio);
        m.pop(&mut o);
        m.push(&voice[320..], Feed::Audio);
        m.pop(&mut o);
        assert_eq!(m.replaced, 320, "both frames replaced");
        m.pop(&mut o);
        assert_eq!(m.replaced, 320, "the frame after the span passes");
        assert!(level_at(&o[80..], 300.0) > -23.0);
        // A span that has already left cannot be replaced, and marks nothing else.
        m.replace_span(0, 160);
        assert_eq!(m.quiet_for(), m.written() - (at + 320));
    }
}
