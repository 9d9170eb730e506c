//! The API's listener: plain HTTP, or HTTPS (rustls on ring, TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`), HTTP/1.1 and HTTP/2 with WebSocket upgrades. A client must finish each
//! request head within `header_timeout` (RFC 9112 §9.5 lets a server close a connection
//! that stalls: the slowloris defence), and connections are capped overall and per address,
//! so a few stalled clients cannot hold every slot.

use std::net::SocketAddr;
use std::sync::Arc;
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

use crate::api::auth::{ClientCert, cert_fingerprint};

use super::slots::{PerAddress, SlotLimits, Slots};

/// How long a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long open requests (WebSockets, say) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub connections: SlotLimits,
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
    let slots = Slots::new(limits.connections);
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
        let Some(slot) = slots.take(remote.ip(), PerAddress::Capped) else {
            tracing::info!(from = %remote, "HTTP connection refused: too many open");
            continue; // dropping the stream closes it
        };
        let (app, tls, builder, watcher) = (app.clone(), tls.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tls {
                None => serve_one(&builder, watcher, stream, service(app, remote, None)).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let cert =
                            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| cert_fingerprint(c));
                        serve_one(&builder, watcher, stream, service(app, remote, cert)).await
                    }
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

/// The app, each request told who sent it (`ConnectInfo<SocketAddr>`) and with which client
/// certificate, if any (`ClientCert`, checked against `http.client_ca` in the handshake).
fn service(
    app: Router,
    remote: SocketAddr,
    cert: Option<ClientCert>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        app.clone().oneshot(req)
    })
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
