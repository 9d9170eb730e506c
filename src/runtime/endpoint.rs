//! The SIP endpoint (RFC 3261 §8.2, §18): takes messages from every transport, answers what
//! needs no call statelessly (malformed → 400 or the status its fault calls for, an unknown
//! required extension → 420, out-of-dialog OPTIONS → 200, unknown session → 404, too many
//! from one source → 503), routes the rest by Call-ID to the task that owns the call, hands
//! an INVITE with Replaces (RFC 3891) to the call holding the dialog it names, and starts a
//! call task for each new INVITE to a `pay-<session>` URI or to a user under an inline route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::call_task::CallTask;
use super::transport::Flow;
use super::{Inbound, Route, Shared, current_month};
use crate::call::{AfterCapture, Call, CallConfig, LegId};
use crate::calls::{CallId, CallMode, NewCall};
use crate::config::SipRoute;
use crate::media::srtp::MasterKey;
use crate::session::{Attached, SessionId};
use crate::sip::message::{self, ALLOW, Method, Request, ResponseBuilder, SipMessage};
use crate::sip::replaces::Replaces;
use crate::sip::stream::Transport;

pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; message::MAX_MESSAGE + 1];
    loop {
        let (n, from) = tokio::select! {
            r = shared.sip.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; keep serving.
                    tracing::debug!(error = %e, "SIP receive error");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        receive(&shared, &buf[..n], &Flow::udp(from)).await;
    }
}

/// One datagram or framed stream message from `flow`.
pub async fn receive(shared: &Arc<Shared>, bytes: &[u8], flow: &Flow) {
    // Keep-alives (RFC 5626 §4.4.1 CRLF) and stray bytes are not messages.
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    match message::parse(bytes) {
        Ok(SipMessage::Request(mut req)) => {
            req.stamp_source(flow.remote);
            handle_request(shared, req, flow).await
        }
        Ok(SipMessage::Response(resp)) => {
            if let Some(route) = shared.route(resp.call_id()) {
                let _ = route.inbox.try_send(Inbound {
                    leg: route.leg,
                    msg: Box::new(SipMessage::Response(resp)),
                    flow: None,
                });
            }
            // Otherwise a response for no call of ours (§18.1.2: discard).
        }
        Err(e) => {
            tracing::info!(from = %flow.remote, error = %e, "malformed SIP message");
            if let Some(resp) = message::bad_request(bytes, &e) {
                // The 400 goes where the message came from: its Via may be what is broken.
                shared.send_flow(flow, &resp);
            }
        }
    }
}

async fn handle_request(shared: &Arc<Shared>, req: Request, flow: &Flow) {
    // Extensions the request requires and we lack (§8.2.2.3; never for ACK or CANCEL).
    let unsupported = req.unsupported_required(message::SUPPORTED);
    if !unsupported.is_empty() && !matches!(req.method(), Method::Ack | Method::Cancel) {
        let resp = ResponseBuilder::new(&req, 420, "Bad Extension").header("Unsupported", &unsupported.join(", "));
        return shared.reply(flow, &req, &resp.build());
    }
    if let Some(route) = shared.route(req.call_id()) {
        // A call whose inbox is full is overwhelmed; UDP senders retransmit.
        let _ = route.inbox.try_send(Inbound { leg: route.leg, msg: Box::new(SipMessage::Request(req)), flow: None });
        return;
    }
    let reply =
        |status: u16, reason: &str| shared.reply(flow, &req, &ResponseBuilder::new(&req, status, reason).build());
    if req.method() == Method::Ack {
        return; // an ACK for nothing we know (or for a stateless error response)
    }
    if !shared.allow_source(flow.remote.ip()) {
        let resp = ResponseBuilder::new(&req, 503, "Service Unavailable").header("Retry-After", "1").build();
        return shared.reply(flow, &req, &resp);
    }
    match req.method() {
        Method::Invite if req.to_tag().is_none() => match Replaces::of(&req) {
            Some(replaces) => take_over(shared, req, replaces, flow),
            None => start_call(shared, &req, flow).await,
        },
        Method::Options => shared.reply(
            flow,
            &req,
            &ResponseBuilder::new(&req, 200, "OK").header("Allow", ALLOW).header("Accept", "application/sdp").build(),
        ),
        Method::Ack => {}
        Method::Invite | Method::Bye | Method::Cancel | Method::Info | Method::Update | Method::Notify => {
            reply(481, "Call/Transaction Does Not Exist")
        }
        Method::Refer | Method::Other(_) => shared.reply(
            flow,
            &req,
            &ResponseBuilder::new(&req, 405, "Method Not Allowed").header("Allow", ALLOW).build(),
        ),
    }
}

