//! The call's recording tap: 8 kHz stereo, left the caller exactly as the agent heard it,
//! right the agent, continuous from the moment the agent is bridged (no pause and resume:
//! masking, not muting, keeps the card out). The left channel takes only `AgentBound` audio,
//! which only the agent-bound path makes, after the masker: raw caller audio cannot reach a
//! recording by construction. The tap also notes where audio was replaced (masked spans) and
//! which field was being captured then.
//!
//! No allocation per packet: both channels are fixed rings, spans a list reserved up front.

use crate::capture::collector::FieldName;
use crate::media::rtp::FRAME_SAMPLES;

/// 512 ms per channel: more than `MAX_LAG` plus the largest packet, which is all a channel
/// ever holds before the recording takes it.
const RING: usize = 4096;
/// A channel this far ahead (200 ms) is not waited for: the other is padded with silence,
/// so a silent or missing leg never stalls the recording.
const MAX_LAG: usize = 1600;
const MAX_SPANS: usize = 1024;
/// A span that opens this soon (500 ms) after a field's capture ended is that key's tail
/// (the masker releases only after 500 ms of quiet): it keeps the field's label.
const TAIL: u64 = 4000;
pub const STEREO_FRAME: usize = 2 * FRAME_SAMPLES;

/// Caller audio on its way to the agent, after masking. Made only in `to_agent`.
pub struct AgentBound<'a>(&'a [i16]);

impl<'a> AgentBound<'a> {
    pub(super) fn new(samples: &'a [i16]) -> AgentBound<'a> {
        AgentBound(samples)
    }
}

/// A stretch of the left channel that was replaced by the masker, in ms from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskedSpan {
    pub start_ms: u64,
    pub end_ms: u64,
    /// The field being captured, if any.
    pub field: Option<FieldName>,
}

struct Channel {
    ring: Box<[i16; RING]>,
    /// Samples in the ring, and where the oldest is.
    len: usize,
    head: usize,
    /// Samples this channel has contributed to the recording's timeline, padding included.
    position: u64,
}

impl Channel {
    fn new() -> Channel {
        Channel { ring: Box::new([0; RING]), len: 0, head: 0, position: 0 }
    }

    /// Appends what fits (two slice copies: this runs for every packet of every call).
    fn push(&mut self, samples: &[i16]) {
        let n = samples.len().min(RING - self.len);
        let tail = (self.head + self.len) % RING;
        let first = n.min(RING - tail);
        self.ring[tail..tail + first].copy_from_slice(&samples[..first]);
        self.ring[..n - first].copy_from_slice(&samples[first..n]);
        self.len += n;
        self.position += samples.len() as u64;
    }

    fn pad(&mut self, n: usize) {
        let n = n.min(RING - self.len);
        for _ in 0..n {
            self.ring[(self.head + self.len) % RING] = 0;
            self.len += 1;
        }
        self.position += n as u64;
    }

    /// The oldest sample `i` places from the head (`i < len`).
    fn peek(&self, i: usize) -> i16 {
        self.ring[(self.head + i) % RING]
    }

    fn consume(&mut self, n: usize) {
        self.head = (self.head + n) % RING;
        self.len -= n;
    }
}

pub struct Tap {
    on: bool,
    /// Recording is switched off for this deployment: the tap never starts, so the
    /// per-packet decoding for it is skipped too.
    disabled: bool,
    left: Channel,
    right: Channel,
    field: Option<FieldName>,
    /// The field whose capture ended last, and where on the left channel it ended.
    ended: Option<(FieldName, u64)>,
    open: Option<(u64, Option<FieldName>)>,
    spans: Vec<MaskedSpan>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            on: false,
            disabled: false,
            left: Channel::new(),
            right: Channel::new(),
            field: None,
            ended: None,
            open: None,
            // Reserved whole so that no span allocates; pages a call never fills stay
            // untouched address space, not resident memory.
            spans: Vec::with_capacity(MAX_SPANS),
        }
    }
}

impl Tap {
    /// Recording starts when the agent is bridged and never pauses after.
    pub fn start(&mut self) {
        self.on = !self.disabled;
    }

