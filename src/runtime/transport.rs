//! SIP transports (RFC 3261 §18): the UDP socket, TCP and TLS listeners and one task per
//! stream connection. Every message, whatever it came on, reaches `endpoint::receive` with
//! the `Flow` that answers it: responses and in-dialog requests to a caller go back on the
//! connection its INVITE came on, named by a `ConnectionId` whose writer `Shared` keeps. TLS
//! is `super::tls`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::endpoint;
use super::shared::Shared;
use super::slots::{PerAddress, Slot, SlotLimits, Slots};
use crate::sip::message::{self, MessageError};
use crate::sip::stream::{Decoder, Flow, Transport};

/// Messages queued for one connection before further ones are dropped (the peer is stuck).
const CONNECTION_QUEUE: usize = 256;
/// How long a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Accepts TCP (or, with `tls`, TLS) connections until `stop`, at most
/// `sip.max_connections` at once and `sip.max_connections_per_address` from one address
/// (`sip.trusted_peers` excepted: a PBX carries many callers).
pub async fn listen(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let sip = &shared.config.sip;
    let slots = Slots::new(SlotLimits { total: sip.max_connections, per_address: sip.max_connections_per_address });
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "SIP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let trusted = shared.config.sip.trusted_peers.iter().any(|n| n.contains(&remote.ip()));
        let Some(slot) = slots.take(remote.ip(), if trusted { PerAddress::Exempt } else { PerAddress::Capped }) else {
            tracing::warn!(%remote, "SIP connection refused: sip.max_connections or its per-address share reached");
            continue; // dropping the socket closes it
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            spawn_connection(&shared, tcp, Transport::Tcp, remote, stop.clone(), Some(slot));
            continue;
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        // The handshake in its own task: a slow client holds up no one else.
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    spawn_connection(&shared, stream, Transport::Tls, remote, stop, Some(slot));
                }
                Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

#[derive(Debug, Error)]
pub enum DialError {
    #[error("connecting to {0} failed or timed out")]
    Connect(SocketAddr),
    #[error("`{0}` is not a name a TLS certificate can carry")]
    ServerName(String),
    #[error("TLS with {to} failed: {why}")]
    Handshake { to: SocketAddr, why: String },
}

/// Opens a TCP or TLS connection to an agent or inline target at `to` (TLS checks that the
/// certificate names `host`), and serves it as any connection: its messages reach the
/// endpoint, its flow reaches it. An outbound connection holds no listener slot.
pub async fn dial(shared: &Arc<Shared>, to: SocketAddr, transport: Transport, host: &str) -> Result<Flow, DialError> {
    let tcp = match tokio::time::timeout(HANDSHAKE_LIMIT, tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(tcp)) => tcp,
        _ => return Err(DialError::Connect(to)),
    };
    let _ = tcp.set_nodelay(true);
    let stop = shared.stopping();
    match transport {
        Transport::Tls => {
            let name = ServerName::try_from(host.to_string()).map_err(|_| DialError::ServerName(host.into()))?;
            let handshake = shared.tls_connector().connect(name, tcp);
            match tokio::time::timeout(HANDSHAKE_LIMIT, handshake).await {
                Ok(Ok(stream)) => Ok(spawn_connection(shared, stream, Transport::Tls, to, stop, None)),
                Ok(Err(e)) => Err(DialError::Handshake { to, why: e.to_string() }),
                Err(_) => Err(DialError::Handshake { to, why: "timed out".into() }),
            }
        }
        _ => Ok(spawn_connection(shared, tcp, Transport::Tcp, to, stop, None)),
    }
}

/// Registers a connection and serves it in its own task until it closes; returns the flow
/// that reaches it. `slot` is its place under the listener's caps, freed when it closes.
fn spawn_connection<S>(
    shared: &Arc<Shared>,
    stream: S,
    transport: Transport,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
    slot: Option<Slot>,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CONNECTION_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let flow = Flow::stream(transport, remote, shared.open_connection(tx));
    let shared = shared.clone();
    tokio::spawn(async move {
        serve(&shared, rd, flow, stop).await;
        if let Some(id) = flow.connection {
            shared.close_connection(id);
        }
        let _ = writer.await;
        drop(slot);
    });
    flow
}

/// One connection's reading side: frames what arrives, answers unframeable input with 400
/// and closes, and closes when idle with no call using it.
async fn serve<R: AsyncRead>(shared: &Arc<Shared>, rd: R, flow: Flow, mut stop: watch::Receiver<bool>) {
    let remote = flow.remote;
    let mut rd = std::pin::pin!(rd);
    let idle = Duration::from_secs(shared.config.sip.idle_timeout_s);
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    'connection: loop {
        let read = tokio::select! {
            r = rd.read(&mut buf) => Some(r),
            _ = tokio::time::sleep(idle) => None,
            _ = stop.wait_for(|s| *s) => break,
        };
        let n = match read {
            Some(Ok(0) | Err(_)) => break,
            Some(Ok(n)) => n,
            // Idle, but a call's caller or agent is on it: it stays open while the call lasts.
            None if flow.connection.is_some_and(|c| shared.endpoint().connection_in_use(c)) => continue,
            None => {
                tracing::debug!(%remote, "idle SIP connection closed");
                break;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(framed) = decoder.next_message() {
            match framed {
                Ok(bytes) => endpoint::receive(shared, &bytes, flow).await,
                Err(e) => {
                    tracing::info!(%remote, error = %e, "unframeable SIP stream; closing");
                    let why = MessageError::Parse(e.to_string());
                    if let Some(resp) = message::bad_request(decoder.pending(), &why) {
                        shared.send(&flow, &resp);
                    }
                    break 'connection;
                }
            }
        }
    }
}
