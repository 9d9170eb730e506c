//! The caller's leg, where tonewall is the UAS (RFC 3261 §12–§15): in-dialog requests,
//! re-INVITE and UPDATE for hold, resume and codec change (RFC 3264 §8, RFC 3311), 491 glare
//! (§14.1), session timers (RFC 4028) and the transfer back by REFER with its NOTIFY sipfrag
//! (RFC 3515 §2.4.4–§2.4.5).

use std::time::{Duration, Instant};

use super::transactions::Purpose;
use super::{Call, CallEvent, CaptureFailure, EndReason, LegId};
use crate::media::srtp::{CryptoAttr, MasterKey, SrtpPolicy};
use crate::sip::dialog::Dialog;
use crate::sip::message::{ALLOW, Method, Request, Response, ResponseBuilder, SUPPORTED_HEADER};
use crate::sip::sdp::{self, Direction, MediaParams, Profile, RemoteDescription};
use crate::sip::session_timer::{self, MIN_SE, Negotiation, Refresher, SessionTimer};
use crate::sip::stream::{Flow, Transport};
use crate::sip::transaction::{ClientInvite, ClientInviteState, Delivery, Outcome, Retransmit};

/// The caller's side of the offer/answer: what we send it, and which way.
pub(super) struct Negotiated {
    pub params: MediaParams,
    /// Our direction in the last answer.
    pub direction: Direction,
    /// The o= version of our last description (RFC 3264 §8).
    pub version: u64,
    /// With SRTP: the caller's key we took, and our answer carrying our own key.
    pub srtp: Option<(CryptoAttr, CryptoAttr)>,
}

/// Where the caller's INVITE dialog is.
pub(super) enum CallerState {
    /// Inline mode: the caller's INVITE waits for the agent's answer (100 Trying sent).
    Proceeding {
        invite: Box<Request>,
        ringing: bool,
    },
    /// A 2xx to the caller's INVITE (or re-INVITE) with this branch, resent until the ACK
    /// (§13.3.1.4).
    Answering {
        ok: Retransmit,
        branch: Option<String>,
    },
    Confirmed,
    /// Our BYE is out.
    Ending,
    Ended,
}

/// The caller's leg, owned by the call: its dialog and where it is, its offer/answer, the
/// session timer and our refresh, the transfer back, and what Replaces took over.
pub(super) struct CallerLeg {
    /// Where the caller's leg is answered; an INVITE with Replaces moves it.
    pub flow: Flow,
    /// Where the replaced dialog's peer is (its BYE goes there).
    pub replaced_flow: Option<Flow>,
    /// The branch of the INVITE that made the dialog, for its CANCEL (§9.2).
    pub invite_branch: Option<String>,
    pub dialog: Dialog,
    pub state: CallerState,
    /// The current offer/answer, for re-INVITEs (hold, codec change, refresh).
    pub media: Negotiated,
    pub session_timer: Option<Timer>,
    /// Our session-refreshing re-INVITE, when one is out (RFC 4028 §7.4).
    pub refresh: Option<ClientInvite>,
    /// The ACK of the last 2xx to our re-INVITE, for its retransmissions.
    pub refresh_ack: Option<Vec<u8>>,
    pub transfer: Transfer,
    /// How many times an INVITE with Replaces took the dialog over.
    pub replacements: u32,
    pub srtp_policy: SrtpPolicy,
    /// Refuse SDES keys unless the caller's SIP is over TLS (`sip.sdes_requires_tls`).
    pub sdes_requires_tls: bool,
    pub srtp_key: MasterKey,
}

impl CallerLeg {
    /// Whether SDES keys offered over `flow` would cross the network readable.
    pub(super) fn keys_in_clear(&self, flow: Flow) -> bool {
        self.sdes_requires_tls && flow.transport != Transport::Tls
    }

    /// Whether the dialog is up (answered, acknowledged or not).
    pub fn is_up(&self) -> bool {
        matches!(self.state, CallerState::Answering { .. } | CallerState::Confirmed)
    }

