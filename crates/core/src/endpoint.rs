//! The SIP endpoint, sans-IO (RFC 3261 §8.2, §18; RFC 3891 §3), shaped like quinn-proto's
//! `Endpoint`: the driver hands it every message with the flow it came on and gets back one
//! `EndpointEvent`. It owns what no single call owns: which Call-ID belongs to which call and
//! leg, the per-source rate limit, admission of new INVITEs, and the answers that need no
//! call (malformed → 400 or the status its fault calls for, an unknown required extension →
//! 420, out-of-dialog OPTIONS → 200, no such call → 481, REFER or an unknown method outside
//! a dialog → 405, nobody to take the call → 404, too many new requests from one source → 503).
//!
//! A draining endpoint (`drain`, when the node is being stopped) answers out-of-dialog OPTIONS
//! and new INVITEs with 503 and Retry-After (§21.5.4), so a proxy that probes with OPTIONS
//! (Kamailio's dispatcher) sends new calls elsewhere, while the calls it holds go on.
//!
//! A dialog is its peer's: a message naming a live call's Call-ID is taken only from where
//! that leg's peer is (the flow its INVITE came on or the address we answer it at; the
//! agent's address), or from `trusted_peers` (the PBX or SBC in front). A stranger's
//! request gets 403 and never reaches the call, its response is dropped. An INVITE with
//! Replaces is taken only from a trusted peer, and its Call-ID routes to the call only once
//! the call has checked the tags and taken the dialog over (`caller_replaced`).
//!
//! `C` is whatever the driver needs to reach a call (its inbox); the endpoint only stores and
//! clones it.

use std::collections::HashMap;
use std::time::Instant;

use ipnet::IpNet;

use crate::call::LegId;
use crate::canonical;
use crate::sip::message::{self, ALLOW, Method, Request, ResponseBuilder, SipMessage};
use crate::sip::rate_limit::SourceLimiter;
use crate::sip::replaces::Replaces;
use crate::sip::stream::{ConnectionId, Flow, Transmit, Transport};

/// One call the endpoint routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

/// The Request-URI user that starts a payment session's call (`pay-<session id>`).
pub const SESSION_PREFIX: &str = "pay-";

#[derive(Debug, Clone, Default)]
pub struct EndpointConfig {
    /// New out-of-dialog requests per second from one source address (twice that in a burst).
    pub rate_per_source: u32,
    /// The inline routes, in the configuration's order.
    pub inline_routes: Vec<InlineRoute>,
    /// Who may speak for any dialog and take one over with Replaces (`sip.trusted_peers`).
    pub trusted_peers: Vec<IpNet>,
}

/// An inline route as the endpoint sees it: which Request-URI users it takes, and from whom.
#[derive(Debug, Clone, Default)]
pub struct InlineRoute {
    pub user_prefix: String,
    /// The only sources its INVITEs are taken from (the PBX or SBC that routes them).
    pub sources: Vec<IpNet>,
}

/// Whom a new INVITE is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A payment session: the part of the Request-URI user after `pay-`, for the driver to
    /// look up (an unknown one gets `Endpoint::refuse` with 404).
    Session { id: String },
    /// The inline route with this index in `EndpointConfig::inline_routes`.
    Inline { route: usize },
}

#[derive(Debug)]
pub enum EndpointEvent<C> {
    /// A message for a call: feed it to `call` as `leg`. `from` answers it (§18.2.2); a call
    /// adopts it only when the message is an INVITE with Replaces that takes its dialog over.
    ToCall { call: C, leg: LegId, msg: Box<SipMessage>, from: Flow },
    /// A new INVITE that someone may take. The driver sets the call up and registers it with
    /// `insert_call`, or refuses it with `refuse` or `refuse_with`; until then the INVITE's
    /// retransmissions are absorbed.
    NewCall { invite: Box<Request>, admission: Admission, reply_to: Flow },
    /// A stateless answer.
    Respond(Transmit),
    /// Nothing to do: a keep-alive, a stray ACK, a response for no call of ours (§18.1.2).
    Nothing,
}

