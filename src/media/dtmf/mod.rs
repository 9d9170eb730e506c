//! In-band DTMF (ITU-T Q.23 frequencies, Q.24 reception limits): a strict detector that
//! decides which key, and a fast tone-presence gate that decides which audio to mask.
//!
//! Both look at Hann-windowed single-frequency DFTs (a Goertzel-style correlation with
//! precomputed tables) of 8 kHz linear audio. The strict detector also measures each tone's
//! frequency from the phase advance between overlapping windows, which is what lets it
//! reject a tone 3.5% off while accepting one 1.5% + 2 Hz off.

pub mod analysis;
pub mod detector;
pub mod gate;
pub mod signal;

use std::f32::consts::PI;

pub use detector::Detector;
pub use gate::Gate;

use crate::media::telephone_event::Key;

pub const SAMPLE_RATE: f32 = 8000.0;
/// Q.23 low group (rows) and high group (columns), Hz.
pub const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
pub const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// Dial tone (North America, 350 + 440 Hz): measured so it never counts against a digit.
const DIAL: [f32; 2] = [350.0, 440.0];

const KEYPAD: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];

/// The key at a row and column of the keypad.
pub fn key_at(row: usize, col: usize) -> Key {
    // Invariant: the table holds only keypad characters, all of which Key accepts.
    Key::from_char(KEYPAD[row][col]).expect("keypad character")
}

/// The (row, column) frequencies of a key.
pub fn frequencies(key: Key) -> (f32, f32) {
    for (r, row) in KEYPAD.iter().enumerate() {
        for (c, ch) in row.iter().enumerate() {
            if Key::from_char(*ch) == Some(key) {
                return (ROWS[r], COLS[c]);
            }
        }
    }
    (ROWS[0], COLS[0])
}

/// The level of a full-scale sine: +3.17 dBm0 (G.711 µ-law, Table 2 of the Recommendation).
pub const FULL_SCALE_DBM0: f32 = 3.17;

/// Peak amplitude (16-bit linear) of a sine at `dbm0`.
pub fn dbm0_to_amplitude(dbm0: f32) -> f32 {
    32767.0 * 10f32.powf((dbm0 - FULL_SCALE_DBM0) / 20.0)
}

pub fn amplitude_to_dbm0(amplitude: f32) -> f32 {
    20.0 * (amplitude.max(1e-3) / 32767.0).log10() + FULL_SCALE_DBM0
}

/// What one analysis window holds: the strongest row and column tones, their levels, the
/// share of the window's energy they carry (dial tone excluded) and their frequency offsets
/// measured from the phase advance since the window `hop` samples earlier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure {
    pub row: usize,
    pub col: usize,
    pub row_dbm0: f32,
    pub col_dbm0: f32,
    pub share: f32,
    pub row_offset_hz: f32,
    pub col_offset_hz: f32,
}

/// The ten frequencies every analysis measures: rows, columns, dial tone.
pub(crate) fn analysis_frequencies() -> Vec<f32> {
    let mut f = ROWS.to_vec();
    f.extend_from_slice(&COLS);
    f.extend_from_slice(&DIAL);
    f
}

pub(crate) fn measure(
    bank: &Bank,
    window: &[f32],
    now: &[(f32, f32); 10],
    prev: &[(f32, f32); 10],
    hop: usize,
) -> Measure {
    let p = now.map(power);
    let (row, pr) = strongest(&p[0..4]);
    let (col, pc) = strongest(&p[4..8]);
    // Dial tone counts against nothing, but only when it really is 350 + 440 Hz: other
    // low-frequency energy (a vowel near 400 Hz) leaks into both bins and must still count.
    let is_dial = |i: usize| frequency_offset(DIAL[i - 8], now[i], prev[i], hop).abs() < 6.0;
    let dial = if is_dial(8) && is_dial(9) { p[8] + p[9] } else { 0.0 };
    let total = bank.windowed_energy(window) - dial;
    Measure {
        row,
        col,
        row_dbm0: amplitude_to_dbm0(bank.amplitude(now[row])),
        col_dbm0: amplitude_to_dbm0(bank.amplitude(now[4 + col])),
        share: (pr + pc) / total.max(1e-3),
        row_offset_hz: frequency_offset(ROWS[row], now[row], prev[row], hop),
        col_offset_hz: frequency_offset(COLS[col], now[4 + col], prev[4 + col], hop),
    }
}

/// Frequency offset of the tone seen at nominal `f`, from its phase advance over `hop`
/// samples; unambiguous within ±fs/(2·hop).
pub fn frequency_offset(f: f32, now: (f32, f32), prev: (f32, f32), hop: usize) -> f32 {
    // arg(now · conj(prev)) minus the advance a tone exactly at f would make.
    let re = now.0 * prev.0 + now.1 * prev.1;
    let im = now.1 * prev.0 - now.0 * prev.1;
    let expected = 2.0 * PI * f * hop as f32 / SAMPLE_RATE;
    // Wrap into (−π, π]: both terms lie within a few turns, so subtraction beats fmod.
    let mut d = im.atan2(re) - expected;
    while d > PI {
        d -= 2.0 * PI;
    }
    while d <= -PI {
        d += 2.0 * PI;
    }
    d * SAMPLE_RATE / (2.0 * PI * hop as f32)
}

