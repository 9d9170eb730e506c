//! The capture flow of one call: the collector while the caller keys, tokenizing, and what
//! happens once the closing prompt has played (stay bridged, transfer back, hang up).

use std::time::Instant;

use super::media::MaskLevel;
use super::{AfterCapture, Call, CallEvent, CaptureFailure};
use crate::capture::card::YearMonth;
use crate::capture::collector::{CaptureEvent, Collector, CollectorConfig, PromptId};
use crate::capture::plan::{CapturePlan, Language};
use crate::capture::speech::Clip;
use crate::media::telephone_event::Key;

/// Where the capture is.
pub(super) enum CaptureState {
    /// Inline mode before (or between) captures: audio passes unmasked.
    Idle,
    Collecting(Box<Collector>),
    Tokenizing,
    Completed,
    Failed,
    Cancelled,
}

/// What to do once the prompt playing now has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WhenQuiet {
    Nothing,
    HangUp,
    Refer(String),
}

/// The capture side of a call, owned by the call.
pub(super) struct CaptureFlow {
    pub state: CaptureState,
    /// What happens to the caller when the capture ends.
    pub after: AfterCapture,
    pub when_quiet: WhenQuiet,
    /// For captures started later (inline mode).
    pub config: CollectorConfig,
    /// The current month, for expiry checks.
    pub today: YearMonth,
    /// Keep the masker on for the whole call, not only while capturing.
    pub mask_always: bool,
    /// The language of the capture running or last run, for its closing prompt.
    pub language: Language,
}

impl CaptureFlow {
    /// Whether the caller is keying or the card is being stored.
    pub fn is_running(&self) -> bool {
        matches!(self.state, CaptureState::Collecting(_) | CaptureState::Tokenizing)
    }

    /// The collector's first-digit and inter-digit timeouts.
    pub fn timer(&self) -> (super::Timer, Option<Instant>) {
        let at = match &self.state {
            CaptureState::Collecting(c) => c.poll_timeout(),
            _ => None,
        };
        (super::Timer::Capture, at)
    }
}

/// The capture's steps, which reach into the bridge (prompts, masking) and the legs.
impl Call {
    /// A capture on a call that has none running (inline mode): prompts start and the
    /// masker takes the agent's audio path at once.
    pub(super) fn start_capture(&mut self, now: Instant, plan: CapturePlan) {
        let idle = matches!(
            self.capture.state,
            CaptureState::Idle | CaptureState::Completed | CaptureState::Failed | CaptureState::Cancelled
        );
        if !idle || plan.fields.is_empty() || !self.caller.is_up() {
            self.event(CallEvent::CaptureFailed { reason: CaptureFailure::CannotStart });
            return;
        }
        self.capture.language = plan.language;
        self.capture.state =
            CaptureState::Collecting(Box::new(Collector::new(plan, self.capture.config, self.capture.today, now)));
        self.capture.when_quiet = WhenQuiet::Nothing;
        self.bridge.set_masking(MaskLevel::Capture);
        self.drain_capture(now);
    }

    pub(super) fn on_key(&mut self, key: Key, now: Instant) {
        if let CaptureState::Collecting(c) = &mut self.capture.state {
            self.bridge.player().stop();
            c.handle_key(key, now);
            self.drain_capture(now);
        }
    }

    pub(super) fn drain_capture(&mut self, now: Instant) {
        let CaptureState::Collecting(c) = &mut self.capture.state else { return };
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        let field = c.current_field();
        let progress = (!events.is_empty()).then(|| c.progress());
        self.bridge.recording().set_field(field);
        // The progress first, so that whoever shows the events below shows them over it.
        if let Some(fields) = progress {
            self.event(CallEvent::Progress { fields });
        }
        for e in events {
            match e {
                CaptureEvent::Say(clips) => self.say(now, &clips),
                CaptureEvent::DigitEntered { field, count } => self.event(CallEvent::DigitEntered { field, count }),
                CaptureEvent::FieldRestarted { field } => self.event(CallEvent::FieldRestarted { field }),
                CaptureEvent::FieldRejected { field, attempts_left, reason } => {
                    self.event(CallEvent::FieldRejected { field, attempts_left, reason })
                }
                CaptureEvent::FieldDone { field, masked, brand, attempts_left } => {
                    self.event(CallEvent::FieldDone { field, masked, brand, attempts_left })
                }
                CaptureEvent::Completed(captured) => {
                    self.capture.state = CaptureState::Tokenizing;
                    self.event(CallEvent::PaymentCaptured(captured));
                }
                CaptureEvent::Declined => {
                    self.capture.state = CaptureState::Failed;
                    self.event(CallEvent::CaptureFailed { reason: CaptureFailure::Declined });
                    self.finish_capture(now, Some(PromptId::PaymentStopped));
                }
                CaptureEvent::Failed { field } => {
                    self.capture.state = CaptureState::Failed;
                    self.event(CallEvent::CaptureFailed { reason: CaptureFailure::TooManyAttempts(field) });
                    self.finish_capture(now, None);
                }
            }
        }
    }

    /// After capture ends: play a closing prompt if any, then, per the session, stay bridged
    /// to the agent, transfer the caller back, or hang up once the prompt has played.
    pub(super) fn finish_capture(&mut self, now: Instant, prompt: Option<PromptId>) {
        self.bridge.set_masking(if self.capture.mask_always { MaskLevel::Tones } else { MaskLevel::Off });
        if let Some(id) = prompt {
            self.say(now, &[Clip::Prompt(id)]);
        }
        let agent_on = self.agent.is_on();
        self.capture.when_quiet = match &self.capture.after {
            AfterCapture::Transfer(uri) => WhenQuiet::Refer(uri.clone()),
            AfterCapture::Bridge if agent_on => WhenQuiet::Nothing,
            AfterCapture::Bridge | AfterCapture::Hangup => WhenQuiet::HangUp,
        };
        self.check_quiet(now);
    }

    /// Queues `clips` in the capture's language and starts playing.
    fn say(&mut self, now: Instant, clips: &[Clip]) {
        let language = self.capture.language;
        for clip in clips {
            if let Some(audio) = self.prompts.audio(language, *clip) {
                self.bridge.player().enqueue(audio);
            }
        }
        self.bridge.kick_player(now);
    }

    pub(super) fn abandon_capture(&mut self, reason: CaptureFailure) {
        if self.capture.is_running() {
            self.capture.state = CaptureState::Failed;
            self.event(CallEvent::CaptureFailed { reason });
        }
    }

    pub(super) fn check_quiet(&mut self, now: Instant) {
        if self.capture.when_quiet == WhenQuiet::Nothing || self.bridge.is_prompting() {
            return;
        }
        match std::mem::replace(&mut self.capture.when_quiet, WhenQuiet::Nothing) {
            WhenQuiet::HangUp => {
                self.hang_up_caller(now);
                self.hang_up_agent(now);
            }
            WhenQuiet::Refer(uri) => self.refer_caller(now, &uri),
            WhenQuiet::Nothing => {}
        }
    }
}
