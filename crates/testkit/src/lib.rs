//! Softphones for the demo, the integration tests and the load generator: a scripted caller
//! and an agent that records what it hears. They are real SIP user agents on real UDP
//! sockets (loopback), built on tonewall's own message and SDP code, so a test of tonewall
//! with them exercises the same wire format a PBX sees; tests with sipp check that format
//! against an independent implementation.

pub mod agent;
pub mod caller;
pub mod desktop;
pub mod keypad;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;

use tonewall_core::sip::message::{self, Method, Request, RequestBuilder, Response, ResponseBuilder, SipMessage};
use tonewall_core::sip::transaction::{ClientInvite, ClientInviteState, Outcome, Timers};

#[derive(Debug, Error)]
pub enum SoftphoneError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("call refused with {0}")]
    Refused(u16),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("HTTP API: {0}")]
    Http(String),
}

/// A minimal SIP user agent socket.
pub struct Ua {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Ua {
    pub async fn bind() -> Result<Ua, SoftphoneError> {
        Ua::bind_on([127, 0, 0, 1].into()).await
    }

    /// On another loopback address, for a peer that must be told apart by its IP (a PBX).
    pub async fn bind_on(ip: std::net::IpAddr) -> Result<Ua, SoftphoneError> {
        let sock = UdpSocket::bind((ip, 0)).await?;
        let addr = sock.local_addr()?;
        Ok(Ua { sock, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), SoftphoneError> {
        self.sock.send_to(bytes, to).await?;
        Ok(())
    }

    /// The next parseable SIP message (others are skipped).
    pub async fn recv(&self) -> Result<(SipMessage, SocketAddr), SoftphoneError> {
        let mut buf = vec![0u8; message::MAX_MESSAGE];
        loop {
            let (n, from) = self.sock.recv_from(&mut buf).await?;
            if let Ok(m) = message::parse(&buf[..n]) {
                return Ok((m, from));
            }
        }
    }

    /// A new INVITE with `sdp`; returns it with its Call-ID and From tag.
    pub fn invite(&self, uri: &str, sdp: &str) -> (Vec<u8>, String, String) {
        let call_id = format!("{}@softphone", uuid::Uuid::new_v4().simple());
        let tag = format!("c{}", rand::random::<u32>());
        let bytes = RequestBuilder::new(&Method::Invite, uri)
            .header("Via", &format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", self.addr, rand::random::<u64>()))
            .header("Max-Forwards", "70")
            .header("From", &format!("<sip:caller@{}>;tag={tag}", self.addr))
            .header("To", &format!("<{uri}>"))
            .header("Call-ID", &call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", &format!("<sip:caller@{}>", self.addr))
            .body("application/sdp", sdp.as_bytes())
            .build();
        (bytes, call_id, tag)
    }

    /// Sends `invite` to `to` in a client INVITE transaction (RFC 3261 §17.1.1, the core's
    /// `ClientInvite`: Timer A retransmissions over UDP, Timer B, the ACK of a non-2xx) and
    /// returns its final response; provisional ones are skipped. Gives up after `give_up`
    /// even while a provisional holds Timer B off.
    pub async fn call(&self, invite: &[u8], to: SocketAddr, give_up: Duration) -> Result<Response, SoftphoneError> {
        let Ok(SipMessage::Request(req)) = message::parse(invite) else {
            return Err(SoftphoneError::Protocol("the INVITE to send does not parse".into()));
        };
        let deadline = Instant::now() + give_up;
        let mut tx = ClientInvite::new(req, invite.to_vec(), Instant::now(), Timers::default(), false);
        loop {
            while let Some(bytes) = tx.poll_transmit() {
                self.send(&bytes, to).await?;
            }
            if tx.state() == ClientInviteState::Terminated(Outcome::TimedOut) || Instant::now() >= deadline {
                return Err(SoftphoneError::Timeout("no final answer to INVITE"));
            }
            let wake = tx.poll_timeout().map_or(deadline, |t| t.min(deadline));
            match tokio::time::timeout(wake.saturating_duration_since(Instant::now()), self.recv()).await {
                Err(_) => tx.handle_timeout(Instant::now()),
                Ok(received) => {
                    let (SipMessage::Response(resp), _) = received? else { continue };
                    if tx.matches(&resp) && resp.status() >= 200 {
                        tx.handle_response(Instant::now(), &resp);
                        // The ACK of a non-2xx goes out before the answer is handed back.
                        while let Some(bytes) = tx.poll_transmit() {
                            self.send(&bytes, to).await?;
                        }
                        return Ok(resp);
                    }
                    if tx.matches(&resp) {
                        tx.handle_response(Instant::now(), &resp);
                    }
                }
            }
        }
    }

    /// ACK or BYE inside the dialog we started.
    pub fn in_dialog(
        &self,
        method: Method,
        call_id: &str,
        from_tag: &str,
        to: &str,
        cseq: u32,
        target: &str,
    ) -> Vec<u8> {
        RequestBuilder::new(&method, target)
            .header("Via", &format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", self.addr, rand::random::<u64>()))
            .header("Max-Forwards", "70")
            .header("From", &format!("<sip:caller@{}>;tag={from_tag}", self.addr))
            .header("To", to)
            .header("Call-ID", call_id)
            .header("CSeq", &format!("{cseq} {}", method.as_str()))
            .build()
    }

    /// 200 OK to any request but ACK.
    pub async fn answer(&self, req: &Request, from: SocketAddr) -> Result<(), SoftphoneError> {
        if req.method() != Method::Ack {
            self.send(&ResponseBuilder::new(req, 200, "OK").build(), from).await?;
        }
        Ok(())
    }
}