    /// The leg's deadlines: our 2xx's retransmission, the session timer (while no refresh is
    /// out), the refresh's own timers, and the transfer's silence.
    pub fn timers(&self) -> [(super::Timer, Option<Instant>); 4] {
        let answer = match &self.state {
            CallerState::Answering { ok, .. } => Some(ok.poll_timeout()),
            _ => None,
        };
        let transfer = match self.transfer {
            Transfer::Accepted { give_up } => Some(give_up),
            _ => None,
        };
        [
            (super::Timer::CallerAnswer, answer),
            (
                super::Timer::SessionTimer,
                self.session_timer.as_ref().filter(|_| self.refresh.is_none()).map(|t| t.next),
            ),
            (super::Timer::Refresh, self.refresh.as_ref().and_then(ClientInvite::poll_timeout)),
            (super::Timer::TransferSilence, transfer),
        ]
    }
}

/// What an offer's SRTP side comes to under a route's policy (RFC 4568 §7.1.2).
pub(super) enum SrtpAnswer {
    Plain,
    /// The offer's first usable key, and our answer to it.
    Keyed {
        theirs: CryptoAttr,
        ours: CryptoAttr,
    },
}

/// `keys_in_clear`: the SIP that carries the keys (RFC 4568 §8.3) is not over TLS, and the
/// policy says keys may not travel so.
pub(super) fn negotiate_srtp(
    offer: &RemoteDescription,
    policy: SrtpPolicy,
    our_key: &MasterKey,
    keys_in_clear: bool,
) -> Result<SrtpAnswer, &'static str> {
    match (offer.profile, policy) {
        (Profile::Avp, SrtpPolicy::Required) => Err("this route requires SRTP (RTP/SAVP with a=crypto)"),
        (Profile::Avp, _) => Ok(SrtpAnswer::Plain),
        (Profile::Savp, SrtpPolicy::Off) => Err("SRTP is off for this route"),
        (Profile::Savp, _) if keys_in_clear => Err("SDES keys need SIP over TLS (sip.sdes_requires_tls)"),
        (Profile::Savp, _) => {
            let theirs = offer
                .crypto
                .first()
                .ok_or("no usable crypto suite offered (AES_CM_128_HMAC_SHA1_80 or AEAD_AES_128_GCM, no MKI)")?;
            Ok(SrtpAnswer::Keyed { theirs: theirs.clone(), ours: CryptoAttr::answer(theirs, our_key) })
        }
    }
}

/// The 488 for an offer we cannot take, naming why (RFC 3261 §21.4.26, Warning 304/305).
pub(super) fn not_acceptable(req: &Request, why: &str) -> Vec<u8> {
    ResponseBuilder::new(req, 488, "Not Acceptable Here").header("Warning", &format!("304 tonewall \"{why}\"")).build()
}

/// A running session timer and when it next needs us.
pub(super) struct Timer {
    pub timer: SessionTimer,
    pub next: Instant,
}

/// The transfer back to the agent (RFC 3515).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transfer {
    Idle,
    /// REFER sent, no final answer yet.
    Referring,
    /// 202 Accepted: waiting for the NOTIFY that reports the outcome, until `give_up`.
    Accepted {
        give_up: Instant,
    },
    Done,
}

/// How long after the 202 (or the latest provisional NOTIFY) the transfer may stay silent
/// before it counts as failed: the transfer INVITE can ring for a while, but not forever.
pub(super) const TRANSFER_SILENCE: Duration = Duration::from_secs(180);

/// 422 for a Session-Expires below our Min-SE (RFC 4028 §8.1).
pub(super) fn too_small(req: &Request) -> Vec<u8> {
    ResponseBuilder::new(req, 422, "Session Interval Too Small").header("Min-SE", &MIN_SE.to_string()).build()
}

impl Call {
    pub(super) fn caller_contact(&self) -> String {
        let transport = self.caller.flow.transport;
        format!("<sip:tonewall@{}{}>", self.local(transport), transport.uri_param())
    }

    /// Our current description toward the caller (answers and refreshes alike).
    fn caller_sdp(&self) -> String {
        let m = &self.caller.media;
        sdp::write_version(
            self.caller_rtp,
            self.seed >> 1,
            m.version,
            &[m.params.codec],
            m.params.event_pt,
            m.direction,
            m.srtp.as_ref().map(|(_, ours)| ours),
        )
    }

    /// Takes a new offer's SRTP side: the caller may change its key (we then decrypt with
    /// the new one); our key and our outbound context stay, so our rollover count does too.
    /// False when the offer switches between RTP and SRTP, which we refuse.
    fn rekey_caller(&mut self, answer: SrtpAnswer) -> bool {
        match (answer, &mut self.caller.media.srtp) {
            (SrtpAnswer::Plain, None) => true,
            (SrtpAnswer::Keyed { theirs, ours }, Some(current)) => {
                if theirs != current.0 && !self.bridge.rekey_caller(&theirs) {
                    return false;
                }
                *current = (theirs, ours);
                true
            }
            _ => false,
        }
    }

