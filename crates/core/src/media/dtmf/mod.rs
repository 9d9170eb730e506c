//! In-band DTMF (ITU-T Q.23 frequencies, Q.24 reception limits): a strict detector that
//! decides which key, and a fast tone-presence gate that decides which audio to mask.
//!
//! Both look at Hann-windowed single-frequency DFTs (the Goertzel recursion, all frequencies
//! side by side in SIMD lanes) of 8 kHz linear audio, computed once per hop for both. The
//! strict detector also measures each tone's frequency from the phase advance between overlapping windows, which is what lets it
//! reject a tone 3.5% off while accepting one 1.5% + 2 Hz off.

pub mod analysis;
pub mod bandstop;
pub mod biquad;
pub mod detector;
pub mod gate;
pub mod signal;

use std::f32::consts::{PI, TAU};

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use analysis::WINDOW;

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

/// Rows, columns and dial tone: the frequencies every analysis measures, in this order.
pub(crate) const FREQS: usize = 10;

pub(crate) fn analysis_frequencies() -> [f32; FREQS] {
    let mut f = [0.0; FREQS];
    f[..4].copy_from_slice(&ROWS);
    f[4..8].copy_from_slice(&COLS);
    f[8..].copy_from_slice(&DIAL);
    f
}

/// Frequency offset of the tone seen at nominal `f`, from its phase advance over `hop`
/// samples; unambiguous within ±fs/(2·hop).
pub fn frequency_offset(f: f32, now: (f32, f32), prev: (f32, f32), hop: usize) -> f32 {
    // arg(now · conj(prev)) minus the advance a tone exactly at f would make.
    let re = now.0 * prev.0 + now.1 * prev.1;
    let im = now.1 * prev.0 - now.0 * prev.1;
    let expected = 2.0 * PI * f * hop as f32 / SAMPLE_RATE;
    // Wrap into [−π, π]: take off the nearest whole number of turns (a truncating cast
    // rounds half away from zero here, where `round` would be a libm call).
    let d = atan2(im, re) - expected;
    let turns = (d / TAU + 0.5f32.copysign(d)) as i32;
    (d - TAU * turns as f32) * SAMPLE_RATE / (TAU * hop as f32)
}

/// atan2 to within 1e-5 rad (0.001 Hz over one hop), a quarter of libm's cost: an odd
/// polynomial on [0, 1] (the Cg reference's coefficients), then the octant.
fn atan2(y: f32, x: f32) -> f32 {
    let (ax, ay) = (x.abs(), y.abs());
    let (lo, hi) = (ax.min(ay), ax.max(ay));
    if hi == 0.0 {
        return 0.0;
    }
    let a = lo / hi;
    let s = a * a;
    let p = ((((-0.013_480_47 * s + 0.057_477_314) * s - 0.121_239_07) * s + 0.195_635_93) * s - 0.332_994_6) * s
        + 0.999_995_63;
    let mut r = p * a;
    if ay > ax {
        r = PI / 2.0 - r;
    }
    if x < 0.0 {
        r = PI - r;
    }
    if y < 0.0 { -r } else { r }
}

/// Goertzel lanes: the ten frequencies and two idle ones, so each step of the recursion is
/// one 8-wide and one 4-wide vector operation.
const LANES: usize = 12;

pub(crate) type Dft = [(f32, f32); FREQS];

/// One window's analysis: the DFT at each frequency, its power, the window's energy on the
/// same scale, and the strongest row and column with their levels. The checks that need an
/// earlier window (`hop` samples before) measure phase advance: they cost more, so the
/// gate and detector make them last.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spectrum {
    pub dft: Dft,
    pub power: [f32; FREQS],
    pub energy: f32,
    pub row: usize,
    pub col: usize,
    pub row_dbm0: f32,
    pub col_dbm0: f32,
}

impl Spectrum {
    fn tones(&self) -> f32 {
        self.power[self.row] + self.power[4 + self.col]
    }

