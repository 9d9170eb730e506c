//! The caller → agent media path. Two modes:
//!
//! - Direct (outside capture): caller audio is relayed as it arrives, with no added delay;
//!   RFC 4733 packets are still never forwarded: their span becomes silence frames.
//! - Masked (capture, or "always mask"): caller audio is decoded and passes through the
//!   masker's 20 ms look-ahead, where the tone-presence gate replaces in-band tones from
//!   their onset; RFC 4733 spans enter the masker already marked; the strict detector reads
//!   keys from the audio. The agent gets the masker's output, re-encoded in its codec.
//!
//! Either way the agent's stream keeps continuous sequence numbers and timestamps
//! (RFC 3550 §5.1): gaps a sender leaves after an event are filled, and switching modes
//! neither repeats nor skips a timestamp (switching on inserts 20 ms, off drops 20 ms).

use std::net::SocketAddr;
use std::time::Instant;

use super::LegId;
use super::outbox::Outbox;
use super::recording::{AgentBound, Tap};
use crate::media::g711::Codec;
use crate::media::masker::{Feed, LOOKAHEAD, Masker, Replacement};
use crate::media::rtp::{FRAME_SAMPLES, MAX_PACKET, OutStream, RtpReader, Source, Ssrc};
use crate::media::telephone_event::{EventTracker, Key, TelephoneEvent};
use crate::sip::sdp::MediaParams;

/// Most frames one event packet may cover: bounds the burst after a gap.
const MAX_FRAMES_PER_EVENT_PACKET: u32 = 3;
/// Most frames filled into the gap an event leaves before the next audio packet.
const MAX_GAP_FRAMES: u32 = 10;
/// Coverage further than this from a packet (1 s) is stale: start over at the packet.
const MAX_FILL: u32 = 8000;
/// An in-band copy of an RFC 4733 key (or the reverse) within this many samples (500 ms)
/// is the same keypress.
const SAME_KEY_WINDOW: u32 = 4000;
const ZEROS: [i16; FRAME_SAMPLES] = [0; FRAME_SAMPLES];
/// Masking ends only after this many samples (500 ms) without a tone or event, so the tail
/// of the key that completed the capture is not let through.
const QUIET_BEFORE_RELEASE: u64 = 4000;
/// An event's in-band copy is replaced this far (20 ms) beyond the event's span either
/// side: phones start the tone a little before the event's timestamp or let it ring on.
const COPY_MARGIN: u64 = 160;

/// How the caller's audio is masked on its way to the agent (stronger levels later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MaskLevel {
    /// Relayed as it comes, with no added delay.
    Off,
    /// Through the masker: tones the gate hears are replaced ("always mask", outside a
    /// capture).
    Tones,
    /// A capture: the masker and its DTMF band-stop, so nothing decodable passes whether or
    /// not the gate heard it.
    Capture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Event,
    InBand,
}

struct Masking {
    masker: Masker,
    /// Output timestamp (caller clock) of the next frame to the agent.
    out_ts: Option<u32>,
    /// The last 20 ms decoded: repeated over a lost packet, so a tone is not cut in two.
    last: [i16; FRAME_SAMPLES],
}

/// Where the agent's audio goes and in which codec.
#[derive(Clone, Copy)]
pub struct AgentSink {
    pub remote: SocketAddr,
    pub codec: Codec,
}

pub struct ToAgent {
    stream: OutStream,
    events: EventTracker,
    /// End of the caller audio already accounted for, in the caller's timestamp space.
    covered: Option<u32>,
    after_event: bool,
    ssrc: Ssrc,
    masking: Option<Masking>,
    /// The level asked for; a lower one than in force waits until the caller is quiet.
    wanted: MaskLevel,
    replacement: Replacement,
    last_key: Option<(Key, u32, Origin)>,
    /// The caller's phone sends RFC 4733 events: its in-band copies are not keys of their
    /// own (over a loud background the detector could misread or split one).
    sends_events: bool,
    /// A key the strict detector decided while audio was being fed in.
    heard: Option<Key>,
    pub masked_frames: u64,
    /// Keys taken from the caller's media, by how they came.
    pub keys: super::media::KeyCounts,
    /// The recording: everything sent to the agent, as sent.
    pub recording: Tap,
}