    /// 180 Ringing to the caller's INVITE, with our tag and Contact (an early dialog).
    pub(super) fn caller_ringing(&mut self, now: Instant, invite: &Request) {
        let contact = self.caller_contact();
        let ringing = ResponseBuilder::new(invite, 180, "Ringing")
            .to_tag(&self.caller.dialog.local_tag)
            .record_route()
            .header("Contact", &contact);
        self.respond(now, LegId::Caller, invite, 180, ringing.build());
    }

    /// Inline mode: the agent answered, so the caller is answered now.
    pub(super) fn answer_proceeding_caller(&mut self, now: Instant) {
        if let CallerState::Proceeding { invite, .. } = &self.caller.state {
            let invite = invite.clone();
            let tag = self.caller.dialog.local_tag.clone();
            self.answer_offer(now, &invite, &tag);
            self.event(CallEvent::Answered);
        }
    }

    /// Inline mode: the agent rings, so the caller hears ringing (once).
    pub(super) fn ring_proceeding_caller(&mut self, now: Instant) {
        if let CallerState::Proceeding { invite, ringing: ringing @ false } = &mut self.caller.state {
            *ringing = true;
            let invite = invite.clone();
            self.caller_ringing(now, &invite);
        }
    }

    /// Inline mode: the agent leg failed with `status`; the caller's INVITE gets that
    /// refusal, except what only the agent's side can act on (redirects, authentication),
    /// which becomes 480.
    pub(super) fn refuse_proceeding_caller(&mut self, now: Instant, status: u16) -> bool {
        let CallerState::Proceeding { invite, .. } = &self.caller.state else { return false };
        let invite = invite.clone();
        let (status, reason) = match status {
            404 => (404, "Not Found"),
            408 => (408, "Request Timeout"),
            486 => (486, "Busy Here"),
            487 => (487, "Request Terminated"),
            488 => (488, "Not Acceptable Here"),
            500..=599 => (503, "Service Unavailable"),
            600 => (600, "Busy Everywhere"),
            603 => (603, "Decline"),
            _ => (480, "Temporarily Unavailable"),
        };
        let resp = ResponseBuilder::new(&invite, status, reason).to_tag(&self.caller.dialog.local_tag).build();
        self.respond(now, LegId::Caller, &invite, status, resp);
        self.caller.state = CallerState::Ended;
        self.event(CallEvent::Ended(EndReason::AgentRefused));
        true
    }

    /// The 2xx with our SDP answer (and session timer) to an INVITE or re-INVITE, resent
    /// until its ACK.
    pub(super) fn answer_offer(&mut self, now: Instant, req: &Request, local_tag: &str) {
        let answer = self.caller_sdp();
        let contact = self.caller_contact();
        let mut b = ResponseBuilder::new(req, 200, "OK")
            .to_tag(local_tag)
            .record_route()
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .header("Supported", SUPPORTED_HEADER);
        let expires = self.caller.session_timer.as_ref().map(|t| (t.timer.header(), t.timer.refresher));
        if let Some((value, refresher)) = &expires {
            b = b.header("Session-Expires", value);
            if *refresher == Refresher::Peer {
                b = b.header("Require", "timer");
            }
        }
        let ok = b.body("application/sdp", answer.as_bytes()).build();
        self.respond(now, LegId::Caller, req, 200, ok.clone());
        self.caller.state =
            CallerState::Answering { ok: Retransmit::invite_2xx(ok, now, self.timers), branch: req.branch() };
    }

