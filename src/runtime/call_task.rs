//! The task that owns one `Call` and its two RTP sockets: it feeds the call what arrives
//! (SIP from the endpoint, RTP, commands, timeouts) and carries out what the call asks.
//! No lock is held around the call; other tasks reach it only through its inboxes.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::shared::{Inbound, Shared};
use crate::call::media::BridgeStats;
use crate::call::recording::STEREO_FRAME;
use crate::call::{Call, CallEvent, Command, Input, LegId, Output};
use crate::calls::{CallId, CaptureRefused, CaptureRequest};
use crate::capture::card::Brand;
use crate::capture::collector::{Captured, FieldName};
use crate::capture::plan::Amount;
use crate::endpoint::CallHandle;
use crate::media::rtp::MAX_PACKET;
use crate::metrics::Capture;
use crate::push::PushView;
use crate::recording::{RecordingError, Writer};
use crate::session::SessionId;
use crate::vault::webhook::FieldCompleted;
use crate::vault::{Actor, ActorRole, Completion};

/// How often a call adds its media counts to the metrics.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the timer rests while the call has no deadline.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct CallTask {
    pub id: CallId,
    /// The endpoint's name for this call, for its routes.
    pub handle: CallHandle,
    pub call: Call,
    /// The session capturing on this call; an inline call has none until the API starts one.
    pub session: Option<SessionId>,
    pub shared: Arc<Shared>,
    pub caller_rtp: UdpSocket,
    pub agent_rtp: UdpSocket,
    pub sip_rx: mpsc::Receiver<Inbound>,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub cmd_tx: mpsc::Sender<Command>,
    /// Captures the API asks of an inline call.
    pub capture_rx: mpsc::Receiver<CaptureRequest>,
}

