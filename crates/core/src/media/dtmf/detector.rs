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
//! And a key is one steady pair: across the hits that report it, each tone's measured
//! frequency stays within `MAX_DRIFT_HZ` (a keypad's oscillator does not wander; music whose
//! notes sit near a row and a column does).
//!
//! Three hits of one key among four hops in a row report it (a 40 ms tone always gives
//! three, a 23 ms tone at most two; one hop in four may be lost to a burst of background);
//! four misses in a row end it (a 10 ms drop-out causes at most three, a 40 ms gap at least
//! five), so the same key keyed twice is reported twice.

use super::analysis::{Analysis, HOP, HopView, WINDOW};
use super::{COLS, ROWS, key_at, sum_of_squares};
use crate::media::telephone_event::Key;

const QUARTER: usize = WINDOW / 4;
const MIN_LEVEL_DBM0: f32 = -39.0;
const MAX_NORMAL_TWIST_DB: f32 = 8.5;
const MAX_REVERSE_TWIST_DB: f32 = 4.5;
const MIN_TONE_SHARE: f32 = 0.8;
const MAX_QUARTER_SPREAD: f32 = 4.0; // 6 dB
const HITS_TO_REPORT: usize = 3;
/// The hops (8 ms apart) those hits must fall in.
const HOPS_CONSIDERED: usize = 4;
const MISSES_TO_END: u8 = 4;
/// Most a tone's measured frequency may move between the hits that report it, Hz.
const MAX_DRIFT_HZ: f32 = 15.0;

/// A key the detector decided, with the sample index (since the detector started) of the
/// end of the hop that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub key: Key,
    pub at_sample: u64,
}

/// A hop that passed every check: the key's (row, column) and each tone's offset, Hz.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hit {
    rc: (usize, usize),
    row_off: f32,
    col_off: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// The last hops' hits, oldest first.
    Idle {
        recent: [Option<Hit>; HOPS_CONSIDERED],
    },
    Active {
        misses: u8,
    },
}

const IDLE: State = State::Idle { recent: [None; HOPS_CONSIDERED] };

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
        DetectorState { state: IDLE }
    }
}

impl Detector {
    pub fn new() -> Detector {
        Detector { analysis: Analysis::new(), state: IDLE }
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
            (State::Idle { recent }, hit) => {
                recent.rotate_left(1);
                recent[HOPS_CONSIDERED - 1] = hit;
                if let Some(h) = hit
                    && steady_pair(recent.iter().flatten().filter(|r| r.rc == h.rc))
                {
                    self.state = State::Active { misses: 0 };
                    return Some(Detection { key: key_at(h.rc.0, h.rc.1), at_sample: hop.end_sample });
                }
            }
            (State::Active { misses }, Some(_)) => *misses = 0,
            (State::Active { misses }, None) => {
                *misses += 1;
                if *misses >= MISSES_TO_END {
                    self.state = IDLE;
                }
            }
        }
        None
    }
}

/// Whether enough hits of one key agree on both tones' frequencies.
fn steady_pair<'a>(hits: impl Iterator<Item = &'a Hit> + Clone) -> bool {
    let spread = |off: fn(&Hit) -> f32| {
        let (lo, hi) = hits.clone().map(off).fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        hi - lo
    };
    hits.clone().count() >= HITS_TO_REPORT
        && spread(|h| h.row_off) <= MAX_DRIFT_HZ
        && spread(|h| h.col_off) <= MAX_DRIFT_HZ
}

/// The key this window holds, if it passes every check.
fn classify(hop: &HopView) -> Option<Hit> {
    let (s, prev) = (hop.now, hop.back2);
    let twist = s.row_dbm0 - s.col_dbm0;
    let in_tolerance = |f: f32, off: f32| off.abs() <= 0.025 * f + 1.0;
    let level_ok = s.row_dbm0 >= MIN_LEVEL_DBM0
        && s.col_dbm0 >= MIN_LEVEL_DBM0
        && twist <= MAX_NORMAL_TWIST_DB
        && -twist <= MAX_REVERSE_TWIST_DB
        && s.holds_share(prev, 2 * HOP, MIN_TONE_SHARE);
    if !level_ok {
        return None;
    }
    let (row_off, col_off) = (s.row_offset_hz(prev, 2 * HOP), s.col_offset_hz(prev, 2 * HOP));
    let ok = in_tolerance(ROWS[s.row], row_off) && in_tolerance(COLS[s.col], col_off) && steady(hop.window);
    ok.then_some(Hit { rc: (s.row, s.col), row_off, col_off })
}

/// Whether the window's four quarters carry similar energy (a tone covers all of it).
fn steady(window: &[f32]) -> bool {
    let (lo, hi) =
        window.chunks(QUARTER).map(sum_of_squares).fold((f32::MAX, 0.0f32), |(lo, hi), e| (lo.min(e), hi.max(e)));
    hi <= MAX_QUARTER_SPREAD * lo
}
