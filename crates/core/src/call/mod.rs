//! One payment call, sans-IO: the caller's leg (we are its UAS, RFC 3261 §13.3), an optional
//! agent leg (we are its UAC, §13.2), the media bridge between them and the capture flow.
//!
//! The driver feeds every input (a SIP message with the flow it came on, an RTP packet, a
//! command, a timeout) to `handle_input` with the time it happened, then drains
//! `poll_output` (SIP to send, each with its destination, and events), `poll_packet` (RTP to
//! send, borrowed, with its destination) and sleeps until `poll_timeout`. Nothing here
//! blocks, reads a clock or does IO.

mod agent;
mod agent_invite;
mod caller;
mod capture_flow;
pub mod media;
mod outbox;
mod prompts;
pub mod recording;
mod replace;
mod to_agent;
mod transactions;

pub use prompts::Prompts;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::capture::card::{Brand, YearMonth};
use crate::capture::collector::{Captured, Collector, CollectorConfig, FieldName, PromptId, Rejection};
use crate::capture::plan::CapturePlan;
use crate::capture::progress::FieldProgress;
use crate::media::address_policy::MediaAddressPolicy;
use crate::media::masker::Replacement;
use crate::media::srtp::{MasterKey, SrtpLeg, SrtpPolicy};
use crate::media::telephone_event::Key;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request, ResponseBuilder, SipMessage};
use crate::sip::sdp::RemoteDescription;
use crate::sip::session_timer::{self, Negotiation};
use crate::sip::stream::{Flow, Transmit, Transport};
use crate::sip::transaction::{RetransmitStep, Timers};

use agent::{AgentLeg, AgentState};
use caller::{CallerLeg, CallerState};
use capture_flow::{CaptureFlow, CaptureState, WhenQuiet};
use media::{Bridge, CallerMedia, MaskLevel, MediaPacket};
use transactions::{Answer, Purpose, Transactions};

/// Which side of the call a message or packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    Caller,
    Agent,
    /// The caller's previous dialog, after an INVITE with Replaces took it over (RFC 3891):
    /// only our BYE and what crosses it.
    Replaced,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Masking {
    pub replacement: Replacement,
    /// Keep the masker on for the whole call, not only while capturing.
    pub always: bool,
}

/// What happens to the caller when capture ends (per session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCapture {
    /// Stay bridged to the agent leg; without one, hang up.
    Bridge,
    /// Transfer the caller to this URI with REFER (RFC 3515) and follow its NOTIFYs.
    Transfer(String),
    /// Hang up after the closing prompt.
    Hangup,
}

/// The agent leg's far end: the URI our INVITE names and how it goes there: UDP to an
/// address, or a TCP or TLS connection the driver opened (`;transport=tcp|tls`, `sips:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTarget {
    pub uri: String,
    pub flow: Flow,
}

impl AgentTarget {
    pub fn udp(uri: &str, addr: SocketAddr) -> AgentTarget {
        AgentTarget { uri: uri.to_string(), flow: Flow::udp(addr) }
    }
}

/// What a call is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A payment session: the caller is answered at once and asked what `plan` asks; then
    /// `after`. With `agent`, the agent is dialled and bridged while the caller keys.
    Session { plan: CapturePlan, after: AfterCapture, agent: Option<AgentTarget> },
    /// Inline: a B2BUA to `agent` that answers the caller only when the agent answers (and
    /// passes on its refusal otherwise), with no capture until `Command::StartCapture`.
    Inline { agent: AgentTarget },
}

