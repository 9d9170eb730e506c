//! What every driver task shares: the configuration, the registries the API reads, the
//! vault, the SIP socket and connections, and the sans-IO endpoint. Calls themselves are not
//! in here: each is owned by its task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;

use super::ports::PortPool;
use super::prompts::PromptLibrary;
use crate::call::LegId;
use crate::calls::Calls;
use crate::config::Config;
use crate::endpoint::{Admitting, Endpoint, EndpointConfig, InlineRoute};
use crate::push::Pusher;
use crate::session::Sessions;
use crate::sip::message::SipMessage;
use crate::sip::stream::{ConnectionId, Flow};
use crate::vault::Vault;

/// A SIP message for a call's task, and the flow that answers it.
pub struct Inbound {
    pub leg: LegId,
    /// Boxed: a call's inbox reserves room for 64 messages at a time, and a SipMessage is
    /// ten times the size of its box.
    pub msg: Box<SipMessage>,
    pub from: Flow,
}

/// How the endpoint reaches a call: its task's SIP inbox.
pub type CallInbox = mpsc::Sender<Inbound>;

/// State every driver task shares. Calls themselves are not in here: each is owned by its task.
pub struct Shared {
    pub config: Config,
    pub sessions: Arc<Sessions>,
    pub calls: Arc<Calls>,
    pub vault: Arc<Vault>,
    /// Pushes each stored card to the processor's gateway, when `[push]` names one.
    pub pusher: Option<Arc<Pusher>>,
    /// What calls count as they happen (`/metrics`).
    pub metrics: crate::metrics::CallMetrics,
    /// The recordings calls play, uploads included.
    pub prompts: Arc<PromptLibrary>,
    pub(super) sip: Arc<UdpSocket>,
    pub(super) sip_addr: SocketAddr,
    /// The SIP over TLS listener, if there is one.
    pub(super) tls_addr: Option<SocketAddr>,
    pub(super) ports: PortPool,
    /// Routing, admission, rate limits and stateless answers (sans-IO; held only while it
    /// decides, never across an await).
    endpoint: Mutex<Endpoint<CallInbox>>,
    /// The writers of open TCP and TLS connections.
    connections: Mutex<HashMap<ConnectionId, mpsc::Sender<Vec<u8>>>>,
    next_connection: AtomicU64,
    /// For SIP over TLS to agents and inline targets (`sip.tls_ca`).
    tls_connector: TlsConnector,
    /// Turns true when the server stops: connections opened later watch it too.
    stop: watch::Receiver<bool>,
}

/// Locks a mutex whose every critical section leaves its data consistent, so that a
/// poisoned one is still good to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registries the API reads too.
pub(super) struct Registries {
    pub sessions: Arc<Sessions>,
    pub calls: Arc<Calls>,
    pub vault: Arc<Vault>,
    pub pusher: Option<Arc<Pusher>>,
}

/// The SIP sockets and what outbound connections need.
pub(super) struct SipIo {
    pub sip: UdpSocket,
    pub sip_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub ports: PortPool,
    pub tls_connector: TlsConnector,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub(super) fn new(config: Config, registries: Registries, prompts: Arc<PromptLibrary>, io: SipIo) -> Shared {
        let SipIo { sip, sip_addr, tls_addr, ports, tls_connector, stop } = io;
        let endpoint = Endpoint::new(EndpointConfig {
            rate_per_source: config.sip.rate_per_source,
            inline_routes: config
                .sip
                .routes
                .iter()
                .map(|r| InlineRoute { user_prefix: r.user_prefix.clone(), sources: r.sources.clone() })
                .collect(),
            trusted_peers: config.sip.trusted_peers.clone(),
        });
        let Registries { sessions, calls, vault, pusher } = registries;
        Shared {
            config,
            sessions,
            calls,
            vault,
            pusher,
            metrics: crate::metrics::CallMetrics::default(),
            prompts,
            sip: Arc::new(sip),
            sip_addr,
            tls_addr,
            ports,
            endpoint: Mutex::new(endpoint),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            tls_connector,
            stop,
        }
    }

    pub(super) fn tls_connector(&self) -> &TlsConnector {
        &self.tls_connector
    }

    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    pub(super) fn endpoint(&self) -> MutexGuard<'_, Endpoint<CallInbox>> {
        lock(&self.endpoint)
    }

    pub fn active_calls(&self) -> usize {
        self.endpoint().active_calls()
    }

    /// Readiness: a call could get its two RTP ports now (they are bound and let go).
    pub async fn rtp_ports_free(&self) -> bool {
        self.ports.bind_pair().await.is_some()
    }

    /// What `/metrics` reads from the owners of each state.
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let (draining, refused, active_calls) = {
            let ep = self.endpoint();
            (ep.admitting() != Admitting::Open, ep.refusals(), ep.active_calls())
        };
        let counts = self.sessions.count_by_state().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "session counts unreadable for /metrics");
            Default::default()
        });
        let mut sessions: Vec<(&'static str, usize)> =
            counts.into_iter().map(|(state, n)| (state.as_str(), n)).collect();
        sessions.sort_unstable();
        let (webhook_queue, oldest) = match crate::vault::webhook::queue(self.vault.pool()).await {
            Ok((n, oldest)) => (usize::try_from(n).unwrap_or(0), oldest),
            Err(e) => {
                tracing::warn!(error = %e, "webhook queue unreadable for /metrics");
                (0, None)
            }
        };
        let webhook_oldest_s = oldest.map_or(0, |at| (crate::vault::unix_now() - at).max(0));
        crate::metrics::Snapshot { draining, active_calls, sessions, refused, webhook_queue, webhook_oldest_s }
    }

    /// Stops taking new calls (SIP 503, and the API refuses new sessions); calls in
    /// progress go on. The endpoint owns the fact: `admitting` reads it.
    pub fn drain(&self, retry_after_s: u32) {
        self.endpoint().drain(retry_after_s);
    }

    pub fn admitting(&self) -> Admitting {
        self.endpoint().admitting()
    }

    /// Sends on a flow. A stream whose queue is full or closed loses the message, as UDP
    /// would; the transaction layer retransmits or times out.
    pub(super) fn send(&self, flow: &Flow, bytes: &[u8]) {
        let Some(id) = flow.connection else {
            if let Err(e) = self.sip.try_send_to(bytes, flow.remote) {
                tracing::warn!(to = %flow.remote, error = %e, "SIP send failed");
            }
            return;
        };
        let conn = lock(&self.connections).get(&id).cloned();
        if conn.is_none_or(|c| c.try_send(bytes.to_vec()).is_err()) {
            tracing::warn!(to = %flow.remote, "SIP connection closed or full; message dropped");
        }
    }

    pub(super) fn open_connection(&self, writer: mpsc::Sender<Vec<u8>>) -> ConnectionId {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        lock(&self.connections).insert(id, writer);
        id
    }

    pub(super) fn close_connection(&self, id: ConnectionId) {
        lock(&self.connections).remove(&id);
    }
}
