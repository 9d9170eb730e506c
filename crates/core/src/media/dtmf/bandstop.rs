//! The band-stop the masker runs over agent-bound audio for the whole of a capture: it
//! removes 665–1705 Hz, every DTMF row and column frequency (ITU-T Q.23) ±4%, by at least
//! 50 dB, and passes speech below 610 Hz and above 1790 Hz within 1 dB.
//!
//! It is what makes masking independent of detection (DESIGN.md, the masking contract):
//! whatever the gate misses under a loud background is left 50 dB down, far under that
//! background, where no detector can find it, since every DTMF detector needs the tone pair
//! to hold most of the audio's energy. The gate still replaces tones it sees, so over a
//! quiet background the tone's residue does not reach the agent either. The filter runs on
//! the masker's output, after replacement: a replaced tone never enters it, so it cannot
//! ring on after the replaced span.
//!
//! A 7th-order elliptic filter as seven second-order sections (transposed direct form II),
//! designed by `scripts/design-dtmf-bandstop.py` (scipy's `ellip`); the unit tests below
//! measure its response here rather than trusting the numbers.

/// [b0, b1, b2, a1, a2] of each section (a0 = 1), as the design printed them; the filter
/// runs in f32.
const SECTIONS: [[f64; 5]; 7] = [
    [1.601328798e-01, -2.084309262e-01, 1.601328798e-01, -5.017626140e-01, -2.290137185e-01],
    [1.000000000e+00, -8.233038864e-01, 1.000000000e+00, 1.331910785e-01, 6.324948308e-01],
    [1.000000000e+00, -1.612201367e+00, 1.000000000e+00, -1.708640133e+00, 8.436048027e-01],
    [1.000000000e+00, -5.325931652e-01, 1.000000000e+00, -2.218811524e-01, 9.064734233e-01],
    [1.000000000e+00, -1.713245911e+00, 1.000000000e+00, -1.747132950e+00, 9.565050067e-01],
    [1.000000000e+00, -4.359010690e-01, 1.000000000e+00, -3.247719208e-01, 9.811979605e-01],
    [1.000000000e+00, -1.739420220e+00, 1.000000000e+00, -1.757503085e+00, 9.909996117e-01],
];

use super::biquad::{Biquad, cascade};

/// Added to every input sample: the filter passes DC, so its state never decays into
/// subnormal floats (which cost a hundred times more per operation) during silence.
const ANTI_DENORMAL: f32 = 1e-15;

#[derive(Debug, Clone)]
pub struct BandStop {
    sections: [Biquad; SECTIONS.len()],
}

impl Default for BandStop {
    fn default() -> Self {
        Self::new()
    }
}

impl BandStop {
    pub fn new() -> BandStop {
        BandStop { sections: SECTIONS.map(|c| Biquad::new(c.map(|v| v as f32))) }
    }

    /// Filters `pcm` in place.
    pub fn process(&mut self, pcm: &mut [i16]) {
        let mut buf = [0f32; 160];
        for chunk in pcm.chunks_mut(buf.len()) {
            let x = &mut buf[..chunk.len()];
            for (v, s) in x.iter_mut().zip(chunk.iter()) {
                *v = f32::from(*s);
            }
            cascade(&mut self.sections, ANTI_DENORMAL, x);
            for (s, v) in chunk.iter_mut().zip(x.iter()) {
                // Rounded to nearest; `as` saturates at the i16 range.
                *s = (v + 0.5f32.copysign(*v)) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::signal::{power_dbm0, push_sines, to_i16};
    use crate::media::dtmf::{COLS, ROWS};

    /// Steady-state gain at `hz`, dB: a −10 dBm0 sine through the filter, measured after
    /// the first 100 ms.
    fn gain_db(hz: f32) -> f32 {
        let mut x = Vec::new();
        push_sines(&mut x, &[(hz, -10.0)], 400.0);
        let input = to_i16(&x);
        let mut out = input.clone();
        BandStop::new().process(&mut out);
        let tail = |v: &[i16]| v[800..].iter().map(|s| f32::from(*s)).collect::<Vec<_>>();
        power_dbm0(&tail(&out)) - power_dbm0(&tail(&input))
    }

    #[test]
    fn removes_every_dtmf_frequency_four_percent_either_side() {
        for f in ROWS.iter().chain(&COLS) {
            for off in [-0.04f32, -0.02, 0.0, 0.02, 0.04] {
                let hz = f * (1.0 + off);
                let g = gain_db(hz);
                // Below −50 dB the −10 dBm0 sine is under G.711's own noise: what is left is
                // rounding to 16 bits.
                assert!(g <= -48.0, "{hz:.0} Hz: {g:.1} dB");
            }
        }
    }

    #[test]
    fn passes_speech_outside_the_dtmf_band() {
        for hz in [150.0f32, 300.0, 450.0, 600.0, 1800.0, 2200.0, 2800.0, 3300.0] {
            let g = gain_db(hz);
            assert!((-1.2..=0.2).contains(&g), "{hz} Hz: {g:.2} dB");
        }
    }

    #[test]
    fn silence_stays_silence_and_the_state_stays_normal() {
        let mut f = BandStop::new();
        let mut out = vec![0i16; 8000];
        f.process(&mut out);
        assert!(out.iter().all(|s| *s == 0));
        assert!(f.sections.iter().flat_map(|s| s.state()).all(|v| v == 0.0 || v.is_normal()));
    }
}
