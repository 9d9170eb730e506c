//! The calls in progress, under tonewall's own call id: what `GET /v1/calls` lists, and how
//! `POST /v1/calls/{id}/capture` reaches an inline call to start a capture on it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::call::Command;
use crate::capture::collector::FieldName;
use crate::owner::{Owner, Viewer};
use crate::session::SessionId;

/// Tonewall's id for one call (`call_` and 32 hex digits); never the SIP Call-ID, which
/// the API would otherwise have to escape and which names hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CallId(String);

impl CallId {
    pub fn new() -> CallId {
        CallId(format!("call_{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn parse(s: &str) -> Option<CallId> {
        let hex = s.strip_prefix("call_")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| CallId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CallId {
    fn default() -> Self {
        CallId::new()
    }
}

/// How a call came in: transferred to a session's URI, or routed inline (the API shows
/// `"mode": "session"`, or `"mode": "inline"` with the route's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum CallMode {
    Session,
    Inline { route: String },
}

/// A capture asked of an inline call's task, which binds the session and starts it in one
/// step (it owns the call's session binding) and answers on `reply`.
#[derive(Debug)]
pub struct CaptureRequest {
    pub session: SessionId,
    pub fields: Vec<FieldName>,
    pub reply: oneshot::Sender<Result<(), CaptureRefused>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureRefused {
    #[error("a capture is already running on this call")]
    Busy,
    #[error("the session is not waiting for a call")]
    SessionGone,
    #[error("the call has ended")]
    CallEnded,
}

struct Entry {
    mode: CallMode,
    sip_call_id: String,
    /// The user part of the caller's From (a phone number, usually).
    caller: String,
    started_unix_ms: i64,
    answered: bool,
    /// The session capturing on this call, as its task last reported it.
    session: Option<SessionId>,
    commands: mpsc::Sender<Command>,
    captures: mpsc::Sender<CaptureRequest>,
    /// Who may see it and start a capture on it (`crate::owner`).
    owner: Owner,
}

/// One call as the API shows it. `caller` is the whole number only for roles that need it.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub id: CallId,
    #[serde(flatten)]
    pub mode: CallMode,
    /// For admins only: agents have no use for it, and with it could act on the SIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip_call_id: Option<String>,
    pub caller: String,
    pub started_unix_ms: i64,
    pub answered: bool,
    pub session_id: Option<SessionId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallsError {
    #[error("no such call")]
    NotFound,
    #[error("only calls routed inline take a capture through this route")]
    NotInline,
    #[error("the call is not answered yet")]
    NotAnswered,
}

#[derive(Default)]
pub struct Calls {
    entries: Mutex<HashMap<CallId, Entry>>,
}

pub struct NewCall {
    pub mode: CallMode,
    pub sip_call_id: String,
    pub caller: String,
    pub started_unix_ms: i64,
    pub session: Option<SessionId>,
    pub commands: mpsc::Sender<Command>,
    pub captures: mpsc::Sender<CaptureRequest>,
    pub owner: Owner,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Entry>> {
        // Each critical section leaves the map consistent, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: CallId, c: NewCall) {
        let entry = Entry {
            mode: c.mode,
            sip_call_id: c.sip_call_id,
            caller: c.caller,
            started_unix_ms: c.started_unix_ms,
            answered: false,
            session: c.session,
            commands: c.commands,
            captures: c.captures,
            owner: c.owner,
        };
        self.lock().insert(id, entry);
    }

    pub fn remove(&self, id: &CallId) {
        self.lock().remove(id);
    }

    pub fn mark_answered(&self, id: &CallId) {
        if let Some(e) = self.lock().get_mut(id) {
            e.answered = true;
        }
    }

    /// The calls `viewer` may see, oldest first. Admins see whole numbers and SIP Call-IDs;
    /// everyone else the last four digits and no Call-ID.
    pub fn list(&self, viewer: &Viewer) -> Vec<CallView> {
        let mut v: Vec<CallView> = self
            .lock()
            .iter()
            .filter(|(_, e)| viewer.sees(&e.owner))
            .map(|(id, e)| CallView {
                id: id.clone(),
                mode: e.mode.clone(),
                sip_call_id: viewer.admin.then(|| e.sip_call_id.clone()),
                caller: if viewer.admin { e.caller.clone() } else { last_four(&e.caller) },
                started_unix_ms: e.started_unix_ms,
                answered: e.answered,
                session_id: e.session.clone(),
            })
            .collect();
        v.sort_by_key(|c| c.started_unix_ms);
        v
    }

    /// Checks that an inline, answered call `viewer` may see can take a capture; where to ask
    /// its task for one.
    pub fn capture_target(&self, id: &CallId, viewer: &Viewer) -> Result<mpsc::Sender<CaptureRequest>, CallsError> {
        let map = self.lock();
        let e = map.get(id).filter(|e| viewer.sees(&e.owner)).ok_or(CallsError::NotFound)?;
        if e.mode == CallMode::Session {
            return Err(CallsError::NotInline);
        }
        if !e.answered {
            return Err(CallsError::NotAnswered);
        }
        Ok(e.captures.clone())
    }

    /// Every call's command inbox (shutdown hangs them all up).
    pub fn commands(&self) -> Vec<mpsc::Sender<Command>> {
        self.lock().values().map(|e| e.commands.clone()).collect()
    }

    /// The call's task binds `session` to it (before it attaches the session, so a cancel
    /// in between reaches the call), or unbinds it again when attaching failed.
    pub fn set_session(&self, id: &CallId, session: Option<SessionId>) {
        if let Some(e) = self.lock().get_mut(id) {
            e.session = session;
        }
    }

    /// Gives `cmd` to the call bound to `session`, if one is: the one place that knows how to
    /// reach a session's call. A full inbox means the call is busy ending; the session's
    /// state, which the caller changed first, holds either way.
    pub fn tell_session(&self, session: &SessionId, cmd: Command) {
        if let Some(e) = self.lock().values().find(|e| e.session.as_ref() == Some(session)) {
            let _ = e.commands.try_send(cmd);
        }
    }
}

/// `…1234`: enough for an agent to tell its caller from another, not the number.
fn last_four(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    if tail.is_empty() { String::new() } else { format!("…{tail}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_with_or_without_the_whole_number_and_guards_capture() {
        let calls = Calls::default();
        let (tx, _rx) = mpsc::channel(1);
        let (captures, _captures_rx) = mpsc::channel(1);
        let id = CallId::new();
        let new = |mode| NewCall {
            mode,
            sip_call_id: "abc@pbx".into(),
            caller: "+441632960123".into(),
            started_unix_ms: 5,
            session: None,
            commands: tx.clone(),
            captures: captures.clone(),
            owner: Owner::Route { team: None },
        };
        calls.insert(id.clone(), new(CallMode::Inline { route: "sales".into() }));
        let session_call = CallId::new();
        calls.insert(session_call.clone(), new(CallMode::Session));
        let agent = Viewer { id: "key-a".into(), team: None, admin: false };
        let admin = Viewer { admin: true, ..agent.clone() };
        let agent_view = calls.list(&agent);
        assert_eq!(agent_view.len(), 2);
        assert!(agent_view.iter().all(|c| c.caller == "…0123" && c.sip_call_id.is_none()));
        assert_eq!(calls.list(&admin)[0].caller, "+441632960123");
        assert_eq!(calls.list(&admin)[0].sip_call_id.as_deref(), Some("abc@pbx"));
        let json: Vec<serde_json::Value> = agent_view.iter().map(|c| serde_json::to_value(c).unwrap()).collect();
        let inline = json.iter().find(|c| c["id"] == id.as_str()).unwrap();
        assert_eq!((inline["mode"].as_str(), inline["route"].as_str()), (Some("inline"), Some("sales")), "{inline}");
        let session = json.iter().find(|c| c["id"] == session_call.as_str()).unwrap();
        assert_eq!(session["mode"], "session", "{session}");
        assert!(session.get("route").is_none(), "a session call has no route: {session}");
        assert_eq!(calls.capture_target(&id, &agent).err(), Some(CallsError::NotAnswered));
        calls.mark_answered(&id);
        calls.mark_answered(&session_call);
        assert!(calls.capture_target(&id, &agent).is_ok());
        assert_eq!(calls.capture_target(&session_call, &agent).err(), Some(CallsError::NotInline));
        // Another team's call is, to this agent, no call at all.
        let theirs = CallId::new();
        let team = crate::owner::Team::named("support");
        calls.insert(
            theirs.clone(),
            NewCall { owner: Owner::Route { team }, ..new(CallMode::Inline { route: "s".into() }) },
        );
        calls.mark_answered(&theirs);
        assert_eq!(calls.list(&agent).len(), 2);
        assert_eq!(calls.capture_target(&theirs, &agent).err(), Some(CallsError::NotFound));
        assert!(calls.capture_target(&theirs, &admin).is_ok());
        calls.remove(&theirs);
        assert_eq!(calls.commands().len(), 2, "shutdown reaches session and inline calls alike");
        calls.remove(&id);
        assert_eq!(calls.capture_target(&id, &admin).err(), Some(CallsError::NotFound));
        assert_eq!(calls.commands().len(), 1);
        assert_eq!(CallId::parse(id.as_str()), Some(id));
        assert_eq!(CallId::parse("call_xyz"), None);
    }

    #[test]
    fn commands_for_a_session_reach_only_the_call_bound_to_it() {
        let calls = Calls::default();
        let (captures, _captures_rx) = mpsc::channel(1);
        let mut inboxes = Vec::new();
        let ids: Vec<CallId> = (0..2)
            .map(|_| {
                let (commands, rx) = mpsc::channel(4);
                inboxes.push(rx);
                let id = CallId::new();
                let new = NewCall {
                    mode: CallMode::Inline { route: "sales".into() },
                    sip_call_id: "abc@pbx".into(),
                    caller: "1000".into(),
                    started_unix_ms: 5,
                    session: None,
                    commands,
                    captures: captures.clone(),
                    owner: Owner::Route { team: None },
                };
                calls.insert(id.clone(), new);
                id
            })
            .collect();
        let session = SessionId::new();
        calls.tell_session(&session, Command::Cancel);
        assert!(inboxes.iter_mut().all(|rx| rx.try_recv().is_err()), "no call is bound yet");
        calls.set_session(&ids[1], Some(session.clone()));
        calls.tell_session(&session, Command::Cancel);
        assert!(inboxes[0].try_recv().is_err());
        assert!(matches!(inboxes[1].try_recv(), Ok(Command::Cancel)));
        calls.set_session(&ids[1], None);
        calls.tell_session(&session, Command::Cancel);
        assert!(inboxes[1].try_recv().is_err(), "unbound again");
    }
}
