//! SIP over byte streams (RFC 3261 §18.3): messages are framed by the end of their headers
//! and Content-Length, which is mandatory on a stream. CRLF keep-alives between messages
//! (RFC 5626 §4.4.1) are skipped. Sans-IO: bytes in, whole messages out.

use std::net::SocketAddr;

use thiserror::Error;

use super::message::MAX_MESSAGE;

/// Which transport a message travelled on: it decides the Via token, the Contact's
/// `transport` parameter and whether retransmission timers run (§17.1.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    pub fn reliable(self) -> bool {
        self != Transport::Udp
    }

    /// `;transport=...` for a Contact URI, empty for UDP (the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        }
    }
}

/// A TCP or TLS connection, named by the driver that owns its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Where a SIP message came from, and how to reach that peer again (§18.2.2): a UDP
/// address, or the connection a stream message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub connection: Option<ConnectionId>,
}

impl Flow {
    pub fn udp(remote: SocketAddr) -> Flow {
        Flow { transport: Transport::Udp, remote, connection: None }
    }

    pub fn stream(transport: Transport, remote: SocketAddr, connection: ConnectionId) -> Flow {
        Flow { transport, remote, connection: Some(connection) }
    }

    /// The same flow, answering UDP at another address (§18.2.2: rport, or the Via port).
    pub fn to(self, remote: SocketAddr) -> Flow {
        Flow { remote, ..self }
    }
}

/// A SIP message to send, with its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Flow,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FramingError {
    #[error("headers longer than {MAX_MESSAGE} bytes")]
    HeadersTooLong,
    #[error("message on a stream without Content-Length")]
    NoContentLength,
    #[error("malformed Content-Length")]
    BadContentLength,
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
}

/// Cuts a byte stream into SIP messages. After an error the stream cannot be resynchronised
/// and the connection must be closed (§18.3).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        let skip = self.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        self.buf.drain(..skip);
        let Some(head_end) = find(&self.buf, b"\r\n\r\n") else {
            return (self.buf.len() > MAX_MESSAGE).then_some(Err(FramingError::HeadersTooLong));
        };
        let body_len = match content_length(&self.buf[..head_end]) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let total = head_end + 4 + body_len;
        if total > MAX_MESSAGE {
            return Some(Err(FramingError::TooLarge(total)));
        }
        if self.buf.len() < total {
            return None;
        }
        let rest = self.buf.split_off(total);
        Some(Ok(std::mem::replace(&mut self.buf, rest)))
    }

    /// Bytes held for a message not complete yet (after an error: the offending head).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Content-Length (or compact `l`) header's value in a message head.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name == "l" || name == "L" {
            return value.trim().parse().map_err(|_| FramingError::BadContentLength);
        }
    }
    Err(FramingError::NoContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: 4\r\n\r\nabcd";

    #[test]
    fn frames_split_and_joined_messages() {
        let mut d = Decoder::default();
        d.push(b"\r\n\r\n");
        d.push(&MSG[..10]);
        assert_eq!(d.next_message(), None);
        d.push(&MSG[10..]);
        d.push(MSG);
        d.push(&MSG[..5]);
        assert_eq!(d.next_message(), Some(Ok(MSG.to_vec())));
        assert_eq!(d.next_message(), Some(Ok(MSG.to_vec())));
        assert_eq!(d.next_message(), None);
        assert_eq!(d.pending(), &MSG[..5]);
    }

    #[test]
    fn refuses_unframeable_streams() {
        let mut d = Decoder::default();
        d.push(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(d.next_message(), Some(Err(FramingError::NoContentLength)));
        let mut d = Decoder::default();
        d.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n");
        assert!(matches!(d.next_message(), Some(Err(FramingError::TooLarge(_)))));
        let mut d = Decoder::default();
        d.push(&vec![b'a'; MAX_MESSAGE + 1]);
        assert_eq!(d.next_message(), Some(Err(FramingError::HeadersTooLong)));
        let mut d = Decoder::default();
        d.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(d.next_message(), Some(Err(FramingError::BadContentLength)));
    }

    #[test]
    fn transports() {
        assert!(!Transport::Udp.reliable() && Transport::Tls.reliable());
        assert_eq!(Transport::Tcp.uri_param(), ";transport=tcp");
    }
}
