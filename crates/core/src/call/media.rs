//! The media bridge of one call: caller audio to the agent, agent audio and prompts to the
//! caller, with the caller's RFC 4733 packets replaced by masking frames on the way to the
//! agent (DESIGN.md, the masking contract). Sequence numbers and timestamps of both outgoing
//! streams stay continuous (RFC 3550 §5.1) whatever feeds them.
//!
//! No allocation per packet: outgoing packets are written into a queue of fixed buffers
//! reserved when the call starts.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::media::masker::Replacement;
use crate::media::player::Player;
use crate::media::rtp::{FRAME_SAMPLES, MAX_PACKET, OutStream, RtpReader, Source, Ssrc};
use crate::media::source_lock::{Refused, RtpSource, SourceLock};
use crate::media::srtp::{CryptoAttr, SrtpLeg};
use crate::media::telephone_event::Key;
use crate::sip::sdp::MediaParams;

use super::LegId;
pub use super::outbox::MediaPacket;
use super::outbox::Outbox;
use super::recording::Tap;
pub use super::to_agent::MaskLevel;
use super::to_agent::{AgentSink, ToAgent, in_codec};

const FRAME: Duration = Duration::from_millis(20);

/// What a caller packet carried that the call must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum CallerMedia {
    Nothing,
    Key(Key),
}

pub struct Bridge {
    caller: MediaParams,
    /// Which packets the caller's leg takes (the `RtpSource` policy).
    caller_lock: SourceLock,
    rtp_source: RtpSource,
    /// False while the caller has us on hold (sendonly or inactive): nothing is sent to it.
    caller_receives: bool,
    agent: Option<MediaParams>,
    /// Set with `agent`.
    agent_lock: Option<SourceLock>,
    to_caller: OutStream,
    to_agent: ToAgent,
    player: Player,
    next_prompt_frame: Option<Instant>,
    prompt_ts: u32,
    outbox: Outbox,
    /// The caller's leg is SRTP (RFC 3711): unprotect what arrives, protect what we send.
    caller_srtp: Option<SrtpLeg>,
    /// The same for the agent's leg (`sip.agent_srtp`), set with `agent`.
    agent_srtp: Option<SrtpLeg>,
    stats: BridgeStats,
}

/// Counters a test or the metrics endpoint can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStats {
    pub caller_packets: u64,
    pub agent_packets: u64,
    pub masked_frames: u64,
    pub dropped_packets: u64,
    /// SRTP packets that failed authentication or the replay check.
    pub srtp_rejected: u64,
    /// Packets from someone other than the leg's peer, dropped before anything read them.
    pub caller_refused: RefusedCounts,
    pub agent_refused: RefusedCounts,
    pub keys: KeyCounts,
}

/// The caller's keys, by how they reached tonewall.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyCounts {
    /// RFC 4733 telephone-events.
    pub rfc4733: u64,
    /// SIP INFO (`application/dtmf-relay`, `application/dtmf`); counted by the call.
    pub info: u64,
    /// Tones in the audio, decoded by tonewall's detector.
    pub in_band: u64,
}

/// Dropped packets of one leg, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefusedCounts {
    /// From another address than the leg's peer.
    pub address: u64,
    /// From the peer's address with another SSRC.
    pub ssrc: u64,
}

impl RefusedCounts {
    fn count(&mut self, why: Refused) {
        match why {
            Refused::Address => self.address += 1,
            Refused::Ssrc => self.ssrc += 1,
        }
    }
}

impl Bridge {
    /// The caller's signalling comes from `caller_ip` (where latching looks for its media).
    pub fn new(
        caller: MediaParams,
        caller_ip: IpAddr,
        rtp_source: RtpSource,
        seed: u64,
        replacement: Replacement,
    ) -> Bridge {
        let to_agent_stream =
            OutStream::new(Ssrc((seed as u32).rotate_left(16) ^ 0x5A5A_5A5A), (seed >> 48) as u16, (seed >> 8) as u32);
        Bridge {
            caller,
            caller_lock: SourceLock::new(caller.remote, caller_ip, rtp_source),
            rtp_source,
            caller_receives: true,
            agent: None,
            agent_lock: None,
            to_caller: OutStream::new(Ssrc(seed as u32), (seed >> 32) as u16, (seed >> 16) as u32),
            to_agent: ToAgent::new(to_agent_stream, replacement),
            player: Player::default(),
            next_prompt_frame: None,
            prompt_ts: 0,
            outbox: Outbox::new(caller.remote),
            caller_srtp: None,
            agent_srtp: None,
            stats: BridgeStats::default(),
        }
    }

