//! The API's listener: plain HTTP, or HTTPS (rustls on ring, TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`), HTTP/1.1 and HTTP/2 with WebSocket upgrades. A client must finish each
//! request head within `header_timeout` (RFC 9112 §9.5 lets a server close a connection
//! that stalls: the slowloris defence), and connections are capped overall and per address,
//! so a few stalled clients cannot hold every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::sip::rate_limit::source_key;

/// How long a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long open requests (WebSockets, say) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
}

/// Open connections, overall and per address; a slot is freed when its guard drops.
#[derive(Default)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    /// A slot for a connection from `ip`; an IPv6 /64 counts as one address, as it does for
    /// the SIP rate limit and the failed-authentication throttle.
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
        let ip = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        let here = per.entry(ip).or_default();
        if *total >= limits.max_connections || *here >= limits.max_per_address {
            return None;
        }
        *here += 1;
        *total += 1;
        Some(Slot { slots: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `stop`, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Slots::default());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let (stream, remote) = match accepted {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                // Out of file descriptors, say: keep serving the connections we have.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(remote.ip(), &limits) else {
            tracing::info!(from = %remote, "HTTP connection refused: too many open");
            continue; // dropping the stream closes it
        };
        let (app, tls, builder, watcher) = (app.clone(), tls.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            // Each request learns who sent it (the API's `ConnectInfo<SocketAddr>`).
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(req)
            });
            let result = match tls {
                None => serve_one(&builder, watcher, stream, service).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_one(&builder, watcher, stream, service).await,
                    Ok(Err(e)) => return tracing::debug!(from = %remote, error = %e, "HTTPS handshake failed"),
                    Err(_) => return tracing::debug!(from = %remote, "HTTPS handshake timed out"),
                },
            };
            if let Err(e) = result {
                tracing::debug!(from = %remote, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::info!("HTTP connections still open at shutdown were cut");
    }
}

async fn serve_one<S, IO>(
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: IO,
    service: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    watcher.watch(conn.into_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_overall_and_per_address_and_freed_on_drop() {
        let slots = Arc::new(Slots::default());
        let limits = Limits { header_timeout: Duration::from_secs(1), max_connections: 3, max_per_address: 2 };
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = slots.take(a, &limits).unwrap();
        let _second = slots.take(a, &limits).unwrap();
        assert!(slots.take(a, &limits).is_none(), "two per address");
        let _third = slots.take(b, &limits).unwrap();
        assert!(slots.take(b, &limits).is_none(), "three in all");
        drop(first);
        assert!(slots.take(b, &limits).is_some(), "a dropped connection frees its slot");
        let slots = Arc::new(Slots::default());
        let _one = slots.take("2001:db8:1:2::1".parse().unwrap(), &limits).unwrap();
        let _two = slots.take("2001:db8:1:2::2".parse().unwrap(), &limits).unwrap();
        assert!(slots.take("2001:db8:1:2::3".parse().unwrap(), &limits).is_none(), "one /64 is one address");
        assert!(slots.take("2001:db8:1:3::1".parse().unwrap(), &limits).is_some());
    }
}
