//! The calls in progress, under tonewall's own call id: what `GET /v1/calls` lists, and how
//! `POST /v1/calls/{id}/capture` reaches an inline call to start a capture on it. Each node
//! keeps its own calls' inboxes in memory and writes the calls behind them to the shared
//! database (`store`), which the listing reads: any node lists every node's calls, and
//! finds the node that holds one.

pub mod store;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use crate::call::Command;
use crate::owner::{Owner, Viewer};
use crate::session::{NodeId, SessionId};

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

/// A capture asked of an inline call's task, which binds the session and starts what its
/// plan asks in one step (it owns the call's session binding) and answers on `reply`.
#[derive(Debug)]
pub struct CaptureRequest {
    pub session: SessionId,
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

impl CaptureRefused {
    /// The code a refused session's view carries (`reason`), which another node's API maps
    /// back to its answer.
    pub fn code(&self) -> &'static str {
        match self {
            CaptureRefused::Busy => "busy",
            CaptureRefused::SessionGone => "session_gone",
            CaptureRefused::CallEnded => "call_ended",
        }
    }

    pub fn from_code(code: &str) -> Option<CaptureRefused> {
        [CaptureRefused::Busy, CaptureRefused::SessionGone, CaptureRefused::CallEnded]
            .into_iter()
            .find(|r| r.code() == code)
    }
}

/// Where to ask for a capture on a call.
#[derive(Debug)]
pub enum CaptureAt {
    /// This node's call: its task's capture inbox.
    Here(mpsc::Sender<CaptureRequest>),
    /// Another node's call.
    Node(NodeId),
}

/// What this node keeps of its own call; the rest of what the listing shows is in the
/// database only.
struct Entry {
    mode: CallMode,
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
    #[error("the call store is unavailable: {0}")]
    Store(String),
}

