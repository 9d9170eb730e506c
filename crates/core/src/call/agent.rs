//! The agent's leg, where tonewall is the UAC (RFC 3261 §13.2): the INVITE in a client
//! transaction (Timers A, B, D), the ACK for its 2xx from the dialog, CANCEL while it rings
//! (§9.1) including a 200 that crosses the CANCEL (ACK, then BYE), and BYE either way.
//! With `sip.agent_srtp` the offer carries our SDES key (RFC 4568 §6.1): on `RTP/SAVP` when
//! SRTP is required, on `RTP/AVP` (best-effort) when it is optional.

use std::time::Instant;

use super::agent_invite::{AgentInvite, INVITE_CSEQ, Identity};
use super::capture_flow::WhenQuiet;
use super::transactions::Purpose;
use super::{Call, CallEvent, LegId};
use crate::media::g711::Codec;
use crate::media::srtp::{CryptoAttr, MasterKey, SrtpLeg, SrtpPolicy};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request, Response, ResponseBuilder, SipMessage, parse};
use crate::sip::sdp::{self, MediaParams, Profile, RemoteDescription};
use crate::sip::stream::{Flow, Transport};
use crate::sip::transaction::{ClientInvite, ClientInviteState, Delivery, Outcome};

/// Where our INVITE to the agent is.
pub(super) enum AgentState {
    Absent,
    Inviting {
        tx: ClientInvite,
        invite: AgentInvite,
    },
    /// CANCEL sent; the INVITE transaction still runs (a 200 may cross the CANCEL, §9.1).
    Cancelling {
        tx: ClientInvite,
        give_up: Instant,
    },
    Connected {
        dialog: Dialog,
        ack: Vec<u8>,
    },
    /// Our BYE is out.
    Ending,
    Ended,
}

/// The agent's leg, owned by the call: our INVITE and its dialog, and who we are on it.
pub(super) struct AgentLeg {
    pub state: AgentState,
    /// Where the agent's messages go.
    pub flow: Option<Flow>,
    pub call_id: String,
    pub tag: String,
    /// From user of our INVITE (the caller's number for inline calls).
    pub from_user: String,
    /// Whether the leg insists on, tries or never offers SRTP (`sip.agent_srtp`).
    pub srtp_policy: SrtpPolicy,
    /// Our key for this leg, drawn by the driver.
    pub srtp_key: MasterKey,
    /// The key our INVITE offered, if it offered one.
    pub srtp_offered: Option<CryptoAttr>,
}

impl AgentLeg {
    /// Whether the agent is on the call, or being called.
    pub fn is_on(&self) -> bool {
        matches!(self.state, AgentState::Connected { .. } | AgentState::Inviting { .. })
    }

    /// Whether the leg is over (or never began).
    pub fn is_done(&self) -> bool {
        matches!(self.state, AgentState::Absent | AgentState::Ended)
    }

    /// Our INVITE's Timers A, B and D, or how long a CANCELled one may still run.
    pub fn timer(&self) -> (super::Timer, Option<Instant>) {
        let at = match &self.state {
            AgentState::Inviting { tx, .. } => tx.poll_timeout(),
            AgentState::Cancelling { tx, give_up } => Some(tx.poll_timeout().map_or(*give_up, |t| t.min(*give_up))),
            _ => None,
        };
        (super::Timer::AgentInvite, at)
    }
}

impl Call {
    pub(super) fn dial_agent(&mut self, uri: String, now: Instant) {
        let codec = self.caller.media.params.codec;
        let other = if codec == Codec::Pcmu { Codec::Pcma } else { Codec::Pcmu };
        let transport = self.agent.flow.map_or(Transport::Udp, |f| f.transport);
        // RFC 4568 §8.3: SDES keys travel in the SIP, so only over TLS when so configured.
        let keys_in_clear = self.caller.sdes_requires_tls && transport != Transport::Tls;
        let profile = match (self.agent.srtp_policy, keys_in_clear) {
            (SrtpPolicy::Off, _) | (SrtpPolicy::Optional, true) => None,
            (SrtpPolicy::Required, true) => {
                self.event(CallEvent::AgentUnavailable { status: 488 });
                self.refuse_proceeding_caller(now, 488);
                return;
            }
            (SrtpPolicy::Required, false) => Some(Profile::Savp),
            (SrtpPolicy::Optional, false) => Some(Profile::Avp),
        };
        self.agent.srtp_offered = profile.map(|_| CryptoAttr::offer(&self.agent.srtp_key));
        let keyed = self.agent.srtp_offered.as_ref().zip(profile);
        let offer = sdp::write_offer(self.agent_rtp, self.seed >> 2, &[codec, other], keyed);
        let branch = self.next_branch();
        let id = Identity {
            local: &self.local(transport),
            transport,
            from_user: &self.agent.from_user,
            tag: &self.agent.tag,
            call_id: &self.agent.call_id,
        };
        let invite = AgentInvite::new(&uri, &id, &branch, &offer);
        let Ok(SipMessage::Request(parsed)) = parse(invite.bytes()) else {
            // The URI was checked by the API; if it still makes a bad request, say so and go on
            // without an agent.
            self.event(CallEvent::AgentUnavailable { status: 400 });
            return;
        };
        let tx = ClientInvite::new(parsed, invite.bytes().to_vec(), now, self.timers, transport.reliable());
        self.agent.state = AgentState::Inviting { tx, invite };
        self.drain_agent_invite();
    }