/// An INVITE with Replaces (RFC 3891 §3) goes to the call that holds the dialog it names,
/// under its own Call-ID from now on; the call checks the tags. Naming no dialog of ours is
/// 481, a malformed header 400.
fn take_over(shared: &Arc<Shared>, req: Request, replaces: Result<Replaces, ()>, flow: &Flow) {
    let Ok(replaces) = replaces else {
        return shared.reply(flow, &req, &ResponseBuilder::new(&req, 400, "Bad Request").build());
    };
    let Some(route) = shared.route(&replaces.call_id).filter(|r| r.leg == LegId::Caller) else {
        let resp = ResponseBuilder::new(&req, 481, "Call/Transaction Does Not Exist").build();
        return shared.reply(flow, &req, &resp);
    };
    shared.routes().insert(req.call_id().to_string(), route.clone());
    let caller = match flow.transport {
        Transport::Udp => flow.to(req.reply_address(flow.remote)),
        _ => flow.clone(),
    };
    let _ = route.inbox.try_send(Inbound {
        leg: LegId::Caller,
        msg: Box::new(SipMessage::Request(req)),
        flow: Some(caller),
    });
}

/// Whom a new INVITE is for: a waiting session, or an inline route.
enum Admission {
    Session(SessionId),
    Inline(SipRoute),
}