    /// Whether the row and column tones hold at least `min` of the window's energy, dial
    /// tone excluded. Dial tone counts against nothing, but only when it really is 350 +
    /// 440 Hz: other low-frequency energy (a vowel near 400 Hz) leaks into both bins and
    /// must still count. The phase check runs only when its answer could change the outcome.
    pub(crate) fn holds_share(&self, prev: &Spectrum, hop: usize, min: f32) -> bool {
        let share = |total: f32| self.tones() / total.max(1e-3);
        let dial = self.power[8] + self.power[9];
        if share(self.energy) >= min {
            return true;
        }
        if share(self.energy - dial) < min {
            return false;
        }
        let is_dial = |i: usize| frequency_offset(DIAL[i - 8], self.dft[i], prev.dft[i], hop).abs() < 6.0;
        is_dial(8) && is_dial(9)
    }

    pub(crate) fn row_offset_hz(&self, prev: &Spectrum, hop: usize) -> f32 {
        frequency_offset(ROWS[self.row], self.dft[self.row], prev.dft[self.row], hop)
    }

    pub(crate) fn col_offset_hz(&self, prev: &Spectrum, hop: usize) -> f32 {
        let i = 4 + self.col;
        frequency_offset(COLS[self.col], self.dft[i], prev.dft[i], hop)
    }
}

/// Hann-windowed DFT over `WINDOW` samples at the analysis frequencies, computed with the
/// Goertzel recursion (one multiply and two adds per sample and frequency, no tables).
#[derive(Debug, Clone)]
pub(crate) struct Bank {
    /// 2·cos ω: the recursion's feedback.
    feedback: [f32; LANES],
    cos: [f32; FREQS],
    sin: [f32; FREQS],
    window: [f32; WINDOW],
    /// Added to each frequency's measured level: what the pre-filter took off there.
    level_offset_db: [f32; FREQS],
}

impl Default for Bank {
    fn default() -> Self {
        Self::new()
    }
}

impl Bank {
    pub(crate) fn new() -> Bank {
        Bank::after_filter([1.0; FREQS])
    }

    /// For windows of audio that passed a filter with these power gains at the analysis
    /// frequencies: levels are those of the audio before it.
    pub(crate) fn after_filter(power_gain: [f32; FREQS]) -> Bank {
        let omega = analysis_frequencies().map(|f| 2.0 * PI * f / SAMPLE_RATE);
        let mut feedback = [0.0; LANES];
        for (c, w) in feedback.iter_mut().zip(omega) {
            *c = 2.0 * w.cos();
        }
        Bank {
            feedback,
            cos: omega.map(f32::cos),
            sin: omega.map(f32::sin),
            window: std::array::from_fn(|n| 0.5 - 0.5 * (2.0 * PI * n as f32 / WINDOW as f32).cos()),
            level_offset_db: power_gain.map(|g| -10.0 * g.log10()),
        }
    }

    /// The spectrum of one window. Its DFT values are phased to the window's last sample
    /// (Goertzel's reference), not its first: the same for every window, so the phase
    /// advance between two windows is the same either way.
    pub(crate) fn analyse(&self, x: &[f32; WINDOW]) -> Spectrum {
        let (squares, last, before) = window_and_recurse(&self.window, &self.feedback, x);
        // For Hann, |X|² of a sine is (A·N/4)², Σ(w·x)² is A²·3N/16: the ratio is N/3.
        let energy = squares * WINDOW as f32 / 3.0;
        let dft: Dft = std::array::from_fn(|k| (last[k] - self.cos[k] * before[k], self.sin[k] * before[k]));
        let power = dft.map(power);
        let (row, _) = strongest(&power[0..4]);
        let (col, _) = strongest(&power[4..8]);
        Spectrum {
            dft,
            power,
            energy,
            row,
            col,
            row_dbm0: power_to_dbm0(power[row]) + self.level_offset_db[row],
            col_dbm0: power_to_dbm0(power[4 + col]) + self.level_offset_db[4 + col],
        }
    }
}

