//! RTP port allocation from the configured range: each call binds two UDP sockets (caller
//! leg, agent leg) on even ports, leaving the odd ones for RTCP (RFC 3550 §11). Each socket
//! is drawn at random from the free ports, so a call's ports cannot be guessed from the
//! order calls came in (the legs also take packets only from their peers: `source_lock`).

use std::net::{IpAddr, SocketAddr};
use tokio::net::UdpSocket;

pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
}

impl PortPool {
    pub fn new(ip: IpAddr, min: u16, max: u16) -> PortPool {
        let min = min + min % 2;
        PortPool { ip, min, max }
    }

    fn slots(&self) -> u32 {
        u32::from(self.max - self.min) / 2 + 1
    }

    async fn bind_one(&self) -> Option<UdpSocket> {
        // From a random slot on, so a full range still finds its free ports.
        let start = rand::random::<u32>();
        for i in 0..self.slots() {
            let slot = start.wrapping_add(i) % self.slots();
            let port = self.min + (slot * 2) as u16;
            if let Ok(s) = UdpSocket::bind(SocketAddr::new(self.ip, port)).await {
                return Some(s);
            }
        }
        None
    }

    /// Two sockets for one call, or None when the range is exhausted.
    pub async fn bind_pair(&self) -> Option<(UdpSocket, UdpSocket)> {
        let a = self.bind_one().await?;
        let b = self.bind_one().await?;
        Some((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_even_ports_in_range_and_reports_exhaustion() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41001, 41009);
        let (a, b) = pool.bind_pair().await.unwrap();
        let (c, d) = pool.bind_pair().await.unwrap();
        let ports: Vec<u16> = [&a, &b, &c, &d].iter().map(|s| s.local_addr().unwrap().port()).collect();
        assert!(ports.iter().all(|p| p % 2 == 0 && (41002..=41009).contains(p)), "{ports:?}");
        assert!(pool.bind_pair().await.is_none());
        drop((a, b));
        assert!(pool.bind_pair().await.is_some(), "ports are reusable once a call ends");
    }

    #[tokio::test]
    async fn the_first_call_does_not_always_get_the_first_port() {
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..8 {
            let pool = PortPool::new("127.0.0.1".parse().unwrap(), 42000, 42999);
            let (a, _b) = pool.bind_pair().await.unwrap();
            firsts.insert(a.local_addr().unwrap().port());
        }
        // Eight draws from 500 slots: all alike with odds of 1 in 500^7.
        assert!(firsts.len() > 1, "{firsts:?}");
    }
}
