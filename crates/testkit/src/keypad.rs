//! The one keypad planner, shared by the scripted caller, the demo and the load tool: what a
//! phone sends at each 20 ms tick while its user keys a script. A key is sent as RFC 4733
//! events (§2.5: an update every 20 ms, then three end packets), as an in-band tone, or both
//! at once; then the phone is quiet until the key's twelve ticks are up.

use std::time::Duration;

use tonewall_core::media::dtmf::signal::{TonePair, push_tone, to_i16};
use tonewall_core::media::rtp::FRAME_SAMPLES;
use tonewall_core::media::telephone_event::{Key, TelephoneEvent};

/// One step of what the caller does on the keypad.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Press(Key),
    Pause(Duration),
}

/// Parses a keypad script: digits, `*`, `#`, A-D, and `,` for a one-second pause.
pub fn script(s: &str) -> Vec<Step> {
    s.chars()
        .filter_map(|c| match c {
            ',' => Some(Step::Pause(Duration::from_secs(1))),
            c => Key::from_char(c).map(Step::Press),
        })
        .collect()
}

/// How the caller's phone sends keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    Rfc4733,
    InBand,
    Both,
}

/// Ticks per key: four event updates and three end packets (or five tone frames), then quiet.
pub const KEY_TICKS: u32 = 12;
const EVENT_PACKETS: u32 = 7;
pub const TONE_TICKS: u32 = 5;
/// The duration the end packets carry: 100 ms of key.
const EVENT_DURATION: u16 = 800;

/// The key being sent at a tick, and how many ticks ago it went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFrame {
    pub key: Key,
    pub since: u8,
}

/// What the phone sends at one tick besides (or instead of) its audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// An RFC 4733 packet of this key.
    pub event: Option<KeyFrame>,
    /// Tone frame `since` of this key, over the audio.
    pub tone: Option<KeyFrame>,
}

/// The script, tick by tick.
pub fn plan(steps: &[Step], keying: Keying) -> Vec<Tick> {
    let mut ticks = Vec::new();
    for step in steps {
        match *step {
            Step::Press(key) => ticks.extend((0..KEY_TICKS).map(|i| {
                let frame = KeyFrame { key, since: i as u8 };
                Tick {
                    event: (keying != Keying::InBand && i < EVENT_PACKETS).then_some(frame),
                    tone: (keying != Keying::Rfc4733 && i < TONE_TICKS).then_some(frame),
                }
            })),
            Step::Pause(d) => ticks.extend((0..d.as_millis() / 20).map(|_| Tick::default())),
        }
    }
    ticks
}

/// The RFC 4733 payload of an event packet `since` ticks after the key went down.
pub fn event_payload(code: u8, since: u8) -> [u8; 4] {
    let end = u32::from(since) >= EVENT_PACKETS - 3;
    let duration = if end { EVENT_DURATION } else { (u16::from(since) + 1) * FRAME_SAMPLES as u16 };
    TelephoneEvent { code, end, volume: 10, duration }.to_bytes()
}

/// A key's whole tone (`TONE_TICKS` frames) at `dbm0`; frame `since` is
/// `[since * FRAME_SAMPLES..][..FRAME_SAMPLES]`.
pub fn tone(key: Key, dbm0: f32) -> Vec<i16> {
    let mut t = Vec::new();
    push_tone(&mut t, TonePair::key(key, dbm0), TONE_TICKS as f32 * 20.0);
    to_i16(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_each_keying() {
        let steps = script("12,#");
        let p = plan(&steps, Keying::Rfc4733);
        // 3 keys × 12 ticks + a 1 s pause of 50 ticks.
        assert_eq!(p.len(), 3 * 12 + 50);
        let one = Key::from_char('1').unwrap();
        assert_eq!(p[0].event, Some(KeyFrame { key: one, since: 0 }));
        assert_eq!(p[12].event.map(|e| (e.key.event_code(), e.since)), Some((2, 0)));
        assert_eq!(p.iter().filter(|t| t.event.is_some()).count(), 3 * 7);
        assert!(p.iter().all(|t| t.tone.is_none()), "RFC 4733 only: no tone");
        let p = plan(&steps, Keying::InBand);
        assert!(p.iter().all(|t| t.event.is_none()));
        assert_eq!(p.iter().filter(|t| t.tone.is_some()).count(), 3 * 5);
        assert_eq!(p[4].tone.map(|t| t.since), Some(4));
        assert_eq!(p[5].tone, None, "then a gap");
        let p = plan(&steps, Keying::Both);
        assert!(p[0].event.is_some() && p[0].tone.is_some());
        assert!(p[6].event.is_some() && p[6].tone.is_none());
    }

    #[test]
    fn events_end_with_three_packets_and_tones_are_loud() {
        assert!(event_payload(1, 6)[1] & 0x80 != 0 && event_payload(1, 3)[1] & 0x80 == 0, "E bit on the last three");
        assert_eq!(u16::from_be_bytes([event_payload(1, 2)[2], event_payload(1, 2)[3]]), 480);
        let t = tone(Key::from_char('5').unwrap(), -10.0);
        assert_eq!(t.len(), TONE_TICKS as usize * FRAME_SAMPLES);
        assert!(t.iter().any(|s| s.abs() > 1000));
    }
}