/// Peak amplitude of an on-bin sine giving this windowed DFT value.
#[cfg(test)]
fn amplitude(v: (f32, f32)) -> f32 {
    power(v).sqrt() * 4.0 / WINDOW as f32
}

/// The level of an on-bin sine giving this windowed DFT power: `amplitude_to_dbm0` of its
/// amplitude, with the square root folded into the logarithm.
fn power_to_dbm0(p: f32) -> f32 {
    // amplitude = √p · 4/N; the floor matches amplitude_to_dbm0's 1e-3.
    let floor = (1e-3 * WINDOW as f32 / 4.0) * (1e-3 * WINDOW as f32 / 4.0);
    let scale = 4.0 / WINDOW as f32 / 32767.0;
    10.0 * log10(p.max(floor) * scale * scale) + FULL_SCALE_DBM0
}

/// log10 of a positive normal float to within 1e-5, without libm: the exponent from the
/// float's bits, and for the mantissa m in [1, 2) the series of atanh in t = (m−1)/(m+1),
/// which needs four terms for t ≤ 1/3.
fn log10(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let ln_m = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0))));
    (exponent as f32 * std::f32::consts::LN_2 + ln_m) * std::f32::consts::LOG10_E
}

/// What `analyse` needs from the samples: Σ(w·x)² and, per lane, the last two values of the
/// Goertzel recursion s[n] = w[n]·x[n] + 2cos ω·s[n−1] − s[n−2].
type Recursion = (f32, [f32; LANES], [f32; LANES]);

/// The per-sample arithmetic of one window. Compiled twice, for baseline x86-64 and for AVX2
/// with fused multiply-add, and run the second way where the CPU has them (half the
/// instructions); `multiversion` does the run-time dispatch.
#[multiversion(targets("x86_64+avx2+fma"))]
fn window_and_recurse(w: &[f32; WINDOW], c: &[f32; LANES], x: &[f32; WINDOW]) -> Recursion {
    let windowed: [f32; WINDOW] = std::array::from_fn(|n| x[n] * w[n]);
    let squares = sum_of_squares(&windowed);
    // A constant in each compiled copy: without the instruction, mul_add is a libm call.
    let fma = target_cfg_f!(target_feature = "fma");
    let step =
        |c: f32, prev: f32, prev2: f32, x: f32| if fma { c.mul_add(prev, x - prev2) } else { c * prev + (x - prev2) };
    // Four samples per turn, the two state arrays swapping roles: no copies between steps.
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    for quad in windowed.as_chunks::<4>().0 {
        for pair in [[quad[0], quad[1]], [quad[2], quad[3]]] {
            for l in 0..LANES {
                b[l] = step(c[l], a[l], b[l], pair[0]);
            }
            for l in 0..LANES {
                a[l] = step(c[l], b[l], a[l], pair[1]);
            }
        }
    }
    (squares, a, b)
}

