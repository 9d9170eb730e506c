//! The SIP side of every load call in one task on one UDP socket: the caller legs' UAC
//! (INVITE and BYE in tonewall's own client transactions, `ClientInvite` and
//! `ClientNonInvite`: Timers A/B and E/F, the ACK of a non-2xx; RFC 3261 §17.1, §13.2) and the agent
//! legs' UAS (tonewall calls `sip:agent-<n>@<this socket>`; we answer 200 with SDP at once,
//! and answer a retransmitted INVITE with the same 200, §13.3.1.4). Messages are parsed and
//! built with tonewall's own SIP code; sipp checks that code against an independent one in
//! tonewall's tests.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tonewall::media::g711::Codec;
use tonewall::sip::message::{self, Method, Request, RequestBuilder, Response, ResponseBuilder, SipMessage};
use tonewall::sip::sdp::{self, RemoteDescription};
use tonewall::sip::transaction::{
    ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState, Delivery, Outcome, Timers,
};

use crate::script::EVENT_PT;

/// How long a call may take to come up before it counts as failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

pub enum SipCommand {
    /// Dial `uri`; media for the caller leg at `caller_rtp`, for the agent leg at `agent_rtp`.
    Dial {
        id: u32,
        uri: String,
        caller_rtp: SocketAddrV4,
        agent_rtp: SocketAddrV4,
    },
    Hangup {
        id: u32,
    },
}

