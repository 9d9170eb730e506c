//! Nodes that share one vault database. Each registers a row in `nodes` and renews its lease
//! five times per `storage.node_lease_s`; each also looks for rows whose lease has run out
//! and fails the captures those nodes held (`node_lost`), so a node killed mid-capture leaves
//! no session "capturing" for ever. On PostgreSQL every node listens (`LISTEN`) for the
//! session changes the others make, for their WebSocket subscribers, and for the commands
//! (cancel, restart a field) that the API of another node took for a call it holds here.
//!
//! The lease compares the writer's clock with the reader's: nodes keep NTP time, well inside
//! the lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use tokio::sync::oneshot;

use super::Shared;
use crate::call::Command;
use crate::calls::{CallId, CaptureRefused, CaptureRequest};
use crate::capture::collector::FieldName;
use crate::session::store::{self, COMMAND_CHANNEL, SESSION_CHANNEL};
use crate::session::{NodeId, Notice, SessionError, SessionId, unix_ms};
use crate::vault::audit;

/// A command for a session's call, sent to the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub to: NodeId,
    pub session: SessionId,
    pub command: SessionCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionCommand {
    Cancel,
    RestartField(FieldName),
    /// Start a capture on this inline call for the session (made by the sending node's API,
    /// held by this node, waiting): adopt it and ask the call, or refuse it with the reason.
    StartCapture {
        call: String,
    },
}

/// Sends `command` to the node holding the session. Only PostgreSQL carries it: on SQLite
/// there is one node, and a session held by another one was held by this node's previous
/// life, which the lease will declare lost.
pub async fn forward(
    shared: &Shared,
    to: NodeId,
    session: &SessionId,
    command: SessionCommand,
) -> Result<(), SessionError> {
    if shared.sessions.backend() != crate::vault::store::Backend::Postgres {
        return Err(SessionError::HolderGone);
    }
    let live: Option<(String,)> = sqlx::query_as("SELECT id FROM nodes WHERE id = $1")
        .bind(to.as_str())
        .fetch_optional(shared.sessions.pool())
        .await?;
    if live.is_none() {
        return Err(SessionError::HolderGone);
    }
    let payload = serde_json::to_string(&Forwarded { to, session: session.clone(), command })
        .map_err(|e| SessionError::Store(e.to_string()))?;
    let mut conn = shared.sessions.pool().acquire().await?;
    store::notify(&mut conn, COMMAND_CHANNEL, &payload).await
}

/// Carries out a command another node forwarded, if this node holds the session.
fn execute(shared: &Arc<Shared>, f: Forwarded) {
    if f.to != *shared.sessions.node() {
        return;
    }
    match f.command {
        SessionCommand::Cancel => match shared.sessions.cancel_held(&f.session) {
            Ok(_) => shared.calls.tell_session(&f.session, Command::Cancel),
            Err(e) => tracing::info!(session = f.session.as_str(), error = %e, "forwarded cancel not carried out"),
        },
        SessionCommand::RestartField(field) => shared.calls.tell_session(&f.session, Command::RestartField(field)),
        SessionCommand::StartCapture { call } => {
            tokio::spawn(start_capture(shared.clone(), f.session, call));
        }
    }
}

/// Starts a capture another node's API asked for on an inline call held here. Whatever the
/// outcome, the session leaves `waiting`: `capturing`, or `cancelled` with the refusal's
/// code as its reason, which the asking node is watching for.
async fn start_capture(shared: Arc<Shared>, session: SessionId, call: String) {
    if let Err(e) = shared.sessions.adopt(&session).await {
        tracing::info!(session = session.as_str(), error = %e, "forwarded capture not started");
        return;
    }
    let inbox = CallId::parse(&call).and_then(|id| shared.calls.capture_inbox(&id));
    let refused = match inbox {
        Some(inbox) => {
            let (reply, answer) = oneshot::channel();
            match inbox.send(CaptureRequest { session: session.clone(), reply }).await {
                Ok(()) => answer.await.unwrap_or(Err(CaptureRefused::CallEnded)).err(),
                Err(_) => Some(CaptureRefused::CallEnded),
            }
        }
        None => Some(CaptureRefused::CallEnded),
    };
    if let Some(why) = refused {
        let _ = shared.sessions.refuse_held(&session, why.code(), why.to_string());
    }
}

