//! RTP port allocation from the configured range: each call binds two UDP sockets (caller
//! leg, agent leg) on even ports, leaving the odd ones for RTCP (RFC 3550 §11).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::UdpSocket;

pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    next: AtomicU32,
}

impl PortPool {
    pub fn new(ip: IpAddr, min: u16, max: u16) -> PortPool {
        let min = min + min % 2;
        PortPool { ip, min, max, next: AtomicU32::new(0) }
    }

    fn slots(&self) -> u32 {
        u32::from(self.max - self.min) / 2 + 1
    }

    async fn bind_one(&self) -> Option<UdpSocket> {
        for _ in 0..self.slots() {
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots();
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
}
