//! The four RFC 3261 §17 transaction machines, sans-IO: client INVITE (§17.1.1, Timers A, B,
//! D), client non-INVITE (§17.1.2, Timers E, F, K), server INVITE (§17.2.1, Timers G, H, I)
//! and server non-INVITE (§17.2.2, Timer J), plus the matching rules of §17.1.3 and §17.2.3
//! and the UAS core's 2xx retransmission (§13.3.1.4), which belongs to the dialog.
//!
//! Each machine is fed responses or requests and timeouts with the time they happened and
//! hands back the bytes to (re)send through `poll_transmit`. Over reliable transports the
//! retransmission timers never run and the wait states last zero (§17.1.1.2, §17.2.1).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{Method, Request, Response, ack_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate (default 500 ms).
    pub t1: Duration,
    /// Longest interval between non-INVITE retransmissions (default 4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (default 5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl Timers {
    /// Timers B, F, H and J: 64·T1.
    fn give_up(&self) -> Duration {
        64 * self.t1
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final response was exchanged (and, for INVITE, acknowledged).
    Done,
    /// Timer B, F or H fired: the peer never answered, or never acknowledged (§17.1.1.2,
    /// §17.1.2.2, §17.2.1). The TU treats it as a 408.
    TimedOut,
}

/// A doubling retransmission interval, capped or not.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Instant,
    interval: Duration,
    cap: Option<Duration>,
}

impl Backoff {
    fn start(now: Instant, t1: Duration, cap: Option<Duration>) -> Backoff {
        Backoff { next: now + t1, interval: t1, cap }
    }

    /// Due at `now`? Then schedule the next one.
    fn fire(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.interval = match self.cap {
            Some(cap) => (self.interval * 2).min(cap),
            None => self.interval * 2,
        };
        self.next = now + self.interval;
        true
    }
}

/// Timer D: how long a client INVITE transaction absorbs retransmitted non-2xx finals over
/// UDP, "at least 32 seconds" (§17.1.1.2).
const TIMER_D: Duration = Duration::from_secs(32);

fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

// ---------------------------------------------------------------------------------------
// Client INVITE, §17.1.1

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Completed,
    Terminated(Outcome),
}

/// What the TU should do with a response the transaction saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// New to the TU: act on it.
    Deliver,
    /// A retransmission the transaction handled (resent its ACK) or a stray: ignore.
    Absorbed,
}

#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    invite: Request,
    bytes: Vec<u8>,
    ack: Option<Vec<u8>>,
    timer_a: Option<Backoff>,
    timer_b: Instant,
    timer_d: Option<Instant>,
    reliable: bool,
    transmit: VecDeque<Vec<u8>>,
}

