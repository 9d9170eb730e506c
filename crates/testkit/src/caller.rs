//! A scripted caller: dials a transfer URI over real UDP, keys digits as RFC 4733 events
//! (§2.5: updates every 20 ms, three end packets), as in-band tones in its G.711 audio, or
//! both at once (events interleaved with audio on one SSRC), optionally over background
//! speech and through a lossy, jittery link; counts what it hears and answers the BYE.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, Seq};
use tokio::net::UdpSocket;
use tokio::time::{MissedTickBehavior, interval, timeout};

use super::{SoftphoneError, Ua};
use crate::keypad;
use tonewall_core::media::dtmf::signal::Noise;
use tonewall_core::media::g711::Codec;
use tonewall_core::media::rtp::{FRAME_SAMPLES, RtpReader};
use tonewall_core::sip::message::{Method, SipMessage};
use tonewall_core::sip::sdp::{self, RemoteDescription};

pub use crate::keypad::{Keying, Step, script};

#[derive(Debug, Clone)]
pub struct CallerOptions {
    pub server: SocketAddr,
    pub uri: String,
    pub codec: Codec,
    pub event_pt: u8,
    pub steps: Vec<Step>,
    pub keying: Keying,
    /// Level of each in-band tone, dBm0.
    pub tone_dbm0: f32,
    /// Audio looped under everything the caller sends (speech, say); silence if None.
    pub background: Option<Arc<[i16]>>,
    /// Packets dropped, in percent (seeded, so runs repeat).
    pub loss_percent: u8,
    /// Each packet is held back up to this long (whole 20 ms ticks), so some arrive late.
    pub jitter: Duration,
    /// How long to wait after the last key for tonewall to hang up before we do.
    pub linger: Duration,
}

