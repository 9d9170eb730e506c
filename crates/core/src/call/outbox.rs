//! Outgoing RTP packets of one call, in a queue of fixed buffers reserved when the call
//! starts, so sending allocates nothing per packet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::LegId;
use crate::media::rtp::{MAX_PACKET, OutStream, Source};

/// One packet ready to send.
pub struct MediaPacket {
    pub leg: LegId,
    pub to: SocketAddr,
    pub len: usize,
    pub buf: [u8; MAX_PACKET],
}

pub struct Outbox {
    /// Every buffer this call has used; packets are written and sent in place (a packet is
    /// a kilobyte: moving one per send showed up as memmove in profiles).
    slots: Vec<MediaPacket>,
    /// Indices into `slots` waiting to be sent, oldest first.
    queue: VecDeque<usize>,
    /// Whether the queue's front was already handed out by `poll`.
    front_taken: bool,
    free: Vec<usize>,
}

/// Buffers written when the call starts: enough for the steady state.
const WRITTEN: usize = 4;
/// Room reserved for buffers when the call starts: a burst (a gap filled after an event)
/// adds buffers up to this many without allocating (the room is address space until a
/// burst first writes it, so it costs little resident memory).
const RESERVED: usize = 16;

impl Outbox {
    pub fn new(to: SocketAddr) -> Outbox {
        let mut slots = Vec::with_capacity(RESERVED);
        slots.extend((0..WRITTEN).map(|_| MediaPacket { leg: LegId::Caller, to, len: 0, buf: [0; MAX_PACKET] }));
        let mut free = Vec::with_capacity(RESERVED);
        free.extend((0..WRITTEN).rev());
        Outbox { slots, queue: VecDeque::with_capacity(RESERVED), front_taken: false, free }
    }

    /// Writes a packet on `stream` toward `leg` at `to` and queues it.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        leg: LegId,
        to: SocketAddr,
        stream: &mut OutStream,
        source: Source,
        src_ts: u32,
        payload_type: u8,
        payload: &[u8],
        now: Instant,
    ) {
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(MediaPacket { leg, to, len: 0, buf: [0; MAX_PACKET] });
            self.slots.len() - 1
        });
        let p = &mut self.slots[i];
        p.leg = leg;
        p.to = to;
        p.len = stream.write(&mut p.buf, source, src_ts, payload_type, payload, now);
        self.queue.push_back(i);
    }

    /// The next packet to send, which may still be changed (SRTP protects it in place).
    pub fn poll(&mut self) -> Option<&mut MediaPacket> {
        if self.front_taken
            && let Some(done) = self.queue.pop_front()
        {
            self.free.push(done);
        }
        // The packet handed out stays at the front until the next call.
        self.front_taken = !self.queue.is_empty();
        let i = *self.queue.front()?;
        self.slots.get_mut(i)
    }

    /// The packet `poll` last handed out.
    pub fn front(&self) -> Option<&MediaPacket> {
        self.queue.front().and_then(|&i| self.slots.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::Ssrc;

    #[test]
    fn packets_leave_in_order_and_buffers_are_reused() {
        let to: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut out = Outbox::new(to);
        let mut stream = OutStream::new(Ssrc(7), 1, 0);
        let now = crate::test_origin();
        for round in 0..3 {
            // More than the buffers written, so the pool grows once and is reused after.
            for n in 0..(WRITTEN + 4) {
                out.send(
                    LegId::Agent,
                    to,
                    &mut stream,
                    Source::Relay(Ssrc(1)),
                    n as u32 * 160,
                    0,
                    &[n as u8; 160],
                    now,
                );
            }
            for n in 0..(WRITTEN + 4) {
                let p = out.poll().expect("queued");
                assert_eq!((p.len, p.buf[12], p.leg), (172, n as u8, LegId::Agent), "round {round}");
            }
            assert!(out.poll().is_none());
            assert_eq!(out.slots.len(), WRITTEN + 4, "no buffer beyond the largest burst");
            assert_eq!(out.slots.capacity(), RESERVED, "grown within the reserved room");
        }
    }
}