impl ClientInvite {
    /// Starts the transaction by sending `bytes`, the INVITE `invite` was parsed from.
    pub fn new(invite: Request, bytes: Vec<u8>, now: Instant, timers: Timers, reliable: bool) -> ClientInvite {
        ClientInvite {
            state: ClientInviteState::Calling,
            invite,
            bytes: bytes.clone(),
            ack: None,
            timer_a: (!reliable).then(|| Backoff::start(now, timers.t1, None)),
            timer_b: now + timers.give_up(),
            timer_d: None,
            reliable,
            transmit: VecDeque::from([bytes]),
        }
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    pub fn request(&self) -> &Request {
        &self.invite
    }

    /// §17.1.3: a response matches by the top Via branch and the CSeq method.
    pub fn matches(&self, resp: &Response) -> bool {
        resp.branch() == self.invite.branch() && resp.cseq().method == Method::Invite
    }

    pub fn handle_response(&mut self, now: Instant, resp: &Response) -> Delivery {
        let status = resp.status();
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Proceeding => match status {
                100..=199 => {
                    self.state = ClientInviteState::Proceeding;
                    self.timer_a = None;
                    Delivery::Deliver
                }
                200..=299 => {
                    // The 2xx and its ACK belong to the TU and the dialog (§17.1.1.2).
                    self.state = ClientInviteState::Terminated(Outcome::Done);
                    Delivery::Deliver
                }
                _ => {
                    let ack = ack_for(&self.invite, resp.to());
                    self.transmit.push_back(ack.clone());
                    self.ack = Some(ack);
                    self.timer_a = None;
                    if self.reliable {
                        self.state = ClientInviteState::Terminated(Outcome::Done);
                    } else {
                        self.state = ClientInviteState::Completed;
                        self.timer_d = Some(now + TIMER_D);
                    }
                    Delivery::Deliver
                }
            },
            ClientInviteState::Completed => {
                if status >= 300
                    && let Some(ack) = &self.ack
                {
                    self.transmit.push_back(ack.clone());
                }
                Delivery::Absorbed
            }
            ClientInviteState::Terminated(_) => Delivery::Absorbed,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientInviteState::Calling => earliest([self.timer_a.map(|a| a.next), Some(self.timer_b)]),
            ClientInviteState::Proceeding => None,
            ClientInviteState::Completed => self.timer_d,
            ClientInviteState::Terminated(_) => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ClientInviteState::Calling => {
                if now >= self.timer_b {
                    self.state = ClientInviteState::Terminated(Outcome::TimedOut);
                } else if let Some(a) = &mut self.timer_a
                    && a.fire(now)
                {
                    self.transmit.push_back(self.bytes.clone());
                }
            }
            ClientInviteState::Completed => {
                if self.timer_d.is_some_and(|d| now >= d) {
                    self.state = ClientInviteState::Terminated(Outcome::Done);
                }
            }
            ClientInviteState::Proceeding | ClientInviteState::Terminated(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client non-INVITE, §17.1.2

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated(Outcome),
}

#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    method: Method,
    branch: Option<String>,
    bytes: Vec<u8>,
    timer_e: Option<Backoff>,
    timer_f: Instant,
    timer_k: Option<Instant>,
    reliable: bool,
    timers: Timers,
    transmit: VecDeque<Vec<u8>>,
}

impl ClientNonInvite {
    /// Starts the transaction by sending `bytes` (a `method` request with top Via `branch`).
    pub fn new(method: Method, branch: &str, bytes: Vec<u8>, now: Instant, timers: Timers, reliable: bool) -> Self {
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            method,
            branch: Some(branch.to_string()),
            bytes: bytes.clone(),
            timer_e: (!reliable).then(|| Backoff::start(now, timers.t1, Some(timers.t2))),
            timer_f: now + timers.give_up(),
            timer_k: None,
            reliable,
            timers,
            transmit: VecDeque::from([bytes]),
        }
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn matches(&self, resp: &Response) -> bool {
        resp.branch() == self.branch && resp.cseq().method == self.method
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, ClientNonInviteState::Terminated(_))
    }

    pub fn handle_response(&mut self, now: Instant, resp: &Response) -> Delivery {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if resp.status() < 200 {
                    self.state = ClientNonInviteState::Proceeding;
                    // From now on Timer E fires every T2 (§17.1.2.2).
                    if let Some(e) = &mut self.timer_e {
                        e.interval = self.timers.t2;
                    }
                    return Delivery::Deliver;
                }
                self.timer_e = None;
                if self.reliable {
                    self.state = ClientNonInviteState::Terminated(Outcome::Done);
                } else {
                    self.state = ClientNonInviteState::Completed;
                    self.timer_k = Some(now + self.timers.t4);
                }
                Delivery::Deliver
            }
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated(_) => Delivery::Absorbed,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                earliest([self.timer_e.map(|e| e.next), Some(self.timer_f)])
            }
            ClientNonInviteState::Completed => self.timer_k,
            ClientNonInviteState::Terminated(_) => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if now >= self.timer_f {
                    self.state = ClientNonInviteState::Terminated(Outcome::TimedOut);
                    return;
                }
                if let Some(e) = &mut self.timer_e
                    && e.fire(now)
                {
                    self.transmit.push_back(self.bytes.clone());
                }
            }
            ClientNonInviteState::Completed => {
                if self.timer_k.is_some_and(|k| now >= k) {
                    self.state = ClientNonInviteState::Terminated(Outcome::Done);
                }
            }
            ClientNonInviteState::Terminated(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server transactions, §17.2

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// INVITE: Proceeding. Non-INVITE: Trying or Proceeding.
    Open,
    /// A final response was sent; retransmitted requests get it again.
    Completed,
    /// INVITE only: the ACK for the non-2xx final came (§17.2.1).
    Confirmed,
    Terminated(Outcome),
}

/// §17.2.3: a request belongs to a server transaction by its top Via branch and sent-by, and
/// its method, an ACK counting as the INVITE it acknowledges. Without the RFC 3261 magic
/// cookie the key falls back to the request's dialog identifiers and CSeq number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    id: String,
    sent_by: String,
    method: String,
}

impl TransactionKey {
    pub fn of(req: &Request) -> TransactionKey {
        let method = match req.method() {
            Method::Ack => Method::Invite,
            m => m,
        };
        let id = match req.branch() {
            Some(b) if b.starts_with("z9hG4bK") => b,
            _ => format!(
                "{}|{}|{}|{}|{}",
                req.request_uri(),
                req.call_id(),
                req.from_tag().unwrap_or_default(),
                req.cseq().seq,
                req.to_tag().filter(|_| method != Method::Invite).unwrap_or_default()
            ),
        };
        TransactionKey { id, sent_by: req.top_via_sent_by().to_ascii_lowercase(), method: method.as_str().to_string() }
    }
}