    fn drain_agent_invite(&mut self) {
        let mut out = Vec::new();
        if let AgentState::Inviting { tx, .. } | AgentState::Cancelling { tx, .. } = &mut self.agent.state {
            while let Some(b) = tx.poll_transmit() {
                out.push(b);
            }
        }
        for b in out {
            self.send(LegId::Agent, b);
        }
    }

    pub(super) fn agent_request(&mut self, now: Instant, req: &Request) {
        let in_dialog = matches!(&self.agent.state, AgentState::Connected { dialog, .. } if dialog.matches(req));
        match req.method() {
            Method::Bye if in_dialog => {
                self.reply(now, LegId::Agent, req, 200, "OK");
                self.agent.state = AgentState::Ended;
                self.bridge.clear_agent();
                self.event(CallEvent::AgentHungUp);
                if !self.capture.is_running() {
                    self.hang_up_caller(now);
                }
            }
            Method::Ack => {}
            Method::Options => self.reply(now, LegId::Agent, req, 200, "OK"),
            Method::Bye => self.reply(now, LegId::Agent, req, 481, "Call/Transaction Does Not Exist"),
            _ => {
                let resp = ResponseBuilder::new(req, 501, "Not Implemented").build();
                self.respond(now, LegId::Agent, req, 501, resp);
            }
        }
    }

    pub(super) fn agent_response(&mut self, now: Instant, resp: &Response) {
        if resp.cseq().method != Method::Invite {
            return;
        }
        let status = resp.status();
        match &mut self.agent.state {
            AgentState::Inviting { tx, .. } | AgentState::Cancelling { tx, .. } if tx.matches(resp) => {
                let delivery = tx.handle_response(now, resp);
                self.drain_agent_invite();
                if delivery == Delivery::Absorbed {
                    return;
                }
                match status {
                    100 => {}
                    101..=199 => self.ring_proceeding_caller(now),
                    200..=299 => self.agent_answered(now, resp),
                    _ => {
                        let cancelled = matches!(self.agent.state, AgentState::Cancelling { .. });
                        self.agent.state = AgentState::Ended;
                        if !cancelled {
                            self.event(CallEvent::AgentUnavailable { status });
                            self.after_agent_lost(now, status);
                        }
                    }
                }
            }
            AgentState::Connected { ack, .. } if (200..300).contains(&status) => {
                // Our ACK was lost: the 2xx is retransmitted, answer it again (§13.2.2.4).
                let ack = ack.clone();
                self.send(LegId::Agent, ack);
            }
            _ => {}
        }
    }

