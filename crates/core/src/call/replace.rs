//! Attended transfer into tonewall (RFC 3891 §3): an INVITE whose Replaces header names the
//! caller's confirmed dialog takes it over. The new dialog becomes the caller's leg, and the
//! capture, the agent leg and the session carry on; the old dialog is ended with BYE on
//! `LegId::Replaced`.

use std::time::Instant;

use super::caller::{self, CallerState, Negotiated, SrtpAnswer, Timer};
use super::transactions::Purpose;
use super::{Call, CallEvent, LegId};
use crate::media::srtp::SrtpLeg;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request};
use crate::sip::replaces::Replaces;
use crate::sip::sdp::RemoteDescription;
use crate::sip::session_timer::{self, Negotiation};
use crate::sip::stream::Flow;

impl Call {
    pub(super) fn take_over(&mut self, now: Instant, invite: &Request, from: Flow) {
        let replaces = match Replaces::of(invite) {
            Some(Ok(r)) => r,
            Some(Err(())) => return self.reply(now, LegId::Caller, invite, 400, "Bad Request"),
            None => return self.reply(now, LegId::Caller, invite, 481, "Call/Transaction Does Not Exist"),
        };
        let d = &self.caller.dialog;
        if (&replaces.call_id, &replaces.to_tag, &replaces.from_tag) != (&d.call_id, &d.local_tag, &d.remote_tag) {
            return self.reply(now, LegId::Caller, invite, 481, "Call/Transaction Does Not Exist");
        }
        match self.caller.state {
            CallerState::Answering { .. } | CallerState::Confirmed if replaces.early_only => {
                return self.reply(now, LegId::Caller, invite, 486, "Busy Here");
            }
            CallerState::Answering { .. } | CallerState::Confirmed => {}
            // An early dialog the other side started cannot be replaced (§3).
            CallerState::Proceeding { .. } => {
                return self.reply(now, LegId::Caller, invite, 481, "Call/Transaction Does Not Exist");
            }
            CallerState::Ending | CallerState::Ended => return self.reply(now, LegId::Caller, invite, 603, "Decline"),
        }
        let parsed = RemoteDescription::parse(invite.body()).map_err(|e| e.to_string());
        let offer = match parsed.and_then(|o| self.placed(o, from.remote.ip())) {
            Ok(o) => o,
            Err(why) => return self.respond(now, LegId::Caller, invite, 488, caller::not_acceptable(invite, &why)),
        };
        let (srtp, srtp_leg) = match caller::negotiate_srtp(
            &offer,
            self.caller.srtp_policy,
            &self.caller.srtp_key,
            self.caller.keys_in_clear(from),
        ) {
            Ok(SrtpAnswer::Plain) => (None, None),
            Ok(SrtpAnswer::Keyed { theirs, ours }) => match SrtpLeg::new(&theirs, &ours) {
                Ok(leg) => (Some((theirs, ours)), Some(leg)),
                Err(e) => {
                    return self.respond(
                        now,
                        LegId::Caller,
                        invite,
                        488,
                        caller::not_acceptable(invite, &e.to_string()),
                    );
                }
            },
            Err(why) => return self.respond(now, LegId::Caller, invite, 488, caller::not_acceptable(invite, why)),
        };
        let session_timer = match session_timer::negotiate(invite) {
            Negotiation::TooSmall => return self.respond(now, LegId::Caller, invite, 422, caller::too_small(invite)),
            Negotiation::None => None,
            Negotiation::Timer(t) => Some(Timer { timer: t, next: t.deadline(now) }),
        };
        // The old dialog's peer gets its BYE where it is; the caller's leg answers the new one.
        let previous_call_id = self.caller.dialog.call_id.clone();
        self.caller.replaced_flow = Some(std::mem::replace(&mut self.caller.flow, from));
        self.event(CallEvent::CallerReplaced { previous_call_id, caller: from });
        let branch = self.next_branch();
        let bye = self.caller.dialog.request(Method::Bye, &branch).build();
        self.request(now, LegId::Replaced, Purpose::Bye, Method::Bye, bye, &branch);

        self.caller.replacements += 1;
        let local_tag = format!("tw{:x}r{}", self.seed, self.caller.replacements);
        self.caller.dialog = Dialog::uas(invite, &local_tag, &self.local(from.transport), from.transport);
        self.caller.invite_branch = invite.branch();
        let params = offer.negotiate();
        let version = self.caller.media.version + 1;
        self.caller.media = Negotiated { params, direction: offer.direction.answer(), version, srtp };
        self.bridge.set_caller(params, offer.direction.receives(), from.remote.ip());
        self.bridge.set_caller_srtp(srtp_leg);
        self.caller.session_timer = session_timer;
        self.caller.refresh = None;
        self.caller.refresh_ack = None;
        self.answer_offer(now, invite, &local_tag);
    }

    /// The old dialog after a take-over: its BYE crossing ours gets 200, anything else 481.
    pub(super) fn replaced_request(&mut self, now: Instant, req: &Request) {
        match req.method() {
            Method::Ack => {}
            Method::Bye => self.reply(now, LegId::Replaced, req, 200, "OK"),
            _ => self.reply(now, LegId::Replaced, req, 481, "Call/Transaction Does Not Exist"),
        }
    }
}