pub struct Calls {
    node: NodeId,
    pool: AnyPool,
    /// This node's calls.
    entries: Mutex<HashMap<CallId, Entry>>,
    writes: mpsc::UnboundedSender<store::Write>,
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
    /// The registry of node `node`, on the vault's database; starts the task that writes
    /// this node's calls behind them (in a Tokio runtime).
    pub fn new(pool: AnyPool, node: NodeId) -> Calls {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(store::write_behind(pool.clone(), node.as_str().to_string(), rx));
        Calls { node, pool, entries: Mutex::default(), writes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Entry>> {
        // Each critical section leaves the map consistent, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: CallId, c: NewCall) {
        let owner = c.owner.to_stored();
        let (mode, route) = match &c.mode {
            CallMode::Session => ("session", None),
            CallMode::Inline { route } => ("inline", Some(route.clone())),
        };
        let row = store::Row {
            id: id.as_str().to_string(),
            node: self.node.as_str().to_string(),
            mode: mode.to_string(),
            route,
            sip_call_id: c.sip_call_id,
            caller: c.caller,
            started_ms: c.started_unix_ms,
            answered: 0,
            session_id: c.session.as_ref().map(|s| s.as_str().to_string()),
            merchant: owner.merchant,
            owner_kind: owner.kind.to_string(),
            owner_id: owner.id,
            owner_team: owner.team,
        };
        let _ = self.writes.send(store::Write::Insert(Box::new(row)));
        let entry = Entry {
            mode: c.mode,
            answered: false,
            session: c.session,
            commands: c.commands,
            captures: c.captures,
            owner: c.owner,
        };
        self.lock().insert(id, entry);
    }

    pub fn remove(&self, id: &CallId) {
        if self.lock().remove(id).is_some() {
            let _ = self.writes.send(store::Write::Remove(id.as_str().to_string()));
        }
    }

    /// The merchant a call of this node belongs to (`crate::merchant`).
    pub fn merchant_of(&self, id: &CallId) -> Option<crate::merchant::MerchantId> {
        self.lock().get(id).map(|e| e.owner.merchant.clone())
    }

    pub fn mark_answered(&self, id: &CallId) {
        if let Some(e) = self.lock().get_mut(id) {
            e.answered = true;
            let _ = self.writes.send(store::Write::Answered(id.as_str().to_string()));
        }
    }

    /// The calls `viewer` may see on every node, oldest first. Admins see whole numbers and
    /// SIP Call-IDs; everyone else the last four digits and no Call-ID.
    pub async fn list(&self, viewer: &Viewer) -> Result<Vec<CallView>, CallsError> {
        let rows = store::all(&self.pool).await?;
        Ok(rows
            .iter()
            .filter(|r| viewer.sees(&owner_of(r)))
            .filter_map(|r| {
                Some(CallView {
                    id: CallId::parse(&r.id)?,
                    mode: mode_of(r),
                    sip_call_id: viewer.admin.then(|| r.sip_call_id.clone()),
                    caller: if viewer.admin { r.caller.clone() } else { last_four(&r.caller) },
                    started_unix_ms: r.started_ms,
                    answered: r.answered != 0,
                    session_id: r.session_id.as_deref().and_then(SessionId::parse),
                })
            })
            .collect())
    }

    /// Checks that an inline, answered call `viewer` may see can take a capture; where to ask
    /// for one: this node's call task, or the node that holds the call.
    pub async fn capture_target(&self, id: &CallId, viewer: &Viewer) -> Result<CaptureAt, CallsError> {
        let here = self.lock().get(id).map(|e| (e.owner.clone(), e.mode.clone(), e.answered, e.captures.clone()));
        let (owner, mode, answered, at) = match here {
            Some((owner, mode, answered, captures)) => (owner, mode, answered, CaptureAt::Here(captures)),
            None => {
                let row = store::load(&self.pool, id.as_str()).await?.ok_or(CallsError::NotFound)?;
                let at = CaptureAt::Node(NodeId::from_stored(row.node.clone()));
                (owner_of(&row), mode_of(&row), row.answered != 0, at)
            }
        };
        if !viewer.sees(&owner) {
            return Err(CallsError::NotFound);
        }
        if mode == CallMode::Session {
            return Err(CallsError::NotInline);
        }
        if !answered {
            return Err(CallsError::NotAnswered);
        }
        Ok(at)
    }

    /// This node's call's capture inbox, for a capture another node's API asked for (it
    /// checked who may).
    pub fn capture_inbox(&self, id: &CallId) -> Option<mpsc::Sender<CaptureRequest>> {
        self.lock().get(id).map(|e| e.captures.clone())
    }

    /// Every call's command inbox (shutdown hangs them all up).
    pub fn commands(&self) -> Vec<mpsc::Sender<Command>> {
        self.lock().values().map(|e| e.commands.clone()).collect()
    }

    /// The call's task binds `session` to it (before it attaches the session, so a cancel
    /// in between reaches the call), or unbinds it again when attaching failed.
    pub fn set_session(&self, id: &CallId, session: Option<SessionId>) {
        if let Some(e) = self.lock().get_mut(id) {
            let stored = session.as_ref().map(|s| s.as_str().to_string());
            let _ = self.writes.send(store::Write::Session(id.as_str().to_string(), stored));
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

fn owner_of(r: &store::Row) -> Owner {
    Owner::from_stored(r.merchant.clone(), &r.owner_kind, r.owner_id.as_deref(), r.owner_team.as_deref())
}

fn mode_of(r: &store::Row) -> CallMode {
    match (r.mode.as_str(), &r.route) {
        ("inline", Some(route)) => CallMode::Inline { route: route.clone() },
        ("inline", None) => CallMode::Inline { route: String::new() },
        _ => CallMode::Session,
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
    use crate::merchant::MerchantId;
    use crate::owner::{OwnedBy, Team};
    use crate::vault::testing::TestDatabase;

    fn route_owner(team: Option<Team>) -> Owner {
        Owner { merchant: MerchantId::default_merchant(), by: OwnedBy::Route { team } }
    }

    /// Two nodes' registries on one vault database.
    async fn two_nodes(db: &TestDatabase, dir: &std::path::Path) -> (crate::vault::Vault, Calls, Calls) {
        let vault = crate::vault::Vault::open(db.options(dir)).await.unwrap();
        let a = Calls::new(vault.pool().clone(), NodeId::new());
        let b = Calls::new(vault.pool().clone(), NodeId::new());
        (vault, a, b)
    }

    /// Waits until `calls`' changes so far are in the database: its writer runs behind.
    async fn written(calls: &Calls, want: usize) {
        let admin = Viewer { id: "admin".into(), merchant: MerchantId::default_merchant(), team: None, admin: true };
        for _ in 0..200 {
            if calls.list(&admin).await.unwrap().len() == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the listing never reached {want} calls");
    }

    #[tokio::test]
    async fn every_node_lists_every_call_and_finds_its_holder() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let (_vault, a, b) = two_nodes(&db, dir.path()).await;
            let (tx, _rx) = mpsc::channel(1);
            let (captures, _captures_rx) = mpsc::channel(1);
            let new = |mode| NewCall {
                mode,
                sip_call_id: "abc@pbx".into(),
                caller: "+441632960123".into(),
                started_unix_ms: 5,
                session: None,
                commands: tx.clone(),
                captures: captures.clone(),
                owner: route_owner(None),
            };
            let id = CallId::new();
            a.insert(id.clone(), new(CallMode::Inline { route: "sales".into() }));
            let session_call = CallId::new();
            a.insert(session_call.clone(), new(CallMode::Session));
            written(&b, 2).await;
            let agent =
                Viewer { id: "key-a".into(), merchant: MerchantId::default_merchant(), team: None, admin: false };
            let admin = Viewer { admin: true, ..agent.clone() };
            let agent_view = b.list(&agent).await.unwrap();
            assert_eq!(agent_view.len(), 2, "node B lists node A's calls");
            assert!(agent_view.iter().all(|c| c.caller == "…0123" && c.sip_call_id.is_none()));
            let admin_view = b.list(&admin).await.unwrap();
            assert_eq!(admin_view[0].caller, "+441632960123");
            assert_eq!(admin_view[0].sip_call_id.as_deref(), Some("abc@pbx"));
            let json: Vec<serde_json::Value> = agent_view.iter().map(|c| serde_json::to_value(c).unwrap()).collect();
            let inline = json.iter().find(|c| c["id"] == id.as_str()).unwrap();
            assert_eq!(
                (inline["mode"].as_str(), inline["route"].as_str()),
                (Some("inline"), Some("sales")),
                "{inline}"
            );
            let session = json.iter().find(|c| c["id"] == session_call.as_str()).unwrap();
            assert_eq!(session["mode"], "session", "{session}");
            assert!(session.get("route").is_none(), "a session call has no route: {session}");

            // A capture: refused until answered, on either node; then asked of A's task on A,
            // and sent to node A from B.
            assert_eq!(a.capture_target(&id, &agent).await.err(), Some(CallsError::NotAnswered));
            assert_eq!(b.capture_target(&id, &agent).await.err(), Some(CallsError::NotAnswered));
            a.mark_answered(&id);
            a.mark_answered(&session_call);
            let bound = SessionId::new();
            a.set_session(&session_call, Some(bound.clone()));
            a.remove(&CallId::new()); // not a call: nothing written
            for _ in 0..200 {
                let rows = store::all(&a.pool).await.unwrap();
                if rows.iter().all(|r| r.answered == 1) && rows.iter().any(|r| r.session_id.is_some()) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(matches!(a.capture_target(&id, &agent).await, Ok(CaptureAt::Here(_))));
            assert!(matches!(b.capture_target(&id, &agent).await, Ok(CaptureAt::Node(n)) if n == a.node));
            assert_eq!(b.capture_target(&session_call, &agent).await.err(), Some(CallsError::NotInline));
            let listed = b.list(&agent).await.unwrap();
            let bound_call = listed.iter().find(|c| c.id == session_call).unwrap();
            assert_eq!(bound_call.session_id.as_ref(), Some(&bound));
            assert!(a.capture_inbox(&id).is_some() && b.capture_inbox(&id).is_none());

            // Another team's call is, to this agent, no call at all, on either node.
            let theirs = CallId::new();
            let team = crate::owner::Team::named("support");
            a.insert(
                theirs.clone(),
                NewCall { owner: route_owner(team), ..new(CallMode::Inline { route: "s".into() }) },
            );
            a.mark_answered(&theirs);
            written(&b, 3).await;
            assert_eq!(b.list(&agent).await.unwrap().len(), 2);
            assert_eq!(b.capture_target(&theirs, &agent).await.err(), Some(CallsError::NotFound));
            assert!(b.capture_target(&theirs, &admin).await.is_ok());
            a.remove(&theirs);
            written(&b, 2).await;
            assert_eq!(a.commands().len(), 2, "shutdown reaches session and inline calls alike");

            // Node A is lost: its rows go with it.
            assert_eq!(store::remove_node(&b.pool, a.node.as_str()).await.unwrap(), 2);
            assert_eq!(b.capture_target(&id, &admin).await.err(), Some(CallsError::NotFound));
            assert_eq!(CallId::parse(id.as_str()), Some(id));
            assert_eq!(CallId::parse("call_xyz"), None);
        }
    }

    #[tokio::test]
    async fn commands_for_a_session_reach_only_the_call_bound_to_it() {
        let db = TestDatabase::sqlite();
        let dir = tempfile::tempdir().unwrap();
        let (_vault, calls, _) = two_nodes(&db, dir.path()).await;
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
                    owner: route_owner(None),
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

    #[test]
    fn refusals_travel_as_codes() {
        for r in [CaptureRefused::Busy, CaptureRefused::SessionGone, CaptureRefused::CallEnded] {
            assert_eq!(CaptureRefused::from_code(r.code()), Some(r));
        }
        assert_eq!(CaptureRefused::from_code("node_lost"), None);
    }
}
