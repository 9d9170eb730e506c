//! Payment sessions: what an agent creates, a transferred call fills in, and the API and
//! WebSocket show. Views carry masked progress only (dots and at most the last four digits).
//!
//! A session lives in the vault's database (`store`), so every node sharing the vault answers
//! for it. The node whose call claimed it holds it in memory too and is its only writer: each
//! change goes to that node's subscribers at once and to the database behind it (one
//! transaction per batch), and on PostgreSQL to the other nodes' subscribers by `NOTIFY` sent
//! in the same transaction. Sessions no call holds (waiting, or ended) are read from the
//! database.

pub mod store;
mod view;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::call::{AfterCapture, CallEvent, EndReason};
use crate::capture::collector::FieldName;
use crate::capture::plan::CapturePlan;
use crate::capture::progress;
pub use crate::capture::progress::{FieldProgress, FieldState};
use crate::owner::Owner;
use crate::vault::TokenRecord;
use crate::vault::store::Backend;
pub use view::{
    AfterCaptureKind, Change, MAX_SUBSCRIBERS, NodeId, SessionError, SessionId, SessionState, SessionUpdate,
    SessionView,
};

/// What the holding node keeps of a session whose call it has.
struct Entry {
    view: SessionView,
    agent_uri: Option<String>,
    after_capture: AfterCapture,
    /// Who may see and change it (`crate::owner`).
    owner: Owner,
    /// A call is bound and has not ended yet: the entry outlives `forget_older_than`. How
    /// to reach that call is the calls registry's fact (`Calls::tell_session`).
    call_live: bool,
    created: Instant,
}

/// How embed tokens begin (API keys begin `twk_`).
pub const EMBED_PREFIX: &str = "twe_";

fn embed_hash(token: &str) -> String {
    use sha2::Digest as _;
    crate::vault::crypto::hex(&sha2::Sha256::digest(token.as_bytes()))
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a session is made of when the API creates it.
#[derive(Debug)]
pub struct NewSession {
    pub plan: CapturePlan,
    pub reference: String,
    pub agent_uri: Option<String>,
    pub after_capture: AfterCapture,
    pub owner: Owner,
}

/// Which node's call holds a session from its creation on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody yet: the first INVITE for its URI claims it.
    Nobody,
    /// An inline call on this node.
    Here,
    /// An inline call on that node, which adopts the session when told to start the capture.
    Node(NodeId),
}

/// Where a command for a session was carried out, or must go.
#[derive(Debug)]
pub enum Reach {
    /// Here: the session as it is now (the caller tells this node's call, if any).
    Here(Box<SessionView>),
    /// Another node's call holds the session: the command goes to it.
    HeldBy(NodeId),
}

/// A change the holder has made, on its way to the database (and the other nodes).
enum Pending {
    View { id: SessionId, state: SessionState, view: String },
    Notice(String),
    Flush(oneshot::Sender<()>),
}

/// What another node learns of a change, by `NOTIFY`.
#[derive(Serialize, Deserialize)]
pub struct Notice {
    pub origin: NodeId,
    pub update: SessionUpdate,
}

pub struct Sessions {
    node: NodeId,
    pool: AnyPool,
    backend: Backend,
    /// Sessions whose calls this node holds.
    held: Mutex<HashMap<SessionId, Entry>>,
    /// Subscribers on this node, per session, whoever holds it.
    hubs: Mutex<HashMap<SessionId, broadcast::Sender<SessionUpdate>>>,
    writes: mpsc::UnboundedSender<Pending>,
}

/// What a call needs from its session when it arrives.
#[derive(Debug)]
pub struct Attached {
    pub plan: CapturePlan,
    pub agent_uri: Option<String>,
    pub after_capture: AfterCapture,
}

/// The session's plan; a session stored before plans were asked for card fields only.
fn plan_of(view: &SessionView) -> CapturePlan {
    view.capture.clone().unwrap_or_else(|| {
        CapturePlan::card(view.fields.iter().map(|f| f.name).filter(|f| *f != FieldName::Confirm).collect())
    })
}

