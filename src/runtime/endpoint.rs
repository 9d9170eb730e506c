//! The SIP endpoint's driver: takes messages from every transport to the sans-IO
//! `tonewall_core::endpoint::Endpoint` (which answers what needs no call, routes the rest and
//! admits new INVITEs), carries out what it decides, and starts a call task for each new
//! call it admits.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::call_task::CallTask;
use super::shared::{Inbound, Shared};
use super::transport;
use crate::calendar::current_month;
use crate::call::{AfterCapture, AgentTarget, Call, CallConfig, CaptureFailure, Mode};
use crate::calls::{CallId, CallMode, NewCall};
use crate::config::SipRoute;
use crate::endpoint::{Admission, EndpointEvent};
use crate::media::srtp::MasterKey;
use crate::metrics::Setup;
use crate::owner::{OwnedBy, Owner, Team};
use crate::session::{SessionError, SessionId};
use crate::sip::message::{self, Request};
use crate::sip::stream::{Flow, Transport};
use crate::targets::{self, AllowedTargets};

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
        receive(&shared, &buf[..n], Flow::udp(from)).await;
    }
}

/// One datagram or framed stream message from `flow`.
pub async fn receive(shared: &Arc<Shared>, bytes: &[u8], flow: Flow) {
    let event = shared.endpoint().handle(Instant::now(), flow, bytes);
    match event {
        EndpointEvent::ToCall { call, leg, msg, from } => {
            // A call whose inbox is full is overwhelmed; UDP senders retransmit.
            let _ = call.try_send(Inbound { leg, msg, from });
        }
        // Set up off the receive loop: it may wait on DNS for the agent's host.
        EndpointEvent::NewCall { invite, admission, reply_to } => {
            let shared = shared.clone();
            tokio::spawn(async move { start_call(&shared, &invite, admission, reply_to).await });
        }
        EndpointEvent::Respond(t) => shared.send(&t.to, &t.bytes),
        EndpointEvent::Nothing => {}
    }
}

/// Whom an admitted INVITE is for, once the driver has looked it up.
enum Admitted {
    Session(SessionId),
    Inline(SipRoute),
}

async fn start_call(shared: &Arc<Shared>, invite: &Request, admission: Admission, flow: Flow) {
    let refuse = |why: Setup, status, reason, retry: Option<u32>| {
        shared.metrics.setup(why);
        let t = shared.endpoint().refuse(invite, flow, status, reason, retry);
        shared.send(&t.to, &t.bytes);
    };
    let admitted = match admission {
        Admission::Session { id } => match SessionId::parse(&id) {
            Some(id) => Admitted::Session(id),
            None => return refuse(Setup::SessionNotFound, 404, "Not Found", None),
        },
        Admission::Inline { route } => match shared.config.sip.routes.get(route) {
            Some(r) => Admitted::Inline(r.clone()),
            None => return refuse(Setup::TargetUnreachable, 404, "Not Found", None),
        },
    };
    // A lockdown stops new captures: a session's caller is turned away (inline calls go on
    // to their agent; their captures are refused by the API).
    if let Admitted::Session(id) = &admitted {
        match crate::vault::lockdown::current(shared.vault.pool()).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::warn!(session = id.as_str(), "lockdown: caller turned away");
                return refuse(Setup::Lockdown, 503, "Service Unavailable", None);
            }
            Err(e) => {
                tracing::error!(error = %e, "lockdown state unavailable: caller turned away");
                return refuse(Setup::VaultUnavailable, 503, "Service Unavailable", Some(5));
            }
        }
    }
    let Some((caller_rtp, agent_rtp)) = shared.ports.bind_pair().await else {
        tracing::warn!("RTP port range exhausted");
        return refuse(Setup::NoRtpPorts, 503, "Service Unavailable", Some(5));
    };
    let (sip_tx, sip_rx) = mpsc::channel(64);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (captures, capture_rx) = mpsc::channel(1);
    // Listed before its session is attached: from then on a cancel reaches the call.
    let id = CallId::new();
    let session = match &admitted {
        Admitted::Session(s) => Some(s.clone()),
        Admitted::Inline(_) => None,
    };
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let owner = match &admitted {
        Admitted::Inline(route) => {
            Owner { merchant: route.merchant(), by: OwnedBy::Route { team: Team::named(&route.team) } }
        }
        Admitted::Session(s) => shared.sessions.owner(s).await.ok().flatten().unwrap_or_else(Owner::unclaimed),
    };
    // Its merchant's prompts (`default`'s where it uploaded none).
    let prompts = shared.prompts.current(&owner.merchant);
    let new = NewCall {
        mode: match &admitted {
            Admitted::Inline(route) => CallMode::Inline { route: route.name.clone() },
            Admitted::Session(_) => CallMode::Session,
        },
        sip_call_id: invite.call_id().to_string(),
        caller: invite.from_user().to_string(),
        started_unix_ms,
        session: session.clone(),
        commands: cmd_tx.clone(),
        captures,
        owner,
    };
    shared.calls.insert(id.clone(), new);
    let mode = match call_mode(shared, &admitted).await {
        Ok(mode) => mode,
        Err((why, status, reason)) => {
            shared.calls.remove(&id);
            return refuse(why, status, reason, None);
        }
    };
    let local = |s: &tokio::net::UdpSocket| s.local_addr().unwrap_or(shared.sip_addr);
    let agent_flow = match &mode {
        Mode::Session { agent: Some(a), .. } | Mode::Inline { agent: a } => Some(a.flow),
        Mode::Session { agent: None, .. } => None,
    };
    let agent_transport = agent_flow.map_or("none", |f| f.transport.via_token());
    let cfg = CallConfig {
        local_sip: shared.sip_addr,
        local_tls: shared.tls_addr,
        caller: flow,
        caller_rtp: local(&caller_rtp),
        agent_rtp: local(&agent_rtp),
        mode,
        collector: shared.config.collector(),
        timers: shared.config.timers(),
        today: current_month(),
        seed: rand::random(),
        masking: shared.config.masking(),
        record: shared.config.recordings.enabled,
        prompts,
        srtp: match &admitted {
            Admitted::Inline(route) => route.srtp,
            Admitted::Session(_) => shared.config.sip.srtp,
        },
        srtp_key: MasterKey::from_random(&rand::random()),
        agent_srtp: shared.config.sip.agent_srtp,
        agent_srtp_key: MasterKey::from_random(&rand::random()),
        media_policy: shared.config.media_policy(),
        sdes_requires_tls: shared.config.sip.sdes_requires_tls,
    };
    let call = match Call::accept(invite, cfg, Instant::now()) {
        Ok(c) => c,
        Err(refusal) => {
            shared.metrics.setup(Setup::OfferRefused);
            shared.calls.remove(&id);
            let t = shared.endpoint().refuse_with(invite, flow, refusal);
            shared.send(&t.to, &t.bytes);
            if let Some(session) = &session {
                let reason = CaptureFailure::OfferRefused;
                shared.sessions.apply(session, &crate::call::CallEvent::CaptureFailed { reason });
            }
            return;
        }
    };
    shared.metrics.setup(Setup::Answered);
    let handle = shared.endpoint().insert_call(sip_tx, call.caller_call_id(), call.agent_call_id(), flow, agent_flow);
    tracing::info!(call = id.as_str(), session = session.as_ref().map(SessionId::as_str), from = %flow.remote, transport = flow.transport.via_token(), agent = agent_transport, "call answered");
    let task = CallTask {
        id,
        handle,
        call,
        session,
        shared: shared.clone(),
        caller_rtp,
        agent_rtp,
        sip_rx,
        cmd_rx,
        cmd_tx,
        capture_rx,
    };
    tokio::spawn(task.run());
}

