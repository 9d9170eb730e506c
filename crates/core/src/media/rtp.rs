//! RTP (RFC 3550 §5.1) through rtp-rs: parsing incoming packets, and outgoing streams whose
//! sequence numbers and timestamps stay continuous when what feeds them changes (relayed
//! audio, masking frames, prompts), so the far end's jitter buffer never sees a jump.

use std::time::{Duration, Instant};

pub use rtp_rs::RtpReader;
use rtp_rs::{RtpPacketBuilder, Seq};

/// An RTP synchronisation source identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ssrc(pub u32);

/// 8 kHz: every codec tonewall speaks (G.711, telephone-event) uses this RTP clock.
pub const CLOCK_RATE: u32 = 8000;
/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Largest RTP packet we relay: 12-byte header, 15 CSRCs, 60 ms of G.711, and room to spare.
pub const MAX_PACKET: usize = 1024;

/// What currently feeds an outgoing stream. A change re-bases the timestamp mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Packets relayed from the other leg, identified by their SSRC.
    Relay(Ssrc),
    /// Frames tonewall makes itself (prompts, comfort audio), on its own sample counter.
    Local,
}

/// One outgoing RTP stream toward a leg.
#[derive(Debug)]
pub struct OutStream {
    ssrc: Ssrc,
    seq: Seq,
    last_ts: u32,
    last_at: Option<Instant>,
    source: Option<Source>,
    offset: u32,
}

impl OutStream {
    pub fn new(ssrc: Ssrc, initial_seq: u16, initial_ts: u32) -> Self {
        OutStream { ssrc, seq: Seq::from(initial_seq), last_ts: initial_ts, last_at: None, source: None, offset: 0 }
    }

    /// Writes one packet into `buf` and returns its length. `src_ts` is the timestamp in the
    /// source's own timeline; the output timestamp continues from the last packet sent plus
    /// the wall time since, whenever the source changes.
    pub fn write(
        &mut self,
        buf: &mut [u8],
        source: Source,
        src_ts: u32,
        payload_type: u8,
        payload: &[u8],
        now: Instant,
    ) -> usize {
        let switched = self.source != Some(source);
        if switched {
            let expected = match self.last_at {
                Some(at) => self.last_ts.wrapping_add(samples_in(now.saturating_duration_since(at))),
                None => self.last_ts,
            };
            self.offset = expected.wrapping_sub(src_ts);
            self.source = Some(source);
        }
        let ts = src_ts.wrapping_add(self.offset);
        self.seq = self.seq.next();
        self.last_ts = ts;
        self.last_at = Some(now);
        RtpPacketBuilder::new()
            .payload_type(payload_type)
            .ssrc(self.ssrc.0)
            .sequence(self.seq)
            .timestamp(ts)
            .marked(switched)
            .payload(payload)
            .build_into(buf)
            // Invariant: payload_type < 128 and buf is MAX_PACKET long, larger than any
            // payload we write (callers cap payloads at MAX_PACKET - 12).
            .unwrap_or(0)
    }
}

fn samples_in(d: Duration) -> u32 {
    (d.as_micros() * u128::from(CLOCK_RATE) / 1_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &[u8]) -> (u16, u32, bool, u8) {
        let r = RtpReader::new(buf).unwrap();
        (r.sequence_number().into(), r.timestamp(), r.mark(), r.payload_type())
    }

    #[test]
    fn sequence_and_timestamps_continue_across_source_changes() {
        let t0 = crate::test_origin();
        let mut s = OutStream::new(Ssrc(7), 65534, 1000);
        let mut buf = [0u8; MAX_PACKET];
        let payload = [0xFFu8; 160];
        let mut out = vec![];
        // Relay from SSRC 1 starting at a random timestamp, then local frames, then relay again.
        for i in 0..3u32 {
            let n = s.write(
                &mut buf,
                Source::Relay(Ssrc(1)),
                90_000 + i * 160,
                0,
                &payload,
                t0 + Duration::from_millis(20 * u64::from(i)),
            );
            out.push(read(&buf[..n]));
        }
        for i in 0..2u32 {
            let n = s.write(
                &mut buf,
                Source::Local,
                i * 160,
                0,
                &payload,
                t0 + Duration::from_millis(60 + 20 * u64::from(i)),
            );
            out.push(read(&buf[..n]));
        }
        let n =
            s.write(&mut buf, Source::Relay(Ssrc(1)), 90_000 + 5 * 160, 0, &payload, t0 + Duration::from_millis(100));
        out.push(read(&buf[..n]));
        let seqs: Vec<u16> = out.iter().map(|o| o.0).collect();
        assert_eq!(seqs, vec![65535, 0, 1, 2, 3, 4]);
        let tss: Vec<u32> = out.iter().map(|o| o.1).collect();
        assert_eq!(tss, vec![1000, 1160, 1320, 1480, 1640, 1800]);
        let marks: Vec<bool> = out.iter().map(|o| o.2).collect();
        assert_eq!(marks, vec![true, false, false, true, false, true]);
    }
}
