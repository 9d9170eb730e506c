//! IO drivers: the SIP transports and endpoint, one task per call, the HTTP API server, and
//! the wiring that starts and stops them together.

mod call_task;
pub mod cluster;
mod endpoint;
pub mod http;
pub mod peer;
pub mod ports;
pub mod prompts;
mod shared;
mod slots;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::call::Command;
use crate::calls::Calls;
use crate::config::Config;
use crate::session::{NodeId, Sessions};
use crate::vault::{Vault, VaultError, VaultOptions, audit, webhook};
use ports::PortPool;
pub use shared::Shared;
use shared::{Registries, SipIo};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen for SIP on {addr}: {why}")]
    SipBind { addr: SocketAddr, why: String },
    #[error("cannot listen for HTTP on {addr}: {why}")]
    HttpBind { addr: SocketAddr, why: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Prompts(#[from] prompts::PromptError),
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    #[error(transparent)]
    Oidc(#[from] crate::accounts::oidc::OidcError),
    #[error("sip.routes: route {route} names merchant {merchant}, which does not exist (tonewall merchant create)")]
    NoMerchant { route: String, merchant: String },
    #[error(transparent)]
    Merchant(#[from] crate::merchant::MerchantError),
}

/// How long a session without a call stays visible to the API.
const SESSION_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A running tonewall: SIP endpoint, call tasks and HTTP API.
pub struct Server {
    /// UDP, and TCP on the same address when `sip.tcp` is on.
    pub sip_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let vault = Arc::new(Vault::open(VaultOptions::from_config(&config)).await?);
        for route in &config.sip.routes {
            if crate::merchant::get(vault.pool(), &route.merchant()).await?.is_none() {
                return Err(ServerError::NoMerchant { route: route.name.clone(), merchant: route.merchant.clone() });
            }
        }
        let prompts = Arc::new(prompts::PromptLibrary::open(vault.pool().clone()).await?);
        let pusher = crate::push::Pusher::from_config(&config.push, &config.storage.data_dir)?.map(Arc::new);
        let sip_listen = config.sip.listen;
        let (sip, tcp) = bind_sip(sip_listen, config.sip.tcp).await?;
        let sip_addr = sip.local_addr().map_err(|e| ServerError::SipBind { addr: sip_listen, why: e.to_string() })?;
        let sip_bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| ServerError::SipBind { addr, why: e.to_string() })
        };
        let tls = match config.tls_listen_addr() {
            Ok(Some(addr)) => {
                let (cert, key) = config.tls_files();
                let acceptor = tls::tls_acceptor(&cert, &key, &[], None)?;
                Some((sip_bind(addr).await?, acceptor))
            }
            _ => None,
        };
        let tls_addr = match &tls {
            Some((l, _)) => {
                Some(l.local_addr().map_err(|e| ServerError::SipBind { addr: sip_addr, why: e.to_string() })?)
            }
            None => None,
        };
        let https = match config.http.tls {
            true => {
                let (cert, key) = config.http_tls_files();
                let client_ca = Some(config.http.client_ca.as_path()).filter(|p| !p.as_os_str().is_empty());
                Some(tls::tls_acceptor(&cert, &key, &[b"h2", b"http/1.1"], client_ca)?)
            }
            false => None,
        };
        let http_listen = config.http.listen;
        let http = TcpListener::bind(http_listen)
            .await
            .map_err(|e| ServerError::HttpBind { addr: http_listen, why: e.to_string() })?;
        let http_addr =
            http.local_addr().map_err(|e| ServerError::HttpBind { addr: http_listen, why: e.to_string() })?;
        let sip_host =
            if config.sip.public_host.is_empty() { sip_addr.to_string() } else { config.sip.public_host.clone() };
        let ports = PortPool::new(sip_addr.ip(), config.media.rtp_port_min, config.media.rtp_port_max);
        let node = NodeId::new();
        let calls = Arc::new(Calls::new(vault.pool().clone(), node.clone()));
        let sessions = Arc::new(Sessions::new(vault.pool().clone(), vault.backend(), node));
        let tls_ca = Some(config.sip.tls_ca.as_path()).filter(|p| !p.as_os_str().is_empty());
        let tls_connector = tls::tls_connector(tls_ca)?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            config,
            Registries { sessions: sessions.clone(), calls: calls.clone(), vault: vault.clone(), pusher },
            prompts,
            SipIo { sip, sip_addr, tls_addr, ports, tls_connector, stop: stop_rx.clone() },
        ));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(endpoint::run(shared.clone(), stop_rx.clone())));
        let advertised = match (&shared.config.http.advertise, shared.config.http.tls) {
            (url, _) if !url.is_empty() => Some(url.clone()),
            _ if http_addr.ip().is_unspecified() => {
                tracing::warn!(
                    "http.listen is a wildcard address and http.advertise is empty: other nodes cannot ask this node for the security codes it holds"
                );
                None
            }
            (_, true) => Some(format!("https://{http_addr}")),
            (_, false) => Some(format!("http://{http_addr}")),
        };
        tasks.push(tokio::spawn(cluster::keep_lease(shared.clone(), advertised, stop_rx.clone())));
        if shared.vault.backend() == crate::vault::store::Backend::Postgres {
            let url = shared.config.storage.database_url.clone();
            tasks.push(tokio::spawn(cluster::listen(shared.clone(), url, stop_rx.clone())));
        }
        if let Some(l) = tcp {
            tasks.push(tokio::spawn(transport::listen(shared.clone(), l, None, stop_rx.clone())));
        }
        if let Some((l, acceptor)) = tls {
            tasks.push(tokio::spawn(transport::listen(shared.clone(), l, Some(acceptor), stop_rx.clone())));
        }
        let limits = Arc::new(api::cards::Limits::new(
            shared.config.vault.detokenize_per_minute,
            shared.config.vault.bulk_alarm_per_hour,
        ));
        let data_dir = shared.config.storage.data_dir.clone();
        let allowed_targets = Arc::new(shared.config.sip.allowed_targets.clone());
        let auth_failures = Arc::new(api::auth_failures::AuthFailures::default());
        let missing_credentials = Arc::new(api::auth_failures::AuthFailures::default());
        let web_sessions = Arc::new(crate::accounts::web_sessions::WebSessions::new(
            Duration::from_secs(shared.config.accounts.idle_timeout_s),
            Duration::from_secs(shared.config.accounts.max_session_s),
        ));
        let oidc = match shared.config.oidc.enabled() {
            true => Some(Arc::new(crate::accounts::oidc::Oidc::new(&shared.config.oidc)?)),
            false => None,
        };
        let state = AppState {
            sessions,
            calls,
            vault: vault.clone(),
            sip_host,
            limits,
            data_dir,
            allowed_targets,
            auth_failures: auth_failures.clone(),
            missing_credentials: missing_credentials.clone(),
            frame_ancestors: shared.config.http.frame_ancestors.join(" ").into(),
            embed_ttl: Duration::from_secs(shared.config.http.embed_ttl_s),
            capture_defaults: shared.config.capture_defaults(),
            url_key: Arc::new(rand::random()),
            web_sessions: web_sessions.clone(),
            session_max: Duration::from_secs(shared.config.accounts.max_session_s),
            agent_totp: shared.config.accounts.agent_totp,
            oidc,
            node: shared.clone(),
        };
        let app = api::router(state);
        let http_limits = http::Limits {
            header_timeout: Duration::from_secs(shared.config.http.header_timeout_s),
            connections: slots::SlotLimits {
                total: shared.config.http.max_connections,
                per_address: shared.config.http.max_connections_per_address,
            },
        };
        tasks.push(tokio::spawn(http::serve(http, https, app, http_limits, stop_rx.clone())));
        let mut purge_stop = stop_rx.clone();
        let sessions = shared.sessions.clone();
        let purge_vault = vault.clone();
        let purge_web = web_sessions.clone();
        let prompts = shared.prompts.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = purge_stop.wait_for(|s| *s) => true,
                };
                let now = std::time::Instant::now();
                // At shutdown, every window counts as ended: no failure goes unaudited.
                let ended_by = if stopping { now + Duration::from_secs(60) } else { now };
                api::audit_auth_failures(&purge_vault, &auth_failures, api::Failures::WrongCredential, ended_by).await;
                api::audit_auth_failures(&purge_vault, &missing_credentials, api::Failures::NoCredential, ended_by)
                    .await;
                if stopping {
                    return;
                }
                purge_vault.purge_security_codes(now);
                if let Err(e) = sessions.forget_older_than(SESSION_RETENTION, now).await {
                    tracing::warn!(error = %e, "old sessions not forgotten");
                }
                purge_web.purge(now);
                // Recordings an admin uploaded through another node.
                match prompts.refresh().await {
                    Ok(true) => tracing::info!("uploaded prompts changed; new calls play them"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "uploaded prompts not refreshed"),
                }
            }
        }));
        // PCI DSS 10.2.1.6: the audit trail shows when tonewall, and so its logging, started.
        let listening = format!("SIP {sip_addr}, HTTP {http_addr}, production {}", shared.config.vault.production);
        let event =
            audit::Event { detail: &listening, ..SYSTEM.did("service.start", "started", env!("CARGO_PKG_VERSION")) };
        if let Err(e) = vault.audit(&event).await {
            tracing::error!(error = %e, "audit record not written");
        }
        let checkpoint_every = Duration::from_secs(shared.config.audit.checkpoint_interval_s);
        tasks.push(tokio::spawn(vault_upkeep(vault, checkpoint_every, stop_rx)));
        tracing::info!(sip = %sip_addr, tls = ?tls_addr, http = %http_addr, "tonewall listening");
        Ok(Server { sip_addr, tls_addr, http_addr, shared, stop, tasks })
    }

    /// Drains: from now on OPTIONS probes and new calls get 503 with Retry-After (RFC 3261
    /// §21.5.4), so a proxy in front sends new calls to other nodes, and the API refuses new
    /// sessions. Calls in progress go on until they end, `timeout` passes or `cut_short`
    /// resolves (a second signal); then the rest are hung up and tonewall stops.
    pub async fn drain(self, timeout: Duration, cut_short: impl std::future::Future<Output = ()>) {
        let retry_after_s = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
        self.shared.drain(retry_after_s);
        let calls = self.shared.active_calls();
        let detail = format!("{calls} calls in progress, up to {}s for them to end", timeout.as_secs());
        let event =
            audit::Event { detail: &detail, ..SYSTEM.did("service.drain", "started", env!("CARGO_PKG_VERSION")) };
        if let Err(e) = self.shared.vault.audit(&event).await {
            tracing::error!(error = %e, "audit record not written");
        }
        tracing::info!(calls, timeout_s = timeout.as_secs(), "draining: new calls refused");
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::pin!(cut_short);
        while self.shared.active_calls() > 0 {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut cut_short => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        tracing::info!(left = self.shared.active_calls(), "drained: hanging up the calls still up");
        self.shutdown(Duration::from_secs(5)).await;
    }

    /// Hangs up every call (BYE), waits up to `grace` for them to end, then stops.
    pub async fn shutdown(self, grace: Duration) {
        for call in self.shared.calls.commands() {
            let _ = call.send(Command::Hangup).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.shared.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The views the calls left are in the database before the node goes.
        self.shared.sessions.flush().await;
        let left = format!("{} calls still up after the grace period", self.shared.active_calls());
        let event = audit::Event { detail: &left, ..SYSTEM.did("service.stop", "stopped", env!("CARGO_PKG_VERSION")) };
        if let Err(e) = self.shared.vault.audit(&event).await {
            tracing::error!(error = %e, "audit record not written");
        }
        if let Err(e) = self.shared.vault.checkpoint().await {
            tracing::error!(error = %e, "audit checkpoint not written");
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

const SYSTEM: crate::vault::Actor<'static> =
    crate::vault::Actor { id: "tonewall", role: crate::vault::ActorRole::System, origin: "local", merchant: None };

/// The SIP UDP socket and, with `tcp`, a TCP listener on the same port. With port 0 the OS
/// picks the UDP port, which may be taken for TCP (by an outgoing connection, say): then
/// another is tried, a bounded number of times.
async fn bind_sip(listen: SocketAddr, tcp: bool) -> Result<(UdpSocket, Option<TcpListener>), ServerError> {
    let fail = |why: String| ServerError::SipBind { addr: listen, why };
    let attempts = if listen.port() == 0 { 50 } else { 1 };
    let mut last = String::new();
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen).await.map_err(|e| fail(e.to_string()))?;
        if !tcp {
            return Ok((udp, None));
        }
        let addr = udp.local_addr().map_err(|e| fail(e.to_string()))?;
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok((udp, Some(l))),
            Err(e) => last = format!("TCP on {addr}: {e}"),
        }
    }
    Err(fail(last))
}

/// What the vault's upkeep does on a tick.
enum Upkeep {
    Tick,
    Checkpoint,
    DestroyRetiredKeys,
}

/// A retired data key is destroyed this long after its successor arrived (and only once no
/// record is sealed under it): longer than any call holds the key it started with.
pub const RETIRED_KEY_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The vault's background work, every second: keys another process made, records still under
/// older keys (re-encrypted and re-fingerprinted in batches beside traffic), expired tokens, due webhooks; and
/// every `checkpoint_every`, the audit chain's head anchored outside the database; hourly,
/// retired data keys nothing needs destroyed.
async fn vault_upkeep(vault: Arc<Vault>, checkpoint_every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut anchor = tokio::time::interval(checkpoint_every);
    let mut destroy = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let work = tokio::select! {
            _ = tick.tick() => Upkeep::Tick,
            _ = anchor.tick() => Upkeep::Checkpoint,
            _ = destroy.tick() => Upkeep::DestroyRetiredKeys,
            _ = stop.wait_for(|s| *s) => return,
        };
        match work {
            Upkeep::Tick => {}
            Upkeep::Checkpoint => {
                if let Err(e) = vault.checkpoint().await {
                    tracing::error!(error = %e, "audit checkpoint not written");
                }
                continue;
            }
            Upkeep::DestroyRetiredKeys => {
                match vault.destroy_retired_keys(RETIRED_KEY_GRACE).await {
                    Ok(ids) if !ids.is_empty() => tracing::info!(?ids, "retired data keys destroyed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "destroying retired data keys failed"),
                }
                continue;
            }
        }
        if let Err(e) = vault.keys().refresh(vault.pool()).await {
            tracing::warn!(error = %e, "key ring refresh failed");
        }
        match vault.reencrypt(500).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "re-encrypted under the newest data key"),
            Err(e) => tracing::warn!(error = %e, "re-encryption failed"),
        }
        match vault.refingerprint(500).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(cards = n, "re-fingerprinted under the newest fingerprint key"),
            Err(e) => tracing::warn!(error = %e, "re-fingerprinting failed"),
        }
        if let Err(e) = vault.purge_expired_tokens().await {
            tracing::warn!(error = %e, "expired-token purge failed");
        }
        if let Err(e) = webhook::deliver_due(vault.pool(), vault.webhook(), vault.webhook_retry_base()).await {
            tracing::warn!(error = %e, "webhook delivery pass failed");
        }
    }
}