pub struct CallConfig {
    /// Our SIP address, for Via and Contact (UDP and TCP).
    pub local_sip: SocketAddr,
    /// Our SIP over TLS listener, for Contact on TLS legs, if there is one.
    pub local_tls: Option<SocketAddr>,
    /// Where the caller's INVITE is answered (§18.2.2); the caller's leg stays on it.
    pub caller: Flow,
    pub caller_rtp: SocketAddr,
    pub agent_rtp: SocketAddr,
    pub mode: Mode,
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
    /// Whether the caller's leg takes, needs or refuses SRTP (RTP/SAVP with SDES keys).
    pub srtp: SrtpPolicy,
    /// Our SRTP master key and salt for this call, drawn by the driver from the OS generator.
    pub srtp_key: MasterKey,
    /// SRTP toward the agent (`sip.agent_srtp`), with a key of its own.
    pub agent_srtp: SrtpPolicy,
    pub agent_srtp_key: MasterKey,
    /// Where each leg's SDP may send media, and which packets it takes (`media.*`).
    pub media_policy: MediaAddressPolicy,
    /// Refuse SDES keys (488) unless the caller's SIP is over TLS.
    pub sdes_requires_tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    CallerHungUp,
    HungUpByTonewall,
    NoAck,
    /// The session timer ran out without a refresh (RFC 4028 §10).
    SessionExpired,
    /// The caller was transferred away (RFC 3515).
    Transferred,
    /// Inline mode: the caller gave up before the agent answered (CANCEL).
    CallerCancelled,
    /// Inline mode: the agent leg refused or never answered; the caller got that refusal.
    AgentRefused,
}

#[derive(Debug)]
pub enum CallEvent {
    Answered,
    AgentAnswered,
    AgentUnavailable {
        status: u16,
    },
    AgentHungUp,
    /// Where every field of the capture stands now (counts and masks only); it comes before
    /// the events of the same change.
    Progress {
        fields: Vec<FieldProgress>,
    },
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
        reason: Rejection,
    },
    FieldDone {
        field: FieldName,
        masked: String,
        brand: Option<Brand>,
        attempts_left: u8,
    },
    /// The driver tokenizes the card and answers with `Command::CardStored` or
    /// `Command::CardNotStored`.
    PaymentCaptured(Box<Captured>),
    Completed,
    CaptureFailed {
        reason: CaptureFailure,
    },
    Cancelled,
    /// The caller put us on hold (or took us off it).
    Hold {
        on: bool,
    },
    /// REFER sent to take the caller back to the agent.
    Transferring,
    /// The transfer failed with this status (from the REFER or the NOTIFY sipfrag).
    TransferFailed {
        status: u16,
    },
    /// An INVITE with Replaces took over the caller's dialog: the caller's leg now answers
    /// at `caller`, where that INVITE came from; the old dialog, `previous_call_id`, is
    /// `LegId::Replaced` from now on.
    CallerReplaced {
        previous_call_id: String,
        caller: Flow,
    },
    Ended(EndReason),
}

/// Why a capture ended without a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CaptureFailure {
    #[error("too many invalid attempts for {}", .0.as_str())]
    TooManyAttempts(FieldName),
    #[error("the card could not be stored")]
    NotStored,
    #[error("the call cannot start a capture now")]
    CannotStart,
    #[error("the caller's offer was not acceptable")]
    OfferRefused,
    #[error("the caller hung up")]
    CallerHungUp,
    #[error("the caller was transferred")]
    Transferred,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the caller never acknowledged the answer")]
    NoAck,
    #[error("the session refresh failed")]
    RefreshFailed,
    #[error("the caller did not answer the session refresh")]
    RefreshUnanswered,
    #[error("the session refresh could not be built")]
    RefreshUnbuildable,
    #[error("the caller's session expired")]
    SessionExpired,
    #[error("the caller heard the amount and stopped the payment")]
    Declined,
}

