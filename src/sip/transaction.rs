//! Retransmission over unreliable transports (RFC 3261 §17): the timer arithmetic shared by
//! the client INVITE transaction (Timer A doubling, Timer B = 64·T1, §17.1.1.2), the client
//! non-INVITE transaction (Timer E capped at T2, Timer F = 64·T1, §17.1.2.2) and the UAS
//! resending its 2xx until the ACK (§13.3.1.4). The full four §17 machines grow from this.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4) }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RetransmitStep<'a> {
    /// Not due yet.
    Wait,
    /// Send these bytes again.
    Send(&'a [u8]),
    /// 64·T1 passed without an answer: the transaction (or dialog) has failed.
    GiveUp,
}

#[derive(Debug)]
pub struct Retransmit {
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    cap: Option<Duration>,
    deadline: Instant,
}

impl Retransmit {
    fn new(bytes: Vec<u8>, now: Instant, timers: Timers, cap: Option<Duration>) -> Self {
        Retransmit { bytes, next: now + timers.t1, interval: timers.t1, cap, deadline: now + 64 * timers.t1 }
    }

    /// Timer A (uncapped doubling) and Timer B.
    pub fn invite(bytes: Vec<u8>, now: Instant, timers: Timers) -> Self {
        Self::new(bytes, now, timers, None)
    }

    /// Timer E (doubling, capped at T2) and Timer F.
    pub fn non_invite(bytes: Vec<u8>, now: Instant, timers: Timers) -> Self {
        Self::new(bytes, now, timers, Some(timers.t2))
    }

    /// A UAS's 2xx to INVITE: T1 doubling up to T2, until ACK or 64·T1.
    pub fn invite_2xx(bytes: Vec<u8>, now: Instant, timers: Timers) -> Self {
        Self::new(bytes, now, timers, Some(timers.t2))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next.min(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> RetransmitStep<'_> {
        if now >= self.deadline {
            return RetransmitStep::GiveUp;
        }
        if now < self.next {
            return RetransmitStep::Wait;
        }
        self.interval *= 2;
        if let Some(cap) = self.cap {
            self.interval = self.interval.min(cap);
        }
        self.next = now + self.interval;
        RetransmitStep::Send(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(mut r: Retransmit, start: Instant) -> (Vec<u64>, u64) {
        let mut sends = vec![];
        loop {
            let at = r.poll_timeout();
            match r.handle_timeout(at) {
                RetransmitStep::Send(_) => sends.push((at - start).as_millis() as u64),
                RetransmitStep::GiveUp => return (sends, (at - start).as_millis() as u64),
                RetransmitStep::Wait => unreachable!("poll_timeout is always due"),
            }
        }
    }

    #[test]
    fn timer_a_doubles_until_timer_b() {
        let t = crate::test_origin();
        let (sends, gave_up) = schedule(Retransmit::invite(b"INVITE".to_vec(), t, Timers::default()), t);
        // Seven transmissions in all, the first at 0 (RFC 3261 §17.1.1.2).
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(gave_up, 32_000);
    }

    #[test]
    fn timer_e_and_2xx_cap_at_t2() {
        let t = crate::test_origin();
        let (sends, gave_up) = schedule(Retransmit::non_invite(b"BYE".to_vec(), t, Timers::default()), t);
        assert_eq!(&sends[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(sends.len(), 10);
        assert_eq!(gave_up, 32_000);
        let early = Retransmit::invite_2xx(b"200".to_vec(), t, Timers::default());
        let mut early = early;
        assert_eq!(early.handle_timeout(t + Duration::from_millis(499)), RetransmitStep::Wait);
    }
}