/// Registers this node (with `api`, where the other nodes reach its API), renews its lease
/// and fails the captures of nodes whose lease ran out, until `stop`; then removes this
/// node's row (its calls have ended by then).
pub async fn keep_lease(shared: Arc<Shared>, api: Option<String>, mut stop: watch::Receiver<bool>) {
    let pool = shared.sessions.pool().clone();
    let me = shared.sessions.node().clone();
    let lease = Duration::from_secs(shared.config.storage.node_lease_s);
    let sip = shared.sip_addr.to_string();
    let register = || store::register_node(&pool, me.as_str(), &sip, api.as_deref(), unix_ms(SystemTime::now()));
    if let Err(e) = register().await {
        tracing::error!(error = %e, "this node could not register its lease");
    }
    let mut tick = tokio::time::interval(lease / 5);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        match store::heartbeat(&pool, me.as_str(), unix_ms(SystemTime::now())).await {
            Ok(true) => {}
            Ok(false) => {
                // Another node found our lease run out (we were paused or cut off) and failed
                // our captures; new calls may still come here.
                tracing::error!("this node's lease had run out; registering again");
                if let Err(e) = register().await {
                    tracing::error!(error = %e, "this node could not register its lease");
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease not renewed"),
        }
        if let Err(e) = fail_lapsed(&shared, lease).await {
            tracing::warn!(error = %e, "looking for lost nodes failed");
        }
    }
    if let Err(e) = store::remove_node(&pool, me.as_str()).await {
        tracing::warn!(error = %e, "this node's lease row not removed");
    }
}

const SYSTEM: crate::vault::Actor<'static> =
    crate::vault::Actor { id: "tonewall", role: crate::vault::ActorRole::System, origin: "local", merchant: None };

/// Fails the captures of every node whose lease ran out, then forgets the node.
async fn fail_lapsed(shared: &Shared, lease: Duration) -> Result<(), SessionError> {
    let pool = shared.sessions.pool();
    let cutoff = unix_ms(SystemTime::now()) - i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    for (id, sip) in store::lapsed_nodes(pool, cutoff).await? {
        let lost = NodeId::from_stored(id);
        if lost == *shared.sessions.node() {
            continue;
        }
        let failed = shared.sessions.fail_lost(&lost).await?;
        for session in &failed {
            shared.metrics.capture(crate::metrics::Capture::NodeLost);
            tracing::warn!(session = session.as_str(), node = lost.as_str(), "capture failed: its node was lost");
            let event =
                audit::Event { detail: lost.as_str(), ..SYSTEM.did("session.node_lost", "failed", session.as_str()) };
            if let Err(e) = shared.vault.audit(&event).await {
                tracing::error!(error = %e, "audit record not written");
            }
        }
        let detail = format!("SIP {sip}, lease {}s, {} captures failed", lease.as_secs(), failed.len());
        let event = audit::Event { detail: &detail, ..SYSTEM.did("node.lost", "removed", lost.as_str()) };
        if let Err(e) = shared.vault.audit(&event).await {
            tracing::error!(error = %e, "audit record not written");
        }
        if let Err(e) = crate::calls::store::remove_node(pool, lost.as_str()).await {
            tracing::warn!(error = %e, "a lost node's calls are still listed");
        }
        store::remove_node(pool, lost.as_str()).await?;
    }
    Ok(())
}

/// On PostgreSQL: the other nodes' session changes and the commands sent here, until `stop`.
/// `PgListener` reconnects by itself; what is sent while it does is lost, so a subscriber
/// may miss a change, never the final one for long: each carries the whole view.
pub async fn listen(shared: Arc<Shared>, url: String, mut stop: watch::Receiver<bool>) {
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes' changes; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        if let Err(e) = listener.listen_all([SESSION_CHANNEL, COMMAND_CHANNEL]).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            continue;
        }
        loop {
            let note = tokio::select! {
                n = listener.recv() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            let note = match note {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the listening connection; reconnecting");
                    break;
                }
            };
            match note.channel() {
                SESSION_CHANNEL => match serde_json::from_str::<Notice>(note.payload()) {
                    Ok(n) => shared.sessions.deliver(n),
                    Err(e) => tracing::warn!(error = %e, "a session notice does not parse"),
                },
                COMMAND_CHANNEL => match serde_json::from_str::<Forwarded>(note.payload()) {
                    Ok(f) => execute(&shared, f),
                    Err(e) => tracing::warn!(error = %e, "a forwarded command does not parse"),
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_as_json_and_back() {
        let f = Forwarded {
            to: NodeId::new(),
            session: SessionId::new(),
            command: SessionCommand::RestartField(FieldName::Expiry),
        };
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains("\"restart_field\":\"expiry\""), "{text}");
        assert_eq!(serde_json::from_str::<Forwarded>(&text).unwrap(), f);
        let start = Forwarded { command: SessionCommand::StartCapture { call: CallId::new().as_str().into() }, ..f };
        let text = serde_json::to_string(&start).unwrap();
        assert_eq!(serde_json::from_str::<Forwarded>(&text).unwrap(), start);
    }
}