impl CaptureFailure {
    /// A stable name for metrics and machines.
    pub fn code(self) -> &'static str {
        match self {
            CaptureFailure::TooManyAttempts(_) => "too_many_attempts",
            CaptureFailure::NotStored => "not_stored",
            CaptureFailure::CannotStart => "cannot_start",
            CaptureFailure::OfferRefused => "offer_refused",
            CaptureFailure::CallerHungUp => "caller_hung_up",
            CaptureFailure::Transferred => "transferred",
            CaptureFailure::ShuttingDown => "shutting_down",
            CaptureFailure::NoAck => "no_ack",
            CaptureFailure::RefreshFailed => "refresh_failed",
            CaptureFailure::RefreshUnanswered => "refresh_unanswered",
            CaptureFailure::RefreshUnbuildable => "refresh_unbuildable",
            CaptureFailure::SessionExpired => "session_expired",
            CaptureFailure::Declined => "declined",
        }
    }
}

#[derive(Debug)]
pub enum Command {
    Cancel,
    /// The agent asks the caller again for this field (and those after it).
    RestartField(FieldName),
    /// The vault holds the captured card (and the agent has its token).
    CardStored,
    /// The vault could not store the captured card.
    CardNotStored,
    /// Hang up every leg (shutdown).
    Hangup,
    /// Inline mode: ask the caller what `plan` asks now (capture starts masking at once).
    StartCapture {
        plan: CapturePlan,
    },
}

/// Everything that happens to a call.
#[derive(Debug)]
pub enum Input<'a> {
    /// A SIP message for one of the call's legs; `from` answers it (§18.2.2). Boxed, as the
    /// endpoint hands it over.
    Sip {
        leg: LegId,
        msg: Box<SipMessage>,
        from: Flow,
    },
    /// An RTP (or SRTP) packet on one of the call's media sockets, from `from`.
    Rtp {
        leg: LegId,
        packet: &'a [u8],
        from: SocketAddr,
    },
    Command(Command),
    /// `poll_timeout`'s instant has come.
    Timeout,
}

#[derive(Debug)]
pub enum Output {
    /// SIP to send, with its destination.
    Transmit(Transmit),
    Event(CallEvent),
}

/// The call's timers, one per deadline `poll_timeout` takes the earliest of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Our 2xx to the caller's INVITE, resent until its ACK (§13.3.1.4).
    CallerAnswer,
    /// The INVITE to the agent (Timers A, B, D, §17.1.1), or how long a CANCELled one may
    /// still run (§9.1).
    AgentInvite,
    /// The collector's first-digit and inter-digit timeouts.
    Capture,
    /// The session timer: refresh or expiry (RFC 4028 §10).
    SessionTimer,
    /// Our refreshing re-INVITE's retransmissions and Timer B (RFC 4028 §7.4).
    Refresh,
    /// A transfer whose NOTIFYs went silent (RFC 3515).
    TransferSilence,
    /// The non-INVITE and server transactions (Timers E, F, G, H, I, J, K).
    Transactions,
    /// The media bridge: prompt playout, masking release.
    Media,
}

pub struct Call {
    local_sip: SocketAddr,
    local_tls: Option<SocketAddr>,
    caller_rtp: SocketAddr,
    agent_rtp: SocketAddr,
    timers: Timers,
    seed: u64,
    prompts: Arc<Prompts>,
    /// Every leg's non-INVITE and server transactions.
    transactions: Transactions,
    caller: CallerLeg,
    agent: AgentLeg,
    capture: CaptureFlow,
    bridge: Bridge,
    outputs: VecDeque<Output>,
    branches: u64,
    ended: bool,
    media_policy: MediaAddressPolicy,
    /// Keys the caller sent as SIP INFO (the bridge counts the ones in its media).
    info_keys: u64,
}

