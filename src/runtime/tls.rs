//! TLS for the API and SIP (rustls on ring, TLS 1.2 and 1.3 only): listeners' certificates,
//! optional client certificates checked against a CA (mutual TLS, RFC 8446 §4.3.2: the
//! server asks, a client without one may still use a bearer key), and the development pair.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: {why} (for development: `tonewall keys tls-dev`)")]
    Read { what: &'static str, path: String, why: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

fn unreadable(what: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError::Read { what, path: path.display().to_string(), why: why.to_string() }
}

/// Every certificate in a PEM file; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable("certificate", path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable("certificate", path, e))?;
    if certs.is_empty() {
        return Err(unreadable("certificate", path, "no certificate in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener with the chain `cert` and its `key`, offering `alpn` (RFC 7301). With
/// `client_ca`, clients are asked for a certificate issued by one of its CAs; those that
/// send none are still served (they authenticate otherwise), those that send another are
/// refused in the handshake.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable("key", key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| unreadable("client CA", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side, for SIP over TLS to agents and inline targets: the server's
/// certificate must chain to `ca` (PEM), or, without one, to the Mozilla roots
/// (webpki-roots), and name the host the URI names.
pub fn tls_connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| unreadable("CA", ca, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Writes a self-signed certificate for localhost, 127.0.0.1 and ::1 and its key (mode 0600),
/// for development and tests only.
pub fn write_dev_pair(cert: &Path, key: &Path) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    let unwritable = |path: &Path, e: std::io::Error| unreadable("output", path, e);
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