/// Hann-windowed DFT at fixed frequencies over a fixed-length window.
#[derive(Debug, Clone)]
pub(crate) struct Bank {
    len: usize,
    /// Per frequency: window × cos, then window × −sin (separate arrays vectorize).
    cos: Vec<Vec<f32>>,
    sin: Vec<Vec<f32>>,
    window: Vec<f32>,
}

/// Lanes summed side by side: float addition is not reassociated by the compiler, so
/// independent partial sums are what lets the dot products use SIMD.
const LANES: usize = 8;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        // Fixed-size views: no bounds checks inside, so the loop becomes SIMD.
        let (Ok(x), Ok(y)) = (<&[f32; LANES]>::try_from(x), <&[f32; LANES]>::try_from(y)) else { continue };
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 =
        a.chunks_exact(LANES).remainder().iter().zip(b.chunks_exact(LANES).remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl Bank {
    pub(crate) fn new(freqs: &[f32], len: usize) -> Bank {
        let window: Vec<f32> = (0..len).map(|n| 0.5 - 0.5 * (2.0 * PI * n as f32 / len as f32).cos()).collect();
        let table = |f: f32, trig: fn(f32) -> f32, sign: f32| -> Vec<f32> {
            (0..len).map(|n| sign * window[n] * trig(2.0 * PI * f * n as f32 / SAMPLE_RATE)).collect()
        };
        Bank {
            len,
            cos: freqs.iter().map(|f| table(*f, f32::cos, 1.0)).collect(),
            sin: freqs.iter().map(|f| table(*f, f32::sin, -1.0)).collect(),
            window,
        }
    }

    /// Complex DFT values for `x` (exactly `len` samples) at the first `out.len()`
    /// frequencies.
    pub(crate) fn analyse(&self, x: &[f32], out: &mut [(f32, f32)]) {
        for ((c, s), o) in self.cos.iter().zip(&self.sin).zip(out.iter_mut()) {
            *o = (dot(x, c), dot(x, s));
        }
    }

    /// Energy of the windowed signal, scaled so that a lone on-bin sine's `power` over it is 1.
    pub(crate) fn windowed_energy(&self, x: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        for (xs, ws) in x.chunks_exact(LANES).zip(self.window.chunks_exact(LANES)) {
            let (Ok(xs), Ok(ws)) = (<&[f32; LANES]>::try_from(xs), <&[f32; LANES]>::try_from(ws)) else { continue };
            for l in 0..LANES {
                let v = xs[l] * ws[l];
                acc[l] += v * v;
            }
        }
        let e: f32 = acc.iter().sum();
        // For Hann, |X|² of a sine is (A·N/4)², Σ(w·x)² is A²·3N/16: the ratio is N/3.
        e * self.len as f32 / 3.0
    }

    /// Peak amplitude of an on-bin sine giving this DFT value.
    pub(crate) fn amplitude(&self, v: (f32, f32)) -> f32 {
        power(v).sqrt() * 4.0 / self.len as f32
    }
}

pub(crate) fn power(v: (f32, f32)) -> f32 {
    v.0 * v.0 + v.1 * v.1
}

/// Index and value of the largest of four powers.
pub(crate) fn strongest(p: &[f32]) -> (usize, f32) {
    p.iter().copied().enumerate().fold((0, f32::MIN), |best, (i, v)| if v > best.1 { (i, v) } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypad_layout_and_levels() {
        assert_eq!(key_at(0, 0), Key::Digit(1));
        assert_eq!(key_at(3, 1), Key::Digit(0));
        assert_eq!(key_at(3, 2), Key::Hash);
        assert_eq!(frequencies(Key::Star), (941.0, 1209.0));
        assert_eq!(frequencies(Key::Letter(b'D')), (941.0, 1633.0));
        assert!((amplitude_to_dbm0(dbm0_to_amplitude(-20.0)) + 20.0).abs() < 1e-3);
        assert!((dbm0_to_amplitude(FULL_SCALE_DBM0) - 32767.0).abs() < 0.5);
    }

    #[test]
    fn bank_measures_an_on_bin_sine() {
        let bank = Bank::new(&[1000.0], 128);
        let a = 5000.0;
        let x: Vec<f32> = (0..128).map(|n| a * (2.0 * PI * 1000.0 * n as f32 / SAMPLE_RATE).sin()).collect();
        let mut out = [(0.0, 0.0)];
        bank.analyse(&x, &mut out);
        assert!((bank.amplitude(out[0]) - a).abs() / a < 0.02);
        let ratio = power(out[0]) / bank.windowed_energy(&x);
        assert!((ratio - 1.0).abs() < 0.05, "{ratio}");
    }
}
