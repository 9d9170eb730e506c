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
use tonewall_core::media::dtmf::signal::{Noise, TonePair, push_silence, push_tone, to_i16};
use tonewall_core::media::g711::Codec;
use tonewall_core::media::rtp::{FRAME_SAMPLES, RtpReader};
use tonewall_core::media::telephone_event::{Key, TelephoneEvent};
use tonewall_core::sip::message::{Method, SipMessage};
use tonewall_core::sip::sdp::{self, RemoteDescription};

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
}

/// A key: 4 event updates and 3 end packets on consecutive 20 ms ticks; in-band, 100 ms of
/// tone. Then 100 ms before the next key.
const EVENT_PACKETS: u32 = 7;
const EVENT_DURATION: u16 = 800;
const TONE_TICKS: u32 = 5;
const GAP_TICKS: u32 = 5;

/// What the caller sends at each 20 ms tick: always an audio frame (unless an RFC 4733-only
/// phone is sending events instead), and maybe an event packet.
struct Plan {
    audio: Vec<i16>,
    events: Vec<Option<(u8, u32, u32)>>,
}

fn plan(opts: &CallerOptions) -> Plan {
    let mut tones = Vec::new();
    let mut events = Vec::new();
    for step in &opts.steps {
        match *step {
            Step::Press(k) => {
                let start = events.len() as u32;
                let ticks = EVENT_PACKETS.max(TONE_TICKS) + GAP_TICKS;
                for i in 0..ticks {
                    let sends_event = opts.keying != Keying::InBand && i < EVENT_PACKETS;
                    events.push(sends_event.then_some((k.event_code(), start, i)));
                }
                if opts.keying == Keying::Rfc4733 {
                    push_silence(&mut tones, ticks as f32 * 20.0);
                } else {
                    push_tone(&mut tones, TonePair::key(k, opts.tone_dbm0), TONE_TICKS as f32 * 20.0);
                    push_silence(&mut tones, (ticks - TONE_TICKS) as f32 * 20.0);
                }
            }
            Step::Pause(d) => {
                let ticks = (d.as_millis() / 20) as usize;
                events.extend((0..ticks).map(|_| None));
                push_silence(&mut tones, ticks as f32 * 20.0);
            }
        }
    }
    if let Some(bg) = &opts.background {
        for (i, t) in tones.iter_mut().enumerate() {
            *t += f32::from(bg[i % bg.len()]);
        }
    }
    Plan { audio: to_i16(&tones), events }
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
    let total = plan.events.len() as u32 + (opts.linger.as_millis() / 20) as u32;
    let mut i = 0u32;
    while i < total && !report.hung_up_by_tonewall {
        tokio::select! {
            _ = tick.tick() => {
                let ts = ts0.wrapping_add(i * FRAME_SAMPLES as u32);
                let event = plan.events.get(i as usize).copied().flatten();
                if let Some((code, start_tick, index)) = event {
                    let end = index >= 4;
                    let duration = if end { EVENT_DURATION } else { (index as u16 + 1) * 160 };
                    let ev = TelephoneEvent { code, end, volume: 10, duration }.to_bytes();
                    report.keys_sent += usize::from(index == 0);
                    let start_ts = ts0.wrapping_add(start_tick * FRAME_SAMPLES as u32);
                    let pkt = RtpPacketBuilder::new().payload_type(opts.event_pt).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(start_ts).marked(index == 0).payload(&ev).build();
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
                    && RtpReader::new(&rbuf[..n]).is_ok()
                {
                    report.packets_heard += 1;
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
    fn plans_per_keying() {
        let server = "127.0.0.1:5060".parse().unwrap();
        let mut o = CallerOptions::new(server, "sip:x@y", "12,#");
        let p = plan(&o);
        // 3 keys × (7 event packets + 5 gap ticks) + a 1 s pause of 50 ticks.
        assert_eq!(p.events.len(), 3 * 12 + 50);
        assert!(matches!(p.events[0], Some((1, 0, 0))));
        assert!(matches!(p.events[12], Some((2, 12, 0))));
        assert!(p.audio.iter().all(|s| *s == 0), "RFC 4733 only: no tone in the audio");
        o.keying = Keying::InBand;
        let p = plan(&o);
        assert!(p.events.iter().all(Option::is_none));
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