impl CallTask {
    pub async fn run(mut self) {
        let mut caller_buf = [0u8; MAX_PACKET];
        let mut agent_buf = [0u8; MAX_PACKET];
        let mut recorder = Recorder::default();
        // One timer for the call's life, moved only when its deadline changes: arming a new
        // one per packet showed up in profiles.
        let idle = || tokio::time::Instant::now() + IDLE;
        let timer = tokio::time::sleep_until(idle());
        tokio::pin!(timer);
        let mut armed = None;
        // Media counts reach the metrics once a second while the call lasts.
        let mut reported = BridgeStats::default();
        let mut next_report = Instant::now() + REPORT_EVERY;
        loop {
            self.flush();
            let now = Instant::now();
            if now >= next_report {
                next_report = now + REPORT_EVERY;
                reported = self.report_media(reported);
            }
            self.record(&mut recorder, false);
            if self.call.is_ended() {
                break;
            }
            let deadline = self.call.poll_timeout();
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(deadline.map_or_else(idle, tokio::time::Instant::from_std));
            }
            tokio::select! {
                Some(Inbound { leg, msg, from }) = self.sip_rx.recv() => {
                    self.call.handle_input(Instant::now(), Input::Sip { leg, msg, from });
                }
                Some(cmd) = self.cmd_rx.recv() => self.call.handle_input(Instant::now(), Input::Command(cmd)),
                Some(request) = self.capture_rx.recv() => self.start_capture(request),
                r = self.caller_rtp.recv_from(&mut caller_buf) => {
                    if let Ok((n, from)) = r {
                        let packet = &caller_buf[..n];
                        self.call.handle_input(Instant::now(), Input::Rtp { leg: LegId::Caller, packet, from });
                    }
                }
                r = self.agent_rtp.recv_from(&mut agent_buf) => {
                    if let Ok((n, from)) = r {
                        let packet = &agent_buf[..n];
                        self.call.handle_input(Instant::now(), Input::Rtp { leg: LegId::Agent, packet, from });
                    }
                }
                _ = &mut timer, if armed.is_some() => self.call.handle_input(Instant::now(), Input::Timeout),
            }
        }
        self.record(&mut recorder, true);
        self.report_media(reported);
        // Boxed: its database futures would otherwise sit in every call's task all call long.
        Box::pin(self.finish_recording(recorder)).await;
        // The security code outlives the call: the processor may detokenize (or a webhook be
        // retried) after tonewall hung up. The vault releases it once, or drops it at
        // `vault.security_code_ttl_s` (PCI DSS 3.3.1: until authorization, never stored).
        self.shared.endpoint().remove_call(self.handle);
        self.shared.calls.remove(&self.id);
        let stats = self.call.media_stats();
        tracing::info!(
            call = self.id.as_str(),
            caller_packets = stats.caller_packets,
            agent_packets = stats.agent_packets,
            masked_frames = stats.masked_frames,
            caller_refused_address = stats.caller_refused.address,
            caller_refused_ssrc = stats.caller_refused.ssrc,
            agent_refused_address = stats.agent_refused.address,
            agent_refused_ssrc = stats.agent_refused.ssrc,
            srtp_rejected = stats.srtp_rejected,
            "call ended"
        );
    }

    /// Moves finished 20 ms stereo frames from the call to its recording file (opened with the
    /// first frame). A write error ends this call's recording, loudly, not the call.
    fn record(&mut self, r: &mut Recorder, ended: bool) {
        if r.failed {
            return;
        }
        let frame = &mut r.frame;
        while self.call.poll_recording(frame, ended) {
            if r.writer.is_none() {
                let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                match Writer::create(&self.shared.config.storage.data_dir, &self.shared.vault, started) {
                    Ok(w) => r.writer = Some(w),
                    Err(e) => return r.fail(&self.id, e),
                }
            }
            if let Some(Err(e)) = r.writer.as_mut().map(|w| w.write(frame)) {
                return r.fail(&self.id, e);
            }
        }
    }

    async fn finish_recording(&mut self, r: Recorder) {
        let Some(writer) = r.writer else { return };
        let session = self.session.as_ref().map_or("", SessionId::as_str);
        let reference = self
            .session
            .as_ref()
            .and_then(|s| self.shared.sessions.held_view(s))
            .map(|v| v.reference)
            .unwrap_or_default();
        let spans = self.call.masked_spans();
        let call_id = self.call.caller_call_id().to_string();
        let merchant =
            self.shared.calls.merchant_of(&self.id).unwrap_or_else(crate::merchant::MerchantId::default_merchant);
        let finished = writer.finish(self.shared.vault.pool(), &merchant, &call_id, session, &reference, &spans);
        match finished.await {
            Ok(m) => tracing::info!(
                call = self.id.as_str(),
                recording = m.id,
                duration_ms = m.duration_ms,
                "recording stored"
            ),
            Err(e) => tracing::error!(call = self.id.as_str(), error = %e, "recording could not be stored"),
        }
    }

    /// Adds what the call's media counters grew by since `reported`; returns them now.
    fn report_media(&self, reported: BridgeStats) -> BridgeStats {
        let now = self.call.media_stats();
        self.shared.metrics.media(&reported, &now);
        now
    }

    fn flush(&mut self) {
        while let Some(out) = self.call.poll_output() {
            match out {
                Output::Transmit(t) => self.shared.send(&t.to, &t.bytes),
                Output::Event(e) => {
                    match &e {
                        CallEvent::AgentUnavailable { status } => {
                            tracing::warn!(call = self.id.as_str(), status, "agent leg failed")
                        }
                        CallEvent::Answered => self.shared.calls.mark_answered(&self.id),
                        CallEvent::Completed => self.shared.metrics.capture(Capture::Completed),
                        CallEvent::CaptureFailed { reason } => self.shared.metrics.capture(Capture::Failed(*reason)),
                        CallEvent::Cancelled => self.shared.metrics.capture(Capture::Cancelled),
                        CallEvent::CallerReplaced { previous_call_id, caller } => {
                            let new_call_id = self.call.caller_call_id();
                            self.shared.endpoint().caller_replaced(self.handle, previous_call_id, new_call_id, *caller);
                            tracing::info!(call = self.id.as_str(), from = %caller.remote, "caller's dialog replaced (RFC 3891)");
                        }
                        _ => {}
                    }
                    let Some(session) = self.session.clone() else { continue };
                    self.shared.sessions.apply(&session, &e);
                    match e {
                        CallEvent::PaymentCaptured(captured) => self.tokenize(session, *captured),
                        CallEvent::FieldDone { field, masked, brand, attempts_left } => {
                            self.field_completed(session, field, masked, brand, attempts_left)
                        }
                        _ => {}
                    }
                }
            }
        }
        while let Some(p) = self.call.poll_packet() {
            let sock = match p.leg {
                LegId::Caller | LegId::Replaced => &self.caller_rtp,
                LegId::Agent => &self.agent_rtp,
            };
            // RTP is loss-tolerant: a full socket buffer drops this packet, never blocks the call.
            let _ = sock.try_send_to(&p.buf[..p.len], p.to);
        }
    }

    /// Binds the session the API made for an inline call and starts its capture: one step
    /// here, where the call's session binding lives, so no other capture can slip in between.
    fn start_capture(&mut self, request: CaptureRequest) {
        let CaptureRequest { session, reply } = request;
        let running =
            self.session.as_ref().and_then(|s| self.shared.sessions.held_view(s)).is_some_and(|v| !v.state.is_final());
        let answer = if running {
            Err(CaptureRefused::Busy)
        } else {
            // Bound in the calls registry first, so a cancel once attached reaches this call.
            self.shared.calls.set_session(&self.id, Some(session.clone()));
            match self.shared.sessions.attach(&session, self.shared.config.capture.max_attempts) {
                Ok(attached) => {
                    self.session = Some(session);
                    let plan = attached.plan;
                    self.call.handle_input(Instant::now(), Input::Command(Command::StartCapture { plan }));
                    Ok(())
                }
                Err(_) => {
                    self.shared.calls.set_session(&self.id, self.session.clone());
                    Err(CaptureRefused::SessionGone)
                }
            }
        };
        // The API may have given up waiting; then nobody needs the answer.
        let _ = reply.send(answer);
    }

    /// Queues the field's webhook event off the call's task, when the webhook sends them.
    fn field_completed(
        &self,
        session: SessionId,
        field: FieldName,
        masked: String,
        brand: Option<Brand>,
        attempts_left: u8,
    ) {
        if !self.shared.config.webhook.field_events {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let reference = shared.sessions.held_view(&session).map(|v| v.reference).unwrap_or_default();
            let session_id = session.as_str();
            let event =
                FieldCompleted { session_id, reference: &reference, field, masked: &masked, brand, attempts_left };
            let merchant = session_merchant(&shared, &session).await;
            if let Err(e) = shared.vault.field_completed(&merchant, &event).await {
                tracing::warn!(session = session_id, error = %e, "field event not queued");
            }
        });
    }

    /// Tokenizes off the call's task (the core never waits on the vault) and reports back.
    fn tokenize(&self, session: SessionId, card: Captured) {
        let shared = self.shared.clone();
        let cmd = self.cmd_tx.clone();
        let origin = format!("sip:{}", self.call.caller_flow().remote);
        tokio::spawn(async move {
            let reference = shared.sessions.held_view(&session).map(|v| v.reference).unwrap_or_default();
            let actor_id = format!("call:{}", session.as_str());
            let merchant = session_merchant(&shared, &session).await;
            let actor =
                Actor { id: &actor_id, role: ActorRole::Call, origin: &origin, merchant: Some(merchant.as_str()) };
            let completion = Completion { session_id: session.as_str(), reference: &reference };
            let answer = match shared.vault.tokenize(card, actor, &merchant, Some(completion), Instant::now()).await {
                Ok(rec) => {
                    let (token, amount) = (rec.token.clone(), rec.amount_confirmed);
                    match rec.brand {
                        Some(brand) => {
                            tracing::info!(session = session.as_str(), brand = brand.as_str(), "card tokenized")
                        }
                        None => tracing::info!(session = session.as_str(), "bank account tokenized"),
                    }
                    shared.sessions.complete(&session, rec);
                    push_to_gateway(&shared, &session, token, amount);
                    Command::CardStored
                }
                Err(e) => {
                    tracing::error!(session = session.as_str(), error = %e, "tokenization failed");
                    Command::CardNotStored
                }
            };
            // The call may have ended meanwhile; then there is nobody left to tell.
            let _ = cmd.send(answer).await;
        });
    }
}

