//! One payment call, sans-IO: the caller's leg (we are its UAS, RFC 3261 §13.3), an optional
//! agent leg (we are its UAC, §13.2), the media bridge between them and the capture flow.
//!
//! The driver feeds SIP messages, RTP packets, commands and timeouts with the time they
//! happened, then drains `poll_output` (SIP to send, events), `poll_packet` (RTP to send)
//! and sleeps until `poll_timeout`. Nothing here blocks, reads a clock or does IO.

mod agent_invite;
pub mod media;
mod outbox;
pub mod recording;
mod to_agent;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::capture::card::YearMonth;
use crate::capture::collector::{CaptureEvent, CapturedCard, Collector, CollectorConfig, FieldName, PromptId};
use crate::media::g711::Codec;
use crate::media::masker::Replacement;
use crate::media::player::PromptAudio;
use crate::media::telephone_event::Key;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request, ResponseBuilder, SipMessage};
use crate::sip::sdp::{self, MediaParams, RemoteDescription};
use crate::sip::transaction::{Retransmit, RetransmitStep, Timers};

use agent_invite::{AgentInvite, INVITE_CSEQ};
use media::{Bridge, CallerMedia, MediaPacket};

/// Which side of the call a message or packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    Caller,
    Agent,
}

/// The prompt recordings, decoded once and shared by every call.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub card_number: PromptAudio,
    pub expiry: PromptAudio,
    pub security_code: PromptAudio,
    pub invalid: PromptAudio,
    pub thank_you: PromptAudio,
}

