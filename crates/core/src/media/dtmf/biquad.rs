//! One second-order IIR section in transposed direct form II, the building block of the
//! masker's band-stop and of the analysis's pre-filter. High-pass and low-pass sections
//! follow R. Bristow-Johnson's "Audio EQ Cookbook" (Butterworth: Q = 1/√2).

use std::f32::consts::{FRAC_1_SQRT_2, PI};

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::SAMPLE_RATE;

#[derive(Debug, Clone, Copy, Default)]
pub struct Biquad {
    /// b0, b1, b2, a1, a2 (a0 = 1).
    c: [f32; 5],
    s: [f32; 2],
}

impl Biquad {
    pub const fn new(c: [f32; 5]) -> Biquad {
        Biquad { c, s: [0.0; 2] }
    }

    pub fn high_pass(hz: f32) -> Biquad {
        let (cos, alpha) = Self::prewarp(hz);
        Self::normalized([(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0], alpha, cos)
    }

    pub fn low_pass(hz: f32) -> Biquad {
        let (cos, alpha) = Self::prewarp(hz);
        Self::normalized([(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0], alpha, cos)
    }

    fn prewarp(hz: f32) -> (f32, f32) {
        let w = 2.0 * PI * hz / SAMPLE_RATE;
        (w.cos(), w.sin() / (2.0 * FRAC_1_SQRT_2))
    }

    fn normalized(b: [f32; 3], alpha: f32, cos: f32) -> Biquad {
        let a0 = 1.0 + alpha;
        Biquad::new([b[0] / a0, b[1] / a0, b[2] / a0, -2.0 * cos / a0, (1.0 - alpha) / a0])
    }

    /// One sample through the section: the reference `cascade` is tested against.
    #[cfg(test)]
    pub fn run(&mut self, x: f32) -> f32 {
        let [b0, b1, b2, a1, a2] = self.c;
        let y = b0 * x + self.s[0];
        self.s[0] = b1 * x - a1 * y + self.s[1];
        self.s[1] = b2 * x - a2 * y;
        y
    }

    /// Power gain at `hz` (|H|²), from the coefficients.
    pub fn power_gain(&self, hz: f32) -> f32 {
        let w = 2.0 * PI * hz / SAMPLE_RATE;
        let [b0, b1, b2, a1, a2] = self.c;
        let at = |c0: f32, c1: f32, c2: f32| {
            let re = c0 + c1 * w.cos() + c2 * (2.0 * w).cos();
            let im = -c1 * w.sin() - c2 * (2.0 * w).sin();
            re * re + im * im
        };
        at(b0, b1, b2) / at(1.0, a1, a2)
    }

    #[cfg(test)]
    pub fn state(&self) -> [f32; 2] {
        self.s
    }
}

/// Runs `x` through the sections in turn, in place, `offset` added to each section's input
/// (see the callers' anti-denormal constants). Sample by sample through all sections, so that
/// the out-of-order core overlaps the sections' recursions (section by section, each would
/// wait on its own feedback every sample); compiled twice, for baseline x86-64 and for AVX2
/// with fused multiply-add (`multiversion` picks at run time).
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn cascade<const N: usize>(sections: &mut [Biquad; N], offset: f32, x: &mut [f32]) {
    let fma = target_cfg_f!(target_feature = "fma");
    let madd = |a: f32, b: f32, c: f32| if fma { a.mul_add(b, c) } else { a * b + c };
    let c: [[f32; 5]; N] = std::array::from_fn(|i| sections[i].c);
    let mut st: [[f32; 2]; N] = std::array::from_fn(|i| sections[i].s);
    for v in x.iter_mut() {
        let mut u = *v;
        for (k, s) in st.iter_mut().enumerate() {
            let [b0, b1, b2, a1, a2] = c[k];
            let input = u + offset;
            let y = madd(b0, input, s[0]);
            s[0] = madd(b1, input, madd(-a1, y, s[1]));
            s[1] = madd(b2, input, -a2 * y);
            u = y;
        }
        *v = u;
    }
    for (sec, s) in sections.iter_mut().zip(st) {
        sec.s = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measured power gain of a sine through the section, after it settles.
    fn measured(mut f: Biquad, hz: f32) -> f32 {
        let x: Vec<f32> = (0..4000).map(|n| (2.0 * PI * hz * n as f32 / SAMPLE_RATE).sin()).collect();
        let y: Vec<f32> = x.iter().map(|v| f.run(*v)).collect();
        let p = |v: &[f32]| v.iter().map(|s| s * s).sum::<f32>();
        p(&y[2000..]) / p(&x[2000..])
    }

    #[test]
    fn a_cascade_over_a_block_is_the_sections_sample_by_sample() {
        let mut a = [Biquad::high_pass(500.0), Biquad::low_pass(2000.0)];
        let mut b = a;
        let x: Vec<f32> = (0..500).map(|n| ((n * 7919) % 2000) as f32 - 1000.0).collect();
        let mut block = x.clone();
        for chunk in block.chunks_mut(37) {
            cascade(&mut a, 0.0, chunk);
        }
        for (v, want) in x.iter().zip(&block) {
            let got = b.iter_mut().fold(*v, |acc, s| s.run(acc));
            assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "{got} {want}");
        }
    }

    #[test]
    fn butterworth_sections_are_3_db_down_at_their_corner_and_match_their_formula() {
        for (f, corner) in [(Biquad::high_pass(500.0), 500.0), (Biquad::low_pass(2000.0), 2000.0)] {
            assert!((10.0 * f.power_gain(corner).log10() + 3.01).abs() < 0.05);
            for hz in [100.0, 500.0, 1000.0, 2000.0, 3000.0] {
                let (m, p) = (measured(f, hz), f.power_gain(hz));
                assert!((10.0 * (m / p).log10()).abs() < 0.1, "{hz} Hz: measured {m}, formula {p}");
            }
        }
        assert!(Biquad::high_pass(500.0).power_gain(125.0) < 0.005, "−24 dB two octaves down");
    }
}
