//! RFC 4733 telephone-events (§2.3 payload format, §3.2 DTMF event codes) and the per-stream
//! tracker that reports each key exactly once (§2.5.1.3: updates and the three redundant
//! end packets share the event's RTP timestamp).

use thiserror::Error;

/// A telephone keypad key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// 0..=9
    Digit(u8),
    Star,
    Hash,
    /// b'A'..=b'D'
    Letter(u8),
}

impl Key {
    /// RFC 4733 §3.2 Table 7: 0-9, * = 10, # = 11, A-D = 12-15.
    pub fn from_event_code(code: u8) -> Option<Key> {
        match code {
            0..=9 => Some(Key::Digit(code)),
            10 => Some(Key::Star),
            11 => Some(Key::Hash),
            12..=15 => Some(Key::Letter(b'A' + code - 12)),
            _ => None,
        }
    }

    pub fn event_code(self) -> u8 {
        match self {
            Key::Digit(d) => d,
            Key::Star => 10,
            Key::Hash => 11,
            Key::Letter(l) => 12 + (l - b'A'),
        }
    }

    pub fn from_char(c: char) -> Option<Key> {
        match c {
            '0'..='9' => Some(Key::Digit(c as u8 - b'0')),
            '*' => Some(Key::Star),
            '#' => Some(Key::Hash),
            'A'..='D' => Some(Key::Letter(c as u8)),
            _ => None,
        }
    }

    /// The keypad character: the inverse of `from_char`.
    pub fn to_char(self) -> char {
        match self {
            Key::Digit(d) => char::from(b'0' + d),
            Key::Star => '*',
            Key::Hash => '#',
            Key::Letter(l) => char::from(l),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    #[error("telephone-event payload is {0} bytes, needs at least 4")]
    Short(usize),
}

/// One event block (RFC 4733 §2.3, Figure 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub code: u8,
    pub end: bool,
    /// Power level in -dBm0, 0..=63.
    pub volume: u8,
    /// In timestamp units since the event began.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
        let [code, flags, d0, d1, ..] = *payload else {
            return Err(EventError::Short(payload.len()));
        };
        Ok(TelephoneEvent {
            code,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [self.code, (u8::from(self.end) << 7) | (self.volume & 0x3F), d[0], d[1]]
    }
}

/// Reports each event once, at the first packet seen of it (a lost start packet only delays
/// the report to the next update or end packet). Remembers recent events, so a packet of an
/// earlier key that arrives late (reordering) is not a new key, and treats the segments of a
/// long event (RFC 4733 §2.5.1.3: a new timestamp each time the 16-bit duration would
/// overflow) as the one key they are.
#[derive(Debug, Default)]
pub struct EventTracker {
    recent: [Option<Seen>; 8],
    next: usize,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    ts: u32,
    code: u8,
    duration: u16,
    ended: bool,
}

impl EventTracker {
    pub fn on_packet(&mut self, rtp_timestamp: u32, ev: TelephoneEvent) -> Option<Key> {
        if let Some(seen) = self.recent.iter_mut().flatten().find(|s| s.ts == rtp_timestamp && s.code == ev.code) {
            seen.duration = seen.duration.max(ev.duration);
            seen.ended |= ev.end;
            return None;
        }
        let continues = self.recent.iter().flatten().any(|s| {
            s.code == ev.code && !s.ended && rtp_timestamp.wrapping_sub(s.ts) == u32::from(s.duration) && s.duration > 0
        });
        self.recent[self.next] = Some(Seen { ts: rtp_timestamp, code: ev.code, duration: ev.duration, ended: ev.end });
        self.next = (self.next + 1) % self.recent.len();
        if continues { None } else { Key::from_event_code(ev.code) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc4733_figure_and_round_trips() {
        // Digit 5, end bit, volume 10 dBm0, duration 800 (100 ms at 8 kHz).
        let ev = TelephoneEvent::parse(&[0x05, 0x8A, 0x03, 0x20]).unwrap();
        assert_eq!(ev, TelephoneEvent { code: 5, end: true, volume: 10, duration: 800 });
        assert_eq!(ev.to_bytes(), [0x05, 0x8A, 0x03, 0x20]);
        // The reserved bit is ignored.
        assert!(!TelephoneEvent::parse(&[11, 0x40 | 7, 0, 160]).unwrap().end);
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), Err(EventError::Short(3)));
    }

    #[test]
    fn key_codes() {
        assert_eq!(Key::from_event_code(10), Some(Key::Star));
        assert_eq!(Key::from_event_code(11), Some(Key::Hash));
        assert_eq!(Key::from_event_code(15), Some(Key::Letter(b'D')));
        assert_eq!(Key::from_event_code(16), None); // flash and other non-DTMF events
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(Key::from_char(c).map(Key::to_char), Some(c));
            let k = Key::from_char(c).unwrap();
            assert_eq!(Key::from_event_code(k.event_code()), Some(k));
        }
    }

    #[test]
    fn tracker_counts_updates_and_repeated_ends_once() {
        let mut t = EventTracker::default();
        let mut got = vec![];
        // Digit 1 at ts 1000: 3 updates + 3 end packets; then digit 1 again at ts 3000.
        for (ts, end, dur) in [
            (1000, false, 160),
            (1000, false, 320),
            (1000, false, 480),
            (1000, true, 800),
            (1000, true, 800),
            (1000, true, 800),
            (3000, true, 800), // start and updates lost: reported at the end packet
            (3000, true, 800),
        ] {
            let ev = TelephoneEvent { code: 1, end, volume: 10, duration: dur };
            got.extend(t.on_packet(ts, ev));
        }
        assert_eq!(got, vec![Key::Digit(1), Key::Digit(1)]);
    }

    #[test]
    fn late_packets_of_an_earlier_key_and_long_event_segments_are_not_new_keys() {
        let mut t = EventTracker::default();
        let ev = |code, end, duration| TelephoneEvent { code, end, volume: 10, duration };
        let mut got = vec![];
        got.extend(t.on_packet(1000, ev(3, false, 160)));
        got.extend(t.on_packet(3000, ev(4, false, 160)));
        got.extend(t.on_packet(1000, ev(3, true, 800))); // reordered end of the first key
        got.extend(t.on_packet(3000, ev(4, true, 800)));
        assert_eq!(got, vec![Key::Digit(3), Key::Digit(4)]);
        // A 10 s '#': a 65535-sample segment, then one starting where it ended.
        let mut got = vec![];
        got.extend(t.on_packet(100_000, ev(11, false, 40_000)));
        got.extend(t.on_packet(100_000, ev(11, false, 65_535)));
        got.extend(t.on_packet(165_535, ev(11, false, 8_000)));
        got.extend(t.on_packet(165_535, ev(11, true, 14_465)));
        assert_eq!(got, vec![Key::Hash]);
    }
}
