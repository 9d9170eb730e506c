//! IO drivers: the SIP transports and endpoint, one task per call, the HTTP API server, and
//! the wiring that starts and stops them together.

mod call_task;
mod endpoint;
pub mod ports;
pub mod prompts;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::call::{Command, LegId, Prompts};
use crate::calls::Calls;
use crate::capture::card::YearMonth;
use crate::config::Config;
use crate::session::Sessions;
use crate::sip::message::SipMessage;
use crate::sip::rate_limit::SourceLimiter;
use crate::vault::{Vault, VaultError, VaultOptions, webhook};
use ports::PortPool;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen for SIP on {addr}: {why}")]
    SipBind { addr: SocketAddr, why: String },
    #[error("cannot listen for HTTP on {addr}: {why}")]
    HttpBind { addr: SocketAddr, why: String },
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Prompts(#[from] prompts::PromptError),
}

/// How long a session without a call stays visible to the API.
const SESSION_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A SIP message for a call's task; `flow` only with an INVITE that takes over the caller's
/// dialog (Replaces), whose caller may be somewhere new.
pub struct Inbound {
    pub leg: LegId,
    /// Boxed: a call's inbox reserves room for 32 messages at a time, and a SipMessage is
    /// ten times the size of its box.
    pub msg: Box<SipMessage>,
    pub flow: Option<transport::Flow>,
}

/// Where a SIP message for a known Call-ID goes.
#[derive(Clone)]
struct Route {
    leg: LegId,
    inbox: mpsc::Sender<Inbound>,
}

/// State every driver task shares. Calls themselves are not in here: each is owned by its task.
pub struct Shared {
    pub config: Config,
    pub sessions: Arc<Sessions>,
    pub calls: Arc<Calls>,
    pub vault: Arc<Vault>,
    prompts: Arc<Prompts>,
    sip: Arc<UdpSocket>,
    sip_addr: SocketAddr,
    ports: PortPool,
    routes: Mutex<HashMap<String, Route>>,
    limiter: Mutex<SourceLimiter>,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn route(&self, call_id: &str) -> Option<Route> {
        self.routes().get(call_id).cloned()
    }

    /// Messages for `call_id` now belong to `leg` of the same call.
    fn reroute(&self, call_id: &str, leg: LegId) {
        if let Some(r) = self.routes().get_mut(call_id) {
            r.leg = leg;
        }
    }

    fn unroute(&self, call_ids: &[&str]) {
        let mut r = self.routes();
        for id in call_ids {
            r.remove(*id);
        }
    }

    /// Per-source rate limit for new out-of-dialog requests.
    fn allow_source(&self, ip: std::net::IpAddr) -> bool {
        // Each critical section leaves the buckets consistent.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).allow(ip, std::time::Instant::now())
    }

    pub fn active_calls(&self) -> usize {
        self.routes().values().filter(|r| r.leg == LegId::Caller).count()
    }

    fn send_sip(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(e) = self.sip.try_send_to(bytes, to) {
            tracing::warn!(%to, error = %e, "SIP send failed");
        }
    }
}

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
        let prompts = Arc::new(prompts::english()?);
        let sip_listen = config.sip.listen;
        let (sip, tcp) = bind_sip(sip_listen, config.sip.tcp).await?;
        let sip_addr = sip.local_addr().map_err(|e| ServerError::SipBind { addr: sip_listen, why: e.to_string() })?;
        let sip_bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| ServerError::SipBind { addr, why: e.to_string() })
        };
        let tls = match config.tls_listen_addr() {
            Ok(Some(addr)) => {
                let (cert, key) = config.tls_files();
                let acceptor = transport::tls_acceptor(&cert, &key)?;
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
        let http_listen = config.http.listen;
        let http = TcpListener::bind(http_listen)
            .await
            .map_err(|e| ServerError::HttpBind { addr: http_listen, why: e.to_string() })?;
        let http_addr =
            http.local_addr().map_err(|e| ServerError::HttpBind { addr: http_listen, why: e.to_string() })?;
        let sip_host =
            if config.sip.public_host.is_empty() { sip_addr.to_string() } else { config.sip.public_host.clone() };
        let ports = PortPool::new(sip_addr.ip(), config.media.rtp_port_min, config.media.rtp_port_max);
        let sessions = Arc::new(Sessions::default());
        let calls = Arc::new(Calls::default());
        let config_rate = config.sip.rate_per_source;
        let shared = Arc::new(Shared {
            config,
            sessions: sessions.clone(),
            calls: calls.clone(),
            vault: vault.clone(),
            prompts,
            sip: Arc::new(sip),
            sip_addr,
            ports,
            routes: Mutex::new(HashMap::new()),
            limiter: Mutex::new(SourceLimiter::new(config_rate)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(endpoint::run(shared.clone(), stop_rx.clone())));
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
        let max_attempts = shared.config.capture.max_attempts;
        let state = AppState { sessions, calls, vault: vault.clone(), sip_host, limits, data_dir, max_attempts };
        let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let mut http_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = http_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(http, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        let mut purge_stop = stop_rx.clone();
        let sessions = shared.sessions.clone();
        let purge_vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = std::time::Instant::now();
                        purge_vault.purge_security_codes(now);
                        sessions.forget_older_than(SESSION_RETENTION, now);
                    }
                    _ = purge_stop.wait_for(|s| *s) => return,
                }
            }
        }));
        tasks.push(tokio::spawn(vault_upkeep(vault, stop_rx)));
        tracing::info!(sip = %sip_addr, tls = ?tls_addr, http = %http_addr, "tonewall listening");
        Ok(Server { sip_addr, tls_addr, http_addr, shared, stop, tasks })
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
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

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

/// The vault's background work, every second: keys another process made, records still under
/// older keys (re-encrypted in batches beside traffic), expired tokens, due webhooks.
async fn vault_upkeep(vault: Arc<Vault>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = vault.keys().refresh(vault.pool()).await {
            tracing::warn!(error = %e, "key ring refresh failed");
        }
        match vault.reencrypt(500).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "re-encrypted under the newest data key"),
            Err(e) => tracing::warn!(error = %e, "re-encryption failed"),
        }
        if let Err(e) = vault.purge_expired_tokens().await {
            tracing::warn!(error = %e, "expired-token purge failed");
        }
        if let Some(hook) = vault.webhook()
            && let Err(e) = webhook::deliver_due(vault.pool(), hook).await
        {
            tracing::warn!(error = %e, "webhook delivery pass failed");
        }
    }
}

/// The current month in UTC, for expiry checks (days-from-civil inverse, H. Hinnant).
pub fn current_month() -> YearMonth {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    month_of_day(days)
}

fn month_of_day(days_since_epoch: i64) -> YearMonth {
    let (year, month, _) = civil_from_days(days_since_epoch);
    YearMonth { year: year as u16, month }
}

/// (year, month, day) of a day counted from 1970-01-01 (H. Hinnant's civil_from_days).
pub fn civil_from_days(days_since_epoch: i64) -> (i64, u8, u8) {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_months() {
        assert_eq!(month_of_day(0), YearMonth { year: 1970, month: 1 });
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(month_of_day(20_454), YearMonth { year: 2026, month: 1 }); // 2026-01-01
        assert_eq!(month_of_day(20_453), YearMonth { year: 2025, month: 12 });
        assert_eq!(month_of_day(11_016), YearMonth { year: 2000, month: 2 }); // 2000-02-29
    }
}
