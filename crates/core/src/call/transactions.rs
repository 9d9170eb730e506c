//! The transactions of one call's two legs (RFC 3261 §17): server transactions absorb
//! retransmitted requests and resend their last response; client non-INVITE transactions
//! (BYE, REFER, CANCEL) retransmit until answered and report timeouts. The agent's INVITE
//! and our refreshing re-INVITE have their own `ClientInvite`s, owned by the leg state.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::LegId;
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::{
    ClientNonInvite, ClientNonInviteState, Delivery, Outcome, ServerState, ServerTransaction, Timers, TransactionKey,
};

/// Why we sent a non-INVITE request, so its answer can be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Bye,
    Refer,
    Cancel,
}

/// The final answer to one of our requests; a timeout counts as 408 (§8.1.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub leg: LegId,
    pub purpose: Purpose,
    pub status: u16,
}

struct Client {
    leg: LegId,
    purpose: Purpose,
    tx: ClientNonInvite,
}

pub struct Transactions {
    timers: Timers,
    server: HashMap<TransactionKey, (LegId, ServerTransaction)>,
    client: Vec<Client>,
    out: VecDeque<(LegId, Vec<u8>)>,
}

impl Transactions {
    pub fn new(timers: Timers) -> Transactions {
        Transactions { timers, server: HashMap::new(), client: Vec::new(), out: VecDeque::new() }
    }

    /// A request arrived on `leg`: true when it is new for the call to act on, false when a
    /// server transaction absorbed it as a retransmission (or the ACK of an error response).
    pub fn receive(&mut self, now: Instant, leg: LegId, req: &Request, reliable: bool) -> bool {
        let key = TransactionKey::of(req);
        if let Some((_, tx)) = self.server.get_mut(&key) {
            if !matches!(tx.state(), ServerState::Terminated(_)) {
                tx.handle_request(now, req);
                self.drain_server(&key);
                return false;
            }
            self.server.remove(&key);
        }
        if req.method() != Method::Ack {
            self.server.insert(key, (leg, ServerTransaction::new(req, self.timers, reliable)));
        }
        true
    }

    /// Sends the response `bytes` with `status` to `req` through its server transaction.
    pub fn respond(&mut self, now: Instant, leg: LegId, req: &Request, status: u16, bytes: Vec<u8>, reliable: bool) {
        let key = TransactionKey::of(req);
        let (_, tx) =
            self.server.entry(key.clone()).or_insert_with(|| (leg, ServerTransaction::new(req, self.timers, reliable)));
        tx.respond(now, status, bytes);
        self.drain_server(&key);
    }

    /// Starts a client non-INVITE transaction for a request we built.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        now: Instant,
        leg: LegId,
        purpose: Purpose,
        method: Method,
        branch: &str,
        bytes: Vec<u8>,
        reliable: bool,
    ) {
        let mut tx = ClientNonInvite::new(method, branch, bytes, now, self.timers, reliable);
        while let Some(b) = tx.poll_transmit() {
            self.out.push_back((leg, b));
        }
        self.client.push(Client { leg, purpose, tx });
    }

    /// A response on `leg`: the final answer to one of our requests, if it is one and new.
    pub fn response(&mut self, now: Instant, leg: LegId, resp: &Response) -> Option<Answer> {
        let c = self.client.iter_mut().find(|c| c.leg == leg && c.tx.matches(resp))?;
        let delivered = c.tx.handle_response(now, resp) == Delivery::Deliver && resp.status() >= 200;
        let answer = delivered.then_some(Answer { leg, purpose: c.purpose, status: resp.status() });
        self.client.retain(|c| !c.tx.is_terminated());
        answer
    }

    pub fn poll_transmit(&mut self) -> Option<(LegId, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let server = self.server.values().filter_map(|(_, t)| t.poll_timeout());
        let client = self.client.iter().filter_map(|c| c.tx.poll_timeout());
        server.chain(client).min()
    }

    /// Runs due timers; returns the requests that timed out (Timer F), as 408 answers.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Answer> {
        let mut timed_out = Vec::new();
        for c in &mut self.client {
            c.tx.handle_timeout(now);
            while let Some(b) = c.tx.poll_transmit() {
                self.out.push_back((c.leg, b));
            }
            if c.tx.state() == ClientNonInviteState::Terminated(Outcome::TimedOut) {
                timed_out.push(Answer { leg: c.leg, purpose: c.purpose, status: 408 });
            }
        }
        self.client.retain(|c| !c.tx.is_terminated());
        for (leg, tx) in self.server.values_mut() {
            tx.handle_timeout(now);
            while let Some(b) = tx.poll_transmit() {
                self.out.push_back((*leg, b));
            }
        }
        self.server.retain(|_, (_, tx)| !matches!(tx.state(), ServerState::Terminated(_)));
        timed_out
    }

    fn drain_server(&mut self, key: &TransactionKey) {
        let Some((leg, tx)) = self.server.get_mut(key) else { return };
        while let Some(b) = tx.poll_transmit() {
            self.out.push_back((*leg, b));
        }
    }
}