#[derive(Debug)]
pub enum SipEvent {
    /// Both legs are up: tonewall's RTP addresses for the caller leg and the agent leg.
    Connected {
        id: u32,
        caller_leg: SocketAddrV4,
        agent_leg: SocketAddrV4,
    },
    Failed {
        id: u32,
        reason: String,
    },
    /// tonewall hung up a call we had not ended.
    Dropped {
        id: u32,
    },
    /// Our BYE was answered (or its transaction timed out, Timer F).
    Ended {
        id: u32,
        answered: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Agent,
}

enum Phase {
    Inviting(Box<ClientInvite>),
    Up,
    Ending(Box<ClientNonInvite>),
}

struct Call {
    call_id: String,
    from_tag: String,
    sdp: String,
    agent_sdp: String,
    to: Option<String>,
    target: String,
    /// The dialog's route set (RFC 3261 §12.1.2): the 200's Record-Route, reversed; the
    /// in-dialog requests carry it as Route headers, so they follow a proxy in front.
    route: Vec<String>,
    phase: Phase,
    started: Instant,
    caller_leg: Option<SocketAddrV4>,
    agent_leg: Option<SocketAddrV4>,
    /// Our 200 to tonewall's INVITE on the agent leg (sent again if the INVITE is).
    agent_ok: Option<Vec<u8>>,
    agent_call_id: Option<String>,
    reported: bool,
}

pub struct SipDriver {
    pub addr: SocketAddr,
    pub tx: mpsc::UnboundedSender<SipCommand>,
}

impl SipDriver {
    pub async fn start(
        bind: SocketAddr,
        target: SocketAddr,
        events: mpsc::UnboundedSender<SipEvent>,
    ) -> anyhow::Result<SipDriver> {
        let sock = UdpSocket::bind(bind).await?;
        crate::mmsg::prepare(crate::mmsg::fd_of(&sock), 4 << 20)?;
        let addr = sock.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task { sock, addr, target, calls: HashMap::new(), by_call_id: HashMap::new(), events, rx };
        tokio::spawn(task.run());
        Ok(SipDriver { addr, tx })
    }
}

struct Task {
    sock: UdpSocket,
    addr: SocketAddr,
    target: SocketAddr,
    calls: HashMap<u32, Call>,
    by_call_id: HashMap<String, (u32, Role)>,
    events: mpsc::UnboundedSender<SipEvent>,
    rx: mpsc::UnboundedReceiver<SipCommand>,
}

impl Task {
    async fn run(mut self) {
        let mut buf = vec![0u8; message::MAX_MESSAGE];
        let mut timers = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(SipCommand::Dial { id, uri, caller_rtp, agent_rtp }) => self.dial(id, uri, caller_rtp, agent_rtp),
                    Some(SipCommand::Hangup { id }) => self.hang_up(id),
                    None => return,
                },
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r
                        && let Ok(msg) = message::parse(&buf[..n])
                    {
                        match msg {
                            SipMessage::Request(req) => self.request(req, from),
                            SipMessage::Response(resp) => self.response(resp),
                        }
                    }
                }
                _ = timers.tick() => self.timers(Instant::now()),
            }
        }
    }

    fn send(&self, bytes: &[u8], to: SocketAddr) {
        // UDP on loopback: a full buffer is a loss the retransmission timers cover.
        let _ = self.sock.try_send_to(bytes, to);
    }

    fn via(&self) -> String {
        format!("SIP/2.0/UDP {};branch=z9hG4bK{:x};rport", self.addr, rand::random::<u64>())
    }

    fn dial(&mut self, id: u32, uri: String, caller_rtp: SocketAddrV4, agent_rtp: SocketAddrV4) {
        let call_id = format!("load-{id}-{:x}", rand::random::<u64>());
        let from_tag = format!("lc{id}");
        let sdp = sdp::write(SocketAddr::V4(caller_rtp), u64::from(id), &[Codec::Pcmu], Some(EVENT_PT));
        let agent_sdp = sdp::write(SocketAddr::V4(agent_rtp), u64::from(id), &[Codec::Pcmu], None);
        let invite = RequestBuilder::new(&Method::Invite, &uri)
            .header("Via", &self.via())
            .header("Max-Forwards", "70")
            .header("From", &format!("<sip:caller-{id}@{}>;tag={from_tag}", self.addr))
            .header("To", &format!("<{uri}>"))
            .header("Call-ID", &call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", &format!("<sip:caller-{id}@{}>", self.addr))
            .body("application/sdp", sdp.as_bytes())
            .build();
        let now = Instant::now();
        let Ok(SipMessage::Request(parsed)) = message::parse(&invite) else {
            return self.fail(id, "our own INVITE does not parse".into());
        };
        let mut tx = Box::new(ClientInvite::new(parsed, invite, now, Timers::default(), false));
        while let Some(bytes) = tx.poll_transmit() {
            self.send(&bytes, self.target);
        }
        self.by_call_id.insert(call_id.clone(), (id, Role::Caller));
        self.calls.insert(
            id,
            Call {
                call_id,
                from_tag,
                sdp,
                agent_sdp,
                to: None,
                target: uri,
                route: Vec::new(),
                phase: Phase::Inviting(tx),
                started: now,
                caller_leg: None,
                agent_leg: None,
                agent_ok: None,
                agent_call_id: None,
                reported: false,
            },
        );
    }

    fn in_dialog(&self, c: &Call, method: Method, cseq: u32) -> Vec<u8> {
        let mut b = RequestBuilder::new(&method, &c.target);
        for r in &c.route {
            b = b.header("Route", r);
        }
        b.header("Via", &self.via())
            .header("Max-Forwards", "70")
            .header("From", &format!("<sip:caller@{}>;tag={}", self.addr, c.from_tag))
            .header("To", c.to.as_deref().unwrap_or_default())
            .header("Call-ID", &c.call_id)
            .header("CSeq", &format!("{cseq} {}", method.as_str()))
            .build()
    }

    fn hang_up(&mut self, id: u32) {
        let Some(c) = self.calls.get(&id) else { return };
        let bye = self.in_dialog(c, Method::Bye, 2);
        // The transaction is known by the branch in_dialog drew.
        let Ok(SipMessage::Request(parsed)) = message::parse(&bye) else { return self.ended(id, false) };
        let branch = parsed.branch().unwrap_or_default();
        let mut tx =
            Box::new(ClientNonInvite::new(Method::Bye, &branch, bye, Instant::now(), Timers::default(), false));
        while let Some(bytes) = tx.poll_transmit() {
            self.send(&bytes, self.target);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.phase = Phase::Ending(tx);
        }
    }

    fn response(&mut self, r: Response) {
        let Some(&(id, Role::Caller)) = self.by_call_id.get(r.call_id()) else { return };
        let Some(c) = self.calls.get_mut(&id) else { return };
        let status = r.status();
        let now = Instant::now();
        let mut out = Vec::new();
        let step = match &mut c.phase {
            Phase::Inviting(tx) if tx.matches(&r) => {
                let delivery = tx.handle_response(now, &r);
                while let Some(bytes) = tx.poll_transmit() {
                    out.push(bytes); // the ACK of a non-2xx (§17.1.1.3)
                }
                match (delivery, status) {
                    (Delivery::Absorbed, _) | (_, 100..=199) => Step::Nothing,
                    (_, 200..=299) => Step::Answered,
                    _ => Step::Refused,
                }
            }
            // A retransmitted 200: our ACK was lost.
            Phase::Up if r.cseq().method == Method::Invite && (200..300).contains(&status) => Step::AckAgain,
            Phase::Ending(tx) if r.cseq().method == Method::Bye => {
                tx.handle_response(now, &r);
                while let Some(bytes) = tx.poll_transmit() {
                    out.push(bytes);
                }
                if status >= 200 { Step::ByeAnswered } else { Step::Nothing }
            }
            _ => Step::Nothing,
        };
        for bytes in out {
            self.send(&bytes, self.target);
        }
        match step {
            Step::Nothing => {}
            Step::Answered => {
                let Some(c) = self.calls.get_mut(&id) else { return };
                c.to = Some(r.to().to_string());
                c.target = r.contact_uri().unwrap_or(&c.target).to_string();
                c.route = route_set(&r);
                c.phase = Phase::Up;
                match RemoteDescription::parse(r.body()).map(|d| d.negotiate().remote) {
                    Ok(SocketAddr::V4(a)) => c.caller_leg = Some(a),
                    _ => return self.fail(id, "200 without a usable IPv4 SDP".into()),
                }
                self.ack(id);
                self.report_if_connected(id);
            }
            Step::Refused => {
                let hint = if status == 503 { " (raise sip.rate_per_source for load tests)" } else { "" };
                self.fail(id, format!("INVITE answered {status}{hint}"));
            }
            Step::AckAgain => self.ack(id),
            Step::ByeAnswered => self.ended(id, true),
        }
    }

    fn ack(&self, id: u32) {
        if let Some(c) = self.calls.get(&id) {
            self.send(&self.in_dialog(c, Method::Ack, 1), self.target);
        }
    }

    fn request(&mut self, req: Request, from: SocketAddr) {
        let to = req.reply_address(from);
        let known = self.by_call_id.get(req.call_id()).copied();
        match (req.method(), known) {
            (Method::Invite, None) => self.agent_invite(&req, to),
            (Method::Invite, Some((id, role))) => {
                // A retransmission, or a re-INVITE (session refresh): same answer, same SDP.
                let Some(c) = self.calls.get(&id) else { return };
                let body = if role == Role::Agent { &c.agent_sdp } else { &c.sdp };
                let tag = req.to_tag().unwrap_or_else(|| format!("la{id}"));
                let ok = match (role, &c.agent_ok) {
                    (Role::Agent, Some(ok)) if req.to_tag().is_none() => ok.clone(),
                    _ => ResponseBuilder::new(&req, 200, "OK")
                        .to_tag(&tag)
                        .header("Contact", &format!("<sip:load@{}>", self.addr))
                        .body("application/sdp", body.as_bytes())
                        .build(),
                };
                self.send(&ok, to);
            }
            (Method::Ack, _) => {}
            (Method::Bye, known) => {
                self.send(&ResponseBuilder::new(&req, 200, "OK").build(), to);
                if let Some((id, _)) = known
                    && let Some(c) = self.calls.get(&id)
                    && !matches!(c.phase, Phase::Ending { .. })
                {
                    self.forget(id);
                    let _ = self.events.send(SipEvent::Dropped { id });
                }
            }
            _ => self.send(&ResponseBuilder::new(&req, 200, "OK").build(), to),
        }
    }

    /// tonewall calling the agent of call `agent-<id>`.
    fn agent_invite(&mut self, req: &Request, to: SocketAddr) {
        let id = req.uri_user().and_then(|u| u.strip_prefix("agent-")).and_then(|n| n.parse::<u32>().ok());
        let Some(c) = id.and_then(|id| self.calls.get_mut(&id)) else {
            self.send(&ResponseBuilder::new(req, 404, "Not Found").to_tag("none").build(), to);
            return;
        };
        let Some(id) = id else { return };
        match RemoteDescription::parse(req.body()).map(|d| d.negotiate().remote) {
            Ok(SocketAddr::V4(a)) => c.agent_leg = Some(a),
            _ => {
                self.send(&ResponseBuilder::new(req, 488, "Not Acceptable Here").to_tag("none").build(), to);
                return self.fail(id, "agent INVITE without a usable IPv4 SDP".into());
            }
        }
        let ok = ResponseBuilder::new(req, 200, "OK")
            .to_tag(&format!("la{id}"))
            .header("Contact", &format!("<sip:agent-{id}@{}>", self.addr))
            .body("application/sdp", c.agent_sdp.as_bytes())
            .build();
        c.agent_call_id = Some(req.call_id().to_string());
        self.by_call_id.insert(req.call_id().to_string(), (id, Role::Agent));
        self.send(&ok, to);
        if let Some(c) = self.calls.get_mut(&id) {
            c.agent_ok = Some(ok);
        }
        self.report_if_connected(id);
    }

    fn report_if_connected(&mut self, id: u32) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        if let (false, Some(caller_leg), Some(agent_leg), Phase::Up) = (c.reported, c.caller_leg, c.agent_leg, &c.phase)
        {
            c.reported = true;
            let _ = self.events.send(SipEvent::Connected { id, caller_leg, agent_leg });
        }
    }

    fn fail(&mut self, id: u32, reason: String) {
        self.forget(id);
        let _ = self.events.send(SipEvent::Failed { id, reason });
    }

    fn ended(&mut self, id: u32, answered: bool) {
        self.forget(id);
        let _ = self.events.send(SipEvent::Ended { id, answered });
    }

    fn forget(&mut self, id: u32) {
        if let Some(c) = self.calls.remove(&id) {
            self.by_call_id.remove(&c.call_id);
            if let Some(a) = c.agent_call_id {
                self.by_call_id.remove(&a);
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        let (mut out, mut failed, mut unanswered) = (Vec::new(), Vec::new(), Vec::new());
        for (&id, c) in &mut self.calls {
            if !c.reported && now - c.started > SETUP_TIMEOUT && !matches!(c.phase, Phase::Ending(_)) {
                failed.push(id);
                continue;
            }
            match &mut c.phase {
                Phase::Inviting(tx) => {
                    if tx.poll_timeout().is_some_and(|t| t <= now) {
                        tx.handle_timeout(now);
                    }
                    out.extend(std::iter::from_fn(|| tx.poll_transmit()));
                    if tx.state() == ClientInviteState::Terminated(Outcome::TimedOut) {
                        failed.push(id);
                    }
                }
                Phase::Ending(tx) => {
                    if tx.poll_timeout().is_some_and(|t| t <= now) {
                        tx.handle_timeout(now);
                    }
                    out.extend(std::iter::from_fn(|| tx.poll_transmit()));
                    if tx.state() == ClientNonInviteState::Terminated(Outcome::TimedOut) {
                        unanswered.push(id);
                    }
                }
                Phase::Up => {}
            }
        }
        for bytes in out {
            self.send(&bytes, self.target);
        }
        for id in failed {
            self.fail(id, format!("not connected within {} s", SETUP_TIMEOUT.as_secs()));
        }
        for id in unanswered {
            self.ended(id, false);
        }
    }
}

/// What a response to a caller leg leads to, once the transaction has seen it.
enum Step {
    Nothing,
    Answered,
    Refused,
    AckAgain,
    ByeAnswered,
}

/// The route set a UAC takes from a 2xx (RFC 3261 §12.1.2): every Record-Route entry, the
/// last first. A header may list several entries, separated by commas outside `<...>`.
fn route_set(ok: &Response) -> Vec<String> {
    let mut entries = Vec::new();
    for header in ok.headers_named("Record-Route") {
        let (mut depth, mut start) = (0u32, 0);
        for (i, ch) in header.char_indices() {
            match ch {
                '<' => depth += 1,
                '>' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    entries.push(header[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        entries.push(header[start..].trim().to_string());
    }
    entries.retain(|e| !e.is_empty());
    entries.reverse();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_set_is_the_record_route_reversed() {
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1\r\n\
                  Record-Route: <sip:127.0.0.1:5070;lr;ftag=a,b>, <sip:10.0.0.1;lr>\r\n\
                  Record-Route: <sip:127.0.0.9;lr>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\n\
                  Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Ok(SipMessage::Response(r)) = message::parse(ok.as_bytes()) else { panic!("does not parse") };
        assert_eq!(route_set(&r), ["<sip:127.0.0.9;lr>", "<sip:10.0.0.1;lr>", "<sip:127.0.0.1:5070;lr;ftag=a,b>"]);
    }
}