impl Call {
    /// Answers a new INVITE: 100, 180, then 200 with our SDP answer; dials the agent if one
    /// is named. A refused offer gives back the 488 (or 422) to send instead.
    pub fn accept(invite: &Request, cfg: CallConfig, now: Instant) -> Result<Call, Vec<u8>> {
        let refuse = |why: &dyn std::fmt::Display| caller::not_acceptable(invite, &why.to_string());
        let mut offer = RemoteDescription::parse(invite.body()).map_err(|e| refuse(&e))?;
        offer.remote = cfg.media_policy.target(offer.remote, cfg.caller.remote.ip()).map_err(|e| refuse(&e))?;
        let (srtp, caller_srtp) = match caller::negotiate_srtp(
            &offer,
            cfg.srtp,
            &cfg.srtp_key,
            cfg.sdes_requires_tls && cfg.caller.transport != Transport::Tls,
        ) {
            Ok(caller::SrtpAnswer::Plain) => (None, None),
            Ok(caller::SrtpAnswer::Keyed { theirs, ours }) => {
                let leg = SrtpLeg::new(&theirs, &ours).map_err(|e| caller::not_acceptable(invite, &e.to_string()))?;
                (Some((theirs, ours)), Some(leg))
            }
            Err(why) => return Err(caller::not_acceptable(invite, why)),
        };
        let session_timer = match session_timer::negotiate(invite) {
            Negotiation::TooSmall => return Err(caller::too_small(invite)),
            Negotiation::None => None,
            Negotiation::Timer(t) => Some(caller::Timer { timer: t, next: t.deadline(now) }),
        };
        let params = offer.negotiate();
        let local_tag = format!("tw{:x}", cfg.seed);
        let (plan, after_capture, agent, inline) = match cfg.mode {
            Mode::Session { plan, after, agent } => (Some(plan), after, agent, false),
            Mode::Inline { agent } => (None, AfterCapture::Bridge, Some(agent), true),
        };
        let language = plan.as_ref().map(|p| p.language).unwrap_or_default();
        let capture = match plan {
            Some(plan) if !plan.fields.is_empty() => {
                CaptureState::Collecting(Box::new(Collector::new(plan, cfg.collector, cfg.today, now)))
            }
            _ => CaptureState::Idle,
        };
        let transport = cfg.caller.transport;
        let caller = CallerLeg {
            flow: cfg.caller,
            replaced_flow: None,
            invite_branch: invite.branch(),
            dialog: Dialog::uas(invite, &local_tag, &local_for(cfg.local_sip, cfg.local_tls, transport), transport),
            state: CallerState::Confirmed,
            media: caller::Negotiated { params, direction: offer.direction.answer(), version: cfg.seed >> 1, srtp },
            session_timer,
            refresh: None,
            refresh_ack: None,
            transfer: caller::Transfer::Idle,
            replacements: 0,
            srtp_policy: cfg.srtp,
            sdes_requires_tls: cfg.sdes_requires_tls,
            srtp_key: cfg.srtp_key,
        };
        let agent_leg = AgentLeg {
            state: AgentState::Absent,
            flow: agent.as_ref().map(|a| a.flow),
            call_id: format!("{:x}-agent@tonewall", cfg.seed),
            tag: format!("twa{:x}", cfg.seed.rotate_left(32)),
            from_user: agent_invite::from_user(inline.then(|| invite.from_user())),
            srtp_policy: cfg.agent_srtp,
            srtp_key: cfg.agent_srtp_key,
            srtp_offered: None,
        };
        let capture = CaptureFlow {
            state: capture,
            after: after_capture,
            when_quiet: WhenQuiet::Nothing,
            config: cfg.collector,
            today: cfg.today,
            mask_always: cfg.masking.always,
            language,
        };
        let mut call = Call {
            local_sip: cfg.local_sip,
            local_tls: cfg.local_tls,
            caller_rtp: cfg.caller_rtp,
            agent_rtp: cfg.agent_rtp,
            timers: cfg.timers,
            seed: cfg.seed,
            prompts: cfg.prompts,
            transactions: Transactions::new(cfg.timers),
            caller,
            agent: agent_leg,
            capture,
            bridge: Bridge::new(
                params,
                cfg.caller.remote.ip(),
                cfg.media_policy.rtp_source,
                cfg.seed,
                cfg.masking.replacement,
            ),
            outputs: VecDeque::new(),
            branches: 0,
            ended: false,
            info_keys: 0,
            media_policy: cfg.media_policy,
        };
        call.bridge.set_caller_srtp(caller_srtp);
        call.transactions.receive(now, LegId::Caller, invite, transport.reliable());
        call.bridge.set_caller(params, offer.direction.receives(), cfg.caller.remote.ip());
        call.reply(now, LegId::Caller, invite, 100, "Trying");
        if !cfg.record {
            call.bridge.recording().disable();
        }
        match (agent, inline) {
            (Some(agent), true) => {
                call.caller.state = CallerState::Proceeding { invite: Box::new(invite.clone()), ringing: false };
                call.dial_agent(agent.uri, now);
            }
            (agent, _) => {
                call.caller_ringing(now, invite);
                call.answer_offer(now, invite, &local_tag);
                call.event(CallEvent::Answered);
                if let (Some(agent), AfterCapture::Bridge) = (agent, &call.capture.after) {
                    call.dial_agent(agent.uri, now);
                }
            }
        }
        call.bridge.set_masking(match call.capture.state {
            CaptureState::Collecting(_) => MaskLevel::Capture,
            _ if call.capture.mask_always => MaskLevel::Tones,
            _ => MaskLevel::Off,
        });
        call.drain_capture(now);
        Ok(call)
    }

