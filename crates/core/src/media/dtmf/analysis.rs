//! The analysis the gate and the strict detector share: every 4 ms (32 samples), the
//! Hann-windowed DFT of the last 16 ms (128 samples) at the eight DTMF frequencies and dial
//! tone, kept for the last three hops so each user can measure phase advance over the
//! distance it needs (the gate over one hop, the detector over two). One analysis serves
//! both, which halves the cost of running them side by side.
//!
//! The audio is analysed band-limited to the DTMF band (Butterworth high-pass at 550 Hz and
//! low-pass at 1900 Hz, second order each): the low-frequency energy that carries most of
//! speech, music and pink noise then does not count against a tone pair's share of the
//! window, which is what lets the detector read keys over a background as loud as the
//! tones. Levels are reported as they were before the filter.

use super::biquad::{Biquad, cascade};
use super::{Bank, FREQS, Spectrum, analysis_frequencies};

/// The pre-filter's corners, Hz.
const HIGH_PASS_HZ: f32 = 550.0;
const LOW_PASS_HZ: f32 = 1900.0;
/// Added before each section, so that neither section's state decays into subnormal floats
/// (a hundred times slower) in silence: each keeps this constant in its state instead.
const ANTI_DENORMAL: f32 = 1e-15;

pub const WINDOW: usize = 128;
pub const HOP: usize = 32;

/// One hop's view of the signal.
pub(crate) struct HopView<'a> {
    pub window: &'a [f32; WINDOW],
    pub now: &'a Spectrum,
    /// One hop (4 ms) earlier.
    pub back1: &'a Spectrum,
    /// Two hops (8 ms) earlier.
    pub back2: &'a Spectrum,
    /// Hops since the start; the detector works on every other one.
    pub index: u64,
    /// Samples since the start, at the end of this hop.
    pub end_sample: u64,
}

pub struct Analysis {
    bank: Bank,
    prefilter: [Biquad; 2],
    history: [f32; WINDOW],
    pending: usize,
    shift_due: bool,
    /// The last three hops' spectra; the newest is at `newest`.
    spectra: [Spectrum; 3],
    newest: usize,
    hops: u64,
    samples: u64,
}

impl Default for Analysis {
    fn default() -> Self {
        Self::new()
    }
}

impl Analysis {
    pub fn new() -> Analysis {
        let prefilter = [Biquad::high_pass(HIGH_PASS_HZ), Biquad::low_pass(LOW_PASS_HZ)];
        let gains: [f32; FREQS] =
            analysis_frequencies().map(|f| prefilter.iter().map(|b| b.power_gain(f)).product::<f32>());
        Analysis {
            bank: Bank::after_filter(gains),
            prefilter,
            history: [0.0; WINDOW],
            pending: 0,
            shift_due: false,
            spectra: Default::default(),
            newest: 0,
            hops: 0,
            samples: 0,
        }
    }

    /// Feeds one sample; at the end of a hop with a full window returns the hop's view.
    pub(crate) fn push(&mut self, s: i16) -> Option<HopView<'_>> {
        self.feed(&[s]).1
    }

    /// Feeds samples up to the end of the current hop; returns how many it took and, if the
    /// hop ended, its view.
    pub(crate) fn feed(&mut self, samples: &[i16]) -> (usize, Option<HopView<'_>>) {
        if self.shift_due {
            // The newest hop is gathered at the end of the window; older samples move up
            // once per hop, not once per sample.
            self.history.copy_within(HOP.., 0);
            self.shift_due = false;
        }
        let used = samples.len().min(HOP - self.pending);
        let start = WINDOW - HOP + self.pending;
        let fresh = &mut self.history[start..start + used];
        for (h, s) in fresh.iter_mut().zip(samples) {
            *h = f32::from(*s);
        }
        cascade(&mut self.prefilter, ANTI_DENORMAL, fresh);
        self.pending += used;
        self.samples += used as u64;
        if self.pending < HOP {
            return (used, None);
        }
        self.pending = 0;
        self.shift_due = true;
        self.hops += 1;
        self.newest = if self.newest == 2 { 0 } else { self.newest + 1 };
        self.spectra[self.newest] = self.bank.analyse(&self.history);
        // Measuring needs two earlier analyses; before the window has filled, its older part
        // is silence, as if the stream had been preceded by it.
        if self.hops < 3 {
            return (used, None);
        }
        (
            used,
            Some(HopView {
                window: &self.history,
                now: &self.spectra[self.newest],
                back1: &self.spectra[(self.newest + 2) % 3],
                back2: &self.spectra[(self.newest + 1) % 3],
                index: self.hops,
                end_sample: self.samples,
            }),
        )
    }
}
