//! The strict DTMF detector: which key, to the ITU-T Q.24 reception limits.
//!
//! Every 8 ms (a hop of 64 samples) it analyses the last 16 ms (128 samples, Hann window) at
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

use super::{Bank, COLS, ROWS, analysis_frequencies, key_at, measure};
use crate::media::telephone_event::Key;

pub const WINDOW: usize = 128;
pub const HOP: usize = 64;
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
    bank: Bank,
    history: [f32; WINDOW],
    filled: usize,
    pending: usize,
    samples: u64,
    previous: Option<[(f32, f32); 10]>,
    state: State,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector {
    pub fn new() -> Detector {
        Detector {
            bank: Bank::new(&analysis_frequencies(), WINDOW),
            history: [0.0; WINDOW],
            filled: 0,
            pending: 0,
            samples: 0,
            previous: None,
            state: State::Idle { candidate: None, hits: 0 },
        }
    }

    /// Feeds linear samples; returns the key decided in this block, if any (a block of up to
    /// 20 ms can decide at most one key: reporting needs 24 ms of hits).
    pub fn process(&mut self, samples: &[i16]) -> Option<Detection> {
        let mut found = None;
        for &s in samples {
            // The newest hop is gathered at the end of the window; older samples move up
            // once per hop, not once per sample.
            self.history[WINDOW - HOP + self.pending] = f32::from(s);
            self.pending += 1;
            self.samples += 1;
            if self.pending == HOP {
                self.pending = 0;
                self.filled = (self.filled + HOP).min(WINDOW);
                if self.filled == WINDOW
                    && let Some(key) = self.hop()
                {
                    found = Some(Detection { key, at_sample: self.samples });
                }
                self.history.copy_within(HOP.., 0);
            }
        }
        found
    }

    fn hop(&mut self) -> Option<Key> {
        let mut now = [(0.0f32, 0.0f32); 10];
        self.bank.analyse(&self.history, &mut now);
        let previous = self.previous.replace(now);
        let hit = previous.and_then(|prev| self.classify(&now, &prev));
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
                    return Some(key_at(rc.0, rc.1));
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

    /// The (row, column) this window holds, if it passes every check.
    fn classify(&self, now: &[(f32, f32); 10], prev: &[(f32, f32); 10]) -> Option<(usize, usize)> {
        let m = measure(&self.bank, &self.history, now, prev, HOP);
        let twist = m.row_dbm0 - m.col_dbm0;
        let in_tolerance = |f: f32, off: f32| off.abs() <= 0.025 * f + 1.0;
        let ok = m.row_dbm0 >= MIN_LEVEL_DBM0
            && m.col_dbm0 >= MIN_LEVEL_DBM0
            && twist <= MAX_NORMAL_TWIST_DB
            && -twist <= MAX_REVERSE_TWIST_DB
            && m.share >= MIN_TONE_SHARE
            && in_tolerance(ROWS[m.row], m.row_offset_hz)
            && in_tolerance(COLS[m.col], m.col_offset_hz)
            && self.steady();
        ok.then_some((m.row, m.col))
    }

    /// Whether the window's four quarters carry similar energy (a tone covers all of it).
    fn steady(&self) -> bool {
        let (lo, hi) = self
            .history
            .chunks(QUARTER)
            .map(|q| q.iter().map(|s| s * s).sum::<f32>())
            .fold((f32::MAX, 0.0f32), |(lo, hi), e| (lo.min(e), hi.max(e)));
        hi <= MAX_QUARTER_SPREAD * lo
    }
}
