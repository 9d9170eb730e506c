//! The SIP side of every load call in one task on one UDP socket: the caller legs' UAC
//! (INVITE with Timer A retransmissions, ACK, BYE; RFC 3261 §17.1.1, §13.2) and the agent
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

use crate::script::EVENT_PT;

/// How long a call may take to come up before it counts as failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const T1: Duration = Duration::from_millis(500);
const BYE_TRIES: u32 = 6;

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
    /// Our BYE was answered (or went unanswered `BYE_TRIES` times).
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
    Inviting { next: Instant, every: Duration, provisional: bool },
    Up,
    Ending { next: Instant, tries: u32, bye: Vec<u8> },
}

struct Call {
    call_id: String,
    from_tag: String,
    invite: Vec<u8>,
    sdp: String,
    agent_sdp: String,
    to: Option<String>,
    target: String,
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
        self.send(&invite, self.target);
        let now = Instant::now();
        self.by_call_id.insert(call_id.clone(), (id, Role::Caller));
        self.calls.insert(
            id,
            Call {
                call_id,
                from_tag,
                invite,
                sdp,
                agent_sdp,
                to: None,
                target: uri,
                phase: Phase::Inviting { next: now + T1, every: T1, provisional: false },
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
        RequestBuilder::new(&method, &c.target)
            .header("Via", &self.via())
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
        self.send(&bye, self.target);
        if let Some(c) = self.calls.get_mut(&id) {
            c.phase = Phase::Ending { next: Instant::now() + T1, tries: 1, bye };
        }
    }

    fn response(&mut self, r: Response) {
        let Some(&(id, Role::Caller)) = self.by_call_id.get(r.call_id()) else { return };
        let Some(c) = self.calls.get_mut(&id) else { return };
        let status = r.status();
        match (r.cseq().method.clone(), &mut c.phase) {
            (Method::Invite, Phase::Inviting { provisional, .. }) if status < 200 => *provisional = true,
            (Method::Invite, Phase::Inviting { .. }) if status < 300 => {
                c.to = Some(r.to().to_string());
                c.target = r.contact_uri().unwrap_or(&c.target).to_string();
                c.phase = Phase::Up;
                match RemoteDescription::parse(r.body()).map(|d| d.negotiate().remote) {
                    Ok(SocketAddr::V4(a)) => c.caller_leg = Some(a),
                    _ => return self.fail(id, "200 without a usable IPv4 SDP".into()),
                }
                self.ack(id);
                self.report_if_connected(id);
            }
            (Method::Invite, Phase::Inviting { .. }) => {
                // ACK for a failure: same branch as the INVITE (RFC 3261 §17.1.1.3).
                if let Ok(SipMessage::Request(inv)) = message::parse(&c.invite) {
                    let ack = message::ack_for(&inv, r.to());
                    self.send(&ack, self.target);
                }
                let hint = if status == 503 { " (raise sip.rate_per_source for load tests)" } else { "" };
                self.fail(id, format!("INVITE answered {status}{hint}"));
            }
            // A retransmitted 200: our ACK was lost.
            (Method::Invite, Phase::Up) if (200..300).contains(&status) => self.ack(id),
            (Method::Bye, Phase::Ending { .. }) if status >= 200 => self.ended(id, true),
            _ => {}
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
        let (mut invites, mut byes, mut failed, mut unanswered) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&id, c) in &mut self.calls {
            match &mut c.phase {
                Phase::Inviting { .. } | Phase::Up if !c.reported && now - c.started > SETUP_TIMEOUT => failed.push(id),
                Phase::Inviting { next, every, provisional } if !*provisional && now >= *next => {
                    // Timer A doubles up to T2 (4 s).
                    *every = (*every * 2).min(Duration::from_secs(4));
                    *next = now + *every;
                    invites.push(id);
                }
                Phase::Ending { tries, .. } if *tries >= BYE_TRIES => unanswered.push(id),
                Phase::Ending { next, tries, .. } if now >= *next => {
                    *tries += 1;
                    *next = now + T1;
                    byes.push(id);
                }
                _ => {}
            }
        }
        for id in invites {
            if let Some(c) = self.calls.get(&id) {
                self.send(&c.invite, self.target);
            }
        }
        for id in byes {
            if let Some(Call { phase: Phase::Ending { bye, .. }, .. }) = self.calls.get(&id) {
                self.send(bye, self.target);
            }
        }
        for id in failed {
            self.fail(id, format!("not connected within {} s", SETUP_TIMEOUT.as_secs()));
        }
        for id in unanswered {
            self.ended(id, false);
        }
    }
}