    pub fn disable(&mut self) {
        self.disabled = true;
        self.on = false;
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The field being captured now (labels the masked spans).
    pub fn set_field(&mut self, field: Option<FieldName>) {
        if let (Some(f), None) = (self.field, field) {
            self.ended = Some((f, self.left.position));
        }
        self.field = field;
    }

    /// The label of a span opening at `at`.
    fn label(&self, at: u64) -> Option<FieldName> {
        match (self.field, self.ended) {
            (Some(f), _) => Some(f),
            (None, Some((f, end))) if at.saturating_sub(end) < TAIL => Some(f),
            _ => None,
        }
    }

    pub fn caller(&mut self, audio: AgentBound, replaced: bool) {
        if !self.on {
            return;
        }
        let at = self.left.position;
        match (replaced, self.open) {
            (true, None) => self.open = Some((at, self.label(at))),
            (false, Some(_)) => self.close_span(at),
            _ => {}
        }
        self.left.push(audio.0);
    }

    pub fn agent(&mut self, pcm: &[i16]) {
        if self.on {
            self.right.push(pcm);
        }
    }

    fn close_span(&mut self, end: u64) {
        let Some((start, field)) = self.open.take() else { return };
        let span = MaskedSpan { start_ms: start / 8, end_ms: end.div_ceil(8), field };
        let full = self.spans.len() >= MAX_SPANS;
        match self.spans.last_mut() {
            // Beyond the reserved list, spans merge into the last rather than allocate.
            Some(last) if full => last.end_ms = span.end_ms,
            _ => self.spans.push(span),
        }
    }

    /// The next 20 ms, interleaved left/right, once both channels have it or one is far
    /// enough ahead that the other is padded.
    pub fn poll_frame(&mut self, out: &mut [i16; STEREO_FRAME]) -> bool {
        let (l, r) = (self.left.len, self.right.len);
        if l < FRAME_SAMPLES && r < FRAME_SAMPLES {
            return false;
        }
        if l < FRAME_SAMPLES || r < FRAME_SAMPLES {
            if l.max(r) < MAX_LAG {
                return false;
            }
            let short = if l < r { &mut self.left } else { &mut self.right };
            short.pad(FRAME_SAMPLES - short.len);
        }
        for (i, pair) in out.chunks_exact_mut(2).enumerate() {
            pair[0] = self.left.peek(i);
            pair[1] = self.right.peek(i);
        }
        self.left.consume(FRAME_SAMPLES);
        self.right.consume(FRAME_SAMPLES);
        true
    }

    /// At the end of the call: the next of what is left, padded to a whole frame.
    pub fn flush(&mut self, out: &mut [i16; STEREO_FRAME]) -> bool {
        if self.left.len == 0 && self.right.len == 0 {
            return false;
        }
        for c in [&mut self.left, &mut self.right] {
            c.pad(FRAME_SAMPLES.saturating_sub(c.len));
        }
        self.poll_frame(out)
    }

    pub fn spans(&mut self) -> &[MaskedSpan] {
        self.close_span(self.left.position);
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(tap: &mut Tap) -> Vec<[i16; STEREO_FRAME]> {
        let mut out = Vec::new();
        let mut f = [0; STEREO_FRAME];
        while tap.poll_frame(&mut f) {
            out.push(f);
        }
        out
    }

    #[test]
    fn interleaves_both_sides_and_pads_a_silent_one() {
        let mut off = Tap::default();
        off.disable();
        off.start();
        off.caller(AgentBound::new(&[1; FRAME_SAMPLES]), false);
        off.agent(&[2; FRAME_SAMPLES]);
        assert!(!off.is_on() && frames(&mut off).is_empty(), "a disabled tap never records");
        let mut tap = Tap::default();
        tap.caller(AgentBound::new(&[1; FRAME_SAMPLES]), false);
        assert!(frames(&mut tap).is_empty(), "nothing before the agent is bridged");
        tap.start();
        tap.caller(AgentBound::new(&[1; FRAME_SAMPLES]), false);
        tap.agent(&[2; FRAME_SAMPLES]);
        let f = frames(&mut tap);
        assert_eq!(f.len(), 1);
        assert!(f[0].chunks(2).all(|p| p == [1, 2]), "left caller, right agent");
        // The agent goes quiet (no packets): after 200 ms the right channel is padded.
        for _ in 0..9 {
            tap.caller(AgentBound::new(&[3; FRAME_SAMPLES]), false);
        }
        assert!(frames(&mut tap).is_empty(), "waits up to 200 ms for the other side");
        tap.caller(AgentBound::new(&[3; FRAME_SAMPLES]), false);
        let f = frames(&mut tap);
        assert_eq!(f.len(), 1);
        assert!(f[0].chunks(2).all(|p| p == [3, 0]));
    }

    #[test]
    fn masked_spans_carry_times_and_fields() {
        let mut tap = Tap::default();
        tap.start();
        tap.set_field(Some(FieldName::Pan));
        for replaced in [false, false, true, true, false, true] {
            tap.caller(AgentBound::new(&[0; FRAME_SAMPLES]), replaced);
        }
        // Capture ends; the last key's tail is masked 100 ms later, a tone 1 s later is not
        // part of any field.
        tap.set_field(None);
        for replaced in [false, false, false, false, false, true, false] {
            tap.caller(AgentBound::new(&[0; FRAME_SAMPLES]), replaced);
        }
        for _ in 0..50 {
            tap.caller(AgentBound::new(&[0; FRAME_SAMPLES]), false);
        }
        tap.caller(AgentBound::new(&[0; FRAME_SAMPLES]), true);
        let spans = tap.spans().to_vec();
        assert_eq!(
            spans,
            [
                MaskedSpan { start_ms: 40, end_ms: 80, field: Some(FieldName::Pan) },
                MaskedSpan { start_ms: 100, end_ms: 120, field: Some(FieldName::Pan) },
                MaskedSpan { start_ms: 220, end_ms: 240, field: Some(FieldName::Pan) },
                MaskedSpan { start_ms: 1260, end_ms: 1280, field: None },
            ]
        );
    }
}
