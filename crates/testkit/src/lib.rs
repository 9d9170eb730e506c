//! Softphones for the demo, the integration tests and the load generator: a scripted caller
//! and an agent that records what it hears. They are real SIP user agents on real UDP
//! sockets (loopback), built on tonewall's own message and SDP code, so a test of tonewall
//! with them exercises the same wire format a PBX sees; tests with sipp check that format
//! against an independent implementation.

pub mod agent;
pub mod caller;
pub mod desktop;

use std::net::SocketAddr;

use thiserror::Error;
use tokio::net::UdpSocket;

use tonewall_core::sip::message::{self, Method, Request, RequestBuilder, ResponseBuilder, SipMessage};

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
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
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