struct Registered<C> {
    inbox: C,
    /// Where the caller's leg is: its connection must stay open while the call lasts.
    caller: Peer,
    /// The dialog a Replaces took over, which may still send its BYE.
    replaced: Option<Peer>,
    /// Where the agent is: a UDP address, or the connection we opened to it.
    agent: Option<Flow>,
}

/// Where one leg's peer is: the flow it is answered on and the one its INVITE came on (they
/// differ when a Via names another port than the source's, without rport).
#[derive(Debug, Clone, Copy)]
struct Peer {
    answered: Flow,
    source: Flow,
}

impl Peer {
    fn is(&self, from: Flow) -> bool {
        let same = |f: Flow| {
            f.transport == from.transport
                && (from.connection.is_some() && f.connection == from.connection
                    || canonical(f.remote) == canonical(from.remote))
        };
        same(self.answered) || same(self.source)
    }
}

/// Whether `from` is the agent we dialled at `agent`: its UDP address, or over a stream
/// its connection or another connection of the same transport from its host (an agent's
/// in-dialog requests open one to our Contact, §18.1.1). The host was vetted when it was
/// chosen (`sip.allowed_targets`).
fn agent_is(agent: Flow, from: Flow) -> bool {
    match (agent.transport, from.transport) {
        (Transport::Udp, Transport::Udp) => canonical(agent.remote) == canonical(from.remote),
        (ours, theirs) if ours == theirs => {
            agent.connection == from.connection || agent.remote.ip().to_canonical() == from.remote.ip().to_canonical()
        }
        _ => false,
    }
}

/// Whether `from` is inside one of `nets`.
fn within(nets: &[IpNet], from: Flow) -> bool {
    let ip = from.remote.ip().to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

pub struct Endpoint<C> {
    config: EndpointConfig,
    /// New out-of-dialog requests per source.
    limiter: SourceLimiter,
    /// Requests inside calls per source (trusted peers, which carry many calls, are not
    /// limited): its own budget, so an out-of-dialog flood cannot cut calls.
    in_dialog: SourceLimiter,
    routes: HashMap<String, (CallHandle, LegId)>,
    calls: HashMap<CallHandle, Registered<C>>,
    /// Call-IDs of new INVITEs the driver is still setting up, and where each came from.
    pending: HashMap<String, Flow>,
    /// Call-IDs of INVITEs with Replaces handed to a call, and where each came from, until
    /// the call takes the dialog over.
    takeovers: HashMap<String, (CallHandle, Flow)>,
    next_handle: u64,
    admitting: Admitting,
    refused: Refusals,
}

/// Requests the endpoint turned away itself, by reason (the driver counts its own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    /// New out-of-dialog requests over `rate_per_source` (503).
    pub rate_limited: u64,
    /// Requests inside calls over their own budget (503).
    pub in_dialog_rate_limited: u64,
    /// New INVITEs and OPTIONS while draining (503).
    pub draining: u64,
    /// Requests in a live dialog, or Replaces or inline-route INVITEs, from a source that may
    /// not send them (403).
    pub forbidden: u64,
    /// New INVITEs for no session prefix and no route (404).
    pub not_found: u64,
    /// Requests that require an extension we lack (420).
    pub bad_extension: u64,
}

/// Whether new calls are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitting {
    Open,
    /// Stopping: new calls and OPTIONS probes get 503 with this Retry-After.
    Draining {
        retry_after_s: u32,
    },
}

impl<C: Clone> Endpoint<C> {
    pub fn new(config: EndpointConfig) -> Endpoint<C> {
        Endpoint {
            limiter: SourceLimiter::new(config.rate_per_source),
            in_dialog: SourceLimiter::new(config.rate_per_source),
            config,
            routes: HashMap::new(),
            calls: HashMap::new(),
            pending: HashMap::new(),
            takeovers: HashMap::new(),
            next_handle: 0,
            admitting: Admitting::Open,
            refused: Refusals::default(),
        }
    }

    /// From now on new calls and OPTIONS probes are refused with 503; calls already up go on.
    pub fn drain(&mut self, retry_after_s: u32) {
        self.admitting = Admitting::Draining { retry_after_s };
    }

    pub fn admitting(&self) -> Admitting {
        self.admitting
    }

