//! The tone-presence gate: fast and sensitive, it answers "is a DTMF-like pair sounding?"
//! every 4 ms from the last 16 ms, without deciding which key. It opens 14–20 ms into a
//! tone (two hops in a row), inside the masker's 20 ms look-ahead, so the masker can replace
//! audio back to the tone's onset. It is deliberately looser than the strict detector (wider level, twist and
//! frequency acceptance): masking a little speech is cheap, leaking a tone is not.

use super::analysis::{Analysis, HOP, HopView};
use super::{COLS, ROWS};

const MIN_LEVEL_DBM0: f32 = -45.0;
const MAX_TWIST_DB: f32 = 14.0;
const MIN_TONE_SHARE: f32 = 0.85;
/// Looser than the detector's 2.5% + 1 Hz: what an outside detector might still accept.
const MAX_OFFSET_PERCENT: f32 = 5.0;
/// Consecutive hits before the gate opens: one 4 ms hop of confirmation cuts speech
/// triggers by five while the gate still opens within 20 ms of a tone's onset.
const HITS_TO_OPEN: u8 = 2;

/// A standalone gate with its own analysis (the masker shares one with the detector).
#[derive(Default)]
pub struct Gate {
    analysis: Analysis,
    state: GateState,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Feeds one sample; at the end of each hop returns whether a tone pair is present.
    pub fn push(&mut self, s: i16) -> Option<bool> {
        let hop = self.analysis.push(s)?;
        Some(self.state.on_hop(&hop))
    }
}

/// The gate's decision per hop, fed by a shared `Analysis`.
#[derive(Debug, Default)]
pub(crate) struct GateState {
    hits: u8,
}

impl GateState {
    pub(crate) fn on_hop(&mut self, hop: &HopView) -> bool {
        self.hits = if tone_present(hop) { self.hits.saturating_add(1) } else { 0 };
        self.hits >= HITS_TO_OPEN
    }
}

fn tone_present(hop: &HopView) -> bool {
    let (s, prev) = (hop.now, hop.back1);
    let near = |f: f32, off: f32| off.abs() <= f * MAX_OFFSET_PERCENT / 100.0;
    s.row_dbm0 >= MIN_LEVEL_DBM0
        && s.col_dbm0 >= MIN_LEVEL_DBM0
        && (s.row_dbm0 - s.col_dbm0).abs() <= MAX_TWIST_DB
        && s.holds_share(prev, HOP, MIN_TONE_SHARE)
        && near(ROWS[s.row], s.row_offset_hz(prev, HOP))
        && near(COLS[s.col], s.col_offset_hz(prev, HOP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::signal::{Noise, TonePair, push_silence, push_tone, to_i16};
    use crate::media::telephone_event::Key;

    /// Sample index (from the tone's onset) at which the gate first fires.
    fn fire_delay(onset_ms: f32, pair: TonePair) -> Option<usize> {
        let mut x = Vec::new();
        push_silence(&mut x, onset_ms);
        let onset = x.len();
        push_tone(&mut x, pair, 100.0);
        let mut g = Gate::new();
        to_i16(&x).iter().enumerate().find_map(|(i, s)| (g.push(*s) == Some(true)).then_some(i + 1)).map(|i| i - onset)
    }

    /// The module doc's 14–20 ms: never later (the look-ahead is 20 ms), and never so early
    /// that a 12 ms burst of speech could open it.
    #[test]
    fn fires_14_to_20_ms_after_onset_for_every_key_and_phase() {
        let mut delays = Vec::new();
        for key in "123A456B789C*0#D".chars() {
            for onset in [20.0, 21.0, 21.5, 22.0, 23.0, 24.75] {
                delays.push(fire_delay(onset, TonePair::key(Key::from_char(key).unwrap(), -20.0)).expect("fires"));
            }
        }
        // Quiet and twisted tones too.
        delays.push(fire_delay(20.0, TonePair::key(Key::Digit(1), -40.0)).expect("a -40 dBm0 tone"));
        delays.push(fire_delay(20.0, TonePair::key(Key::Digit(9), -20.0).twist(10.0)).expect("10 dB twist"));
        let (first, last) = (delays.iter().min().copied(), delays.iter().max().copied());
        assert!(first >= Some(14 * 8) && last <= Some(20 * 8), "fired {first:?} to {last:?} samples after onset");
    }

    #[test]
    fn silent_on_noise_and_single_tones() {
        let mut x = vec![0.0; 8000];
        Noise::new(3).add(&mut x, -20.0);
        let mut g = Gate::new();
        assert!(to_i16(&x).iter().all(|s| g.push(*s) != Some(true)));
        let mut one = Vec::new();
        crate::media::dtmf::signal::push_sines(&mut one, &[(1209.0, -10.0)], 500.0);
        let mut g = Gate::new();
        assert!(to_i16(&one).iter().all(|s| g.push(*s) != Some(true)));
    }
}