/// Locks a mutex whose every critical section leaves its data consistent, so that a
/// poisoned one is still good to use.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// The registry of node `node`, on the vault's database; starts the task that writes
    /// this node's changes behind it (in a Tokio runtime).
    pub fn new(pool: AnyPool, backend: Backend, node: NodeId) -> Sessions {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_behind(pool.clone(), node.clone(), rx));
        Sessions { node, pool, backend, held: Mutex::default(), hubs: Mutex::default(), writes }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stores a new session, held by `holder` from the start (an inline call's capture: no
    /// INVITE can claim it) or by nobody until a call claims it.
    pub async fn create(&self, new: NewSession, sip_host: &str, holder: Holder) -> Result<SessionView, SessionError> {
        let NewSession { plan, reference, agent_uri, after_capture, owner } = new;
        let id = SessionId::new();
        let view = SessionView {
            transfer_uri: format!("sip:{}@{sip_host}", id.sip_user()),
            id: id.clone(),
            state: SessionState::Waiting,
            reference,
            agent_connected: false,
            after_capture: kind_of(&after_capture),
            on_hold: false,
            transferred: false,
            fields: plan.steps().into_iter().map(|name| FieldProgress::pending(name, 0)).collect(),
            capture: Some(plan),
            result: None,
            push: None,
            error: None,
            reason: None,
        };
        let stored = owner.to_stored();
        let (after, transfer_target) = match &after_capture {
            AfterCapture::Bridge => ("bridge", None),
            AfterCapture::Transfer(uri) => ("transfer", Some(uri.clone())),
            AfterCapture::Hangup => ("hangup", None),
        };
        let now = SystemTime::now();
        let row = store::Row {
            id: id.as_str().to_string(),
            state: SessionState::Waiting.as_str().to_string(),
            node: match &holder {
                Holder::Nobody => None,
                Holder::Here => Some(self.node.as_str().to_string()),
                Holder::Node(n) => Some(n.as_str().to_string()),
            },
            merchant: stored.merchant,
            owner_kind: stored.kind.into(),
            owner_id: stored.id,
            owner_team: stored.team,
            agent_uri: agent_uri.clone(),
            after_capture: after.into(),
            transfer_target,
            view: to_json(&view),
            created_ms: unix_ms(now),
        };
        store::insert(&self.pool, &row, unix_ms(now)).await?;
        if holder == Holder::Here {
            let entry = Entry {
                view: view.clone(),
                agent_uri,
                after_capture,
                owner,
                call_live: false,
                created: Instant::now(),
            };
            lock(&self.held).insert(id, entry);
        }
        Ok(view)
    }

    /// A new embed token for the session, good until `until` for this session alone (view,
    /// events, cancel, field restart); it replaces any earlier one. Only its hash is kept.
    pub async fn embed_token(&self, id: &SessionId, until: SystemTime) -> Result<Option<String>, SessionError> {
        let token = format!("{EMBED_PREFIX}{}", crate::vault::token::random_base62(40));
        let stored = store::set_embed(&self.pool, id.as_str(), &embed_hash(&token), unix_ms(until)).await?;
        Ok(stored.then_some(token))
    }

    /// The session an embed token opens, while it has not expired.
    pub async fn embedded(&self, token: &str, now: SystemTime) -> Result<Option<SessionId>, SessionError> {
        if token.len() > 64 {
            return Ok(None);
        }
        let found = store::embedded(&self.pool, &embed_hash(token), unix_ms(now)).await?;
        Ok(found.and_then(|id| SessionId::parse(&id)))
    }

    /// Whose the session is, if it exists.
    pub async fn owner(&self, id: &SessionId) -> Result<Option<Owner>, SessionError> {
        if let Some(e) = lock(&self.held).get(id) {
            return Ok(Some(e.owner.clone()));
        }
        Ok(store::load(&self.pool, id.as_str()).await?.map(|row| owner_of(&row)))
    }

    /// How many sessions (kept for `SESSION_RETENTION`, on every node) are in each state.
    pub async fn count_by_state(&self) -> Result<HashMap<SessionState, usize>, SessionError> {
        let rows = store::count_by_state(&self.pool).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| Some((SessionState::parse(&state)?, usize::try_from(n).unwrap_or(0))))
            .collect())
    }

    /// The view of a session this node's call holds (the call's task reads it).
    pub fn held_view(&self, id: &SessionId) -> Option<SessionView> {
        lock(&self.held).get(id).map(|e| e.view.clone())
    }

    pub async fn view(&self, id: &SessionId) -> Result<Option<SessionView>, SessionError> {
        if let Some(e) = lock(&self.held).get(id) {
            return Ok(Some(e.view.clone()));
        }
        match store::load(&self.pool, id.as_str()).await? {
            Some(row) => Ok(Some(from_json(&row.view)?)),
            None => Ok(None),
        }
    }

    /// The view and its changes from now on, whichever node holds the call; at most
    /// `MAX_SUBSCRIBERS` at once on this node, so one client cannot make every change be
    /// serialized and sent a thousand times.
    pub async fn subscribe(
        &self,
        id: &SessionId,
    ) -> Result<(SessionView, broadcast::Receiver<SessionUpdate>), SessionError> {
        // Subscribed before the view is read, so no change falls between the two.
        let rx = {
            let mut hubs = lock(&self.hubs);
            let hub = hubs.entry(id.clone()).or_insert_with(|| broadcast::channel(32).0);
            if hub.receiver_count() >= MAX_SUBSCRIBERS {
                return Err(SessionError::TooManySubscribers);
            }
            hub.subscribe()
        };
        match self.view(id).await? {
            Some(view) => Ok((view, rx)),
            None => Err(SessionError::NotFound),
        }
    }

    /// Claims a waiting session for a call that reached this node: one conditional UPDATE,
    /// so of two INVITEs for one session, on any nodes, exactly one gets it.
    pub async fn claim(&self, id: &SessionId, max_attempts: u8) -> Result<Attached, SessionError> {
        let row = store::load(&self.pool, id.as_str()).await?.ok_or(SessionError::NotFound)?;
        let mut view: SessionView = from_json(&row.view)?;
        if view.state != SessionState::Waiting || row.node.is_some() {
            return Err(SessionError::NotWaiting(view.state));
        }
        let plan = plan_of(&view);
        view.state = SessionState::Capturing;
        // How the collector the call is about to start will report it.
        view.fields = progress::initial(&plan.steps(), max_attempts);
        if !store::claim(&self.pool, id.as_str(), self.node.as_str(), &to_json(&view), unix_ms(SystemTime::now()))
            .await?
        {
            return Err(SessionError::NotWaiting(SessionState::Capturing));
        }
        let after_capture = after_capture_of(&row);
        let entry = Entry {
            view,
            agent_uri: row.agent_uri.clone(),
            after_capture: after_capture.clone(),
            owner: owner_of(&row),
            call_live: true,
            created: Instant::now(),
        };
        self.publish(id, &entry.view, Change::CallStarted);
        lock(&self.held).insert(id.clone(), entry);
        Ok(Attached { plan, agent_uri: row.agent_uri, after_capture })
    }

    /// Binds an inline call's capture to the session made for it here (`create` with
    /// `held_here`).
    pub fn attach(&self, id: &SessionId, max_attempts: u8) -> Result<Attached, SessionError> {
        let mut held = lock(&self.held);
        let e = held.get_mut(id).ok_or(SessionError::NotFound)?;
        if e.view.state != SessionState::Waiting {
            return Err(SessionError::NotWaiting(e.view.state));
        }
        e.call_live = true;
        e.view.state = SessionState::Capturing;
        let plan = plan_of(&e.view);
        e.view.fields = progress::initial(&plan.steps(), max_attempts);
        self.publish(id, &e.view, Change::CallStarted);
        Ok(Attached { plan, agent_uri: e.agent_uri.clone(), after_capture: e.after_capture.clone() })
    }

    /// Cancels a session: here if this node holds it or nobody does; else says who does.
    pub async fn cancel(&self, id: &SessionId) -> Result<Reach, SessionError> {
        // Twice at most: a call may claim the session between the read and the update.
        for _ in 0..2 {
            if lock(&self.held).contains_key(id) {
                return self.cancel_held(id).map(|v| Reach::Here(Box::new(v)));
            }
            let row = store::load(&self.pool, id.as_str()).await?.ok_or(SessionError::NotFound)?;
            let mut view: SessionView = from_json(&row.view)?;
            if view.state.is_final() {
                return Err(SessionError::Final(view.state));
            }
            if let Some(node) = row.node {
                return Ok(Reach::HeldBy(NodeId::from_stored(node)));
            }
            view.state = SessionState::Cancelled;
            if store::cancel_waiting(&self.pool, id.as_str(), &to_json(&view), unix_ms(SystemTime::now())).await? {
                self.announce(&view, Change::Cancelled);
                return Ok(Reach::Here(Box::new(view)));
            }
        }
        Err(SessionError::Store("the session changed twice while it was being cancelled".into()))
    }

    /// Takes into this node's memory a session another node's API made for an inline call
    /// held here (`Holder::Node`), so that the call's task can attach it.
    pub async fn adopt(&self, id: &SessionId) -> Result<(), SessionError> {
        let row = store::load(&self.pool, id.as_str()).await?.ok_or(SessionError::NotFound)?;
        let view: SessionView = from_json(&row.view)?;
        if row.node.as_deref() != Some(self.node.as_str()) || view.state != SessionState::Waiting {
            return Err(SessionError::NotWaiting(view.state));
        }
        let entry = Entry {
            view,
            agent_uri: row.agent_uri.clone(),
            after_capture: after_capture_of(&row),
            owner: owner_of(&row),
            call_live: false,
            created: Instant::now(),
        };
        lock(&self.held).insert(id.clone(), entry);
        Ok(())
    }

    /// Cancels a session made for a capture its call refused, saying why (`reason` is the
    /// code the API maps back to a status).
    pub fn refuse_held(&self, id: &SessionId, reason: &'static str, why: String) -> Result<SessionView, SessionError> {
        self.end_held(id, Some((reason, why)))
    }

    /// Cancels a session this node's call holds; the caller tells the call to stop.
    pub fn cancel_held(&self, id: &SessionId) -> Result<SessionView, SessionError> {
        self.end_held(id, None)
    }

    fn end_held(&self, id: &SessionId, refused: Option<(&'static str, String)>) -> Result<SessionView, SessionError> {
        let mut held = lock(&self.held);
        let e = held.get_mut(id).ok_or(SessionError::NotFound)?;
        if e.view.state.is_final() {
            return Err(SessionError::Final(e.view.state));
        }
        e.view.state = SessionState::Cancelled;
        if let Some((reason, why)) = refused {
            e.view.error = Some(why);
            e.view.reason = Some(reason.to_string());
        }
        self.publish(id, &e.view, Change::Cancelled);
        Ok(e.view.clone())
    }

    /// Checks that the agent may ask the caller again for `field` (and the fields after it),
    /// and says where the call is that must be told.
    pub async fn restart_field(&self, id: &SessionId, field: FieldName) -> Result<Reach, SessionError> {
        let (view, holder) = match lock(&self.held).get(id) {
            Some(e) => (Some(e.view.clone()), None),
            None => (None, None::<String>),
        };
        let (view, holder) = match view {
            Some(v) => (v, holder),
            None => {
                let row = store::load(&self.pool, id.as_str()).await?.ok_or(SessionError::NotFound)?;
                (from_json::<SessionView>(&row.view)?, row.node)
            }
        };
        if view.state != SessionState::Capturing {
            return Err(SessionError::NotCapturing(view.state));
        }
        let f = view.fields.iter().find(|f| f.name == field).ok_or(SessionError::FieldNotRequested)?;
        if f.state == FieldState::Pending {
            return Err(SessionError::FieldNotReached);
        }
        Ok(match holder {
            Some(node) if node != self.node.as_str() => Reach::HeldBy(NodeId::from_stored(node)),
            _ => Reach::Here(Box::new(view)),
        })
    }

    /// Applies what a call reported. Card data never passes here: only counts and masks.
    pub fn apply(&self, id: &SessionId, event: &CallEvent) {
        let mut held = lock(&self.held);
        let Some(e) = held.get_mut(id) else { return };
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
            CallEvent::PaymentCaptured(_) => Change::Tokenizing,
            CallEvent::CallerReplaced { .. } => Change::CallerReplaced,
            CallEvent::Completed => return,
            CallEvent::CaptureFailed { reason } => {
                if e.view.state.is_final() {
                    return;
                }
                e.view.state = SessionState::Failed;
                e.view.error = Some(reason.to_string());
                e.view.reason = Some(reason.code().to_string());
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
                    e.view.reason = Some("call_ended".into());
                }
                Change::CallEnded
            }
        };
        self.publish(id, &e.view, name);
    }

    pub fn complete(&self, id: &SessionId, result: TokenRecord) {
        let mut held = lock(&self.held);
        let Some(e) = held.get_mut(id) else { return };
        if e.view.state == SessionState::Capturing {
            e.view.state = SessionState::Completed;
            e.view.result = Some(result);
            e.view.error = None;
            self.publish(id, &e.view, Change::Completed);
        }
    }

    /// Records how the push of a completed session's card stands.
    pub fn set_push(&self, id: &SessionId, push: crate::push::PushView) {
        let mut held = lock(&self.held);
        let Some(e) = held.get_mut(id) else { return };
        if e.view.state == SessionState::Completed {
            e.view.push = Some(push);
            self.publish(id, &e.view, Change::Push);
        }
    }

    /// Fails the captures a lost node held, unless another node did first; returns the
    /// sessions this node failed.
    pub async fn fail_lost(&self, lost: &NodeId) -> Result<Vec<SessionId>, SessionError> {
        let mut failed = Vec::new();
        for row in store::capturing_on(&self.pool, lost.as_str()).await? {
            let mut view: SessionView = from_json(&row.view)?;
            view.state = SessionState::Failed;
            view.agent_connected = false;
            view.error = Some("the node holding the call stopped answering".into());
            view.reason = Some("node_lost".into());
            if store::fail_lost(&self.pool, &row.id, lost.as_str(), &to_json(&view), unix_ms(SystemTime::now())).await?
            {
                self.announce(&view, Change::NodeLost);
                failed.push(view.id);
            }
        }
        Ok(failed)
    }

    /// A change another node made, as its `NOTIFY` told it.
    pub fn deliver(&self, notice: Notice) {
        if notice.origin == self.node {
            return;
        }
        if let Some(hub) = lock(&self.hubs).get(&notice.update.session.id) {
            let _ = hub.send(notice.update);
        }
    }

    /// Forgets, in memory, held sessions older than `age` whose calls have ended, and hubs
    /// nobody listens to; in the database, sessions older than `age` that no call holds.
    pub async fn forget_older_than(&self, age: Duration, now: Instant) -> Result<u64, SessionError> {
        lock(&self.held).retain(|_, e| e.call_live || now.saturating_duration_since(e.created) < age);
        lock(&self.hubs).retain(|_, hub| hub.receiver_count() > 0);
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
        store::forget_before(&self.pool, unix_ms(cutoff)).await
    }

    /// Returns once every change made so far is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Pending::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// A held session changed: its subscribers here hear it now; the database and the
    /// other nodes right behind.
    fn publish(&self, id: &SessionId, view: &SessionView, event: Change) {
        let update = SessionUpdate { event, session: view.clone() };
        let _ = self.writes.send(Pending::View { id: id.clone(), state: view.state, view: to_json(view) });
        self.send_notice(&update);
        if let Some(hub) = lock(&self.hubs).get(id) {
            let _ = hub.send(update);
        }
    }

    /// A change already stored (a cancelled waiting session, a lost node's capture): only
    /// subscribers need to hear it.
    fn announce(&self, view: &SessionView, event: Change) {
        let update = SessionUpdate { event, session: view.clone() };
        self.send_notice(&update);
        if let Some(hub) = lock(&self.hubs).get(&view.id) {
            let _ = hub.send(update);
        }
    }

    fn send_notice(&self, update: &SessionUpdate) {
        if self.backend == Backend::Postgres {
            let notice = Notice { origin: self.node.clone(), update: update.clone() };
            let _ = self.writes.send(Pending::Notice(to_json(&notice)));
        }
    }
}

