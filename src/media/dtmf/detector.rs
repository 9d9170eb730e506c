//! The strict DTMF detector: which key, to the ITU-T Q.24 reception limits.
//!
//! Every 8 ms (every other hop of the shared analysis) it looks at the last 16 ms (128
//! samples, Hann window) at
//! the eight DTMF frequencies and at dial tone. A hop "hits" a key when:
//! - the strongest row and column tones are each at least `MIN_LEVEL_DBM0`;
//! - twist (row minus column level) is within +8 dB (normal) and −4 dB (reverse);
//! - the two tones hold at least `MIN_TONE_SHARE` of the window's energy (dial tone excluded),
//!   which is what speech and music seldom do;
//! - each tone's frequency, measured from the phase advance since the previous hop, is within
//!   2.5% + 1 Hz of nominal (Q.24: accept within 1.5% + 2 Hz, reject from 3.5%);
//! - the window is steady: its four 4 ms quarters are within 6 dB of each other, so a window
//!   only partly covered by a tone does not count (this is what gives duration its meaning).
//!
//! Three hits in a row report the key (a 40 ms tone always gives three, a 23 ms tone at most
//! two); four misses in a row end it (a 10 ms drop-out causes at most three, a 40 ms gap at
//! least five), so the same key keyed twice is reported twice.

use super::analysis::{Analysis, HOP, HopView, WINDOW};
use super::{COLS, ROWS, key_at, sum_of_squares};
use crate::media::telephone_event::Key;

const QUARTER: usize = WINDOW / 4;
const MIN_LEVEL_DBM0: f32 = -39.0;
const MAX_NORMAL_TWIST_DB: f32 = 8.5;
const MAX_REVERSE_TWIST_DB: f32 = 4.5;
const MIN_TONE_SHARE: f32 = 0.8;
const MAX_QUARTER_SPREAD: f32 = 4.0; // 6 dB
const HITS_TO_REPORT: u8 = 3;
const MISSES_TO_END: u8 = 4;

/// A key the detector decided, with the sample index (since the detector started) of the
/// end of the hop that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub key: Key,
    pub at_sample: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle { candidate: Option<(usize, usize)>, hits: u8 },
    Active { misses: u8 },
}

pub struct Detector {
    analysis: Analysis,
    state: State,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

/// The detector's state machine, fed by a shared `Analysis` (see `Masker`).
#[derive(Debug)]
pub(crate) struct DetectorState {
    state: State,
}

impl Default for DetectorState {
    fn default() -> Self {
        DetectorState { state: State::Idle { candidate: None, hits: 0 } }
    }
}

impl Detector {
    pub fn new() -> Detector {
        Detector { analysis: Analysis::new(), state: State::Idle { candidate: None, hits: 0 } }
    }

    /// Feeds linear samples; returns the key decided in this block, if any (a block of up to
    /// 20 ms can decide at most one key: reporting needs 24 ms of hits).
    pub fn process(&mut self, samples: &[i16]) -> Option<Detection> {
        let mut found = None;
        for &s in samples {
            if let Some(hop) = self.analysis.push(s) {
                let mut st = DetectorState { state: self.state };
                found = st.on_hop(&hop).or(found);
                self.state = st.state;
            }
        }
        found
    }
}

impl DetectorState {
    /// Works on every other hop (8 ms), measuring phase over two hops.
    pub(crate) fn on_hop(&mut self, hop: &HopView) -> Option<Detection> {
        if !hop.index.is_multiple_of(2) {
            return None;
        }
        let hit = classify(hop);
        match (&mut self.state, hit) {
            (State::Idle { candidate, hits }, Some(rc)) => {
                if *candidate == Some(rc) {
                    *hits += 1;
                } else {
                    *candidate = Some(rc);
                    *hits = 1;
                }
                if *hits >= HITS_TO_REPORT {
                    self.state = State::Active { misses: 0 };
                    return Some(Detection { key: key_at(rc.0, rc.1), at_sample: hop.end_sample });
                }
            }
            (State::Idle { candidate, hits }, None) => {
                *candidate = None;
                *hits = 0;
            }
            (State::Active { misses }, Some(_)) => *misses = 0,
            (State::Active { misses }, None) => {
                *misses += 1;
                if *misses >= MISSES_TO_END {
                    self.state = State::Idle { candidate: None, hits: 0 };
                }
            }
        }
        None
    }
}

/// The (row, column) this window holds, if it passes every check.
fn classify(hop: &HopView) -> Option<(usize, usize)> {
    let (s, prev) = (hop.now, hop.back2);
    let twist = s.row_dbm0 - s.col_dbm0;
    let in_tolerance = |f: f32, off: f32| off.abs() <= 0.025 * f + 1.0;
    let ok = s.row_dbm0 >= MIN_LEVEL_DBM0
        && s.col_dbm0 >= MIN_LEVEL_DBM0
        && twist <= MAX_NORMAL_TWIST_DB
        && -twist <= MAX_REVERSE_TWIST_DB
        && s.holds_share(prev, 2 * HOP, MIN_TONE_SHARE)
        && in_tolerance(ROWS[s.row], s.row_offset_hz(prev, 2 * HOP))
        && in_tolerance(COLS[s.col], s.col_offset_hz(prev, 2 * HOP))
        && steady(hop.window);
    ok.then_some((s.row, s.col))
}

/// Whether the window's four quarters carry similar energy (a tone covers all of it).
fn steady(window: &[f32]) -> bool {
    let (lo, hi) =
        window.chunks(QUARTER).map(sum_of_squares).fold((f32::MAX, 0.0f32), |(lo, hi), e| (lo.min(e), hi.max(e)));
    hi <= MAX_QUARTER_SPREAD * lo
}