async fn start_call(shared: &Arc<Shared>, invite: &Request, flow: &Flow) {
    let not_found = || shared.reply(flow, invite, &ResponseBuilder::new(invite, 404, "Not Found").build());
    let user = invite.uri_user().unwrap_or("");
    let admission = match SessionId::from_sip_user(user) {
        Some(session) => Admission::Session(session),
        None => match shared.config.sip.route_for(user) {
            Some(route) => Admission::Inline(route.clone()),
            None => return not_found(),
        },
    };
    let Some((caller_rtp, agent_rtp)) = shared.ports.bind_pair().await else {
        tracing::warn!("RTP port range exhausted");
        let resp = ResponseBuilder::new(invite, 503, "Service Unavailable").header("Retry-After", "5").build();
        return shared.reply(flow, invite, &resp);
    };
    let (sip_tx, sip_rx) = mpsc::channel(64);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (session, attached) = match &admission {
        Admission::Session(id) => {
            match shared.sessions.attach(id, cmd_tx.clone(), shared.config.capture.max_attempts) {
                Ok(a) => (Some(id.clone()), a),
                // Unknown and already-used sessions get the same answer: no enumeration.
                Err(_) => return not_found(),
            }
        }
        Admission::Inline(route) => {
            let inline =
                Attached { fields: vec![], agent_uri: Some(route.target.clone()), after_capture: AfterCapture::Bridge };
            (None, inline)
        }
    };
    let agent_sip = match (&attached.agent_uri, &attached.after_capture) {
        (Some(uri), AfterCapture::Bridge) => resolve_sip_uri(uri).await,
        _ => None,
    };
    if matches!(admission, Admission::Inline(_)) && agent_sip.is_none() {
        tracing::warn!(route = ?attached.agent_uri, "inline route target does not resolve");
        return shared.reply(flow, invite, &ResponseBuilder::new(invite, 503, "Service Unavailable").build());
    }
    let local = |s: &tokio::net::UdpSocket| s.local_addr().unwrap_or(shared.sip_addr);
    let cfg = CallConfig {
        local_sip: shared.sip_addr,
        caller_transport: flow.transport,
        caller_rtp: local(&caller_rtp),
        agent_rtp: local(&agent_rtp),
        agent_uri: attached.agent_uri.filter(|_| agent_sip.is_some()),
        after_capture: attached.after_capture,
        fields: attached.fields,
        collector: shared.config.collector(),
        timers: shared.config.timers(),
        today: current_month(),
        seed: rand::random(),
        masking: shared.config.masking(),
        record: shared.config.recordings.enabled,
        prompts: shared.prompts.clone(),
        srtp: match &admission {
            Admission::Inline(route) => route.srtp,
            Admission::Session(_) => shared.config.sip.srtp,
        },
        srtp_key: MasterKey::from_random(&rand::random()),
        inline: matches!(admission, Admission::Inline(_)),
    };
    let call = match Call::accept(invite, cfg, Instant::now()) {
        Ok(c) => c,
        Err(refusal) => {
            shared.reply(flow, invite, &refusal);
            if let Some(session) = &session {
                let reason = "the caller's offer was not acceptable".into();
                shared.sessions.apply(session, &crate::call::CallEvent::CaptureFailed { reason });
            }
            return;
        }
    };
    {
        let mut routes = shared.routes();
        routes.insert(call.caller_call_id().to_string(), Route { leg: LegId::Caller, inbox: sip_tx.clone() });
        routes.insert(call.agent_call_id().to_string(), Route { leg: LegId::Agent, inbox: sip_tx });
    }
    let id = CallId::new();
    let mode = match admission {
        Admission::Inline(route) => CallMode::Inline { route: route.name },
        Admission::Session(_) => CallMode::Session,
    };
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let new = NewCall {
        mode,
        sip_call_id: invite.call_id().to_string(),
        caller: invite.from_user().to_string(),
        started_unix_ms,
        session: session.clone(),
        commands: cmd_tx.clone(),
    };
    shared.calls.insert(id.clone(), new);
    // Over UDP the caller's leg answers where §18.2.2 says (its rport, or its Via port).
    let caller = match flow.transport {
        Transport::Udp => flow.to(invite.reply_address(flow.remote)),
        _ => flow.clone(),
    };
    tracing::info!(call = id.as_str(), session = session.as_ref().map(SessionId::as_str), from = %flow.remote, transport = flow.transport.via_token(), agent = agent_sip.is_some(), "call answered");
    let task = CallTask {
        id,
        call,
        session,
        shared: shared.clone(),
        caller,
        agent_sip,
        caller_rtp,
        agent_rtp,
        sip_rx,
        cmd_rx,
        cmd_tx,
        replaced: Default::default(),
    };
    tokio::spawn(task.run());
}

/// host[:port] of a `sip:user@host:port;params` URI, resolved (default port 5060).
async fn resolve_sip_uri(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?', '>']).next()?;
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']')?;
            (h, rest.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port: u16 = port.map_or(Some(5060), |p| p.parse().ok())?;
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_sip_uris() {
        assert_eq!(resolve_sip_uri("sip:agent@127.0.0.1:5070").await, Some("127.0.0.1:5070".parse().unwrap()));
        assert_eq!(resolve_sip_uri("sip:agent@127.0.0.1").await, Some("127.0.0.1:5060".parse().unwrap()));
        assert_eq!(resolve_sip_uri("sip:agent@[::1]:5070;transport=udp").await, Some("[::1]:5070".parse().unwrap()));
        assert_eq!(resolve_sip_uri("sip:agent@[::1]").await, Some("[::1]:5060".parse().unwrap()));
        assert_eq!(resolve_sip_uri("tel:+123").await, None);
    }
}