    pub(super) fn caller_request(&mut self, now: Instant, req: &Request, from: Flow) {
        // Routed here by its Replaces header: a new dialog to take over the caller's.
        if req.method() == Method::Invite && req.call_id() != self.caller.dialog.call_id {
            return self.take_over(now, req, from);
        }
        let in_dialog = self.caller.dialog.matches(req);
        if in_dialog && !self.caller.dialog.accept_remote_cseq(req) {
            return self.reply(now, LegId::Caller, req, 500, "Server Internal Error"); // §12.2.2
        }
        let answering_branch = match &self.caller.state {
            CallerState::Answering { branch, .. } => branch.clone(),
            _ => None,
        };
        match req.method() {
            Method::Invite if req.branch().is_some() && req.branch() == answering_branch => {
                // A retransmitted INVITE: the dialog resends its unacknowledged 2xx.
                if let CallerState::Answering { ok, .. } = &self.caller.state {
                    let bytes = ok.bytes().to_vec();
                    self.send(LegId::Caller, bytes);
                }
            }
            Method::Ack => {
                if matches!(self.caller.state, CallerState::Answering { .. }) && in_dialog {
                    self.caller.state = CallerState::Confirmed;
                }
            }
            Method::Bye if in_dialog => {
                self.reply(now, LegId::Caller, req, 200, "OK");
                self.caller.state = CallerState::Ended;
                self.abandon_capture(CaptureFailure::CallerHungUp);
                self.hang_up_agent(now);
                self.event(CallEvent::Ended(EndReason::CallerHungUp));
            }
            Method::Cancel => {
                // Answered already, there is nothing left to cancel: 200 to the CANCEL, the
                // INVITE keeps its 200 (§9.2). Still proceeding (inline mode), the INVITE gets
                // 487 and the agent leg is cancelled. An unknown CANCEL gets 481.
                let ours = req.branch().is_some() && req.branch() == self.caller.invite_branch;
                if ours {
                    self.reply(now, LegId::Caller, req, 200, "OK");
                    if let CallerState::Proceeding { invite, .. } = &self.caller.state {
                        let invite = invite.clone();
                        self.reply(now, LegId::Caller, &invite, 487, "Request Terminated");
                        self.caller.state = CallerState::Ended;
                        self.hang_up_agent(now);
                        self.event(CallEvent::Ended(EndReason::CallerCancelled));
                    }
                } else {
                    self.reply(now, LegId::Caller, req, 481, "Call/Transaction Does Not Exist");
                }
            }
            Method::Options => {
                let resp = ResponseBuilder::new(req, 200, "OK")
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", SUPPORTED_HEADER)
                    .build();
                self.respond(now, LegId::Caller, req, 200, resp);
            }
            Method::Info if in_dialog => {
                self.reply(now, LegId::Caller, req, 200, "OK");
                if let Some(key) = super::dtmf_relay_key(req) {
                    self.info_keys += 1;
                    self.on_key(key, now);
                }
            }
            Method::Invite | Method::Update if in_dialog => self.renegotiate(now, req),
            Method::Notify if in_dialog => self.on_notify(now, req),
            Method::Bye | Method::Info | Method::Invite | Method::Update | Method::Notify => {
                self.reply(now, LegId::Caller, req, 481, "Call/Transaction Does Not Exist");
            }
            Method::Refer | Method::Other(_) => {
                let resp = ResponseBuilder::new(req, 405, "Method Not Allowed").header("Allow", ALLOW).build();
                self.respond(now, LegId::Caller, req, 405, resp);
            }
        }
    }

