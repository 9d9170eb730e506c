//! Payment sessions: what an agent creates, a transferred call fills in, and the API and
//! WebSocket show. Views carry masked progress only (dots and at most the last four digits).
//! The registry is shared by the API and the SIP runtime; each session also has a broadcast
//! of its changes for WebSocket subscribers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::broadcast;

use crate::call::{AfterCapture, CallEvent, EndReason};
use crate::capture::collector::FieldName;
use crate::capture::progress;
pub use crate::capture::progress::{FieldProgress, FieldState};
use crate::endpoint::SESSION_PREFIX;
use crate::owner::Owner;
use crate::vault::TokenRecord;

/// A session id: 32 lowercase hex digits (a v4 UUID without dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn new() -> SessionId {
        SessionId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts only the shape we issue, so nothing else reaches a lookup or a log.
    pub fn parse(s: &str) -> Option<SessionId> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| SessionId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Request-URI user part a PBX transfers the caller to.
    pub fn sip_user(&self) -> String {
        format!("{SESSION_PREFIX}{}", self.0)
    }

    pub fn from_sip_user(user: &str) -> Option<SessionId> {
        user.strip_prefix(SESSION_PREFIX).and_then(SessionId::parse)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        SessionId::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Waiting,
    Capturing,
    Completed,
    Failed,
    Cancelled,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        SessionState::Waiting,
        SessionState::Capturing,
        SessionState::Completed,
        SessionState::Failed,
        SessionState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Waiting => "waiting",
            SessionState::Capturing => "capturing",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
            SessionState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Completed | SessionState::Failed | SessionState::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: SessionId,
    pub state: SessionState,
    pub reference: String,
    pub transfer_uri: String,
    pub agent_connected: bool,
    /// What happens to the caller after capture.
    pub after_capture: AfterCaptureKind,
    /// The caller has put the call on hold.
    pub on_hold: bool,
    /// The caller was transferred back (REFER accepted and the transfer succeeded).
    pub transferred: bool,
    /// As the call's collector last reported it.
    pub fields: Vec<FieldProgress>,
    pub result: Option<TokenRecord>,
    pub error: Option<String>,
}

/// What happens to the caller after capture, as the view shows it (the transfer URI stays
/// with the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterCaptureKind {
    Bridge,
    Transfer,
    Hangup,
}

/// What changed, as the WebSocket names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    CallStarted,
    AgentConnected,
    AgentDisconnected,
    Digit,
    FieldRestarted,
    FieldRejected,
    FieldDone,
    Tokenizing,
    CallerReplaced,
    Failed,
    Cancelled,
    Completed,
    Hold,
    Resumed,
    Transferring,
    TransferFailed,
    CallEnded,
}

/// One change, as sent on the WebSocket: what happened and the session after it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionUpdate {
    pub event: Change,
    pub session: SessionView,
}

/// Open event streams one session may have (the agent's desktop, a supervisor, a retry).
pub const MAX_SUBSCRIBERS: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("no such session")]
    NotFound,
    #[error("this session already has {MAX_SUBSCRIBERS} event subscribers")]
    TooManySubscribers,
    #[error("session is {0:?}, not waiting for a call")]
    NotWaiting(SessionState),
    #[error("session already ended ({0:?})")]
    Final(SessionState),
    #[error("session is {0:?}, not capturing")]
    NotCapturing(SessionState),
    #[error("the session does not ask for this field")]
    FieldNotRequested,
    #[error("the caller has not reached this field yet")]
    FieldNotReached,
}

struct Entry {
    view: SessionView,
    agent_uri: Option<String>,
    after_capture: AfterCapture,
    updates: broadcast::Sender<SessionUpdate>,
    /// Who may see and change it (`crate::owner`).
    owner: Owner,
    /// A call is bound and has not ended yet: the entry outlives `forget_older_than`. How
    /// to reach that call is the calls registry's fact (`Calls::tell_session`).
    call_live: bool,
    created: Instant,
    /// The SHA-256 of the session's embed token, and when it stops working.
    embed: Option<([u8; 32], Instant)>,
}