/// Pushes a stored card to the processor's gateway off the call, when `[push]` names one;
/// the session shows it pending, then delivered or failed.
fn push_to_gateway(shared: &Arc<Shared>, session: &SessionId, token: String, amount: Option<Amount>) {
    let Some(pusher) = shared.pusher.clone() else { return };
    shared.sessions.set_push(session, PushView::Pending);
    let (shared, session) = (shared.clone(), session.clone());
    tokio::spawn(async move {
        let merchant = session_merchant(&shared, &session).await;
        let outcome = pusher.push(&shared.vault, &merchant, session.as_str(), &token, amount).await;
        if let PushView::Failed { error, .. } = &outcome {
            tracing::warn!(session = session.as_str(), error, "card not pushed to the gateway");
        }
        shared.sessions.set_push(&session, outcome);
    });
}

struct Recorder {
    writer: Option<Writer>,
    failed: bool,
    /// The frame being moved, kept so that no loop turn clears 640 bytes it may not use.
    frame: [i16; STEREO_FRAME],
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { writer: None, failed: false, frame: [0; STEREO_FRAME] }
    }
}

impl Recorder {
    fn fail(&mut self, call: &CallId, e: RecordingError) {
        tracing::error!(call = call.as_str(), error = %e, "recording stopped");
        self.failed = true;
        self.writer = None;
    }
}

/// The merchant a session's card and events belong to. A session whose row cannot be read
/// at this moment still has its card stored, under `default` (whose admins find it), rather
/// than lost.
async fn session_merchant(shared: &Shared, session: &SessionId) -> crate::merchant::MerchantId {
    match shared.sessions.owner(session).await {
        Ok(Some(owner)) => owner.merchant,
        Ok(None) | Err(_) => crate::merchant::MerchantId::default_merchant(),
    }
}