    /// The Call-ID of the agent leg, so the driver can route its messages here.
    pub fn agent_call_id(&self) -> &str {
        &self.agent.call_id
    }

    /// Where the caller's leg is now.
    pub fn caller_flow(&self) -> Flow {
        self.caller.flow
    }

    pub fn caller_call_id(&self) -> &str {
        &self.caller.dialog.call_id
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn media_stats(&self) -> media::BridgeStats {
        let mut stats = self.bridge.stats();
        stats.keys.info = self.info_keys;
        stats
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        while let Some((leg, bytes)) = self.transactions.poll_transmit() {
            self.send(leg, bytes);
        }
        self.outputs.pop_front()
    }

    /// Where `leg`'s messages go.
    fn flow(&self, leg: LegId) -> Option<Flow> {
        match leg {
            LegId::Caller => Some(self.caller.flow),
            LegId::Replaced => self.caller.replaced_flow,
            LegId::Agent => self.agent.flow,
        }
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
        self.timers().map(|(_, at)| at).min()
    }

    /// Every timer that is armed, and when it fires, in the order their handlers run when
    /// several are due at once.
    fn timers(&self) -> impl Iterator<Item = (Timer, Instant)> {
        let [answer, session, refresh, transfer] = self.caller.timers();
        [
            answer,
            self.agent.timer(),
            (Timer::Transactions, self.transactions.poll_timeout()),
            session,
            refresh,
            transfer,
            self.capture.timer(),
            (Timer::Media, self.bridge.poll_timeout()),
        ]
        .into_iter()
        .filter_map(|(timer, at)| Some((timer, at?)))
    }

    fn next_branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK{:x}.{}", self.seed, self.branches)
    }

    /// Queues `bytes` for `leg`'s peer. The replaced leg has one only after a take-over.
    fn send(&mut self, leg: LegId, bytes: Vec<u8>) {
        if let Some(to) = self.flow(leg) {
            self.outputs.push_back(Output::Transmit(Transmit { to, bytes }));
        }
    }

