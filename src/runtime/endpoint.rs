//! The SIP UDP endpoint (RFC 3261 §18): receives datagrams, answers what needs no call
//! (malformed → 400, out-of-dialog OPTIONS → 200, unknown session → 404), routes the rest by
//! Call-ID to the task that owns the call, and starts a call task for each new INVITE to a
//! `pay-<session>` URI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::call_task::CallTask;
use super::{Route, Shared, current_month};
use crate::call::{Call, CallConfig, LegId};
use crate::session::SessionId;
use crate::sip::message::{self, Method, Request, ResponseBuilder, SipMessage};

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO";

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
        let bytes = &buf[..n];
        // Keep-alives (RFC 5626 §4.4.1 CRLF) and stray bytes are not messages.
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match message::parse(bytes) {
            Ok(msg) => handle(&shared, msg, from).await,
            Err(e) => {
                tracing::info!(%from, error = %e, "malformed SIP message");
                if let Some(resp) = message::bad_request(bytes, &e) {
                    shared.send_sip(&resp, from);
                }
            }
        }
    }
}

async fn handle(shared: &Arc<Shared>, msg: SipMessage, from: SocketAddr) {
    let call_id = match &msg {
        SipMessage::Request(r) => r.call_id(),
        SipMessage::Response(r) => r.call_id(),
    };
    if let Some(route) = shared.route(call_id) {
        // A call whose inbox is full is overwhelmed; UDP senders retransmit.
        let _ = route.inbox.try_send((route.leg, msg));
        return;
    }
    let SipMessage::Request(req) = msg else {
        return; // a response for no call of ours (§18.1.2: discard)
    };
    let reply = |status: u16, reason: &str| shared.send_sip(&ResponseBuilder::new(&req, status, reason).build(), from);
    match req.method() {
        Method::Invite if req.to_tag().is_none() => start_call(shared, &req, from).await,
        Method::Options => shared.send_sip(
            &ResponseBuilder::new(&req, 200, "OK").header("Allow", ALLOW).header("Accept", "application/sdp").build(),
            from,
        ),
        Method::Ack => {}
        Method::Invite | Method::Bye | Method::Cancel | Method::Info => reply(481, "Call/Transaction Does Not Exist"),
        Method::Other(_) => {
            shared.send_sip(&ResponseBuilder::new(&req, 405, "Method Not Allowed").header("Allow", ALLOW).build(), from)
        }
    }
}

async fn start_call(shared: &Arc<Shared>, invite: &Request, from: SocketAddr) {
    let not_found = || shared.send_sip(&ResponseBuilder::new(invite, 404, "Not Found").build(), from);
    let Some(session) = invite.uri_user().and_then(SessionId::from_sip_user) else {
        return not_found();
    };
    let Some((caller_rtp, agent_rtp)) = shared.ports.bind_pair().await else {
        tracing::warn!("RTP port range exhausted");
        let resp = ResponseBuilder::new(invite, 503, "Service Unavailable").header("Retry-After", "5").build();
        return shared.send_sip(&resp, from);
    };
    let (sip_tx, sip_rx) = mpsc::channel(64);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let attached = match shared.sessions.attach(&session, cmd_tx.clone(), shared.config.capture.max_attempts) {
        Ok(a) => a,
        // Unknown and already-used sessions get the same answer: no enumeration.
        Err(_) => return not_found(),
    };
    let agent_sip = match &attached.agent_uri {
        Some(uri) => resolve_sip_uri(uri).await,
        None => None,
    };
    let local = |s: &tokio::net::UdpSocket| s.local_addr().unwrap_or(shared.sip_addr);
    let cfg = CallConfig {
        local_sip: shared.sip_addr,
        caller_rtp: local(&caller_rtp),
        agent_rtp: local(&agent_rtp),
        agent_uri: attached.agent_uri.filter(|_| agent_sip.is_some()),
        fields: attached.fields,
        collector: shared.config.collector(),
        timers: shared.config.timers(),
        today: current_month(),
        seed: rand::random(),
        masking: shared.config.masking(),
        record: shared.config.recordings.enabled,
        prompts: shared.prompts.clone(),
    };
    let call = match Call::accept(invite, cfg, Instant::now()) {
        Ok(c) => c,
        Err(refusal) => {
            shared.send_sip(&refusal, from);
            shared.sessions.apply(
                &session,
                &crate::call::CallEvent::CaptureFailed { reason: "the caller's media offer was not acceptable".into() },
            );
            return;
        }
    };
    {
        let mut routes = shared.routes();
        routes.insert(call.caller_call_id().to_string(), Route { leg: LegId::Caller, inbox: sip_tx.clone() });
        routes.insert(call.agent_call_id().to_string(), Route { leg: LegId::Agent, inbox: sip_tx });
    }
    tracing::info!(session = session.as_str(), %from, agent = agent_sip.is_some(), "call answered");
    let task = CallTask {
        call,
        session,
        shared: shared.clone(),
        caller_sip: from,
        agent_sip,
        caller_rtp,
        agent_rtp,
        sip_rx,
        cmd_rx,
        cmd_tx,
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