impl CallerOptions {
    /// RFC 4733 keys in PCMU with telephone-event on payload type 101, no impairments.
    pub fn new(server: SocketAddr, uri: &str, keypad: &str) -> CallerOptions {
        CallerOptions {
            server,
            uri: uri.to_string(),
            codec: Codec::Pcmu,
            event_pt: 101,
            steps: script(keypad),
            keying: Keying::Rfc4733,
            tone_dbm0: -10.0,
            background: None,
            loss_percent: 0,
            jitter: Duration::ZERO,
            linger: Duration::from_secs(4),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct CallerReport {
    pub answered: bool,
    pub packets_heard: u64,
    pub hung_up_by_tonewall: bool,
    pub keys_sent: usize,
    /// The audio it sent, decoded back from G.711 (before the link's loss): what a judge
    /// must be able to read the keys from, the positive control for a masking test.
    pub sent_audio: Vec<i16>,
    /// The audio packets tonewall sent, decoded in order of arrival: which prompts played.
    pub heard_audio: Vec<i16>,
}

/// What the caller sends at each 20 ms tick: always an audio frame (unless an RFC 4733-only
/// phone is sending an event instead), and maybe an event packet.
struct Plan {
    audio: Vec<i16>,
    ticks: Vec<keypad::Tick>,
}

fn plan(opts: &CallerOptions) -> Plan {
    let ticks = keypad::plan(&opts.steps, opts.keying);
    let mut audio = vec![0i16; ticks.len() * FRAME_SAMPLES];
    for (frame, t) in audio.chunks_exact_mut(FRAME_SAMPLES).zip(&ticks) {
        if let Some(tone) = t.tone {
            let samples = keypad::tone(tone.key, opts.tone_dbm0);
            frame.copy_from_slice(&samples[usize::from(tone.since) * FRAME_SAMPLES..][..FRAME_SAMPLES]);
        }
    }
    if let Some(bg) = &opts.background {
        for (i, s) in audio.iter_mut().enumerate() {
            *s = s.saturating_add(bg[i % bg.len()]);
        }
    }
    Plan { audio, ticks }
}

pub async fn place_call(opts: CallerOptions) -> Result<CallerReport, SoftphoneError> {
    let ua = Ua::bind().await?;
    let rtp = UdpSocket::bind("127.0.0.1:0").await?;
    let offer = sdp::write(rtp.local_addr()?, 1, &[opts.codec], Some(opts.event_pt));
    let (invite, call_id, from_tag) = ua.invite(&opts.uri, &offer);
    let mut report = CallerReport::default();
    let answer = ua.call(&invite, opts.server, Duration::from_secs(10)).await?;
    if answer.status() >= 300 {
        return Err(SoftphoneError::Refused(answer.status()));
    }
    report.answered = true;
    let media =
        RemoteDescription::parse(answer.body()).map_err(|e| SoftphoneError::Protocol(e.to_string()))?.negotiate();
    let to = answer.to().to_string();
    let target = answer.contact_uri().unwrap_or(&opts.uri).to_string();
    ua.send(&ua.in_dialog(Method::Ack, &call_id, &from_tag, &to, 1, &target), opts.server).await?;

    let plan = plan(&opts);
    let mut tick = interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ssrc: u32 = rand::random();
    let (mut seq, ts0) = (rand::random::<u16>(), rand::random::<u32>());
    let mut link = Link::new(opts.loss_percent, (opts.jitter.as_millis() / 20) as u32);
    let mut rbuf = [0u8; 2048];
    let total = plan.ticks.len() as u32 + (opts.linger.as_millis() / 20) as u32;
    let mut i = 0u32;
    while i < total && !report.hung_up_by_tonewall {
        tokio::select! {
            _ = tick.tick() => {
                let ts = ts0.wrapping_add(i * FRAME_SAMPLES as u32);
                let event = plan.ticks.get(i as usize).and_then(|t| t.event);
                if let Some(e) = event {
                    let ev = keypad::event_payload(e.key.event_code(), e.since);
                    report.keys_sent += usize::from(e.since == 0);
                    let start_ts = ts.wrapping_sub(u32::from(e.since) * FRAME_SAMPLES as u32);
                    let pkt = RtpPacketBuilder::new().payload_type(opts.event_pt).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(start_ts).marked(e.since == 0).payload(&ev).build();
                    seq = seq.wrapping_add(1);
                    link.offer(pkt.ok());
                }
                if event.is_none() || opts.keying == Keying::Both {
                    let from = i as usize * FRAME_SAMPLES;
                    let mut payload = [media.codec.silence(); FRAME_SAMPLES];
                    for (o, s) in payload.iter_mut().zip(plan.audio.iter().skip(from)) {
                        *o = media.codec.encode(*s);
                    }
                    report.sent_audio.extend(payload.iter().map(|b| media.codec.decode(*b)));
                    let pkt = RtpPacketBuilder::new().payload_type(media.codec.payload_type()).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(ts).payload(&payload).build();
                    seq = seq.wrapping_add(1);
                    link.offer(pkt.ok());
                }
                for p in link.due() {
                    rtp.send_to(&p, media.remote).await?;
                }
                i += 1;
            }
            r = rtp.recv_from(&mut rbuf) => {
                if let Ok((n, _)) = r
                    && let Ok(packet) = RtpReader::new(&rbuf[..n])
                {
                    report.packets_heard += 1;
                    if packet.payload_type() == media.codec.payload_type() {
                        report.heard_audio.extend(packet.payload().iter().map(|b| media.codec.decode(*b)));
                    }
                }
            }
            msg = ua.recv() => {
                if let (SipMessage::Request(req), from) = msg? {
                    ua.answer(&req, from).await?;
                    if req.method() == Method::Bye {
                        report.hung_up_by_tonewall = true;
                    }
                }
            }
        }
    }
    if !report.hung_up_by_tonewall {
        let bye = ua.in_dialog(Method::Bye, &call_id, &from_tag, &to, 2, &target);
        ua.send(&bye, opts.server).await?;
        // Best effort: the 200 for our BYE is not needed for the report.
        let _ = timeout(Duration::from_secs(2), ua.recv()).await;
    }
    Ok(report)
}

/// A lossy, jittery link: drops a seeded share of packets and holds others back whole ticks.
struct Link {
    loss_percent: u8,
    max_hold: u32,
    rng: Noise,
    held: Vec<(u32, Vec<u8>)>,
}

impl Link {
    fn new(loss_percent: u8, max_hold: u32) -> Link {
        Link { loss_percent, max_hold, rng: Noise::new(0x6c696e6b), held: Vec::new() }
    }

    fn offer(&mut self, packet: Option<Vec<u8>>) {
        let Some(p) = packet else { return };
        if self.rng.uniform() * 100.0 < f32::from(self.loss_percent) {
            return;
        }
        let hold = if self.max_hold == 0 { 0 } else { (self.rng.uniform() * (self.max_hold + 1) as f32) as u32 };
        self.held.push((hold, p));
    }

    /// Packets to send this tick; the others wait one tick less.
    fn due(&mut self) -> Vec<Vec<u8>> {
        let (now, later): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(h, _)| *h == 0);
        self.held = later.into_iter().map(|(h, p)| (h - 1, p)).collect();
        now.into_iter().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tones_into_the_audio_only_when_keyed_in_band() {
        let server = "127.0.0.1:5060".parse().unwrap();
        let mut o = CallerOptions::new(server, "sip:x@y", "12,#");
        let p = plan(&o);
        assert_eq!(p.audio.len(), p.ticks.len() * FRAME_SAMPLES);
        assert!(p.audio.iter().all(|s| *s == 0), "RFC 4733 only: no tone in the audio");
        o.keying = Keying::InBand;
        let p = plan(&o);
        assert!(p.audio[..800].iter().any(|s| s.abs() > 1000), "the tone is in the audio");
        assert!(p.audio[800..960].iter().all(|s| *s == 0), "then a gap");
    }

    #[test]
    fn link_drops_about_its_share_and_holds_packets_back() {
        let mut l = Link::new(5, 1);
        let mut sent = 0;
        for i in 0..2000u32 {
            l.offer(Some(i.to_be_bytes().to_vec()));
            sent += l.due().len();
        }
        let lost = 2000 - sent - l.held.len();
        assert!((40..=160).contains(&lost), "{lost} of 2000 lost");
    }
}
