//! Per-source rate limiting: a token bucket per source, `rate` tokens a second up to
//! `2·rate`. A source is an IPv4 address or an IPv6 /64 (one subscriber's prefix: anyone who
//! has one has 2^64 addresses). Memory is bounded: past `MAX_TRACKED` sources, idle ones are
//! forgotten, and while the table is still full, every untracked source shares one bucket.
//! The endpoint keeps one limiter for new out-of-dialog requests and another for requests
//! inside calls, so a flood of the first kind cannot cut established calls. Sans-IO: time is
//! an input.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

/// Buckets kept before idle ones (full again) are forgotten.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by every source the full table cannot track.
    overflow: Bucket,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When it was last drawn from; a new bucket is full.
    at: Option<Instant>,
}

impl SourceLimiter {
    pub fn new(rate_per_second: u32) -> SourceLimiter {
        let rate = f64::from(rate_per_second.max(1));
        let burst = 2.0 * rate;
        SourceLimiter { rate, burst, buckets: HashMap::new(), overflow: Bucket { tokens: burst, at: None } }
    }

    /// Takes a token for `source`; false when its bucket is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let key = source_key(source);
        let (rate, burst) = (self.rate, self.burst);
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&key) {
            self.buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
        }
        let b = match self.buckets.len() < MAX_TRACKED || self.buckets.contains_key(&key) {
            true => self.buckets.entry(key).or_insert(Bucket { tokens: burst, at: None }),
            false => &mut self.overflow,
        };
        b.take(now, rate, burst)
    }

    /// Sources tracked one by one (at most `MAX_TRACKED`).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// What counts as one source: IPv4 (also as `::ffff:a.b.c.d`) as it is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = self.refilled(now, rate, burst);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        match self.at {
            Some(at) => (self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst),
            None => burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_source() {
        let t = crate::test_origin();
        let mut l = SourceLimiter::new(10);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert_eq!((0..30).filter(|_| l.allow(a, t)).count(), 20, "burst of twice the rate");
        assert!(l.allow(b, t), "another source has its own bucket");
        assert!(!l.allow(a, t + Duration::from_millis(50)));
        assert!(l.allow(a, t + Duration::from_millis(100)), "one token per 100 ms at 10/s");
        assert_eq!((0..30).filter(|_| l.allow(a, t + Duration::from_secs(60))).count(), 20, "capped at the burst");
    }

    #[test]
    fn an_ipv6_prefix_is_one_source() {
        let t = crate::test_origin();
        let mut l = SourceLimiter::new(1);
        let hosts = (1..=5).map(|i| format!("2001:db8:1:2::{i}").parse::<IpAddr>().unwrap());
        assert_eq!(hosts.filter(|h| l.allow(*h, t)).count(), 2, "five addresses of one /64 share its burst of 2");
        assert!(l.allow("2001:db8:1:3::1".parse().unwrap(), t), "the next /64 is another source");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(l.allow(mapped, t) && l.allow("192.0.2.7".parse().unwrap(), t));
        assert!(!l.allow("192.0.2.7".parse().unwrap(), t), "a mapped IPv4 address is that address");
    }

    #[test]
    fn memory_stays_bounded_when_every_source_is_busy() {
        let t = crate::test_origin();
        let mut l = SourceLimiter::new(1);
        // More busy sources than the table holds: each takes a token, so none is idle.
        let sources = (0..MAX_TRACKED as u32 + 500).map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        let allowed = sources.filter(|s| l.allow(*s, t)).count();
        assert_eq!(l.tracked(), MAX_TRACKED);
        // The untracked 500 shared one bucket of 2.
        assert_eq!(allowed, MAX_TRACKED + 2);
        // Once idle (full again), tracked sources are forgotten to make room.
        assert!(l.allow("192.0.2.1".parse().unwrap(), t + Duration::from_secs(10)));
        assert_eq!(l.tracked(), 1);
    }
}