fn kind_of(after: &AfterCapture) -> AfterCaptureKind {
    match after {
        AfterCapture::Bridge => AfterCaptureKind::Bridge,
        AfterCapture::Transfer(_) => AfterCaptureKind::Transfer,
        AfterCapture::Hangup => AfterCaptureKind::Hangup,
    }
}

fn owner_of(row: &store::Row) -> Owner {
    Owner::from_stored(row.merchant.clone(), &row.owner_kind, row.owner_id.as_deref(), row.owner_team.as_deref())
}

fn after_capture_of(row: &store::Row) -> AfterCapture {
    match (row.after_capture.as_str(), &row.transfer_target) {
        ("bridge", _) => AfterCapture::Bridge,
        ("transfer", Some(uri)) => AfterCapture::Transfer(uri.clone()),
        _ => AfterCapture::Hangup,
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings, numbers and enums: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SessionError> {
    serde_json::from_str(text).map_err(|e| SessionError::Store(format!("a stored session view does not parse: {e}")))
}

/// Writes the holder's changes behind it: whatever has queued up goes in one transaction,
/// each session's latest view once, then the notices in order.
async fn write_behind(pool: AnyPool, node: NodeId, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(batch) = crate::write_behind::next_batch(&mut rx).await {
        let mut writes: Vec<store::ViewWrite> = Vec::new();
        let mut notices = Vec::new();
        let mut flushed = Vec::new();
        for p in batch {
            match p {
                Pending::View { id, state, view } => {
                    writes.retain(|w| w.id != id.as_str());
                    writes.push(store::ViewWrite { id: id.as_str().to_string(), state: state.as_str(), view });
                }
                Pending::Notice(n) => notices.push(n),
                Pending::Flush(tx) => flushed.push(tx),
            }
        }
        if !writes.is_empty() || !notices.is_empty() {
            write_batch(&pool, &node, &writes, &notices).await;
        }
        for tx in flushed {
            let _ = tx.send(());
        }
    }
}

/// A database that cannot be written is retried for a while; each later write carries the
/// whole view, so a batch given up leaves the row behind, not wrong.
async fn write_batch(pool: &AnyPool, node: &NodeId, writes: &[store::ViewWrite], notices: &[String]) {
    let write = || store::write_views(pool, node.as_str(), writes, notices, unix_ms(SystemTime::now()));
    match crate::write_behind::with_retries(write).await {
        Ok(lost) => {
            for id in lost {
                tracing::warn!(
                    session = id,
                    "session no longer held by this node (its lease ran out): change not stored"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, sessions = writes.len(), "session changes not stored"),
    }
}

#[cfg(test)]
mod tests;
