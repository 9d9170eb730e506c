//! Test signals: DTMF tone pairs with chosen offsets, levels and durations, dial tone, and
//! white noise from a seeded generator, so every conformance case is reproducible. Used by
//! the conformance tests, the benchmarks and the in-band softphone.

use std::f32::consts::PI;

use super::{SAMPLE_RATE, dbm0_to_amplitude, frequencies};
use crate::media::telephone_event::Key;

/// Two tones at given frequencies and levels (each tone's own level, dBm0).
#[derive(Debug, Clone, Copy)]
pub struct TonePair {
    pub row_hz: f32,
    pub col_hz: f32,
    pub row_dbm0: f32,
    pub col_dbm0: f32,
}

impl TonePair {
    /// A key at nominal frequencies, both tones at `dbm0`.
    pub fn key(key: Key, dbm0: f32) -> TonePair {
        let (row_hz, col_hz) = frequencies(key);
        TonePair { row_hz, col_hz, row_dbm0: dbm0, col_dbm0: dbm0 }
    }

    /// Both frequencies moved by `percent` (and `hz`) of their nominal value.
    pub fn offset(self, percent: f32, hz: f32) -> TonePair {
        let m = |f: f32| f * (1.0 + percent / 100.0) + hz;
        TonePair { row_hz: m(self.row_hz), col_hz: m(self.col_hz), ..self }
    }

    /// Row tone louder than the column tone by `db` (negative: reverse twist), keeping the
    /// mean level.
    pub fn twist(self, db: f32) -> TonePair {
        let mean = (self.row_dbm0 + self.col_dbm0) / 2.0;
        TonePair { row_dbm0: mean + db / 2.0, col_dbm0: mean - db / 2.0, ..self }
    }
}

/// Appends `ms` of the pair to `out`.
pub fn push_tone(out: &mut Vec<f32>, t: TonePair, ms: f32) {
    push_sines(out, &[(t.row_hz, t.row_dbm0), (t.col_hz, t.col_dbm0)], ms);
}

/// Appends `ms` of a sum of sines (frequency, level in dBm0).
pub fn push_sines(out: &mut Vec<f32>, sines: &[(f32, f32)], ms: f32) {
    let n = (ms * SAMPLE_RATE / 1000.0).round() as usize;
    for i in 0..n {
        let t = i as f32 / SAMPLE_RATE;
        out.push(sines.iter().map(|(f, l)| dbm0_to_amplitude(*l) * (2.0 * PI * f * t).sin()).sum());
    }
}

pub fn push_silence(out: &mut Vec<f32>, ms: f32) {
    out.extend(std::iter::repeat_n(0.0, (ms * SAMPLE_RATE / 1000.0).round() as usize));
}

/// Adds `other` sample by sample from `at` on.
pub fn mix(out: &mut [f32], other: &[f32], at: usize) {
    let start = at.min(out.len());
    for (o, s) in out[start..].iter_mut().zip(other) {
        *o += s;
    }
}

/// Power of `x` in dBm0 (a 0 dBm0 sine is 0).
pub fn power_dbm0(x: &[f32]) -> f32 {
    let ms = x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32;
    let ref_ms = dbm0_to_amplitude(0.0).powi(2) / 2.0;
    10.0 * (ms.max(1e-9) / ref_ms).log10()
}

/// Seeded white Gaussian noise (xorshift64* and Box–Muller).
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed.max(1))
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    pub fn gaussian(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    /// Adds noise of power `dbm0` to `x`.
    pub fn add(&mut self, x: &mut [f32], dbm0: f32) {
        let sigma = dbm0_to_amplitude(dbm0) / 2f32.sqrt();
        for s in x.iter_mut() {
            *s += sigma * self.gaussian();
        }
    }
}

/// Rounds and saturates to 16-bit samples.
pub fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter().map(|s| s.round().clamp(-32768.0, 32767.0) as i16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_noise_power() {
        let mut x = Vec::new();
        push_sines(&mut x, &[(1000.0, -10.0)], 1000.0);
        assert!((power_dbm0(&x) + 10.0).abs() < 0.05);
        let mut n = vec![0.0; 80_000];
        Noise::new(7).add(&mut n, -20.0);
        assert!((power_dbm0(&n) + 20.0).abs() < 0.2, "{}", power_dbm0(&n));
        let t = TonePair::key(Key::Digit(5), -10.0).twist(6.0).offset(1.5, 2.0);
        assert!((t.row_dbm0 - t.col_dbm0 - 6.0).abs() < 1e-4);
        assert!((t.row_hz - (770.0 * 1.015 + 2.0)).abs() < 1e-3);
    }
}