    fn event(&mut self, e: CallEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    /// Our host:port on `transport`, for Via and Contact.
    fn local(&self, transport: Transport) -> String {
        local_for(self.local_sip, self.local_tls, transport)
    }

    /// The description with its media address checked against the policy (and, under
    /// latching, moved to the signalling IP); the reason for a 488 otherwise.
    fn placed(&self, mut sdp: RemoteDescription, signalling: IpAddr) -> Result<RemoteDescription, String> {
        sdp.remote = self.media_policy.target(sdp.remote, signalling).map_err(|e| e.to_string())?;
        Ok(sdp)
    }

    fn reliable(&self, leg: LegId) -> bool {
        self.flow(leg).is_some_and(|f| f.transport.reliable())
    }

    /// Sends a response through the request's server transaction.
    fn respond(&mut self, now: Instant, leg: LegId, req: &Request, status: u16, bytes: Vec<u8>) {
        let reliable = self.reliable(leg);
        self.transactions.respond(now, leg, req, status, bytes, reliable);
    }

    /// A bare response with just a status line.
    fn reply(&mut self, now: Instant, leg: LegId, req: &Request, status: u16, reason: &str) {
        let bytes = ResponseBuilder::new(req, status, reason).build();
        self.respond(now, leg, req, status, bytes);
    }

    /// Sends an in-dialog non-INVITE request in a client transaction.
    fn request(&mut self, now: Instant, leg: LegId, purpose: Purpose, method: Method, bytes: Vec<u8>, branch: &str) {
        let reliable = self.reliable(leg);
        self.transactions.request(now, leg, purpose, method, branch, bytes, reliable);
    }

    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Sip { leg, msg, from } => self.on_sip(now, leg, msg, from),
            Input::Rtp { leg, packet, from } => self.on_rtp(now, leg, packet, from),
            Input::Command(cmd) => self.on_command(now, cmd),
            Input::Timeout => self.on_timeout(now),
        }
        self.check_end();
    }

    fn on_sip(&mut self, now: Instant, leg: LegId, msg: Box<SipMessage>, from: Flow) {
        match *msg {
            SipMessage::Request(r) => {
                if self.transactions.receive(now, leg, &r, self.reliable(leg)) {
                    match leg {
                        LegId::Caller => self.caller_request(now, &r, from),
                        LegId::Agent => self.agent_request(now, &r),
                        LegId::Replaced => self.replaced_request(now, &r),
                    }
                }
            }
            SipMessage::Response(r) => {
                if let Some(answer) = self.transactions.response(now, leg, &r) {
                    self.on_answer(now, answer);
                } else {
                    match leg {
                        LegId::Caller => self.caller_response(now, &r),
                        LegId::Agent => self.agent_response(now, &r),
                        LegId::Replaced => {}
                    }
                }
            }
        }
    }

    /// The final answer to one of our BYEs, REFERs or CANCELs (or its Timer F).
    fn on_answer(&mut self, now: Instant, a: Answer) {
        match (a.leg, a.purpose) {
            (LegId::Caller, Purpose::Bye) => self.caller.state = CallerState::Ended,
            (LegId::Agent, Purpose::Bye) => self.agent.state = AgentState::Ended,
            (LegId::Caller, Purpose::Refer) => self.on_refer_answer(now, a.status),
            _ => {}
        }
    }

    fn on_rtp(&mut self, now: Instant, leg: LegId, packet: &[u8], from: SocketAddr) {
        match leg {
            LegId::Caller => {
                if let CallerMedia::Key(key) = self.bridge.handle_caller_packet(packet, from, now) {
                    self.on_key(key, now);
                }
            }
            LegId::Agent => self.bridge.handle_agent_packet(packet, from, now),
            LegId::Replaced => {}
        }
    }

    fn on_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Cancel => {
                if matches!(self.capture.state, CaptureState::Collecting(_)) {
                    self.capture.state = CaptureState::Cancelled;
                    self.bridge.player().stop();
                    self.event(CallEvent::Cancelled);
                    self.finish_capture(now, None);
                }
            }
            Command::RestartField(field) => {
                if let CaptureState::Collecting(c) = &mut self.capture.state {
                    // Checked by the session registry first; a race with the caller's own
                    // keys can still make it moot, which is harmless.
                    if c.restart(field, now).is_ok() {
                        self.bridge.player().stop();
                        self.drain_capture(now);
                    }
                }
            }
            Command::CardStored if matches!(self.capture.state, CaptureState::Tokenizing) => {
                self.capture.state = CaptureState::Completed;
                self.event(CallEvent::Completed);
                self.finish_capture(now, Some(PromptId::ThankYou));
            }
            Command::CardNotStored if matches!(self.capture.state, CaptureState::Tokenizing) => {
                self.capture.state = CaptureState::Failed;
                self.event(CallEvent::CaptureFailed { reason: CaptureFailure::NotStored });
                self.finish_capture(now, None);
            }
            Command::CardStored | Command::CardNotStored => {}
            Command::Hangup => {
                self.abandon_capture(CaptureFailure::ShuttingDown);
                self.hang_up_caller(now);
                self.hang_up_agent(now);
            }
            Command::StartCapture { plan } => self.start_capture(now, plan),
        }
    }

    /// Runs the handler of every timer that is due.
    fn on_timeout(&mut self, now: Instant) {
        // Collected first (the handlers need the call mutably), without allocating: a call
        // has eight timers at most.
        let mut due = [None; 8];
        for (slot, (timer, _)) in due.iter_mut().zip(self.timers().filter(|(_, at)| *at <= now)) {
            *slot = Some(timer);
        }
        for timer in due.into_iter().flatten() {
            match timer {
                Timer::CallerAnswer => self.answer_timeout(now),
                Timer::AgentInvite => self.agent_timeout(now),
                Timer::Capture => {
                    if let CaptureState::Collecting(c) = &mut self.capture.state {
                        c.handle_timeout(now);
                        self.drain_capture(now);
                    }
                }
                Timer::SessionTimer | Timer::Refresh => self.session_timeout(now),
                Timer::TransferSilence => self.transfer_timeout(now),
                Timer::Transactions => {
                    for a in self.transactions.handle_timeout(now) {
                        self.on_answer(now, a);
                    }
                }
                Timer::Media => self.bridge.handle_timeout(now),
            }
        }
        self.check_quiet(now);
    }

    /// Our 2xx to the caller again, or, with no ACK within 64·T1, the end (§13.3.1.4).
    fn answer_timeout(&mut self, now: Instant) {
        let CallerState::Answering { ok, .. } = &mut self.caller.state else { return };
        match ok.handle_timeout(now) {
            RetransmitStep::Send(b) => {
                let b = b.to_vec();
                self.send(LegId::Caller, b);
            }
            RetransmitStep::GiveUp => {
                self.caller.state = CallerState::Confirmed;
                self.end_everything(now, CaptureFailure::NoAck);
                self.event(CallEvent::Ended(EndReason::NoAck));
            }
            RetransmitStep::Wait => {}
        }
    }

    fn end_everything(&mut self, now: Instant, why: CaptureFailure) {
        self.abandon_capture(why);
        self.hang_up_caller(now);
        self.hang_up_agent(now);
    }

    fn hang_up_caller(&mut self, now: Instant) {
        if let CallerState::Proceeding { invite, .. } = &self.caller.state {
            let invite = invite.clone();
            self.reply(now, LegId::Caller, &invite, 503, "Service Unavailable");
            self.caller.state = CallerState::Ended;
            return;
        }
        if self.caller.is_up() {
            let branch = self.next_branch();
            let bye = self.caller.dialog.request(Method::Bye, &branch).build();
            self.request(now, LegId::Caller, Purpose::Bye, Method::Bye, bye, &branch);
            self.caller.state = CallerState::Ending;
            self.caller.session_timer = None;
            self.caller.refresh = None;
        }
    }

    fn check_end(&mut self) {
        let agent_done = self.agent.is_done();
        if !self.ended && matches!(self.caller.state, CallerState::Ended) && agent_done {
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

/// Our host:port on `transport`: the TLS listener for TLS (when there is one), the UDP and
/// TCP address otherwise.
fn local_for(sip: SocketAddr, tls: Option<SocketAddr>, transport: Transport) -> String {
    match (transport, tls) {
        (Transport::Tls, Some(tls)) => tls.to_string(),
        _ => sip.to_string(),
    }
}

#[cfg(test)]
mod tests;