    /// A re-INVITE or UPDATE from the caller: hold, resume, codec change or a session
    /// refresh. A refused offer leaves the session as it was (§14.2).
    fn renegotiate(&mut self, now: Instant, req: &Request) {
        let is_invite = req.method() == Method::Invite;
        if is_invite && self.caller.refresh.as_ref().is_some_and(|r| r.state() == ClientInviteState::Calling) {
            // Our own re-INVITE is out: glare (§14.1).
            return self.reply(now, LegId::Caller, req, 491, "Request Pending");
        }
        if is_invite && matches!(self.caller.state, CallerState::Answering { .. }) {
            // The previous 2xx is not acknowledged yet (§14.2).
            let resp = ResponseBuilder::new(req, 500, "Server Internal Error").header("Retry-After", "1").build();
            return self.respond(now, LegId::Caller, req, 500, resp);
        }
        if !self.caller.is_up() {
            return self.reply(now, LegId::Caller, req, 481, "Call/Transaction Does Not Exist");
        }
        let timer = match session_timer::negotiate(req) {
            Negotiation::TooSmall => {
                let resp = too_small(req);
                return self.respond(now, LegId::Caller, req, 422, resp);
            }
            Negotiation::None => None,
            Negotiation::Timer(t) => Some(Timer { timer: t, next: t.deadline(now) }),
        };
        if !req.body().is_empty() {
            let ip = self.caller.flow.remote.ip();
            let parsed = RemoteDescription::parse(req.body()).map_err(|e| e.to_string());
            let offer = match parsed.and_then(|o| self.placed(o, ip)) {
                Ok(o) => o,
                Err(why) => return self.respond(now, LegId::Caller, req, 488, not_acceptable(req, &why)),
            };
            let srtp = match negotiate_srtp(
                &offer,
                self.caller.srtp_policy,
                &self.caller.srtp_key,
                self.caller.keys_in_clear(self.caller.flow),
            ) {
                Ok(a) => a,
                Err(why) => return self.respond(now, LegId::Caller, req, 488, not_acceptable(req, why)),
            };
            if !self.rekey_caller(srtp) {
                let why = "the offer changes between RTP and SRTP mid-call";
                return self.respond(now, LegId::Caller, req, 488, not_acceptable(req, why));
            }
            let params = offer.negotiate();
            let was_held = matches!(self.caller.media.direction, Direction::RecvOnly | Direction::Inactive);
            let direction = offer.direction.answer();
            if params != self.caller.media.params || direction != self.caller.media.direction {
                self.caller.media.version += 1;
            }
            self.caller.media.params = params;
            self.caller.media.direction = direction;
            self.bridge.set_caller(params, offer.direction.receives(), self.caller.flow.remote.ip());
            let held = !offer.direction.receives();
            if held != was_held {
                self.event(CallEvent::Hold { on: held });
            }
        }
        self.caller.session_timer = timer;
        let tag = self.caller.dialog.local_tag.clone();
        self.answer_offer(now, req, &tag);
        if !is_invite {
            // UPDATE has no ACK: its 2xx goes through the transaction only (RFC 3311 §5.2).
            self.caller.state = CallerState::Confirmed;
        }
    }

    /// Responses on the caller's leg that no non-INVITE transaction took: those to our
    /// refreshing re-INVITE.
    pub(super) fn caller_response(&mut self, now: Instant, resp: &Response) {
        if resp.cseq().method != Method::Invite {
            return;
        }
        let Some(tx) = self.caller.refresh.as_mut().filter(|t| t.matches(resp)) else {
            // A 2xx to an earlier refresh again: its ACK again (§13.2.2.4).
            if (200..300).contains(&resp.status())
                && let Some(ack) = self.caller.refresh_ack.clone()
            {
                self.send(LegId::Caller, ack);
            }
            return;
        };
        if tx.handle_response(now, resp) == Delivery::Absorbed {
            self.drain_refresh();
            return;
        }
        self.drain_refresh();
        match resp.status() {
            100..=199 => {}
            200..=299 => {
                let branch = self.next_branch();
                let ack = self.caller.dialog.ack(resp.cseq().seq, &branch);
                self.send(LegId::Caller, ack.clone());
                self.caller.refresh_ack = Some(ack);
                self.caller.refresh = None;
                if let Some(t) = &mut self.caller.session_timer {
                    t.next = t.timer.deadline(now);
                }
            }
            491 => {
                // Glare: try again after 0–2 s, the wait for a dialog we did not start (§14.1).
                self.caller.refresh = None;
                if let Some(t) = &mut self.caller.session_timer {
                    t.next = now + Duration::from_millis(self.seed.rotate_left(self.branches as u32) % 2000);
                }
            }
            _ => {
                self.caller.refresh = None;
                self.end_everything(now, CaptureFailure::RefreshFailed);
            }
        }
    }

    fn drain_refresh(&mut self) {
        while let Some(b) = self.caller.refresh.as_mut().and_then(ClientInvite::poll_transmit) {
            self.send(LegId::Caller, b);
        }
    }

    /// Session timer and refresh re-INVITE timeouts.
    pub(super) fn session_timeout(&mut self, now: Instant) {
        if let Some(tx) = &mut self.caller.refresh {
            tx.handle_timeout(now);
            let timed_out = tx.state() == ClientInviteState::Terminated(Outcome::TimedOut);
            self.drain_refresh();
            if timed_out {
                self.caller.refresh = None;
                self.end_everything(now, CaptureFailure::RefreshUnanswered);
            }
            return;
        }
        let Some(t) = &self.caller.session_timer else { return };
        if now < t.next || !self.caller.is_up() {
            return;
        }
        match t.timer.refresher {
            Refresher::Peer => {
                self.caller.session_timer = None;
                self.end_everything(now, CaptureFailure::SessionExpired);
                self.event(CallEvent::Ended(EndReason::SessionExpired));
            }
            Refresher::Us => self.send_refresh(now, t.timer),
        }
    }

