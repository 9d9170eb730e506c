//! Per-source rate limiting of new out-of-dialog requests: a token bucket per IP address,
//! `rate` tokens a second up to `2·rate`. Requests inside an existing call are never
//! limited here, so a flood cannot cut established calls. Sans-IO: time is an input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Buckets kept before idle ones (full again) are forgotten.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl SourceLimiter {
    pub fn new(rate_per_second: u32) -> SourceLimiter {
        let rate = f64::from(rate_per_second.max(1));
        SourceLimiter { rate, burst: 2.0 * rate, buckets: HashMap::new() }
    }

    /// Takes a token for `source`; false when its bucket is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&source) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(source).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = b.refilled(now, rate, burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
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
}