/// How embed tokens begin (API keys begin `twk_`).
pub const EMBED_PREFIX: &str = "twe_";

fn embed_hash(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

/// What a call needs from its session when it arrives.
#[derive(Debug)]
pub struct Attached {
    pub fields: Vec<FieldName>,
    pub agent_uri: Option<String>,
    pub after_capture: AfterCapture,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(
        &self,
        fields: Vec<FieldName>,
        reference: String,
        agent_uri: Option<String>,
        after_capture: AfterCapture,
        sip_host: &str,
        owner: Owner,
    ) -> SessionView {
        let id = SessionId::new();
        let fields = fields.into_iter().map(|name| FieldProgress::pending(name, 0)).collect();
        let view = SessionView {
            transfer_uri: format!("sip:{}@{sip_host}", id.sip_user()),
            id: id.clone(),
            state: SessionState::Waiting,
            reference,
            agent_connected: false,
            after_capture: match after_capture {
                AfterCapture::Bridge => AfterCaptureKind::Bridge,
                AfterCapture::Transfer(_) => AfterCaptureKind::Transfer,
                AfterCapture::Hangup => AfterCaptureKind::Hangup,
            },
            on_hold: false,
            transferred: false,
            fields,
            result: None,
            error: None,
        };
        // Each update carries the whole view, so a subscriber that lags past 32 (and skips
        // ahead) still gets the latest state; 256 slots cost 60 KiB per session.
        let (updates, _) = broadcast::channel(32);
        let created = Instant::now();
        let entry = Entry {
            view: view.clone(),
            agent_uri,
            after_capture,
            updates,
            owner,
            call_live: false,
            created,
            embed: None,
        };
        self.lock().insert(id, entry);
        view
    }

    /// A new embed token for the session, good until `until` for this session alone (view,
    /// events, cancel, field restart); it replaces any earlier one. Only its hash is kept.
    pub fn embed_token(&self, id: &SessionId, until: Instant) -> Option<String> {
        let token = format!("{EMBED_PREFIX}{}", crate::vault::token::random_base62(40));
        let mut map = self.lock();
        map.get_mut(id)?.embed = Some((embed_hash(&token), until));
        Some(token)
    }

    /// The session an embed token opens, while it has not expired.
    pub fn embedded(&self, token: &str, now: Instant) -> Option<SessionId> {
        if token.len() > 64 {
            return None;
        }
        let hash = embed_hash(token);
        let map = self.lock();
        map.iter().find(|(_, e)| e.embed.is_some_and(|(h, until)| h == hash && now < until)).map(|(id, _)| id.clone())
    }

    /// Whose the session is, if it exists.
    pub fn owner(&self, id: &SessionId) -> Option<Owner> {
        self.lock().get(id).map(|e| e.owner.clone())
    }

    /// How many sessions (kept for `SESSION_RETENTION`) are in each state.
    pub fn count_by_state(&self) -> HashMap<SessionState, usize> {
        let mut counts = HashMap::new();
        for e in self.lock().values() {
            *counts.entry(e.view.state).or_default() += 1;
        }
        counts
    }

    pub fn view(&self, id: &SessionId) -> Option<SessionView> {
        self.lock().get(id).map(|e| e.view.clone())
    }

    /// The view and its changes from now on; at most `MAX_SUBSCRIBERS` at once, so one
    /// client cannot make every change be serialized and sent a thousand times.
    pub fn subscribe(&self, id: &SessionId) -> Result<(SessionView, broadcast::Receiver<SessionUpdate>), SessionError> {
        let map = self.lock();
        let e = map.get(id).ok_or(SessionError::NotFound)?;
        if e.updates.receiver_count() >= MAX_SUBSCRIBERS {
            return Err(SessionError::TooManySubscribers);
        }
        Ok((e.view.clone(), e.updates.subscribe()))
    }

    /// Binds an arriving call to a waiting session.
    pub fn attach(&self, id: &SessionId, max_attempts: u8) -> Result<Attached, SessionError> {
        let mut map = self.lock();
        let e = map.get_mut(id).ok_or(SessionError::NotFound)?;
        if e.view.state != SessionState::Waiting {
            return Err(SessionError::NotWaiting(e.view.state));
        }
        e.call_live = true;
        e.view.state = SessionState::Capturing;
        let fields: Vec<FieldName> = e.view.fields.iter().map(|f| f.name).collect();
        // How the collector the call is about to start will report it.
        e.view.fields = progress::initial(&fields, max_attempts);
        publish(e, Change::CallStarted);
        Ok(Attached { fields, agent_uri: e.agent_uri.clone(), after_capture: e.after_capture.clone() })
    }

    /// Cancels a session; the caller tells a call in progress to stop capturing.
    pub fn cancel(&self, id: &SessionId) -> Result<SessionView, SessionError> {
        let mut map = self.lock();
        let e = map.get_mut(id).ok_or(SessionError::NotFound)?;
        if e.view.state.is_final() {
            return Err(SessionError::Final(e.view.state));
        }
        e.view.state = SessionState::Cancelled;
        publish(e, Change::Cancelled);
        Ok(e.view.clone())
    }

    /// Checks that the agent may ask the caller again for `field` (and the fields after it);
    /// the caller then tells the call.
    pub fn restart_field(&self, id: &SessionId, field: FieldName) -> Result<SessionView, SessionError> {
        let map = self.lock();
        let e = map.get(id).ok_or(SessionError::NotFound)?;
        if e.view.state != SessionState::Capturing {
            return Err(SessionError::NotCapturing(e.view.state));
        }
        let f = e.view.fields.iter().find(|f| f.name == field).ok_or(SessionError::FieldNotRequested)?;
        if f.state == FieldState::Pending {
            return Err(SessionError::FieldNotReached);
        }
        Ok(e.view.clone())
    }

    /// Applies what a call reported. Card data never passes here: only counts and masks.
    pub fn apply(&self, id: &SessionId, event: &CallEvent) {
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else { return };
        let name = match event {
            CallEvent::Answered => return,
            CallEvent::AgentAnswered => {
                e.view.agent_connected = true;
                Change::AgentConnected
            }
            CallEvent::AgentUnavailable { .. } | CallEvent::AgentHungUp => {
                e.view.agent_connected = false;
                Change::AgentDisconnected
            }
            CallEvent::Progress { fields } => {
                // Published with the event of the same change, which comes next.
                e.view.fields = fields.clone();
                return;
            }
            CallEvent::DigitEntered { .. } => Change::Digit,
            CallEvent::FieldRestarted { .. } => Change::FieldRestarted,
            CallEvent::FieldRejected { reason, .. } => {
                e.view.error = Some(reason.to_string());
                Change::FieldRejected
            }
            CallEvent::FieldDone { .. } => {
                e.view.error = None;
                Change::FieldDone
            }
            CallEvent::CardCaptured(_) => Change::Tokenizing,
            CallEvent::CallerReplaced { .. } => Change::CallerReplaced,
            CallEvent::Completed => return,
            CallEvent::CaptureFailed { reason } => {
                if e.view.state.is_final() {
                    return;
                }
                e.view.state = SessionState::Failed;
                e.view.error = Some(reason.to_string());
                Change::Failed
            }
            CallEvent::Cancelled => return,
            CallEvent::Hold { on } => {
                e.view.on_hold = *on;
                if *on { Change::Hold } else { Change::Resumed }
            }
            CallEvent::Transferring => Change::Transferring,
            CallEvent::TransferFailed { status } => {
                e.view.error = Some(format!("the transfer back failed ({status})"));
                Change::TransferFailed
            }
            CallEvent::Ended(reason) => {
                if *reason == EndReason::Transferred {
                    e.view.transferred = true;
                }
                e.call_live = false;
                e.view.agent_connected = false;
                if !e.view.state.is_final() {
                    e.view.state = SessionState::Failed;
                    e.view.error = Some("the call ended before the card was captured".into());
                }
                Change::CallEnded
            }
        };
        publish(e, name);
    }

    pub fn complete(&self, id: &SessionId, result: TokenRecord) {
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else { return };
        if e.view.state == SessionState::Capturing {
            e.view.state = SessionState::Completed;
            e.view.result = Some(result);
            e.view.error = None;
            publish(e, Change::Completed);
        }
    }

    /// Forgets sessions older than `age` that have ended or never got a call: the registry
    /// is a working set, not an archive (tokens live on in the vault).
    pub fn forget_older_than(&self, age: Duration, now: Instant) -> usize {
        let mut map = self.lock();
        map.retain(|_, e| e.call_live || now.saturating_duration_since(e.created) < age);
        map.len()
    }
}

fn publish(e: &Entry, event: Change) {
    // No subscriber is fine: the view is also kept for GET.
    let _ = e.updates.send(SessionUpdate { event, session: e.view.clone() });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::card::YearMonth;
    use crate::capture::collector::{Collector, CollectorConfig};
    use crate::media::telephone_event::Key;

    #[test]
    fn session_ids_and_sip_users() {
        let id = SessionId::new();
        assert_eq!(SessionId::from_sip_user(&id.sip_user()), Some(id.clone()));
        assert_eq!(SessionId::from_sip_user("pay-../../etc"), None);
        assert_eq!(SessionId::parse("ABCDEF0123456789abcdef0123456789"), None);
    }

    #[test]
    fn progress_is_masked_and_states_move_forward() {
        let s = Sessions::default();
        let v = s.create(
            vec![FieldName::Pan, FieldName::Expiry],
            "order-1".into(),
            None,
            AfterCapture::Hangup,
            "127.0.0.1:5060",
            Owner::Route { team: None },
        );
        assert!(v.transfer_uri.starts_with("sip:pay-"));
        let attached = s.attach(&v.id, 3).unwrap();
        assert_eq!(attached.fields, vec![FieldName::Pan, FieldName::Expiry]);
        assert_eq!(s.attach(&v.id, 3).unwrap_err(), SessionError::NotWaiting(SessionState::Capturing));
        // The view is what the call's collector reports, as the call forwards it.
        let t = Instant::now();
        let config = CollectorConfig::default();
        let mut c = Collector::new(attached.fields.clone(), config, YearMonth { year: 2026, month: 12 }, t);
        let key = |c: &mut Collector, ch| {
            c.handle_key(Key::from_char(ch).unwrap(), t);
            while c.poll_event().is_some() {}
            s.apply(&v.id, &CallEvent::Progress { fields: c.progress() });
        };
        for ch in "411111".chars() {
            key(&mut c, ch);
        }
        s.apply(&v.id, &CallEvent::DigitEntered { field: FieldName::Pan, count: 6 });
        let now = s.view(&v.id).unwrap();
        assert_eq!(now.fields[0].masked, "•••• ••");
        for ch in "1111111111#".chars() {
            key(&mut c, ch);
        }
        s.apply(
            &v.id,
            &CallEvent::FieldDone {
                field: FieldName::Pan, masked: "•••• •••• •••• 1111".into()
            },
        );
        let now = s.view(&v.id).unwrap();
        assert_eq!(now.fields[0].masked, "•••• •••• •••• 1111");
        assert_eq!((now.fields[0].state, now.fields[1].state), (FieldState::Done, FieldState::Entering));
        assert_eq!(s.cancel(&v.id).unwrap().state, SessionState::Cancelled);
        assert_eq!(s.cancel(&v.id).unwrap_err(), SessionError::Final(SessionState::Cancelled));
        s.apply(&v.id, &CallEvent::Ended(crate::call::EndReason::CallerHungUp));
        assert_eq!(s.view(&v.id).unwrap().state, SessionState::Cancelled);
        let later = Instant::now() + Duration::from_secs(7200);
        assert_eq!(s.forget_older_than(Duration::from_secs(3600), later), 0);
        assert!(s.view(&v.id).is_none());
    }
}