    pub fn refusals(&self) -> Refusals {
        self.refused
    }

    /// One datagram, or one message framed from a stream, from `from`.
    pub fn handle(&mut self, now: Instant, from: Flow, bytes: &[u8]) -> EndpointEvent<C> {
        // Keep-alives (RFC 5626 §4.4.1 CRLF) and stray bytes are not messages.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return EndpointEvent::Nothing;
        }
        match message::parse(bytes) {
            Ok(SipMessage::Request(mut req)) => {
                req.stamp_source(from.remote);
                self.request(now, req, from)
            }
            Ok(SipMessage::Response(resp)) => match self.route(resp.call_id()) {
                Some((handle, call, leg)) if self.speaks_for(handle, leg, from) => {
                    EndpointEvent::ToCall { call, leg, msg: Box::new(SipMessage::Response(resp)), from }
                }
                Some(_) => {
                    tracing::info!(from = %from.remote, "a response for a live dialog from a stranger, dropped");
                    EndpointEvent::Nothing
                }
                None => EndpointEvent::Nothing,
            },
            // The 400 goes where the message came from: its Via may be what is broken. The
            // parse error never quotes a run of digits (`MessageError`'s Display).
            Err(e) => {
                tracing::info!(from = %from.remote, error = %e, "malformed SIP message");
                match message::bad_request(bytes, &e) {
                    Some(bytes) => EndpointEvent::Respond(Transmit { to: from, bytes }),
                    None => EndpointEvent::Nothing,
                }
            }
        }
    }

    fn request(&mut self, now: Instant, req: Request, from: Flow) -> EndpointEvent<C> {
        // Extensions the request requires and we lack (§8.2.2.3; never for ACK or CANCEL).
        let unsupported = req.unsupported_required(message::SUPPORTED);
        if !unsupported.is_empty() && !matches!(req.method(), Method::Ack | Method::Cancel) {
            self.refused.bad_extension += 1;
            let resp = ResponseBuilder::new(&req, 420, "Bad Extension").header("Unsupported", &unsupported.join(", "));
            return EndpointEvent::Respond(reply(&req, from, resp.build()));
        }
        if let Some((handle, call, leg)) = self.route(req.call_id()) {
            let limited = req.method() != Method::Ack && !self.trusted(from);
            if limited && !self.in_dialog.allow(from.remote.ip(), now) {
                self.refused.in_dialog_rate_limited += 1;
                let resp = ResponseBuilder::new(&req, 503, "Service Unavailable").header("Retry-After", "1");
                return EndpointEvent::Respond(reply(&req, from, resp.build()));
            }
            if !self.speaks_for(handle, leg, from) {
                tracing::info!(from = %from.remote, method = ?req.method(), "a request in a live dialog from a stranger, refused");
                self.refused.forbidden += 1;
                return match req.method() {
                    Method::Ack => EndpointEvent::Nothing,
                    _ => EndpointEvent::Respond(reply(&req, from, plain(&req, 403, "Forbidden"))),
                };
            }
            return EndpointEvent::ToCall { call, leg, msg: Box::new(SipMessage::Request(req)), from };
        }
        if self.pending.contains_key(req.call_id()) {
            // A retransmission while the driver sets the call up; the answer is on its way.
            return EndpointEvent::Nothing;
        }
        if req.method() == Method::Ack {
            return EndpointEvent::Nothing; // an ACK for nothing we know (or for a stateless error)
        }
        if !self.limiter.allow(from.remote.ip(), now) {
            self.refused.rate_limited += 1;
            return EndpointEvent::Respond(self.refuse(&req, from, 503, "Service Unavailable", Some(1)));
        }
        if let Admitting::Draining { retry_after_s } = self.admitting
            && matches!(req.method(), Method::Options | Method::Invite)
            && req.to_tag().is_none()
            && Replaces::of(&req).is_none()
        {
            self.refused.draining += 1;
            return EndpointEvent::Respond(self.refuse(&req, from, 503, "Service Unavailable", Some(retry_after_s)));
        }
        let stateless = |status, reason| EndpointEvent::Respond(reply(&req, from, plain(&req, status, reason)));
        match req.method() {
            Method::Invite if req.to_tag().is_none() => match Replaces::of(&req) {
                Some(replaces) => self.take_over(req, replaces, from),
                None => self.admit(req, from),
            },
            Method::Options => {
                let ok =
                    ResponseBuilder::new(&req, 200, "OK").header("Allow", ALLOW).header("Accept", "application/sdp");
                EndpointEvent::Respond(reply(&req, from, ok.build()))
            }
            Method::Ack => EndpointEvent::Nothing,
            Method::Invite | Method::Bye | Method::Cancel | Method::Info | Method::Update | Method::Notify => {
                stateless(481, "Call/Transaction Does Not Exist")
            }
            Method::Refer | Method::Other(_) => {
                let resp = ResponseBuilder::new(&req, 405, "Method Not Allowed").header("Allow", ALLOW);
                EndpointEvent::Respond(reply(&req, from, resp.build()))
            }
        }
    }

    /// An INVITE with Replaces (RFC 3891 §3) from a trusted peer goes to the call that holds
    /// the dialog it names, which checks the tags; its own Call-ID routes there once the call
    /// took the dialog over. From anyone else 403; naming no dialog of ours 481, a malformed
    /// header 400.
    fn take_over(&mut self, req: Request, replaces: Result<Replaces, ()>, from: Flow) -> EndpointEvent<C> {
        if !self.trusted(from) {
            tracing::info!(from = %from.remote, "an INVITE with Replaces from an untrusted peer, refused");
            self.refused.forbidden += 1;
            return EndpointEvent::Respond(reply(&req, from, plain(&req, 403, "Forbidden")));
        }
        let Ok(replaces) = replaces else {
            return EndpointEvent::Respond(reply(&req, from, plain(&req, 400, "Bad Request")));
        };
        let Some((handle, call, LegId::Caller)) = self.route(&replaces.call_id) else {
            return EndpointEvent::Respond(reply(&req, from, plain(&req, 481, "Call/Transaction Does Not Exist")));
        };
        self.takeovers.insert(req.call_id().to_string(), (handle, from));
        let from = reply_flow(&req, from);
        EndpointEvent::ToCall { call, leg: LegId::Caller, msg: Box::new(SipMessage::Request(req)), from }
    }

    /// A new INVITE to `pay-<session>` or to a user under an inline route; 404 otherwise.
    fn admit(&mut self, invite: Request, from: Flow) -> EndpointEvent<C> {
        let user = invite.uri_user().unwrap_or("");
        let admission = match user.strip_prefix(SESSION_PREFIX) {
            Some(id) => Admission::Session { id: id.to_string() },
            None => match self.config.inline_routes.iter().position(|r| user.starts_with(r.user_prefix.as_str())) {
                Some(route) if within(&self.config.inline_routes[route].sources, from) => Admission::Inline { route },
                Some(_) => {
                    tracing::info!(from = %from.remote, "an inline route's INVITE from a source it does not take, refused");
                    self.refused.forbidden += 1;
                    return EndpointEvent::Respond(reply(&invite, from, plain(&invite, 403, "Forbidden")));
                }
                None => {
                    self.refused.not_found += 1;
                    return EndpointEvent::Respond(reply(&invite, from, plain(&invite, 404, "Not Found")));
                }
            },
        };
        let reply_to = reply_flow(&invite, from);
        self.pending.insert(invite.call_id().to_string(), from);
        EndpointEvent::NewCall { invite: Box::new(invite), admission, reply_to }
    }

    /// The answer to a new INVITE the driver turns away (404 for a session it cannot find,
    /// 503 when out of ports), or to a request the rate limit stops; sent where §18.2.2 says.
    pub fn refuse(
        &mut self,
        req: &Request,
        from: Flow,
        status: u16,
        reason: &str,
        retry_after_s: Option<u32>,
    ) -> Transmit {
        let mut resp = ResponseBuilder::new(req, status, reason);
        if let Some(s) = retry_after_s {
            resp = resp.header("Retry-After", &s.to_string());
        }
        self.refuse_with(req, from, resp.build())
    }

    /// A new INVITE refused with a response the call built (488 for an offer it cannot take).
    pub fn refuse_with(&mut self, invite: &Request, from: Flow, bytes: Vec<u8>) -> Transmit {
        self.pending.remove(invite.call_id());
        reply(invite, from, bytes)
    }

    /// Routes a new call's two Call-IDs to it; `caller` is where its caller leg is answered,
    /// `agent` where its agent is.
    pub fn insert_call(
        &mut self,
        inbox: C,
        caller_call_id: &str,
        agent_call_id: &str,
        caller: Flow,
        agent: Option<Flow>,
    ) -> CallHandle {
        self.next_handle += 1;
        let handle = CallHandle(self.next_handle);
        let source = self.pending.remove(caller_call_id).unwrap_or(caller);
        self.routes.insert(caller_call_id.to_string(), (handle, LegId::Caller));
        self.routes.insert(agent_call_id.to_string(), (handle, LegId::Agent));
        let caller = Peer { answered: caller, source };
        self.calls.insert(handle, Registered { inbox, caller, replaced: None, agent });
        handle
    }

    /// The call took over the dialog `previous_call_id` names with the INVITE of
    /// `new_call_id`: the old Call-ID is its `Replaced` leg now, the new one its caller's,
    /// answered at `caller`.
    pub fn caller_replaced(&mut self, call: CallHandle, previous_call_id: &str, new_call_id: &str, caller: Flow) {
        let source = self.takeovers.remove(new_call_id).map_or(caller, |(_, from)| from);
        if let Some(route) = self.routes.get_mut(previous_call_id).filter(|(h, _)| *h == call) {
            route.1 = LegId::Replaced;
        }
        if let Some(c) = self.calls.get_mut(&call) {
            self.routes.insert(new_call_id.to_string(), (call, LegId::Caller));
            c.replaced = Some(std::mem::replace(&mut c.caller, Peer { answered: caller, source }));
        }
    }

    /// The call has ended: none of its Call-IDs route anywhere any more.
    pub fn remove_call(&mut self, call: CallHandle) {
        self.calls.remove(&call);
        self.routes.retain(|_, (h, _)| *h != call);
        self.takeovers.retain(|_, (h, _)| *h != call);
    }

    fn trusted(&self, from: Flow) -> bool {
        within(&self.config.trusted_peers, from)
    }

    /// Whether a message from `from` may be `leg` of `call`: from that leg's peer, or from a
    /// trusted one. An INVITE with Replaces on its way to the call speaks for the new dialog.
    fn speaks_for(&self, call: CallHandle, leg: LegId, from: Flow) -> bool {
        let Some(c) = self.calls.get(&call) else { return false };
        let peer = match leg {
            LegId::Caller => c.caller.is(from),
            LegId::Replaced => c.replaced.is_some_and(|p| p.is(from)),
            LegId::Agent => c.agent.is_some_and(|a| agent_is(a, from)),
        };
        peer || self.trusted(from)
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Whether a call's caller leg is on this connection (an idle connection that carries
    /// one stays open).
    pub fn connection_in_use(&self, connection: ConnectionId) -> bool {
        let on = |f: Option<Flow>| f.is_some_and(|f| f.connection == Some(connection));
        self.calls.values().any(|c| on(Some(c.caller.answered)) || on(c.agent))
    }

    fn route(&self, call_id: &str) -> Option<(CallHandle, C, LegId)> {
        let (handle, leg) = self.routes.get(call_id)?;
        Some((*handle, self.calls.get(handle)?.inbox.clone(), *leg))
    }
}

/// Where a caller's leg is answered (§18.2.2): over UDP its rport or Via port, over a stream
/// the connection it came on.
pub fn reply_flow(req: &Request, from: Flow) -> Flow {
    match from.transport {
        Transport::Udp => from.to(req.reply_address(from.remote)),
        Transport::Tcp | Transport::Tls => from,
    }
}

fn reply(req: &Request, from: Flow, bytes: Vec<u8>) -> Transmit {
    Transmit { to: reply_flow(req, from), bytes }
}

fn plain(req: &Request, status: u16, reason: &str) -> Vec<u8> {
    ResponseBuilder::new(req, status, reason).build()
}

#[cfg(test)]
mod tests;