/// What arrived for a server transaction that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retransmission {
    /// The request again: its last response was queued for resending.
    Request,
    /// The ACK of a non-2xx final response to INVITE.
    Ack,
}

#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    /// Timer G (INVITE, non-2xx final, unreliable).
    timer_g: Option<Backoff>,
    /// Timer H (INVITE), or Timer I / J once confirmed or completed.
    deadline: Option<Instant>,
    reliable: bool,
    timers: Timers,
    transmit: VecDeque<Vec<u8>>,
}

impl ServerTransaction {
    pub fn new(req: &Request, timers: Timers, reliable: bool) -> ServerTransaction {
        ServerTransaction {
            invite: req.method() == Method::Invite,
            state: ServerState::Open,
            last_response: None,
            timer_g: None,
            deadline: None,
            reliable,
            timers,
            transmit: VecDeque::new(),
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The TU sends a response with `status` through this transaction.
    pub fn respond(&mut self, now: Instant, status: u16, bytes: Vec<u8>) {
        if self.state != ServerState::Open {
            return; // §17.2: no response after the final one.
        }
        self.transmit.push_back(bytes.clone());
        self.last_response = Some(bytes);
        match (self.invite, status) {
            (_, 100..=199) => {}
            // The 2xx to INVITE is retransmitted by the dialog, not the transaction.
            (true, 200..=299) => self.state = ServerState::Terminated(Outcome::Done),
            (true, _) => {
                self.state = ServerState::Completed;
                self.timer_g = (!self.reliable).then(|| Backoff::start(now, self.timers.t1, Some(self.timers.t2)));
                self.deadline = Some(now + self.timers.give_up());
            }
            (false, _) if self.reliable => self.state = ServerState::Terminated(Outcome::Done),
            (false, _) => {
                self.state = ServerState::Completed;
                self.deadline = Some(now + self.timers.give_up());
            }
        }
    }

    /// A request that matched this transaction again.
    pub fn handle_request(&mut self, now: Instant, req: &Request) -> Retransmission {
        if req.method() == Method::Ack {
            if self.invite && self.state == ServerState::Completed {
                self.state = ServerState::Confirmed;
                self.timer_g = None;
                self.deadline = Some(now + if self.reliable { Duration::ZERO } else { self.timers.t4 });
            }
            return Retransmission::Ack;
        }
        if matches!(self.state, ServerState::Open | ServerState::Completed)
            && let Some(r) = &self.last_response
        {
            self.transmit.push_back(r.clone());
        }
        Retransmission::Request
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerState::Completed => earliest([self.timer_g.map(|g| g.next), self.deadline]),
            ServerState::Confirmed => self.deadline,
            ServerState::Open | ServerState::Terminated(_) => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ServerState::Completed if self.deadline.is_some_and(|d| now >= d) => {
                // Timer H: the ACK never came (INVITE). Timer J: the wait is over (non-INVITE).
                let outcome = if self.invite { Outcome::TimedOut } else { Outcome::Done };
                self.state = ServerState::Terminated(outcome);
            }
            ServerState::Completed => {
                if let Some(g) = &mut self.timer_g
                    && g.fire(now)
                    && let Some(r) = &self.last_response
                {
                    self.transmit.push_back(r.clone());
                }
            }
            ServerState::Confirmed if self.deadline.is_some_and(|d| now >= d) => {
                self.state = ServerState::Terminated(Outcome::Done);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The UAS core's 2xx retransmission, §13.3.1.4

/// A UAS's 2xx to INVITE, resent from T1 doubling up to T2 until the ACK, for 64·T1.
#[derive(Debug)]
pub struct Retransmit {
    bytes: Vec<u8>,
    backoff: Backoff,
    deadline: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RetransmitStep<'a> {
    Wait,
    Send(&'a [u8]),
    /// 64·T1 passed without the ACK: the dialog must end (§13.3.1.4).
    GiveUp,
}

impl Retransmit {
    pub fn invite_2xx(bytes: Vec<u8>, now: Instant, timers: Timers) -> Self {
        Retransmit { bytes, backoff: Backoff::start(now, timers.t1, Some(timers.t2)), deadline: now + timers.give_up() }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn poll_timeout(&self) -> Instant {
        self.backoff.next.min(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> RetransmitStep<'_> {
        if now >= self.deadline {
            return RetransmitStep::GiveUp;
        }
        if self.backoff.fire(now) { RetransmitStep::Send(&self.bytes) } else { RetransmitStep::Wait }
    }
}

#[cfg(test)]
mod tests;
