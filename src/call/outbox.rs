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
    queue: VecDeque<MediaPacket>,
    /// Whether the queue's front was already handed out by `poll`.
    front_taken: bool,
    free: Vec<MediaPacket>,
}

impl Outbox {
    pub fn new(to: SocketAddr) -> Outbox {
        let free = (0..16).map(|_| MediaPacket { leg: LegId::Caller, to, len: 0, buf: [0; MAX_PACKET] }).collect();
        Outbox { queue: VecDeque::with_capacity(16), front_taken: false, free }
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
        let mut p = self.free.pop().unwrap_or(MediaPacket { leg, to, len: 0, buf: [0; MAX_PACKET] });
        p.leg = leg;
        p.to = to;
        p.len = stream.write(&mut p.buf, source, src_ts, payload_type, payload, now);
        self.queue.push_back(p);
    }

    /// The next packet to send, which may still be changed (SRTP protects it in place).
    pub fn poll(&mut self) -> Option<&mut MediaPacket> {
        if self.front_taken
            && let Some(done) = self.queue.pop_front()
        {
            self.free.push(done);
        }
        // The packet handed out stays at the front (its buffer borrowed) until the next call.
        self.front_taken = !self.queue.is_empty();
        self.queue.front_mut()
    }

    /// The packet `poll` last handed out.
    pub fn front(&self) -> Option<&MediaPacket> {
        self.queue.front()
    }
}
