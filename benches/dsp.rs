//! Wall-clock micro-benchmarks (divan) of the per-call media work: the in-band analysis
//! (gate + strict detector + look-ahead + band-stop) per 20 ms frame, and the caller-to-agent
//! relay per packet without masking, with the gate alone and in capture mode. For numbers that repeat on a noisy
//! machine, count instructions instead: see benches/README.md.

use std::net::SocketAddr;
use std::time::Instant;

use divan::{Bencher, black_box};
use rtp_rs::{RtpPacketBuilder, Seq};
use tonewall::call::media::{Bridge, MaskLevel};
use tonewall::media::dtmf::signal::{Noise, TonePair, push_silence, push_tone, to_i16};
use tonewall::media::g711::Codec;
use tonewall::media::masker::{Feed, Masker, Replacement};
use tonewall::media::source_lock::RtpSource;
use tonewall::media::telephone_event::Key;
use tonewall::sip::sdp::MediaParams;

fn main() {
    divan::main();
}

/// One second of keys (100 ms on, 100 ms off) in noise at 20 dB S/N.
fn keyed_audio() -> Vec<i16> {
    let mut x = Vec::new();
    for c in "12345".chars() {
        push_tone(&mut x, TonePair::key(Key::from_char(c).unwrap(), -10.0), 100.0);
        push_silence(&mut x, 100.0);
    }
    Noise::new(5).add(&mut x, -27.0);
    to_i16(&x)
}

#[divan::bench]
fn masker_per_20ms_frame(b: Bencher) {
    let audio = keyed_audio();
    let mut masker = Masker::new(Replacement::ComfortNoise { dbm0: -65.0 });
    let mut out = [0i16; 160];
    let mut frames = audio.chunks_exact(160).cycle();
    b.bench_local(|| {
        let frame = frames.next().unwrap_or(&[0; 160]);
        let found = masker.push(black_box(frame), Feed::Audio);
        let ready = masker.ready().min(160);
        masker.pop(&mut out[..ready]);
        black_box((found, out[0]))
    });
}

fn params(port: u16, codec: Codec) -> MediaParams {
    MediaParams { remote: SocketAddr::from(([127, 0, 0, 1], port)), codec, event_pt: Some(101) }
}

fn relay(b: Bencher, level: MaskLevel) {
    let audio = keyed_audio();
    let packets: Vec<Vec<u8>> = audio
        .chunks_exact(160)
        .enumerate()
        .map(|(i, f)| {
            let payload: Vec<u8> = f.iter().map(|s| Codec::Pcmu.encode(*s)).collect();
            RtpPacketBuilder::new()
                .payload_type(0)
                .ssrc(1)
                .sequence(Seq::from(i as u16))
                .timestamp(i as u32 * 160)
                .payload(&payload)
                .build()
                .unwrap()
        })
        .collect();
    let (caller, agent) = (params(4000, Codec::Pcmu), params(5000, Codec::Pcmu));
    let noise = Replacement::ComfortNoise { dbm0: -65.0 };
    let mut bridge = Bridge::new(caller, caller.remote.ip(), RtpSource::Sdp, 3, noise);
    bridge.set_agent(agent, agent.remote.ip(), None);
    bridge.set_masking(level);
    let t0 = Instant::now();
    let mut i = 0usize;
    b.bench_local(|| {
        // Timestamps keep rising across laps, as a long call's would.
        let mut p = packets[i % packets.len()].clone();
        p[4..8].copy_from_slice(&((i as u32) * 160).to_be_bytes());
        i += 1;
        bridge.handle_caller_packet(black_box(&p), caller.remote, t0);
        while let Some(out) = bridge.poll_packet() {
            black_box(out.len);
        }
    });
}

#[divan::bench]
fn relay_per_packet_direct(b: Bencher) {
    relay(b, MaskLevel::Off);
}

/// "Always mask" outside a capture: the gate alone.
#[divan::bench]
fn relay_per_packet_masking_tones(b: Bencher) {
    relay(b, MaskLevel::Tones);
}

/// A capture: the gate and the DTMF band-stop.
#[divan::bench]
fn relay_per_packet_capture_mode(b: Bencher) {
    relay(b, MaskLevel::Capture);
}