impl ToAgent {
    pub fn new(stream: OutStream, replacement: Replacement) -> ToAgent {
        ToAgent {
            stream,
            events: EventTracker::default(),
            covered: None,
            after_event: false,
            ssrc: Ssrc(0),
            masking: None,
            wanted: MaskLevel::Off,
            replacement,
            last_key: None,
            sends_events: false,
            heard: None,
            masked_frames: 0,
            keys: super::media::KeyCounts::default(),
            recording: Tap::default(),
        }
    }

    /// Raises masking to `level` at once; lowers it once the caller has been quiet for
    /// 500 ms.
    pub fn set_masking(&mut self, level: MaskLevel) {
        self.wanted = level;
        if level > self.level() {
            let m = self.masking.get_or_insert_with(|| Masking {
                masker: Masker::new(self.replacement),
                out_ts: self.covered,
                last: [0; FRAME_SAMPLES],
            });
            m.masker.set_band_stop(level == MaskLevel::Capture);
        }
    }

    /// The level in force.
    fn level(&self) -> MaskLevel {
        match &self.masking {
            None => MaskLevel::Off,
            Some(m) if m.masker.band_stop() => MaskLevel::Capture,
            Some(_) => MaskLevel::Tones,
        }
    }

    /// Lowers masking to the level asked for, now.
    fn lower(&mut self, agent: Option<AgentSink>, out: &mut Outbox, now: Instant) {
        match self.wanted {
            MaskLevel::Off => self.release(agent, out, now),
            MaskLevel::Tones => {
                if let Some(m) = self.masking.as_mut() {
                    m.masker.set_band_stop(false);
                }
            }
            MaskLevel::Capture => {}
        }
    }

    /// Ends masking now: what is past the look-ahead is sent, the newest 20 ms are dropped,
    /// which takes the added delay back out.
    fn release(&mut self, agent: Option<AgentSink>, out: &mut Outbox, now: Instant) {
        if let Some(mut m) = self.masking.take() {
            let keep = m.masker.buffered().saturating_sub(LOOKAHEAD);
            self.drain(&mut m, keep, agent, out, now);
        }
    }

    /// Handles one caller packet; returns a key if it completed one.
    pub fn handle(
        &mut self,
        rtp: &RtpReader,
        caller: &MediaParams,
        agent: Option<AgentSink>,
        out: &mut Outbox,
        now: Instant,
    ) -> Option<Key> {
        let ts = rtp.timestamp();
        self.ssrc = Ssrc(rtp.ssrc());
        if Some(rtp.payload_type()) == caller.event_pt {
            let ev = TelephoneEvent::parse(rtp.payload()).ok()?;
            let key = self.events.on_packet(ts, ev).and_then(|k| self.dedupe(k, Origin::Event, ts));
            let end = ts.wrapping_add(u32::from(ev.duration).max(FRAME_SAMPLES as u32));
            self.replace_in_band_copy(ts, end);
            let start = match self.covered {
                Some(c) if end.wrapping_sub(c) < MAX_FILL => c,
                Some(c) if c.wrapping_sub(end) < MAX_FILL => return key, // already covered
                _ => ts,
            };
            self.after_event = true;
            self.fill(start, end, MAX_FRAMES_PER_EVENT_PACKET, true, agent, out, now);
            return key;
        }
        if rtp.payload_type() != caller.codec.payload_type() {
            return None;
        }
        let payload = rtp.payload();
        let payload = &payload[..payload.len().min(MAX_PACKET - 64)];
        if self.covered.is_some_and(|c| c.wrapping_sub(ts).wrapping_sub(1) < MAX_FILL) {
            // Late (reordered) or already covered by an event's span: the stream has moved on.
            return None;
        }
        if let Some(c) = self.covered.filter(|c| ts.wrapping_sub(*c) < MAX_FILL) {
            // A sender's gap after an event is masked; in masked mode any other gap is filled
            // with silence so the look-ahead stays aligned with the caller's clock.
            let after_event = std::mem::take(&mut self.after_event);
            if after_event || self.masking.is_some() {
                self.fill(c, ts, MAX_GAP_FRAMES, after_event, agent, out, now);
            }
        }
        self.after_event = false;
        self.audio(ts, payload, caller.codec, agent, out, now);
        let key = self.heard.take();
        if self.wanted < self.level()
            && self.masking.as_ref().is_some_and(|m| m.masker.quiet_for() >= QUIET_BEFORE_RELEASE)
        {
            self.lower(agent, out, now);
        }
        key.and_then(|k| self.dedupe(k, Origin::InBand, ts))
    }

