//! What a session is, as the API, the WebSocket and the database see it: its id, state and
//! view (masked progress only: dots and at most the last four digits), the changes the
//! WebSocket names, and the registry's errors.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::capture::plan::CapturePlan;
use crate::capture::progress::FieldProgress;
use crate::endpoint::SESSION_PREFIX;
use crate::vault::TokenRecord;

/// A session id: 32 lowercase hex digits (a v4 UUID without dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// One running tonewall process: a new id at each start, so a restarted node never answers
/// for the calls its previous life held.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn new() -> NodeId {
        NodeId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn from_stored(s: String) -> NodeId {
        NodeId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeId {
    fn default() -> Self {
        NodeId::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    pub fn parse(s: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Completed | SessionState::Failed | SessionState::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// What the capture asks for: method, fields, card types, lengths, amount, language.
    /// (None only on sessions stored before plans were.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CapturePlan>,
    /// As the call's collector last reported it.
    pub fields: Vec<FieldProgress>,
    pub result: Option<TokenRecord>,
    /// The card pushed to the processor's gateway (`[push]`), once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::push::PushView>,
    pub error: Option<String>,
    /// Why a failed session failed, as a stable code (`too_many_attempts`, `caller_hung_up`,
    /// `call_ended`, `node_lost`, …).
    pub reason: Option<String>,
}

/// What happens to the caller after capture, as the view shows it (the transfer URI stays
/// with the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterCaptureKind {
    Bridge,
    Transfer,
    Hangup,
}

/// What changed, as the WebSocket names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The node holding the call stopped renewing its lease (`src/runtime/cluster.rs`).
    NodeLost,
    /// The push to the processor's gateway changed: pending, delivered or failed.
    Push,
}

/// One change, as sent on the WebSocket: what happened and the session after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[error("the session store is unavailable: {0}")]
    Store(String),
    #[error("the node holding this session's call is gone; the session will show failed (node_lost)")]
    HolderGone,
}