impl Prompts {
    pub fn audio(&self, id: PromptId) -> PromptAudio {
        match id {
            PromptId::CardNumber => self.card_number.clone(),
            PromptId::Expiry => self.expiry.clone(),
            PromptId::SecurityCode => self.security_code.clone(),
            PromptId::Invalid => self.invalid.clone(),
            PromptId::ThankYou => self.thank_you.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Masking {
    pub replacement: Replacement,
    /// Keep the masker on for the whole call, not only while capturing.
    pub always: bool,
}

pub struct CallConfig {
    /// Our SIP address, for Via and Contact.
    pub local_sip: SocketAddr,
    pub caller_rtp: SocketAddr,
    pub agent_rtp: SocketAddr,
    pub agent_uri: Option<String>,
    pub fields: Vec<FieldName>,
    pub collector: CollectorConfig,
    pub timers: Timers,
    /// The current month, for expiry checks.
    pub today: YearMonth,
    /// Randomness from the driver: tags, branches, SSRCs and sequence starts derive from it.
    pub seed: u64,
    /// What replaces tones toward the agent, and whether to mask outside capture too.
    pub masking: Masking,
    /// Record the bridged call (`recordings.enabled`); off, the tap never starts.
    pub record: bool,
    pub prompts: Arc<Prompts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    CallerHungUp,
    HungUpByTonewall,
    NoAck,
}

#[derive(Debug)]
pub enum CallEvent {
    Answered,
    AgentAnswered,
    AgentUnavailable {
        status: u16,
    },
    AgentHungUp,
    DigitEntered {
        field: FieldName,
        count: usize,
    },
    /// This field and every one after it start over.
    FieldRestarted {
        field: FieldName,
    },
    FieldRejected {
        field: FieldName,
        attempts_left: u8,
        reason: String,
    },
    FieldDone {
        field: FieldName,
        masked: String,
    },
    /// The driver tokenizes the card and answers with `Command::Tokenized`.
    CardCaptured(Box<CapturedCard>),
    Completed,
    CaptureFailed {
        reason: String,
    },
    Cancelled,
    Ended(EndReason),
}

#[derive(Debug)]
pub enum Command {
    Cancel,
    /// The agent asks the caller again for this field (and those after it).
    RestartField(FieldName),
    Tokenized {
        ok: bool,
    },
    /// Hang up every leg (shutdown).
    Hangup,
}

#[derive(Debug)]
pub enum Output {
    Sip { leg: LegId, bytes: Vec<u8> },
    Event(CallEvent),
}

enum CallerLeg {
    /// 200 sent, resent until the ACK (§13.3.1.4).
    Answering {
        ok: Retransmit,
    },
    Confirmed,
    Ending {
        bye: Retransmit,
    },
    Ended,
}

enum AgentLeg {
    Absent,
    /// INVITE sent; `retransmit` stops at the first provisional response.
    Inviting {
        retransmit: Option<Retransmit>,
        invite: AgentInvite,
    },
    Connected {
        dialog: Dialog,
        ack: Vec<u8>,
    },
    Ending {
        bye: Retransmit,
    },
    Ended,
}

enum Capture {
    Collecting(Box<Collector>),
    Tokenizing,
    Completed,
    Failed,
    Cancelled,
}

pub struct Call {
    local_sip: SocketAddr,
    agent_rtp: SocketAddr,
    timers: Timers,
    seed: u64,
    prompts: Arc<Prompts>,
    caller_invite_branch: Option<String>,
    caller_dialog: Dialog,
    caller: CallerLeg,
    agent: AgentLeg,
    agent_call_id: String,
    agent_tag: String,
    capture: Capture,
    bridge: Bridge,
    outputs: VecDeque<Output>,
    branches: u64,
    hangup_when_quiet: bool,
    ended: bool,
    caller_codec: Codec,
    mask_always: bool,
}

impl Call {
    /// Answers a new INVITE: 100, 180, then 200 with our SDP answer; dials the agent if one
    /// is named. A refused offer gives back the 488 to send instead.
    pub fn accept(invite: &Request, cfg: CallConfig, now: Instant) -> Result<Call, Vec<u8>> {
        let offer = RemoteDescription::parse(invite.body()).map_err(|e| {
            ResponseBuilder::new(invite, 488, "Not Acceptable Here")
                .header("Warning", &format!("304 tonewall \"{e}\""))
                .build()
        })?;
        let params = offer.negotiate();
        let local_tag = format!("tw{:x}", cfg.seed);
        let answer = sdp::write(cfg.caller_rtp, cfg.seed >> 1, &[params.codec], params.event_pt);
        let contact = format!("<sip:tonewall@{}>", cfg.local_sip);
        let mut outputs = VecDeque::new();
        for (status, reason) in [(100, "Trying"), (180, "Ringing")] {
            let tag = if status == 100 { None } else { Some(local_tag.as_str()) };
            let mut b = ResponseBuilder::new(invite, status, reason);
            if let Some(t) = tag {
                b = b.to_tag(t).header("Contact", &contact);
            }
            outputs.push_back(Output::Sip { leg: LegId::Caller, bytes: b.build() });
        }
        let ok = ResponseBuilder::new(invite, 200, "OK")
            .to_tag(&local_tag)
            .header("Contact", &contact)
            .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO")
            .body("application/sdp", answer.as_bytes())
            .build();
        outputs.push_back(Output::Sip { leg: LegId::Caller, bytes: ok.clone() });
        outputs.push_back(Output::Event(CallEvent::Answered));
        let mut call = Call {
            local_sip: cfg.local_sip,
            agent_rtp: cfg.agent_rtp,
            timers: cfg.timers,
            seed: cfg.seed,
            prompts: cfg.prompts,
            caller_invite_branch: invite.branch(),
            caller_dialog: Dialog::uas(invite, &local_tag, &cfg.local_sip.to_string()),
            caller: CallerLeg::Answering { ok: Retransmit::invite_2xx(ok, now, cfg.timers) },
            agent: AgentLeg::Absent,
            agent_call_id: format!("{:x}-agent@tonewall", cfg.seed),
            agent_tag: format!("twa{:x}", cfg.seed.rotate_left(32)),
            capture: Capture::Collecting(Box::new(Collector::new(cfg.fields, cfg.collector, cfg.today, now))),
            bridge: Bridge::new(params, cfg.seed, cfg.masking.replacement),
            mask_always: cfg.masking.always,
            outputs,
            branches: 0,
            hangup_when_quiet: false,
            ended: false,
            caller_codec: params.codec,
        };
        if !cfg.record {
            call.bridge.recording().disable();
        }
        if let Some(uri) = cfg.agent_uri {
            call.dial_agent(uri, now);
        }
        call.bridge.set_masking(true);
        call.drain_capture(now);
        Ok(call)
    }

    /// The Call-ID of the agent leg, so the driver can route its messages here.
    pub fn agent_call_id(&self) -> &str {
        &self.agent_call_id
    }

    pub fn caller_call_id(&self) -> &str {
        &self.caller_dialog.call_id
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn media_stats(&self) -> media::BridgeStats {
        self.bridge.stats()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next 20 ms of the recording (interleaved stereo), when there is one; with `ended`,
    /// what is left at the end of the call.
    pub fn poll_recording(&mut self, out: &mut [i16; recording::STEREO_FRAME], ended: bool) -> bool {
        let tap = self.bridge.recording();
        if ended { tap.flush(out) } else { tap.poll_frame(out) }
    }

    /// Where the recording's caller channel was masked, and in which field.
    pub fn masked_spans(&mut self) -> Vec<recording::MaskedSpan> {
        self.bridge.recording().spans().to_vec()
    }

    pub fn poll_packet(&mut self) -> Option<&MediaPacket> {
        self.bridge.poll_packet()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let caller = match &self.caller {
            CallerLeg::Answering { ok } => Some(ok.poll_timeout()),
            CallerLeg::Ending { bye } => Some(bye.poll_timeout()),
            _ => None,
        };
        let agent = match &self.agent {
            AgentLeg::Inviting { retransmit: Some(r), .. } => Some(r.poll_timeout()),
            AgentLeg::Ending { bye } => Some(bye.poll_timeout()),
            _ => None,
        };
        let capture = match &self.capture {
            Capture::Collecting(c) => c.poll_timeout(),
            _ => None,
        };
        [caller, agent, capture, self.bridge.poll_timeout()].into_iter().flatten().min()
    }

    fn next_branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK{:x}.{}", self.seed, self.branches)
    }

    fn send(&mut self, leg: LegId, bytes: Vec<u8>) {
        self.outputs.push_back(Output::Sip { leg, bytes });
    }

    fn event(&mut self, e: CallEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    fn dial_agent(&mut self, uri: String, now: Instant) {
        let other = if self.caller_codec == Codec::Pcmu { Codec::Pcma } else { Codec::Pcmu };
        let offer = sdp::write(self.agent_rtp, self.seed >> 2, &[self.caller_codec, other], None);
        let branch = self.next_branch();
        let invite = AgentInvite::new(&uri, self.local_sip, &branch, &self.agent_tag, &self.agent_call_id, &offer);
        self.send(LegId::Agent, invite.bytes().to_vec());
        let retransmit = Some(Retransmit::invite(invite.bytes().to_vec(), now, self.timers));
        self.agent = AgentLeg::Inviting { retransmit, invite };
    }

    pub fn handle_sip(&mut self, now: Instant, leg: LegId, msg: SipMessage) {
        match (leg, msg) {
            (LegId::Caller, SipMessage::Request(r)) => self.caller_request(now, &r),
            (LegId::Caller, SipMessage::Response(r)) => {
                if r.cseq().method == Method::Bye && r.status() >= 200 {
                    self.caller = CallerLeg::Ended;
                }
            }
            (LegId::Agent, SipMessage::Request(r)) => self.agent_request(now, &r),
            (LegId::Agent, SipMessage::Response(r)) => self.agent_response(now, &r),
        }
        self.check_end();
    }

    fn caller_request(&mut self, now: Instant, req: &Request) {
        let in_dialog = self.caller_dialog.matches(req);
        match req.method() {
            Method::Invite if req.branch() == self.caller_invite_branch && req.to_tag().is_none() => {
                // A retransmitted INVITE: resend the 200 if it is still unacknowledged.
                if let CallerLeg::Answering { ok } = &self.caller {
                    let bytes = ok.bytes().to_vec();
                    self.send(LegId::Caller, bytes);
                }
            }
            Method::Ack => {
                if matches!(self.caller, CallerLeg::Answering { .. }) {
                    self.caller = CallerLeg::Confirmed;
                }
            }
            Method::Bye if in_dialog => {
                self.caller_dialog.accept_remote_cseq(req);
                self.send(LegId::Caller, ResponseBuilder::new(req, 200, "OK").build());
                self.caller = CallerLeg::Ended;
                self.abandon_capture("the caller hung up");
                self.hang_up_agent(now);
                self.event(CallEvent::Ended(EndReason::CallerHungUp));
            }
            Method::Cancel => {
                // The INVITE was answered at once, so CANCEL has nothing left to cancel (§9.2).
                self.send(LegId::Caller, ResponseBuilder::new(req, 200, "OK").build());
            }
            Method::Options => {
                let resp = ResponseBuilder::new(req, 200, "OK")
                    .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO")
                    .build();
                self.send(LegId::Caller, resp);
            }
            Method::Info if in_dialog => {
                self.send(LegId::Caller, ResponseBuilder::new(req, 200, "OK").build());
                if let Some(key) = dtmf_relay_key(req) {
                    self.on_key(key, now);
                }
            }
            Method::Invite if in_dialog => {
                // Re-INVITE: hold and codec changes arrive with "SIP edge"; until then we
                // refuse without touching the established session (§14.2).
                self.send(LegId::Caller, ResponseBuilder::new(req, 488, "Not Acceptable Here").build());
            }
            Method::Bye | Method::Info | Method::Invite => {
                self.send(LegId::Caller, ResponseBuilder::new(req, 481, "Call/Transaction Does Not Exist").build());
            }
            Method::Other(_) => {
                let resp = ResponseBuilder::new(req, 405, "Method Not Allowed")
                    .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO")
                    .build();
                self.send(LegId::Caller, resp);
            }
        }
    }

    fn agent_request(&mut self, now: Instant, req: &Request) {
        match req.method() {
            Method::Bye => {
                self.send(LegId::Agent, ResponseBuilder::new(req, 200, "OK").build());
                self.agent = AgentLeg::Ended;
                self.bridge.set_agent(None);
                self.event(CallEvent::AgentHungUp);
                if !matches!(self.capture, Capture::Collecting(_) | Capture::Tokenizing) {
                    self.hang_up_caller(now);
                }
            }
            Method::Ack => {}
            Method::Options => self.send(LegId::Agent, ResponseBuilder::new(req, 200, "OK").build()),
            _ => self.send(LegId::Agent, ResponseBuilder::new(req, 501, "Not Implemented").build()),
        }
    }

    fn agent_response(&mut self, now: Instant, resp: &crate::sip::message::Response) {
        let status = resp.status();
        match (&mut self.agent, &resp.cseq().method) {
            (AgentLeg::Inviting { retransmit, .. }, Method::Invite) if status < 200 => *retransmit = None,
            (AgentLeg::Inviting { .. }, Method::Invite) if status < 300 => {
                let mut dialog = Dialog::uac(resp, INVITE_CSEQ, &self.local_sip.to_string());
                let branch = self.next_branch();
                let ack = dialog.ack(INVITE_CSEQ, &branch);
                self.send(LegId::Agent, ack.clone());
                match RemoteDescription::parse(resp.body()) {
                    Ok(answer) => {
                        let p = answer.negotiate();
                        self.bridge.set_agent(Some(MediaParams { event_pt: None, ..p }));
                        self.agent = AgentLeg::Connected { dialog, ack };
                        self.event(CallEvent::AgentAnswered);
                    }
                    Err(_) => {
                        let branch = self.next_branch();
                        let bye = dialog.request(Method::Bye, &branch).build();
                        self.send(LegId::Agent, bye.clone());
                        self.agent = AgentLeg::Ending { bye: Retransmit::non_invite(bye, now, self.timers) };
                        self.event(CallEvent::AgentUnavailable { status: 488 });
                    }
                }
            }
            (AgentLeg::Inviting { invite, .. }, Method::Invite) => {
                let ack = invite.ack_non_2xx(resp.to());
                self.send(LegId::Agent, ack);
                self.agent = AgentLeg::Ended;
                self.event(CallEvent::AgentUnavailable { status });
                self.after_agent_lost(now);
            }
            (AgentLeg::Connected { ack, .. }, Method::Invite) if (200..300).contains(&status) => {
                // Our ACK was lost: the 2xx is retransmitted, answer it again (§13.2.2.4).
                let ack = ack.clone();
                self.send(LegId::Agent, ack);
            }
            (AgentLeg::Ending { .. }, Method::Bye) if status >= 200 => self.agent = AgentLeg::Ended,
            _ => {}
        }
    }

    /// With no agent to talk to, a caller whose capture has ended is hung up.
    fn after_agent_lost(&mut self, now: Instant) {
        if !matches!(self.capture, Capture::Collecting(_) | Capture::Tokenizing) {
            self.hangup_when_quiet = true;
            self.check_quiet_hangup(now);
        }
    }

    pub fn handle_rtp(&mut self, now: Instant, leg: LegId, packet: &[u8]) {
        match leg {
            LegId::Caller => {
                if let CallerMedia::Key(key) = self.bridge.handle_caller_packet(packet, now) {
                    self.on_key(key, now);
                }
            }
            LegId::Agent => self.bridge.handle_agent_packet(packet, now),
        }
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Cancel => {
                if matches!(self.capture, Capture::Collecting(_)) {
                    self.capture = Capture::Cancelled;
                    self.bridge.player().stop();
                    self.event(CallEvent::Cancelled);
                    self.finish_capture(now, None);
                }
            }
            Command::RestartField(field) => {
                if let Capture::Collecting(c) = &mut self.capture {
                    // Checked by the session registry first; a race with the caller's own
                    // keys can still make it moot, which is harmless.
                    if c.restart(field, now).is_ok() {
                        self.bridge.player().stop();
                        self.drain_capture(now);
                    }
                }
            }
            Command::Tokenized { ok } => {
                if matches!(self.capture, Capture::Tokenizing) {
                    if ok {
                        self.capture = Capture::Completed;
                        self.event(CallEvent::Completed);
                        self.finish_capture(now, Some(PromptId::ThankYou));
                    } else {
                        self.capture = Capture::Failed;
                        self.event(CallEvent::CaptureFailed { reason: "the card could not be stored".into() });
                        self.finish_capture(now, None);
                    }
                }
            }
            Command::Hangup => {
                self.abandon_capture("the service is shutting down");
                self.hang_up_caller(now);
                self.hang_up_agent(now);
            }
        }
        self.check_end();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut resend = Vec::new();
        match &mut self.caller {
            CallerLeg::Answering { ok } => match ok.handle_timeout(now) {
                RetransmitStep::Send(b) => resend.push((LegId::Caller, b.to_vec())),
                RetransmitStep::GiveUp => {
                    // No ACK within 64·T1: confirm and end the session with BYE (§13.3.1.4).
                    self.caller = CallerLeg::Confirmed;
                    self.abandon_capture("the caller never acknowledged the answer");
                    self.hang_up_caller(now);
                    self.hang_up_agent(now);
                    self.event(CallEvent::Ended(EndReason::NoAck));
                }
                RetransmitStep::Wait => {}
            },
            CallerLeg::Ending { bye } => match bye.handle_timeout(now) {
                RetransmitStep::Send(b) => resend.push((LegId::Caller, b.to_vec())),
                RetransmitStep::GiveUp => self.caller = CallerLeg::Ended,
                RetransmitStep::Wait => {}
            },
            _ => {}
        }
        match &mut self.agent {
            AgentLeg::Inviting { retransmit: Some(r), .. } => match r.handle_timeout(now) {
                RetransmitStep::Send(b) => resend.push((LegId::Agent, b.to_vec())),
                RetransmitStep::GiveUp => {
                    self.agent = AgentLeg::Ended;
                    self.event(CallEvent::AgentUnavailable { status: 408 });
                    self.after_agent_lost(now);
                }
                RetransmitStep::Wait => {}
            },
            AgentLeg::Ending { bye } => match bye.handle_timeout(now) {
                RetransmitStep::Send(b) => resend.push((LegId::Agent, b.to_vec())),
                RetransmitStep::GiveUp => self.agent = AgentLeg::Ended,
                RetransmitStep::Wait => {}
            },
            _ => {}
        }
        for (leg, bytes) in resend {
            self.send(leg, bytes);
        }
        if let Capture::Collecting(c) = &mut self.capture {
            c.handle_timeout(now);
            self.drain_capture(now);
        }
        self.bridge.handle_timeout(now);
        self.check_quiet_hangup(now);
        self.check_end();
    }

    fn on_key(&mut self, key: Key, now: Instant) {
        if let Capture::Collecting(c) = &mut self.capture {
            self.bridge.player().stop();
            c.handle_key(key, now);
            self.drain_capture(now);
        }
    }

    fn drain_capture(&mut self, now: Instant) {
        let Capture::Collecting(c) = &mut self.capture else { return };
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        let field = c.current_field();
        self.bridge.recording().set_field(field);
        for e in events {
            match e {
                CaptureEvent::Prompt(id) => {
                    let audio = self.prompts.audio(id);
                    self.bridge.player().enqueue(audio);
                    self.bridge.kick_player(now);
                }
                CaptureEvent::DigitEntered { field, count } => self.event(CallEvent::DigitEntered { field, count }),
                CaptureEvent::FieldRestarted { field } => self.event(CallEvent::FieldRestarted { field }),
                CaptureEvent::FieldRejected { field, attempts_left, reason } => {
                    self.event(CallEvent::FieldRejected { field, attempts_left, reason })
                }
                CaptureEvent::FieldDone { field, masked } => self.event(CallEvent::FieldDone { field, masked }),
                CaptureEvent::Completed(card) => {
                    self.capture = Capture::Tokenizing;
                    self.event(CallEvent::CardCaptured(card));
                }
                CaptureEvent::Failed { field } => {
                    self.capture = Capture::Failed;
                    let reason = format!("too many invalid attempts for {}", field.as_str());
                    self.event(CallEvent::CaptureFailed { reason });
                    self.finish_capture(now, None);
                }
            }
        }
    }

    /// After capture ends: play a closing prompt if any, then stay bridged to the agent or,
    /// without one, hang up once the prompt has played.
    fn finish_capture(&mut self, now: Instant, prompt: Option<PromptId>) {
        if !self.mask_always {
            self.bridge.set_masking(false);
        }
        if let Some(id) = prompt {
            let audio = self.prompts.audio(id);
            self.bridge.player().enqueue(audio);
            self.bridge.kick_player(now);
        }
        if !matches!(self.agent, AgentLeg::Connected { .. } | AgentLeg::Inviting { .. }) {
            self.hangup_when_quiet = true;
            self.check_quiet_hangup(now);
        }
    }

    fn abandon_capture(&mut self, reason: &str) {
        if matches!(self.capture, Capture::Collecting(_) | Capture::Tokenizing) {
            self.capture = Capture::Failed;
            self.event(CallEvent::CaptureFailed { reason: reason.to_string() });
        }
    }

    fn check_quiet_hangup(&mut self, now: Instant) {
        if self.hangup_when_quiet && !self.bridge.is_prompting() {
            self.hangup_when_quiet = false;
            self.hang_up_caller(now);
        }
    }

    fn hang_up_caller(&mut self, now: Instant) {
        if matches!(self.caller, CallerLeg::Answering { .. } | CallerLeg::Confirmed) {
            let branch = self.next_branch();
            let bye = self.caller_dialog.request(Method::Bye, &branch).build();
            self.send(LegId::Caller, bye.clone());
            self.caller = CallerLeg::Ending { bye: Retransmit::non_invite(bye, now, self.timers) };
        }
    }

    fn hang_up_agent(&mut self, now: Instant) {
        let branch = self.next_branch();
        match std::mem::replace(&mut self.agent, AgentLeg::Ended) {
            AgentLeg::Connected { mut dialog, .. } => {
                let bye = dialog.request(Method::Bye, &branch).build();
                self.send(LegId::Agent, bye.clone());
                self.agent = AgentLeg::Ending { bye: Retransmit::non_invite(bye, now, self.timers) };
            }
            AgentLeg::Inviting { invite, .. } => self.send(LegId::Agent, invite.cancel()),
            other => self.agent = other,
        }
        self.bridge.set_agent(None);
    }

    fn check_end(&mut self) {
        let agent_done = matches!(self.agent, AgentLeg::Absent | AgentLeg::Ended);
        if !self.ended && matches!(self.caller, CallerLeg::Ended) && agent_done {
            self.ended = true;
            if !self.outputs.iter().any(|o| matches!(o, Output::Event(CallEvent::Ended(_)))) {
                self.event(CallEvent::Ended(EndReason::HungUpByTonewall));
            }
        }
    }
}

/// The key in a SIP INFO body: `application/dtmf-relay` (`Signal=5`, with a `Duration`
/// line) or `application/dtmf` (the key alone).
fn dtmf_relay_key(req: &Request) -> Option<Key> {
    let ct = req.header("Content-Type")?.trim().to_ascii_lowercase();
    let body = std::str::from_utf8(req.body()).ok()?;
    match ct.as_str() {
        "application/dtmf-relay" => body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("signal") { Key::from_char(v.trim().chars().next()?) } else { None }
        }),
        "application/dtmf" => Key::from_char(body.trim().chars().next()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
