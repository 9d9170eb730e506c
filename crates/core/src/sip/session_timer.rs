//! Session timers (RFC 4028), honoured when the peer asks for them: the interval is taken
//! from its Session-Expires (at least our Min-SE of 90 s, else 422, §8.1), the refresher is
//! the one it names or, if it leaves the choice to us, the UAC when it supports `timer` and
//! us otherwise (§9). The refresher refreshes at half the interval (§7.4); without a refresh
//! the other side ends the session at `interval − min(32 s, interval / 3)` (§10).

use std::time::{Duration, Instant};

use super::message::{Request, param};

/// Our Min-SE, the RFC's recommended floor.
pub const MIN_SE: u32 = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The peer (the UAC of the dialog-creating INVITE) refreshes.
    Peer,
    /// We do, with a re-INVITE.
    Us,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval: u32,
    pub refresher: Refresher,
}

/// What a request's session-timer headers ask of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// No Session-Expires: no session timer.
    None,
    Timer(SessionTimer),
    /// Answer 422 with `Min-SE: 90`.
    TooSmall,
}

pub fn negotiate(req: &Request) -> Negotiation {
    let Some(se) = req.header("Session-Expires").or_else(|| req.header("x")) else {
        return Negotiation::None;
    };
    let Some(interval) = se.split(';').next().and_then(|v| v.trim().parse::<u32>().ok()) else {
        return Negotiation::None; // unparseable: as if absent (§4 asks for no more)
    };
    if interval < MIN_SE {
        return Negotiation::TooSmall;
    }
    let supports_timer = req
        .headers_named("Supported")
        .into_iter()
        .chain(req.headers_named("k"))
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("timer")));
    let refresher = match param(&format!(";{}", se.split_once(';').map_or("", |(_, p)| p)), "refresher").as_deref() {
        Some("uas") => Refresher::Us,
        Some("uac") => Refresher::Peer,
        _ if supports_timer => Refresher::Peer,
        _ => Refresher::Us,
    };
    Negotiation::Timer(SessionTimer { interval, refresher })
}

impl SessionTimer {
    /// The Session-Expires value for our 2xx; with the peer refreshing, `Require: timer`
    /// must go with it (§9).
    pub fn header(&self) -> String {
        let who = match self.refresher {
            Refresher::Peer => "uac",
            Refresher::Us => "uas",
        };
        format!("{};refresher={who}", self.interval)
    }

    /// When we act next, counted from the last refresh: refresh at half the interval, or end
    /// the session if the peer has not refreshed by then.
    pub fn deadline(&self, refreshed_at: Instant) -> Instant {
        let interval = Duration::from_secs(u64::from(self.interval));
        match self.refresher {
            Refresher::Us => refreshed_at + interval / 2,
            Refresher::Peer => refreshed_at + interval - Duration::from_secs(32).min(interval / 3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{SipMessage, parse};

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\n\
To: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negotiates_interval_and_refresher() {
        assert_eq!(negotiate(&invite("")), Negotiation::None);
        assert_eq!(negotiate(&invite("Session-Expires: 60\r\n")), Negotiation::TooSmall);
        let t = |extra| match negotiate(&invite(extra)) {
            Negotiation::Timer(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(t("Session-Expires: 1800;refresher=uas\r\n").refresher, Refresher::Us);
        assert_eq!(t("Supported: 100rel, timer\r\nSession-Expires: 1800\r\n").refresher, Refresher::Peer);
        assert_eq!(t("Session-Expires: 1800\r\n").refresher, Refresher::Us, "a UAC without timer cannot refresh");
        let peer = t("x: 120;refresher=uac\r\n");
        assert_eq!(peer, SessionTimer { interval: 120, refresher: Refresher::Peer });
        assert_eq!(peer.header(), "120;refresher=uac");
    }

    #[test]
    fn deadlines() {
        let now = crate::test_origin();
        let us = SessionTimer { interval: 1800, refresher: Refresher::Us };
        assert_eq!(us.deadline(now), now + Duration::from_secs(900));
        let peer = SessionTimer { interval: 1800, refresher: Refresher::Peer };
        assert_eq!(peer.deadline(now), now + Duration::from_secs(1768));
        let short = SessionTimer { interval: 90, refresher: Refresher::Peer };
        assert_eq!(short.deadline(now), now + Duration::from_secs(60));
    }
}