    /// A new offer on the caller's leg (re-INVITE, UPDATE, Replaces from `caller_ip`):
    /// address, codec and whether it takes media. The leg's source is fixed again from the
    /// next packets: a renegotiated leg may change its SSRC.
    pub fn set_caller(&mut self, caller: MediaParams, receives: bool, caller_ip: IpAddr) {
        self.caller = caller;
        self.caller_lock = SourceLock::new(caller.remote, caller_ip, self.rtp_source);
        self.caller_receives = receives;
    }

    pub fn set_caller_srtp(&mut self, srtp: Option<SrtpLeg>) {
        self.caller_srtp = srtp;
    }

    /// The caller's new SRTP key (a re-INVITE); false if it cannot be used.
    pub fn rekey_caller(&mut self, theirs: &CryptoAttr) -> bool {
        self.caller_srtp.as_mut().is_some_and(|leg| leg.set_inbound(theirs).is_ok())
    }

    /// The agent's answer, its signalling from `agent_ip`, SRTP or not; the recording starts.
    pub fn set_agent(&mut self, agent: MediaParams, agent_ip: IpAddr, srtp: Option<SrtpLeg>) {
        self.agent = Some(agent);
        self.agent_srtp = srtp;
        self.agent_lock = Some(SourceLock::new(agent.remote, agent_ip, self.rtp_source));
        self.to_agent.recording.start();
    }

    /// The agent has gone: its packets are dropped from now on.
    pub fn clear_agent(&mut self) {
        self.agent = None;
        self.agent_lock = None;
        self.agent_srtp = None;
    }

    /// The call's recording (see `recording::Tap`).
    pub fn recording(&mut self) -> &mut Tap {
        &mut self.to_agent.recording
    }

    fn agent_sink(&self) -> Option<AgentSink> {
        let latched = self.agent_lock.as_ref().and_then(SourceLock::peer);
        self.agent.map(|a| AgentSink { remote: latched.unwrap_or(a.remote), codec: a.codec })
    }

    /// Where the caller's media goes: where it comes from once latched (symmetric RTP,
    /// RFC 4961), else the address its SDP names.
    fn caller_to(&self) -> SocketAddr {
        self.caller_lock.peer().unwrap_or(self.caller.remote)
    }

    /// How caller audio to the agent is masked (see `MaskLevel`). Lowering it waits until
    /// the caller has been quiet for 500 ms.
    pub fn set_masking(&mut self, level: MaskLevel) {
        self.to_agent.set_masking(level);
    }

    /// Counters for logs and tests, read when asked rather than kept up to date per packet.
    pub fn stats(&self) -> BridgeStats {
        BridgeStats { masked_frames: self.to_agent.masked_frames, keys: self.to_agent.keys, ..self.stats }
    }

    pub fn player(&mut self) -> &mut Player {
        &mut self.player
    }

    /// Starts paced playback if a prompt was queued while idle.
    pub fn kick_player(&mut self, now: Instant) {
        if self.player.is_playing() && self.next_prompt_frame.is_none() {
            self.next_prompt_frame = Some(now);
        }
    }

    pub fn is_prompting(&self) -> bool {
        self.player.is_playing()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_prompt_frame
    }

    pub fn poll_packet(&mut self) -> Option<&MediaPacket> {
        loop {
            let p = self.outbox.poll()?;
            let srtp = match p.leg {
                LegId::Agent => self.agent_srtp.as_mut(),
                LegId::Caller => self.caller_srtp.as_mut(),
                LegId::Replaced => None,
            };
            let Some(srtp) = srtp else {
                return self.outbox.front();
            };
            match srtp.protect(&mut p.buf, p.len) {
                Ok(len) => {
                    p.len = len;
                    return self.outbox.front();
                }
                // Only after 2^48 packets on one key; such a packet is not sent in clear.
                Err(_) => self.stats.dropped_packets += 1,
            }
        }
    }

