//! A scripted caller: dials a transfer URI over real UDP, keys digits as RFC 4733 events
//! (§2.5: updates every 20 ms, three end packets) between 20 ms G.711 audio frames, counts
//! what it hears, and answers the BYE that ends the call.

use std::net::SocketAddr;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, Seq};
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use super::{SoftphoneError, Ua};
use crate::media::g711::Codec;
use crate::media::rtp::{FRAME_SAMPLES, RtpReader};
use crate::media::telephone_event::{Key, TelephoneEvent};
use crate::sip::message::{Method, SipMessage};
use crate::sip::sdp::{self, RemoteDescription};

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

#[derive(Debug, Clone)]
pub struct CallerOptions {
    pub server: SocketAddr,
    pub uri: String,
    pub codec: Codec,
    pub event_pt: u8,
    pub steps: Vec<Step>,
    /// How long to wait after the last key for tonewall to hang up before we do.
    pub linger: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct CallerReport {
    pub answered: bool,
    pub packets_heard: u64,
    pub hung_up_by_tonewall: bool,
    pub keys_sent: usize,
}

/// Frames a 100 ms key occupies: 4 updates and 3 end packets on consecutive 20 ms ticks.
const EVENT_PACKETS: u32 = 7;
const EVENT_DURATION: u16 = 800;
const GAP_TICKS: u32 = 5;

enum Frame {
    Audio,
    Event { code: u8, start_tick: u32, index: u32 },
}

fn schedule(steps: &[Step]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for step in steps {
        match *step {
            Step::Press(k) => {
                let start_tick = frames.len() as u32;
                for index in 0..EVENT_PACKETS {
                    frames.push(Frame::Event { code: k.event_code(), start_tick, index });
                }
                frames.extend((0..GAP_TICKS).map(|_| Frame::Audio));
            }
            Step::Pause(d) => frames.extend((0..d.as_millis() / 20).map(|_| Frame::Audio)),
        }
    }
    frames
}

pub async fn place_call(opts: CallerOptions) -> Result<CallerReport, SoftphoneError> {
    let ua = Ua::bind().await?;
    let rtp = UdpSocket::bind("127.0.0.1:0").await?;
    let offer = sdp::write(rtp.local_addr()?, 1, &[opts.codec], Some(opts.event_pt));
    let (invite, call_id, from_tag) = ua.invite(&opts.uri, &offer);
    ua.send(&invite, opts.server).await?;
    let mut report = CallerReport::default();

    // Wait for the 200 (resending the INVITE every 500 ms, as Timer A would).
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if Instant::now() > deadline {
            return Err(SoftphoneError::Timeout("no answer to INVITE"));
        }
        match timeout(Duration::from_millis(500), ua.recv()).await {
            Err(_) => ua.send(&invite, opts.server).await?,
            Ok(msg) => match msg? {
                (SipMessage::Response(r), _) if r.status() >= 300 => return Err(SoftphoneError::Refused(r.status())),
                (SipMessage::Response(r), _) if r.status() >= 200 => break r,
                _ => {}
            },
        }
    };
    report.answered = true;
    let media =
        RemoteDescription::parse(answer.body()).map_err(|e| SoftphoneError::Protocol(e.to_string()))?.negotiate();
    let to = answer.to().to_string();
    ua.send(
        &ua.in_dialog(Method::Ack, &call_id, &from_tag, &to, 1, answer.contact_uri().unwrap_or(&opts.uri)),
        opts.server,
    )
    .await?;

    let frames = schedule(&opts.steps);
    let mut tick = interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ssrc: u32 = rand::random();
    let (mut seq, ts0) = (rand::random::<u16>(), rand::random::<u32>());
    let silence = [opts.codec.silence(); FRAME_SAMPLES];
    let mut buf = [0u8; 2048];
    let mut rbuf = [0u8; 2048];
    let linger_ticks = (opts.linger.as_millis() / 20) as u32;
    let total = frames.len() as u32 + linger_ticks;
    let mut i = 0u32;
    while i < total && !report.hung_up_by_tonewall {
        tokio::select! {
            _ = tick.tick() => {
                let ts = ts0.wrapping_add(i * FRAME_SAMPLES as u32);
                let pkt = match frames.get(i as usize) {
                    Some(Frame::Event { code, start_tick, index }) => {
                        let duration = if *index >= 3 { EVENT_DURATION } else { (*index as u16 + 1) * 160 };
                        let ev = TelephoneEvent { code: *code, end: *index >= 3, volume: 10, duration }.to_bytes();
                        if *index == 0 {
                            report.keys_sent += 1;
                        }
                        let start_ts = ts0.wrapping_add(start_tick * FRAME_SAMPLES as u32);
                        RtpPacketBuilder::new().payload_type(opts.event_pt).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(start_ts).marked(*index == 0).payload(&ev).build_into(&mut buf)
                    }
                    _ => RtpPacketBuilder::new().payload_type(media.codec.payload_type()).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(ts).payload(&silence).build_into(&mut buf),
                };
                if let Ok(n) = pkt {
                    rtp.send_to(&buf[..n], media.remote).await?;
                }
                seq = seq.wrapping_add(1);
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
        let bye = ua.in_dialog(Method::Bye, &call_id, &from_tag, &to, 2, answer.contact_uri().unwrap_or(&opts.uri));
        ua.send(&bye, opts.server).await?;
        // Best effort: the 200 for our BYE is not needed for the report.
        let _ = timeout(Duration::from_secs(2), ua.recv()).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_and_schedule() {
        let s = script("12,#");
        assert_eq!(s.len(), 4);
        let frames = schedule(&s);
        // 3 keys × (7 event packets + 5 gap frames) + a 1 s pause of 50 frames.
        assert_eq!(frames.len(), 3 * 12 + 50);
        assert!(matches!(frames[0], Frame::Event { code: 1, start_tick: 0, index: 0 }));
        assert!(matches!(frames[12], Frame::Event { code: 2, start_tick: 12, index: 0 }));
    }
}
