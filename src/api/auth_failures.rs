//! Failed authentication, per source and per minute: PCI DSS 10.2.1.4 wants every invalid
//! access attempt recorded, but one audit row per attempt lets a flood of unknown keys
//! serialize every writer on the audit chain's head. So the first failure from a source in a
//! minute is audited at once, the rest of that minute are counted and audited as one record
//! when the minute is over (`drain_finished`), and past `LIMIT` failures in a minute the
//! source is refused (429) without its key even being looked up. A source is an IPv4
//! address or an IPv6 /64; the table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sip::rate_limit::source_key;

/// Failures one source may have in a minute before it is refused outright.
pub const LIMIT: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; beyond it, the oldest windows are audited and forgotten early.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What a failure from a source means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The first in this source's minute: audit it now.
    AuditNow,
    /// Counted, audited with the others when the minute is over.
    Counted,
}

/// Failures of one source in a minute that ended, for one aggregate audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub source: IpAddr,
    /// Failures after the first (which was audited when it happened).
    pub more: u32,
}

#[derive(Default)]
pub struct AuthFailures {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl AuthFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // Each critical section leaves the map consistent, so a poisoned lock is usable.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `source` has used up its failures for this minute (then refuse it unread).
    pub fn is_throttled(&self, source: IpAddr, now: Instant) -> bool {
        self.lock().get(&source_key(source)).is_some_and(|w| now < w.started + WINDOW && w.failures >= LIMIT)
    }

    /// Counts a failed authentication from `source`.
    pub fn record(&self, source: IpAddr, now: Instant) -> Failure {
        let key = source_key(source);
        let mut map = self.lock();
        match map.get_mut(&key) {
            Some(w) if now < w.started + WINDOW => {
                w.failures = w.failures.saturating_add(1);
                Failure::Counted
            }
            _ => {
                map.insert(key, Window { started: now, failures: 1 });
                Failure::AuditNow
            }
        }
    }

    /// The windows that ended by `now` with failures not yet audited, forgetting every
    /// ended window; when the table is over its bound, the oldest ones too.
    pub fn drain_finished(&self, now: Instant) -> Vec<Finished> {
        let mut map = self.lock();
        let mut out = Vec::new();
        let overfull = map.len().saturating_sub(MAX_TRACKED);
        let mut oldest: Vec<(Instant, IpAddr)> = Vec::new();
        if overfull > 0 {
            oldest = map.iter().map(|(k, w)| (w.started, *k)).collect();
            oldest.sort();
            oldest.truncate(overfull);
        }
        map.retain(|source, w| {
            let ended = now >= w.started + WINDOW || oldest.iter().any(|(_, k)| k == source);
            if ended && w.failures > 1 {
                out.push(Finished { source: *source, more: w.failures - 1 });
            }
            !ended
        });
        out.sort_by_key(|f| f.source);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_now_one_for_the_rest_of_the_minute_and_a_throttle_past_the_limit() {
        let (f, t) = (AuthFailures::default(), Instant::now());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        assert_eq!(f.record(a, t), Failure::AuditNow);
        for _ in 1..LIMIT {
            assert_eq!(f.record(a, t), Failure::Counted);
        }
        assert!(f.is_throttled(a, t), "30 failures in the minute");
        assert!(!f.is_throttled(b, t), "another source is not");
        assert_eq!(f.record(b, t), Failure::AuditNow);
        assert_eq!(f.record("2001:db8:1:2::6".parse().unwrap(), t), Failure::Counted, "the same /64");
        assert!(f.drain_finished(t + Duration::from_secs(59)).is_empty(), "no minute has ended");
        let done = f.drain_finished(t + WINDOW);
        let b64 = source_key(b);
        assert_eq!(done, vec![Finished { source: a, more: LIMIT - 1 }, Finished { source: b64, more: 1 }]);
        assert!(!f.is_throttled(a, t + WINDOW), "a new minute");
        assert_eq!(f.record(a, t + WINDOW), Failure::AuditNow);
        assert!(f.drain_finished(t + WINDOW * 2).is_empty(), "a single failure was audited already");
    }
}
