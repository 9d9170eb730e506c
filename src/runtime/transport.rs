//! SIP transports (RFC 3261 §18): the UDP socket, TCP and TLS listeners and one task per
//! stream connection. Every message, whatever it came on, reaches `endpoint::receive` with
//! the `Flow` that answers it: responses and in-dialog requests to a caller go back on the
//! connection its INVITE came on, named by a `ConnectionId` whose writer `Shared` keeps. TLS is rustls with the ring provider, TLS 1.2 and 1.3.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::endpoint;
use super::shared::Shared;
use super::slots::{PerAddress, SlotLimits, Slots};
use crate::sip::message::{self, MessageError};
use crate::sip::stream::{Decoder, Flow, Transport};

/// Messages queued for one connection before further ones are dropped (the peer is stuck).
const CONNECTION_QUEUE: usize = 256;
/// How long a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: {why} (for development: `tonewall keys tls-dev`)")]
    Read { what: &'static str, path: String, why: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// Loads the certificate chain and key for a TLS listener that offers `alpn` (RFC 7301).
pub fn tls_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let unreadable = |what, path: &Path, why: String| TlsError::Read { what, path: path.display().to_string(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| unreadable("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(unreadable("certificate", cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Writes a self-signed certificate for localhost, 127.0.0.1 and ::1 and its key (mode 0600),
/// for development and tests only.
pub fn write_dev_pair(cert: &Path, key: &Path) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    let unwritable = |path: &Path, e: std::io::Error| TlsError::Read {
        what: "output",
        path: path.display().to_string(),
        why: e.to_string(),
    };
    for (path, text, mode) in [(cert, pair.cert.pem(), 0o644), (key, pair.signing_key.serialize_pem(), 0o600)] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| unwritable(path, e))?;
        f.write_all(text.as_bytes()).map_err(|e| unwritable(path, e))?;
    }
    Ok(())
}

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
        let (shared, tls, stop) = (shared.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            match tls {
                None => serve(shared, tcp, Transport::Tcp, remote, stop).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve(shared, stream, Transport::Tls, remote, stop).await,
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
}

/// One connection: frames what arrives, answers unframeable input with 400 and closes, and
/// closes when idle with no call using it.
async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    transport: Transport,
    remote: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
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
            // Idle, but a call's caller is on it: it stays open while the call lasts.
            None if flow.connection.is_some_and(|c| shared.endpoint().connection_in_use(c)) => continue,
            None => {
                tracing::debug!(%remote, "idle SIP connection closed");
                break;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(framed) = decoder.next_message() {
            match framed {
                Ok(bytes) => endpoint::receive(&shared, &bytes, flow).await,
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
    if let Some(id) = flow.connection {
        shared.close_connection(id);
    }
    let _ = writer.await;
}