/// Σx², summed in eight lanes so that it vectorizes (float addition is not reassociated).
#[inline(always)]
pub(crate) fn sum_of_squares(x: &[f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l] * c[l];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>()
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
    fn the_mu_law_digital_milliwatt_reads_0_dbm0() {
        // ITU-T G.711 Table 5: the eight-byte sequence whose decoded sine is 1 kHz at 0 dBm0,
        // a level anchor independent of FULL_SCALE_DBM0.
        let dmw = [0x1Eu8, 0x0B, 0x0B, 0x1E, 0x9E, 0x8B, 0x8B, 0x9E];
        let pcm: Vec<f32> =
            dmw.iter().cycle().take(8000).map(|b| f32::from(crate::media::g711::ulaw_decode(*b))).collect();
        let rms = (pcm.iter().map(|v| v * v).sum::<f32>() / pcm.len() as f32).sqrt();
        let generated = dbm0_to_amplitude(0.0) / 2f32.sqrt();
        let error_db = 20.0 * (rms / generated).log10();
        assert!(error_db.abs() < 0.05, "the generator's 0 dBm0 is {error_db:.3} dB off the digital milliwatt");
    }

    #[test]
    fn bank_matches_a_direct_hann_windowed_dft() {
        let freqs = analysis_frequencies();
        let mut noise = signal::Noise::new(3);
        let x: [f32; WINDOW] = std::array::from_fn(|n| {
            5000.0 * (2.0 * PI * 1209.0 * n as f32 / SAMPLE_RATE + 0.3).sin() + 300.0 * noise.gaussian()
        });
        let spectrum = Bank::new().analyse(&x);
        for (k, f) in freqs.iter().enumerate() {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (n, s) in x.iter().enumerate() {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / WINDOW as f64).cos();
                let t = 2.0 * std::f64::consts::PI * f64::from(*f) * n as f64 / f64::from(SAMPLE_RATE);
                re += w * f64::from(*s) * t.cos();
                im -= w * f64::from(*s) * t.sin();
            }
            // Refer the direct DFT to the window's last sample, as Goertzel's output is.
            let back = 2.0 * std::f64::consts::PI * f64::from(*f) * (WINDOW - 1) as f64 / f64::from(SAMPLE_RATE);
            let (re, im) = (re * back.cos() - im * back.sin(), re * back.sin() + im * back.cos());
            let (gr, gi) = spectrum.dft[k];
            let err = ((f64::from(gr) - re).powi(2) + (f64::from(gi) - im).powi(2)).sqrt();
            assert!(err < 1e-4 * (re * re + im * im).sqrt().max(1000.0), "{f} Hz: {err}");
        }
        assert_eq!(spectrum.col, 0, "1209 Hz is the strongest column");
        // 1209 Hz sits a third of a bin off the 62.5 Hz grid: Hann scallops it by < 1 dB.
        let loss_db = 20.0 * (5000.0 / amplitude(spectrum.dft[4])).log10();
        assert!(loss_db.abs() < 1.0, "{loss_db}");
    }

    #[test]
    fn energy_scale_gives_a_lone_sine_a_share_of_one() {
        let x: [f32; WINDOW] = std::array::from_fn(|n| 5000.0 * (2.0 * PI * 1000.0 * n as f32 / SAMPLE_RATE).sin());
        let bank = Bank::new();
        let s = bank.analyse(&x);
        // 1000 Hz is on a bin of the 128-point window, as none of the DTMF tones is; its
        // power is measured with a one-frequency sum.
        let on_bin: (f32, f32) = x.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, v)| {
            let t = 2.0 * PI * 1000.0 * n as f32 / SAMPLE_RATE;
            (re + bank.window[n] * v * t.cos(), im - bank.window[n] * v * t.sin())
        });
        assert!((power(on_bin) / s.energy - 1.0).abs() < 0.05);
    }

    #[test]
    fn fast_log10_and_levels_agree_with_libm() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            assert!((log10(x) - x.log10()).abs() < 2e-5, "{x}");
            x *= 1.37;
        }
        for amplitude in [1e-4f32, 0.5, 100.0, 5000.0, 32767.0] {
            let p = (amplitude * WINDOW as f32 / 4.0).powi(2);
            assert!((power_to_dbm0(p) - amplitude_to_dbm0(amplitude)).abs() < 1e-3, "{amplitude}");
        }
    }

    #[test]
    fn fast_atan2_agrees_with_libm() {
        let mut worst = 0.0f32;
        for i in 0..3600 {
            let t = i as f32 * 0.1f32.to_radians();
            for r in [1e-3f32, 1.0, 7.5e6] {
                let (y, x) = (r * t.sin(), r * t.cos());
                // The two may land on opposite sides of the ±π cut.
                let d = (atan2(y, x) - y.atan2(x)).abs();
                worst = worst.max(d.min((d - 2.0 * PI).abs()));
            }
        }
        assert!(worst < 1e-5, "{worst}");
        assert_eq!(atan2(0.0, 0.0), 0.0);
    }
}