    /// A re-INVITE with our current description, unchanged (RFC 4028 §7.4).
    fn send_refresh(&mut self, now: Instant, timer: SessionTimer) {
        let sdp = self.caller_sdp();
        let branch = self.next_branch();
        let bytes = self
            .caller
            .dialog
            .request(Method::Invite, &branch)
            .header("Session-Expires", &timer.header())
            .header("Supported", SUPPORTED_HEADER)
            .body("application/sdp", sdp.as_bytes())
            .build();
        match crate::sip::message::parse(&bytes) {
            Ok(crate::sip::message::SipMessage::Request(invite)) => {
                let reliable = self.reliable(LegId::Caller);
                self.caller.refresh = Some(ClientInvite::new(invite, bytes, now, self.timers, reliable));
                self.drain_refresh();
            }
            _ => {
                // Our own request always parses; if it ever did not, end cleanly, loudly.
                tracing::error!("could not build the session refresh");
                self.end_everything(now, CaptureFailure::RefreshUnbuildable);
            }
        }
    }

    /// Sends the caller back to `uri` (RFC 3515 §2.4.1).
    pub(super) fn refer_caller(&mut self, now: Instant, uri: &str) {
        if !self.caller.is_up() {
            return;
        }
        let branch = self.next_branch();
        let referred_by = format!("<sip:tonewall@{}>", self.local_sip);
        let refer = self
            .caller
            .dialog
            .request(Method::Refer, &branch)
            .header("Refer-To", &format!("<{uri}>"))
            .header("Referred-By", &referred_by)
            .build();
        self.request(now, LegId::Caller, Purpose::Refer, Method::Refer, refer, &branch);
        self.caller.transfer = Transfer::Referring;
        self.event(CallEvent::Transferring);
    }

    pub(super) fn on_refer_answer(&mut self, now: Instant, status: u16) {
        if self.caller.transfer != Transfer::Referring {
            return;
        }
        if (200..300).contains(&status) {
            self.caller.transfer = Transfer::Accepted { give_up: now + TRANSFER_SILENCE };
        } else {
            self.transfer_failed(now, status);
        }
    }

    /// NOTIFY for the REFER's implicit subscription: its message/sipfrag body carries the
    /// status line of the transfer INVITE (RFC 3515 §2.4.5).
    fn on_notify(&mut self, now: Instant, req: &Request) {
        let is_refer = req
            .header("Event")
            .or_else(|| req.header("o"))
            .is_some_and(|e| e.split(';').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("refer")));
        if !is_refer || !matches!(self.caller.transfer, Transfer::Referring | Transfer::Accepted { .. }) {
            let resp = ResponseBuilder::new(req, 489, "Bad Event").build();
            return self.respond(now, LegId::Caller, req, 489, resp);
        }
        self.reply(now, LegId::Caller, req, 200, "OK");
        let status = std::str::from_utf8(req.body())
            .ok()
            .and_then(|b| b.trim_start().strip_prefix("SIP/2.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(200..=299) => {
                self.caller.transfer = Transfer::Done;
                self.abandon_capture(CaptureFailure::Transferred);
                self.hang_up_caller(now);
                self.hang_up_agent(now);
                self.event(CallEvent::Ended(EndReason::Transferred));
            }
            Some(s) if s >= 300 => self.transfer_failed(now, s),
            _ => {
                if let Transfer::Accepted { give_up } = &mut self.caller.transfer {
                    *give_up = now + TRANSFER_SILENCE;
                }
            }
        }
    }

    /// A transfer that went silent fails as a timeout would (408).
    pub(super) fn transfer_timeout(&mut self, now: Instant) {
        if let Transfer::Accepted { give_up } = self.caller.transfer
            && now >= give_up
        {
            self.transfer_failed(now, 408);
        }
    }

    /// A transfer that failed leaves the caller with nobody: they hear the end of the call.
    fn transfer_failed(&mut self, now: Instant, status: u16) {
        self.caller.transfer = Transfer::Done;
        self.event(CallEvent::TransferFailed { status });
        if !self.capture.is_running() {
            self.hang_up_caller(now);
            self.hang_up_agent(now);
        }
    }
}