    /// Replaces the in-band copy of an event spanning `[from, until)` (caller timestamps),
    /// in the look-ahead already or still to come, whether or not the gate hears it.
    fn replace_in_band_copy(&mut self, from: u32, until: u32) {
        let (Some(m), Some(covered)) = (self.masking.as_mut(), self.covered) else { return };
        // The masker's position of `covered` is what it has written.
        let offset = |ts: u32| i64::from(ts.wrapping_sub(covered) as i32);
        if offset(from).abs() >= i64::from(MAX_FILL) {
            return; // stale or far ahead: not this stream's present
        }
        let at = |ts: u32| (m.masker.written() as i64 + offset(ts)).max(0) as u64;
        m.masker.replace_span(at(from).saturating_sub(COPY_MARGIN), at(until) + COPY_MARGIN);
    }

    /// Covers `[from, until)` (at most `max_frames`), masked or as silence.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        from: u32,
        until: u32,
        max_frames: u32,
        masked: bool,
        agent: Option<AgentSink>,
        out: &mut Outbox,
        now: Instant,
    ) {
        let mut at = from;
        let mut frames = 0;
        while (until.wrapping_sub(at) as i32) > 0 && frames < max_frames {
            let n = (until.wrapping_sub(at) as usize).min(FRAME_SAMPLES);
            if let Some(mut m) = self.masking.take() {
                m.out_ts.get_or_insert(at);
                // A lost packet is concealed with the last one; an event's span is replaced.
                let (fill, feed) = if masked { (ZEROS, Feed::Replaced) } else { (m.last, Feed::Concealment) };
                m.masker.push(&fill[..n], feed);
                let ready = m.masker.ready();
                self.drain(&mut m, ready, agent, out, now);
                self.masking = Some(m);
            } else if let Some(a) = agent {
                // Direct mode: whole silence frames in the agent's codec.
                let silence = [a.codec.silence(); FRAME_SAMPLES];
                self.emit(a, out, at, &silence, masked, now);
            }
            self.masked_frames += u64::from(masked);
            at = at.wrapping_add(if self.masking.is_some() { n as u32 } else { FRAME_SAMPLES as u32 });
            frames += 1;
        }
        self.covered = Some(at);
    }

    /// One audio packet: through the masker, or straight on.
    fn audio(
        &mut self,
        ts: u32,
        payload: &[u8],
        codec: Codec,
        agent: Option<AgentSink>,
        out: &mut Outbox,
        now: Instant,
    ) {
        self.covered = Some(ts.wrapping_add(payload.len() as u32));
        let Some(mut m) = self.masking.take() else {
            if let Some(a) = agent {
                in_codec(payload, codec, a.codec, |body| self.emit(a, out, ts, body, false, now));
            }
            return;
        };
        m.out_ts.get_or_insert(ts);
        let mut pcm = [0i16; MAX_PACKET];
        let pcm = &mut pcm[..payload.len()];
        for (o, b) in pcm.iter_mut().zip(payload) {
            *o = codec.decode(*b);
        }
        if let Some(d) = m.masker.push(pcm, Feed::Audio) {
            self.heard = Some(d.key);
        }
        if pcm.len() >= FRAME_SAMPLES {
            m.last.copy_from_slice(&pcm[pcm.len() - FRAME_SAMPLES..]);
        }
        let ready = m.masker.ready();
        self.drain(&mut m, ready, agent, out, now);
        self.masking = Some(m);
    }

    /// Sends `count` samples out of the masker in whole 20 ms frames.
    fn drain(&mut self, m: &mut Masking, count: usize, agent: Option<AgentSink>, out: &mut Outbox, now: Instant) {
        let mut left = count;
        while left >= FRAME_SAMPLES {
            let mut pcm = [0i16; FRAME_SAMPLES];
            let before = m.masker.replaced;
            m.masker.pop(&mut pcm);
            let replaced = m.masker.replaced > before;
            left -= FRAME_SAMPLES;
            let ts = m.out_ts.unwrap_or(0);
            m.out_ts = Some(ts.wrapping_add(FRAME_SAMPLES as u32));
            if let Some(a) = agent {
                let mut payload = [0u8; FRAME_SAMPLES];
                for (o, s) in payload.iter_mut().zip(pcm.iter()) {
                    *o = a.codec.encode(*s);
                }
                self.emit(a, out, ts, &payload, replaced, now);
            }
        }
    }

    /// One frame to the agent, in its codec, on the continuous outgoing stream; and the same
    /// frame, decoded, to the recording.
    #[allow(clippy::too_many_arguments)]
    fn emit(&mut self, a: AgentSink, out: &mut Outbox, src_ts: u32, payload: &[u8], replaced: bool, now: Instant) {
        if self.recording.is_on() {
            let mut pcm = [0i16; MAX_PACKET];
            let n = payload.len().min(MAX_PACKET);
            for (o, b) in pcm[..n].iter_mut().zip(payload) {
                *o = a.codec.decode(*b);
            }
            self.recording.caller(AgentBound::new(&pcm[..n]), replaced);
        }
        out.send(
            LegId::Agent,
            a.remote,
            &mut self.stream,
            Source::Relay(self.ssrc),
            src_ts,
            a.codec.payload_type(),
            payload,
            now,
        );
    }

    /// A key unless it is the other path's copy of the key just reported. Once the phone has
    /// sent an event, keys come from events only.
    fn dedupe(&mut self, key: Key, origin: Origin, ts: u32) -> Option<Key> {
        match origin {
            Origin::Event => self.sends_events = true,
            Origin::InBand if self.sends_events => return None,
            Origin::InBand => {}
        }
        if let Some((k, at, o)) = self.last_key
            && k == key
            && o != origin
            && ts.wrapping_sub(at).min(at.wrapping_sub(ts)) < SAME_KEY_WINDOW
        {
            return None;
        }
        self.last_key = Some((key, ts, origin));
        match origin {
            Origin::Event => self.keys.rfc4733 += 1,
            Origin::InBand => self.keys.in_band += 1,
        }
        Some(key)
    }
}

/// Hands `payload` to `send` in the `to` codec, converting through a stack buffer only
/// when the codecs differ (the common case relays the caller's bytes untouched).
pub(super) fn in_codec(payload: &[u8], from: Codec, to: Codec, send: impl FnOnce(&[u8])) {
    if from == to {
        return send(payload);
    }
    let mut converted = [0u8; MAX_PACKET];
    let n = payload.len().min(MAX_PACKET);
    for (o, b) in converted[..n].iter_mut().zip(payload) {
        *o = to.encode(from.decode(*b));
    }
    send(&converted[..n])
}
