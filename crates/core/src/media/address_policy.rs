//! Where a leg's SDP may send its media. The `c=` and `m=` lines (RFC 4566 §5.7, §5.14)
//! name the address tonewall sends RTP to for the whole call (RFC 3264 §5, §6), and nothing
//! proves the offerer owns it: one small INVITE naming a victim's address would aim prompts
//! and a bridged call's audio at it. So a leg's media address must be the IP its signalling
//! comes from, or inside `media.peer_networks` (an SBC's media interface), unless the
//! signalling peer is a trusted PBX (`sip.trusted_peers`), which places media where it likes.
//! Multicast and broadcast are never a peer. `c=0.0.0.0` (RFC 3264 §8.4, old-style hold)
//! names no one and passes. Under symmetric RTP (`media.rtp_source = "latch"`), an address
//! outside the policy is the private address of a phone behind NAT: the port is kept and the
//! address becomes the signalling IP, where the latch finds the phone.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use thiserror::Error;

use super::source_lock::RtpSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddressRefused {
    #[error("the SDP's media address is multicast or broadcast")]
    NotUnicast,
    #[error("the SDP's media address is neither the signalling address nor in media.peer_networks")]
    Elsewhere,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaAddressPolicy {
    /// Networks any leg's media may be at (`media.peer_networks`).
    pub peer_networks: Vec<IpNet>,
    /// PBXs and SBCs whose SDP may name any unicast address (`sip.trusted_peers`).
    pub trusted_peers: Vec<IpNet>,
    pub rtp_source: RtpSource,
}

impl MediaAddressPolicy {
    /// Where to send a leg's media, given the address its SDP names and the IP its
    /// signalling comes from.
    pub fn target(&self, sdp: SocketAddr, signalling: IpAddr) -> Result<SocketAddr, AddressRefused> {
        let signalling = signalling.to_canonical();
        let ip = sdp.ip().to_canonical();
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_multicast() || broadcast {
            return Err(AddressRefused::NotUnicast);
        }
        let allowed = ip.is_unspecified()
            || ip == signalling
            || self.trusted_peers.iter().any(|n| n.contains(&signalling))
            || self.peer_networks.iter().any(|n| n.contains(&ip));
        match (allowed, self.rtp_source) {
            (true, _) => Ok(sdp),
            (false, RtpSource::Latch) => Ok(SocketAddr::new(signalling, sdp.port())),
            (false, RtpSource::Sdp) => Err(AddressRefused::Elsewhere),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn media_goes_only_where_the_signalling_peer_or_the_config_says() {
        let p = MediaAddressPolicy {
            peer_networks: vec!["10.9.0.0/16".parse().unwrap()],
            trusted_peers: vec!["10.0.0.5/32".parse().unwrap()],
            rtp_source: RtpSource::Sdp,
        };
        let caller = ip("198.51.100.7");
        assert_eq!(p.target(a("198.51.100.7:4000"), caller), Ok(a("198.51.100.7:4000")), "the caller itself");
        assert_eq!(p.target(a("10.9.1.2:4000"), caller), Ok(a("10.9.1.2:4000")), "the SBC's media network");
        assert_eq!(p.target(a("203.0.113.50:4000"), caller), Err(AddressRefused::Elsewhere), "a victim");
        assert_eq!(p.target(a("0.0.0.0:4000"), caller), Ok(a("0.0.0.0:4000")), "RFC 2543 hold");
        let pbx = ip("10.0.0.5");
        assert_eq!(p.target(a("203.0.113.50:4000"), pbx), Ok(a("203.0.113.50:4000")), "a trusted PBX places media");
        assert_eq!(p.target(a("224.0.0.1:4000"), pbx), Err(AddressRefused::NotUnicast));
        assert_eq!(p.target(a("255.255.255.255:4000"), pbx), Err(AddressRefused::NotUnicast));
        assert_eq!(p.target(a("[ff02::1]:4000"), pbx), Err(AddressRefused::NotUnicast));
        let v6 = ip("2001:db8::7");
        assert_eq!(p.target(a("[2001:db8::7]:4000"), v6), Ok(a("[2001:db8::7]:4000")));
        assert_eq!(p.target(a("[2001:db8::8]:4000"), v6), Err(AddressRefused::Elsewhere), "not even the same /64");
    }

    #[test]
    fn under_latching_a_private_address_becomes_the_signalling_ip() {
        let p = MediaAddressPolicy { rtp_source: RtpSource::Latch, ..Default::default() };
        assert_eq!(p.target(a("192.168.1.20:16384"), ip("198.51.100.7")), Ok(a("198.51.100.7:16384")));
        let mapped = ip("::ffff:198.51.100.7");
        assert_eq!(p.target(a("198.51.100.7:4000"), mapped), Ok(a("198.51.100.7:4000")), "dual-stack socket");
    }
}
