//! A test agent: answers tonewall's INVITE, speaks a steady 440 Hz tone back (so the
//! agent-to-caller path carries audio), and records every packet it hears: the decoded audio,
//! payload types, and whether sequence numbers and timestamps ran without a gap.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, Seq};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval};

use super::{SoftphoneError, Ua};
use tonewall_core::media::g711::Codec;
use tonewall_core::media::rtp::{FRAME_SAMPLES, RtpReader};
use tonewall_core::sip::message::{Method, ResponseBuilder, SipMessage};
use tonewall_core::sip::sdp::{self, RemoteDescription};

#[derive(Debug, Default, Clone)]
pub struct AgentReport {
    pub answered: bool,
    pub hung_up: bool,
    pub packets: u64,
    /// Packets whose payload type was not the negotiated audio codec (e.g. RFC 4733).
    pub non_audio_packets: u64,
    /// Places where the sequence number did not follow the previous packet's.
    pub sequence_gaps: u64,
    /// Places where the timestamp did not advance by the previous packet's sample count.
    pub timestamp_jumps: u64,
    /// Everything heard, decoded to 8 kHz linear PCM.
    pub audio: Vec<i16>,
}

impl AgentReport {
    pub fn write_wav(&self, path: &Path) -> Result<(), hound::Error> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec)?;
        for s in &self.audio {
            w.write_sample(*s)?;
        }
        w.finalize()
    }
}

pub struct Agent {
    pub uri: String,
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<AgentReport, SoftphoneError>>,
}

impl Agent {
    pub async fn start() -> Result<Agent, SoftphoneError> {
        let ua = Ua::bind().await?;
        let addr = ua.addr();
        let rtp = UdpSocket::bind("127.0.0.1:0").await?;
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(ua, rtp, stop_rx));
        Ok(Agent { uri: format!("sip:agent@{addr}"), addr, stop, task })
    }

    /// Stops listening and returns what the agent heard.
    pub async fn finish(self) -> Result<AgentReport, SoftphoneError> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| SoftphoneError::Protocol(e.to_string()))?
    }
}

async fn run(ua: Ua, rtp: UdpSocket, mut stop: oneshot::Receiver<()>) -> Result<AgentReport, SoftphoneError> {
    let mut report = AgentReport::default();
    let mut media: Option<(SocketAddr, Codec)> = None;
    let mut tick = interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<(u16, u32, u32)> = None;
    let mut buf = [0u8; 2048];
    let (ssrc, mut seq, mut ts) = (rand::random::<u32>(), 0u16, 0u32);
    let mut phase = 0f32;
    let tag = format!("ag{}", rand::random::<u32>());
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(report),
            msg = ua.recv() => {
                let (msg, from) = msg?;
                let SipMessage::Request(req) = msg else { continue };
                match req.method() {
                    Method::Invite => {
                        let offer = RemoteDescription::parse(req.body()).map_err(|e| SoftphoneError::Protocol(e.to_string()))?;
                        let m = offer.negotiate();
                        media = Some((m.remote, m.codec));
                        let answer = sdp::write(rtp.local_addr()?, 2, &[m.codec], None);
                        let ok = ResponseBuilder::new(&req, 200, "OK")
                            .to_tag(&tag)
                            .header("Contact", &format!("<sip:agent@{}>", ua.addr()))
                            .body("application/sdp", answer.as_bytes())
                            .build();
                        ua.send(&ok, from).await?;
                        report.answered = true;
                    }
                    Method::Bye => {
                        ua.answer(&req, from).await?;
                        report.hung_up = true;
                        media = None;
                    }
                    _ => ua.answer(&req, from).await?,
                }
            }
            r = rtp.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let Ok(p) = RtpReader::new(&buf[..n]) else { continue };
                // Packets still in flight after the BYE belong to no call.
                let Some((_, codec)) = media else { continue };
                report.packets += 1;
                if p.payload_type() != codec.payload_type() {
                    report.non_audio_packets += 1;
                    continue;
                }
                let (s, t, len) = (u16::from(p.sequence_number()), p.timestamp(), p.payload().len() as u32);
                if let Some((ls, lt, llen)) = last {
                    if s != ls.wrapping_add(1) {
                        report.sequence_gaps += 1;
                    }
                    if t != lt.wrapping_add(llen) && !p.mark() {
                        report.timestamp_jumps += 1;
                    }
                }
                last = Some((s, t, len));
                report.audio.extend(p.payload().iter().map(|b| codec.decode(*b)));
            }
            _ = tick.tick() => {
                let Some((to, codec)) = media else { continue };
                let mut payload = [0u8; FRAME_SAMPLES];
                for o in payload.iter_mut() {
                    *o = codec.encode((phase.sin() * 3000.0) as i16);
                    phase = (phase + 2.0 * std::f32::consts::PI * 440.0 / 8000.0) % (2.0 * std::f32::consts::PI);
                }
                if let Ok(n) = RtpPacketBuilder::new().payload_type(codec.payload_type()).ssrc(ssrc).sequence(Seq::from(seq)).timestamp(ts).payload(&payload).build_into(&mut buf) {
                    let _ = rtp.send_to(&buf[..n], to).await;
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(FRAME_SAMPLES as u32);
            }
        }
    }
}
