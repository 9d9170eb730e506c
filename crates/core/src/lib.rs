//! tonewall's sans-IO protocol cores (see ARCHITECTURE.md): `sip` (messages, transactions,
//! dialogs, the endpoint's stateless decisions), `media` (RTP, SRTP, G.711, DTMF detection
//! and masking), `capture` (card fields and their checks) and `call` (one payment call).
//! They take bytes and instants and give bytes back; nothing here reads a clock, a socket or
//! a file, and this crate's dependencies (no tokio, sqlx or axum) keep it so.

pub mod call;
pub mod capture;
pub mod endpoint;
pub mod media;
pub mod sip;

/// An address as one peer: IPv4 peers show up as `::ffff:a.b.c.d` on a dual-stack socket.
pub(crate) fn canonical(a: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The origin of simulated time for the cores' unit tests: the cores never read a clock,
/// their tests start from this instant and advance it by hand.
#[cfg(test)]
pub(crate) fn test_origin() -> std::time::Instant {
    std::time::Instant::now()
}