    /// The agent's 2xx: ACK it; then bridge, or, when we had already cancelled (the 200
    /// crossed our CANCEL), hang up at once with BYE (§9.1, §15).
    fn agent_answered(&mut self, now: Instant, resp: &Response) {
        let cancelled = matches!(self.agent.state, AgentState::Cancelling { .. });
        let transport = self.agent.flow.map_or(Transport::Udp, |f| f.transport);
        let mut dialog = Dialog::uac(resp, INVITE_CSEQ, &self.local(transport), transport);
        let branch = self.next_branch();
        let ack = dialog.ack(INVITE_CSEQ, &branch);
        self.send(LegId::Agent, ack.clone());
        let agent_ip = self.agent.flow.map(|f| f.remote.ip());
        let answer = RemoteDescription::parse(resp.body()).map_err(|e| e.to_string()).and_then(|a| {
            let signalling = agent_ip.unwrap_or(a.remote.ip());
            self.placed(a, signalling)
        });
        let answer = answer.and_then(|a| self.agent_srtp(&a).map(|srtp| (a, srtp)));
        match answer {
            Ok((answer, srtp)) if !cancelled => {
                let p = answer.negotiate();
                let agent_ip = agent_ip.unwrap_or(p.remote.ip());
                self.bridge.set_agent(MediaParams { event_pt: None, ..p }, agent_ip, srtp);
                self.agent.state = AgentState::Connected { dialog, ack };
                self.event(CallEvent::AgentAnswered);
                self.answer_proceeding_caller(now);
            }
            other => {
                let branch = self.next_branch();
                let bye = dialog.request(Method::Bye, &branch).build();
                self.request(now, LegId::Agent, Purpose::Bye, Method::Bye, bye, &branch);
                self.agent.state = AgentState::Ending;
                if other.is_err() && !cancelled {
                    self.event(CallEvent::AgentUnavailable { status: 488 });
                    self.refuse_proceeding_caller(now, 488);
                }
            }
        }
    }

    /// The agent leg's SRTP, from its answer to our key (RFC 4568 §7.1.3: the answer names
    /// the offered tag and suite, with its own key): None for plain RTP, which `required`
    /// refuses.
    fn agent_srtp(&self, answer: &RemoteDescription) -> Result<Option<SrtpLeg>, String> {
        let Some(ours) = &self.agent.srtp_offered else { return Ok(None) };
        match answer.crypto.iter().find(|theirs| ours.accepted_by(theirs)) {
            Some(theirs) => SrtpLeg::new(theirs, ours).map(Some).map_err(|e| e.to_string()),
            None if self.agent.srtp_policy == SrtpPolicy::Required => {
                Err("the agent answered without SRTP, which sip.agent_srtp requires".into())
            }
            None => Ok(None),
        }
    }

    pub(super) fn agent_timeout(&mut self, now: Instant) {
        let ended = match &mut self.agent.state {
            AgentState::Inviting { tx, .. } => {
                tx.handle_timeout(now);
                matches!(tx.state(), ClientInviteState::Terminated(_)).then(|| tx.state())
            }
            // No final answer 64·T1 after our CANCEL: the INVITE is given up (§9.1).
            AgentState::Cancelling { tx, give_up } => {
                tx.handle_timeout(now);
                let done = matches!(tx.state(), ClientInviteState::Terminated(_)) || now >= *give_up;
                done.then(|| tx.state())
            }
            _ => None,
        };
        self.drain_agent_invite();
        if let Some(state) = ended {
            let was_inviting = matches!(self.agent.state, AgentState::Inviting { .. });
            self.agent.state = AgentState::Ended;
            if was_inviting && state == ClientInviteState::Terminated(Outcome::TimedOut) {
                // Timer B: the agent never answered.
                self.event(CallEvent::AgentUnavailable { status: 408 });
                self.after_agent_lost(now, 408);
            }
        }
    }

    /// With no agent to talk to, a caller whose capture has ended is hung up; an inline
    /// caller not yet answered gets the agent's refusal.
    fn after_agent_lost(&mut self, now: Instant, status: u16) {
        if self.refuse_proceeding_caller(now, status) {
            return;
        }
        if !self.capture.is_running() && self.capture.when_quiet == WhenQuiet::Nothing {
            self.capture.when_quiet = WhenQuiet::HangUp;
            self.check_quiet(now);
        }
    }

    pub(super) fn hang_up_agent(&mut self, now: Instant) {
        match std::mem::replace(&mut self.agent.state, AgentState::Ended) {
            AgentState::Connected { mut dialog, .. } => {
                let branch = self.next_branch();
                let bye = dialog.request(Method::Bye, &branch).build();
                self.request(now, LegId::Agent, Purpose::Bye, Method::Bye, bye, &branch);
                self.agent.state = AgentState::Ending;
            }
            AgentState::Inviting { tx, invite } => {
                // The INVITE transaction runs on: a 2xx that crosses the CANCEL gets ACK and BYE.
                let branch = invite.branch().to_string();
                self.request(now, LegId::Agent, Purpose::Cancel, Method::Cancel, invite.cancel(), &branch);
                self.agent.state = AgentState::Cancelling { tx, give_up: now + 64 * self.timers.t1 };
            }
            other => self.agent.state = other,
        }
        self.bridge.clear_agent();
    }
}
