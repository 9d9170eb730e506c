//! Which packets one media leg takes. RTP is plain UDP: anyone who can reach a leg's port
//! can send to it, so a packet counts only when it comes from the address the leg's SDP
//! names (RFC 4566 §5.7 `c=`, §5.14 `m=`; RFC 3264 §5), or, where symmetric RTP is configured
//! (RFC 4961 §3, for phones behind NAT whose SDP names a private address), from the address
//! latched from the first packets that come from the signalling peer's IP. Then only the
//! SSRC (RFC 3550 §8) of the first packet taken, until the leg is renegotiated. Everything
//! else is dropped and counted by reason.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::canonical;

/// How a leg's peer address is fixed (`sip.rtp_source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtpSource {
    /// Only the address the SDP names.
    #[default]
    Sdp,
    /// The SDP's address, or the first address on the signalling peer's IP to send within
    /// the first `LATCH_WINDOW` packets (symmetric RTP).
    Latch,
}

/// How many packets from anywhere may arrive before an unlatched leg stops latching.
pub const LATCH_WINDOW: u8 = 10;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not from the leg's peer address.
    Address,
    /// From the peer's address, but another SSRC than the leg's.
    Ssrc,
}

#[derive(Debug, Clone)]
pub struct SourceLock {
    sdp: SocketAddr,
    signalling_ip: IpAddr,
    source: RtpSource,
    peer: Option<SocketAddr>,
    ssrc: Option<u32>,
    /// Packets seen while unlatched.
    seen: u8,
}

impl SourceLock {
    /// A leg whose SDP names `sdp` and whose signalling comes from `signalling_ip`.
    pub fn new(sdp: SocketAddr, signalling_ip: IpAddr, source: RtpSource) -> SourceLock {
        SourceLock {
            sdp: canonical(sdp),
            signalling_ip: signalling_ip.to_canonical(),
            source,
            peer: None,
            ssrc: None,
            seen: 0,
        }
    }

    /// The address check, before any work on the packet (SRTP, parsing).
    pub fn check_address(&mut self, from: SocketAddr) -> Result<(), Refused> {
        let from = canonical(from);
        if let Some(peer) = self.peer {
            return if from == peer { Ok(()) } else { Err(Refused::Address) };
        }
        let latches = self.source == RtpSource::Latch && self.seen < LATCH_WINDOW && from.ip() == self.signalling_ip;
        if from == self.sdp || latches {
            self.peer = Some(from);
            return Ok(());
        }
        self.seen = self.seen.saturating_add(1);
        Err(Refused::Address)
    }

    /// The SSRC check, once the packet parsed: the first SSRC taken is the leg's.
    pub fn check_ssrc(&mut self, ssrc: u32) -> Result<(), Refused> {
        match self.ssrc {
            Some(s) if s != ssrc => Err(Refused::Ssrc),
            Some(_) => Ok(()),
            None => {
                self.ssrc = Some(ssrc);
                Ok(())
            }
        }
    }

    /// The address packets are taken from, once one has been.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn takes_only_the_sdp_address_and_then_only_its_first_ssrc() {
        let mut l = SourceLock::new(a("192.0.2.10:4000"), "192.0.2.10".parse().unwrap(), RtpSource::Sdp);
        assert_eq!(l.check_address(a("192.0.2.10:4002")), Err(Refused::Address), "same IP, other port");
        assert_eq!(l.check_address(a("198.51.100.7:4000")), Err(Refused::Address));
        assert_eq!(l.check_address(a("192.0.2.10:4000")), Ok(()));
        assert_eq!(l.check_ssrc(7), Ok(()));
        assert_eq!(l.check_ssrc(8), Err(Refused::Ssrc), "another source on the peer's address");
        assert_eq!(l.check_ssrc(7), Ok(()));
        assert_eq!(l.peer(), Some(a("192.0.2.10:4000")));
        let mut mapped = SourceLock::new(a("127.0.0.1:4000"), "127.0.0.1".parse().unwrap(), RtpSource::Sdp);
        assert_eq!(mapped.check_address(a("[::ffff:127.0.0.1]:4000")), Ok(()), "dual-stack sockets");
    }

    #[test]
    fn latching_takes_the_signalling_ip_within_the_window_only() {
        let sdp = a("10.0.0.5:4000");
        let nat: IpAddr = "203.0.113.9".parse().unwrap();
        let mut l = SourceLock::new(sdp, nat, RtpSource::Latch);
        assert_eq!(l.check_address(a("198.51.100.7:5000")), Err(Refused::Address), "a stranger never latches");
        assert_eq!(l.check_address(a("203.0.113.9:61000")), Ok(()));
        assert_eq!(l.check_address(a("203.0.113.9:61002")), Err(Refused::Address), "latched to one port");
        assert_eq!(l.check_address(sdp), Err(Refused::Address), "latched away from the SDP address");

        let mut late = SourceLock::new(sdp, nat, RtpSource::Latch);
        for i in 0..LATCH_WINDOW {
            assert_eq!(
                late.check_address(SocketAddr::new("198.51.100.7".parse().unwrap(), 5000 + u16::from(i))),
                Err(Refused::Address)
            );
        }
        assert_eq!(late.check_address(a("203.0.113.9:61000")), Err(Refused::Address), "the window has closed");
        assert_eq!(late.check_address(sdp), Ok(()), "the SDP address is always good");

        let mut off = SourceLock::new(sdp, nat, RtpSource::Sdp);
        assert_eq!(off.check_address(a("203.0.113.9:61000")), Err(Refused::Address), "no latching unless configured");
    }
}