    /// Plays the next prompt frame when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_prompt_frame else { return };
        if now < due {
            return;
        }
        let mut pcm = [0i16; FRAME_SAMPLES];
        if !self.player.next_frame(&mut pcm) {
            self.next_prompt_frame = None;
            return;
        }
        let codec = self.caller.codec;
        // Stay on a 20 ms grid, but do not burst to catch up after a stall. Held, the prompt
        // runs on in time, unheard.
        let next = due + FRAME;
        self.next_prompt_frame = Some(if next + FRAME * 5 < now { now + FRAME } else { next });
        if !self.caller_receives {
            return;
        }
        let mut payload = [0u8; FRAME_SAMPLES];
        for (o, s) in payload.iter_mut().zip(pcm.iter()) {
            *o = codec.encode(*s);
        }
        let to = self.caller_to();
        self.outbox.send(
            LegId::Caller,
            to,
            &mut self.to_caller,
            Source::Local,
            self.prompt_ts,
            codec.payload_type(),
            &payload,
            now,
        );
        self.prompt_ts = self.prompt_ts.wrapping_add(FRAME_SAMPLES as u32);
    }

    /// A packet from `from` on the caller's leg: audio goes on to the agent (masked in
    /// capture mode); telephone-events and in-band tones are reported once as keys and never
    /// reach the agent. A packet from anyone but the caller is dropped unread.
    pub fn handle_caller_packet(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> CallerMedia {
        if let Err(why) = self.caller_lock.check_address(from) {
            self.stats.caller_refused.count(why);
            return CallerMedia::Nothing;
        }
        match self.caller_srtp.as_mut().map(|s| s.unprotect(packet)) {
            None => self.handle_caller_rtp(packet, now),
            Some(Ok(plain)) => self.handle_caller_rtp(plain.as_ref(), now),
            Some(Err(_)) => {
                self.stats.srtp_rejected += 1;
                CallerMedia::Nothing
            }
        }
    }

    fn handle_caller_rtp(&mut self, packet: &[u8], now: Instant) -> CallerMedia {
        let Ok(rtp) = RtpReader::new(packet) else {
            self.stats.dropped_packets += 1;
            return CallerMedia::Nothing;
        };
        if let Err(why) = self.caller_lock.check_ssrc(rtp.ssrc()) {
            self.stats.caller_refused.count(why);
            return CallerMedia::Nothing;
        }
        self.stats.caller_packets += 1;
        let sink = self.agent_sink();
        let key = self.to_agent.handle(&rtp, &self.caller, sink, &mut self.outbox, now);
        key.map_or(CallerMedia::Nothing, CallerMedia::Key)
    }

    /// A packet from `from` on the agent's leg: relayed to the caller unless a prompt has
    /// the floor. A packet from anyone but the agent is dropped unread.
    pub fn handle_agent_packet(&mut self, packet: &[u8], from: SocketAddr, now: Instant) {
        let (Some(agent), Some(lock)) = (self.agent, self.agent_lock.as_mut()) else { return };
        if let Err(why) = lock.check_address(from) {
            self.stats.agent_refused.count(why);
            return;
        }
        let plain = match self.agent_srtp.as_mut().map(|s| s.unprotect(packet)) {
            None => None,
            Some(Ok(plain)) => Some(plain),
            Some(Err(_)) => {
                self.stats.srtp_rejected += 1;
                return;
            }
        };
        let packet = plain.as_ref().map_or(packet, |p| p.as_ref());
        let Ok(rtp) = RtpReader::new(packet) else {
            self.stats.dropped_packets += 1;
            return;
        };
        if let Err(why) = lock.check_ssrc(rtp.ssrc()) {
            self.stats.agent_refused.count(why);
            return;
        }
        self.stats.agent_packets += 1;
        if rtp.payload_type() != agent.codec.payload_type() {
            return;
        }
        let payload = rtp.payload();
        let samples = payload.len().min(MAX_PACKET - 64);
        // The recording has the agent throughout, prompts or not.
        if self.to_agent.recording.is_on() {
            let mut pcm = [0i16; MAX_PACKET];
            for (o, b) in pcm[..samples].iter_mut().zip(payload) {
                *o = agent.codec.decode(*b);
            }
            self.to_agent.recording.agent(&pcm[..samples]);
        }
        if self.player.is_playing() || !self.caller_receives {
            return;
        }
        let (to, codec) = (self.caller_to(), self.caller.codec);
        let (outbox, stream) = (&mut self.outbox, &mut self.to_caller);
        in_codec(&payload[..samples], agent.codec, codec, |body| {
            let source = Source::Relay(Ssrc(rtp.ssrc()));
            outbox.send(LegId::Caller, to, stream, source, rtp.timestamp(), codec.payload_type(), body, now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::Codec;
    use crate::media::telephone_event::TelephoneEvent;
    use rtp_rs::{RtpPacketBuilder, Seq};
    use std::net::SocketAddr;

    /// The caller's and the agent's media, as their SDP names them (`params`).
    const CALLER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);
    const AGENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);

    fn params(port: u16, codec: Codec) -> MediaParams {
        MediaParams { remote: SocketAddr::from(([127, 0, 0, 1], port)), codec, event_pt: Some(96) }
    }

    fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .ssrc(42)
            .sequence(Seq::from(seq))
            .timestamp(ts)
            .payload(payload)
            .build()
            .unwrap()
    }

    fn drain(b: &mut Bridge) -> Vec<(LegId, u16, u32, u8, Vec<u8>)> {
        let mut out = vec![];
        while let Some(p) = b.poll_packet() {
            let r = RtpReader::new(&p.buf[..p.len]).unwrap();
            out.push((p.leg, r.sequence_number().into(), r.timestamp(), r.payload_type(), r.payload().to_vec()));
        }
        out
    }

    #[test]
    fn events_become_silence_toward_the_agent_with_continuous_numbering() {
        let t = crate::test_origin();
        let mut b = Bridge::new(params(4000, Codec::Pcmu), CALLER.ip(), RtpSource::Sdp, 99, Replacement::Silence);
        b.set_agent(params(5000, Codec::Pcma), AGENT.ip(), None);
        let audio = [0x10u8; 160];
        let mut keys = vec![];
        // 2 audio frames, then digit 7 as 4 updates + 3 end packets (duration up to 800), then audio.
        let mut seq = 1;
        for i in 0..2 {
            b.handle_caller_packet(&packet(0, seq, 1000 + i * 160, &audio), CALLER, t);
            seq += 1;
        }
        for (dur, end) in
            [(160u16, false), (320, false), (480, false), (640, false), (800, true), (800, true), (800, true)]
        {
            let ev = TelephoneEvent { code: 7, end, volume: 10, duration: dur }.to_bytes();
            if let CallerMedia::Key(k) = b.handle_caller_packet(&packet(96, seq, 1320, &ev), CALLER, t) {
                keys.push(k);
            }
            seq += 1;
        }
        // The sender resumes audio 2 frames after the event's end (its end packets took time).
        b.handle_caller_packet(&packet(0, seq, 1320 + 800 + 320, &audio), CALLER, t);
        assert_eq!(keys, vec![Key::Digit(7)]);
        let out = drain(&mut b);
        assert!(out.iter().all(|o| o.0 == LegId::Agent && o.3 == 8), "only PCMA audio reaches the agent");
        let seqs: Vec<u16> = out.iter().map(|o| o.1).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{seqs:?}");
        let tss: Vec<u32> = out.iter().map(|o| o.2).collect();
        assert!(tss.windows(2).all(|w| w[1] == w[0] + 160), "{tss:?}");
        // 2 audio + 5 masking frames (800 samples) + 2 filling the gap + 1 audio.
        assert_eq!(out.len(), 10);
        let silence = vec![Codec::Pcma.silence(); 160];
        assert!(out[2..9].iter().all(|o| o.4 == silence));
        assert_eq!(b.stats().masked_frames, 7);
    }

    #[test]
    fn an_events_in_band_copy_is_replaced_where_the_gate_hears_nothing() {
        use crate::media::dtmf::signal::{TonePair, push_tone, to_i16};
        let t = crate::test_origin();
        let mut b = Bridge::new(params(4000, Codec::Pcmu), CALLER.ip(), RtpSource::Sdp, 5, Replacement::Silence);
        b.set_agent(params(5000, Codec::Pcmu), AGENT.ip(), None);
        // The gate alone (no band-stop), and a copy twisted 20 dB, which it does not open on.
        b.set_masking(MaskLevel::Tones);
        let mut tone = Vec::new();
        push_tone(&mut tone, TonePair::key(Key::Digit(9), -20.0).twist(-20.0), 100.0);
        let tone = to_i16(&tone);
        let frames: Vec<Vec<u8>> =
            tone.chunks(160).map(|f| f.iter().map(|s| Codec::Pcmu.encode(*s)).collect()).collect();
        let (mut seq, start) = (1u16, 1600u32);
        for i in 0..10u32 {
            b.handle_caller_packet(&packet(0, seq, i * 160, &[0xFF; 160]), CALLER, t);
            seq += 1;
        }
        for (i, f) in frames.iter().enumerate() {
            // The phone's audio arrives before its event: the copy is already in the look-ahead.
            b.handle_caller_packet(&packet(0, seq, start + i as u32 * 160, f), CALLER, t);
            let ev = TelephoneEvent { code: 9, end: false, volume: 10, duration: (i as u16 + 1) * 160 }.to_bytes();
            b.handle_caller_packet(&packet(96, seq + 1, start, &ev), CALLER, t);
            seq += 2;
        }
        for i in 0..10u32 {
            b.handle_caller_packet(&packet(0, seq, start + 800 + i * 160, &[0xFF; 160]), CALLER, t);
            seq += 1;
        }
        let out = drain(&mut b);
        let carries_tone = |p: &(LegId, u16, u32, u8, Vec<u8>)| p.4.iter().any(|x| Codec::Pcmu.decode(*x).abs() > 300);
        assert!(out.len() >= 25, "every frame went on to the agent: {}", out.len());
        assert!(!out.iter().any(carries_tone), "no frame to the agent carries the copy");
    }

    #[test]
    fn without_an_agent_nothing_is_sent_and_keys_still_count() {
        let t = crate::test_origin();
        let mut b = Bridge::new(params(4000, Codec::Pcmu), CALLER.ip(), RtpSource::Sdp, 1, Replacement::Silence);
        let ev = TelephoneEvent { code: 11, end: true, volume: 10, duration: 800 }.to_bytes();
        assert_eq!(b.handle_caller_packet(&packet(96, 1, 0, &ev), CALLER, t), CallerMedia::Key(Key::Hash));
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.handle_caller_packet(b"\x80short", CALLER, t), CallerMedia::Nothing);
        assert_eq!(b.stats().dropped_packets, 1);
    }

    #[test]
    fn only_the_legs_peers_are_heard() {
        let t = crate::test_origin();
        let mut b = Bridge::new(params(4000, Codec::Pcmu), CALLER.ip(), RtpSource::Sdp, 1, Replacement::Silence);
        b.set_agent(params(5000, Codec::Pcmu), AGENT.ip(), None);
        let five = TelephoneEvent { code: 5, end: true, volume: 10, duration: 800 }.to_bytes();
        let stranger: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        // Another address (even the caller's IP on another port): dropped unread.
        for from in [stranger, SocketAddr::new(CALLER.ip(), 4002)] {
            assert_eq!(b.handle_caller_packet(&packet(96, 1, 0, &five), from, t), CallerMedia::Nothing);
        }
        b.handle_agent_packet(&packet(0, 1, 0, &[0x22; 160]), stranger, t);
        assert!(drain(&mut b).is_empty(), "nothing from a stranger reaches either side");
        // The caller's own packets lock its SSRC; another SSRC from its address is dropped.
        assert_eq!(b.handle_caller_packet(&packet(0, 2, 160, &[0xff; 160]), CALLER, t), CallerMedia::Nothing);
        let mut other = packet(96, 3, 320, &five);
        other[8..12].copy_from_slice(&43u32.to_be_bytes());
        assert_eq!(b.handle_caller_packet(&other, CALLER, t), CallerMedia::Nothing);
        assert_eq!(b.handle_caller_packet(&packet(96, 4, 320, &five), CALLER, t), CallerMedia::Key(Key::Digit(5)));
        let s = b.stats();
        assert_eq!(
            (s.caller_refused, s.agent_refused),
            (RefusedCounts { address: 2, ssrc: 1 }, RefusedCounts { address: 1, ssrc: 0 })
        );
        assert_eq!(s.caller_packets, 2, "only the caller's two packets were read");
    }

    #[test]
    fn prompts_are_paced_and_take_the_floor_from_the_agent() {
        let t = crate::test_origin();
        let mut b = Bridge::new(params(4000, Codec::Pcmu), CALLER.ip(), RtpSource::Sdp, 1, Replacement::Silence);
        b.set_agent(params(5000, Codec::Pcmu), AGENT.ip(), None);
        b.player().enqueue(vec![1000i16; 400].into());
        b.kick_player(t);
        assert_eq!(b.poll_timeout(), Some(t));
        b.handle_timeout(t);
        b.handle_agent_packet(&packet(0, 1, 0, &[0x22; 160]), AGENT, t);
        assert_eq!(b.poll_timeout(), Some(t + FRAME));
        b.handle_timeout(t + FRAME);
        b.handle_timeout(t + FRAME * 2);
        b.handle_timeout(t + FRAME * 3);
        assert_eq!(b.poll_timeout(), None);
        let out = drain(&mut b);
        assert_eq!(out.len(), 3, "three prompt frames, agent audio held back");
        assert!(out.iter().all(|o| o.0 == LegId::Caller && o.4[0] == Codec::Pcmu.encode(1000)));
        b.handle_agent_packet(&packet(0, 2, 160, &[0x22; 160]), AGENT, t + FRAME * 4);
        assert_eq!(drain(&mut b).len(), 1);
    }
}