/// What the call is for: the inline route's agent, reached, or the attached session's
/// fields and agent. The error is the refusal to send the caller.
async fn call_mode(shared: &Arc<Shared>, admitted: &Admitted) -> Result<Mode, (Setup, u16, &'static str)> {
    match admitted {
        Admitted::Inline(route) => match reach(shared, &route.target, None).await {
            Ok(agent) => Ok(Mode::Inline { agent }),
            Err(e) => {
                tracing::warn!(route = route.name, error = %e, "inline route target unreachable");
                Err((Setup::TargetUnreachable, 503, "Service Unavailable"))
            }
        },
        Admitted::Session(id) => {
            // Unknown and already-used sessions get the same answer: no enumeration.
            let a = shared.sessions.claim(id, shared.config.capture.max_attempts).await.map_err(|e| match e {
                SessionError::Store(why) => {
                    tracing::error!(
                        session = id.as_str(),
                        error = why,
                        "session store unavailable: caller turned away"
                    );
                    (Setup::VaultUnavailable, 503, "Service Unavailable")
                }
                _ => (Setup::SessionNotFound, 404, "Not Found"),
            })?;
            let agent = match (a.agent_uri, &a.after_capture) {
                (Some(uri), AfterCapture::Bridge) => {
                    match reach(shared, &uri, Some(&shared.config.sip.allowed_targets)).await {
                        Ok(agent) => Some(agent),
                        Err(e) => {
                            tracing::warn!(session = id.as_str(), error = %e, "agent unreachable; capturing without one");
                            None
                        }
                    }
                }
                _ => None,
            };
            Ok(Mode::Session { plan: a.plan, after: a.after_capture, agent })
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("the URI names no host, or a transport tonewall does not speak")]
    Uri,
    #[error("the host does not resolve")]
    Unresolved,
    #[error("the host resolves outside sip.allowed_targets")]
    NotAllowed,
    #[error(transparent)]
    Dial(#[from] transport::DialError),
}

/// Where `uri` leads (RFC 3263 §4 without NAPTR and SRV: the URI's transport and port, the
/// host's first address): resolved, checked against `allowed` when a session chose it, and
/// over TCP or TLS connected.
async fn reach(shared: &Arc<Shared>, uri: &str, allowed: Option<&AllowedTargets>) -> Result<AgentTarget, Unreachable> {
    let (host, port) = targets::host_port(uri).ok_or(Unreachable::Uri)?;
    let (transport, default_port) = targets::transport_of(uri).ok_or(Unreachable::Uri)?;
    let port: u16 = port.map_or(Some(default_port), |p| p.parse().ok()).ok_or(Unreachable::Uri)?;
    let addr = tokio::net::lookup_host((host, port)).await.ok().and_then(|mut a| a.next());
    let addr = addr.ok_or(Unreachable::Unresolved)?;
    if allowed.is_some_and(|targets| !targets.allows_resolved(host, addr.ip())) {
        return Err(Unreachable::NotAllowed);
    }
    let flow = match transport {
        Transport::Udp => Flow::udp(addr),
        stream => transport::dial(shared, addr, stream, host).await?,
    };
    Ok(AgentTarget { uri: uri.to_string(), flow })
}
