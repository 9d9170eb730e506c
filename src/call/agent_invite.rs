//! Our INVITE toward the agent, and the CANCEL that must repeat parts of it (RFC 3261 §9.1:
//! same Request-URI, Call-ID, From, To, CSeq number and top Via). The ACK for a non-2xx
//! final response is the transaction's (`sip::message::ack_for`).

use std::net::SocketAddr;

use crate::sip::message::{Method, RequestBuilder};

/// The CSeq number of the agent leg's INVITE.
pub const INVITE_CSEQ: u32 = 1;

#[derive(Debug)]
pub struct AgentInvite {
    uri: String,
    branch: String,
    via: String,
    from: String,
    call_id: String,
    bytes: Vec<u8>,
}

impl AgentInvite {
    pub fn new(uri: &str, local_sip: SocketAddr, branch: &str, tag: &str, call_id: &str, sdp: &str) -> AgentInvite {
        let via = format!("SIP/2.0/UDP {local_sip};branch={branch};rport");
        let from = format!("<sip:tonewall@{local_sip}>;tag={tag}");
        let bytes = RequestBuilder::new(&Method::Invite, uri)
            .header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &format!("<{uri}>"))
            .header("Call-ID", call_id)
            .header("CSeq", &format!("{INVITE_CSEQ} INVITE"))
            .header("Contact", &format!("<sip:tonewall@{local_sip}>"))
            .body("application/sdp", sdp.as_bytes())
            .build();
        AgentInvite { uri: uri.to_string(), branch: branch.to_string(), via, from, call_id: call_id.to_string(), bytes }
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn cancel(&self) -> Vec<u8> {
        self.repeat(Method::Cancel, &format!("<{}>", self.uri))
    }

    fn repeat(&self, method: Method, to: &str) -> Vec<u8> {
        RequestBuilder::new(&method, &self.uri)
            .header("Via", &self.via)
            .header("Max-Forwards", "70")
            .header("From", &self.from)
            .header("To", to)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{INVITE_CSEQ} {}", method.as_str()))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{SipMessage, parse};

    #[test]
    fn cancel_repeats_the_invite() {
        let inv = AgentInvite::new(
            "sip:a@127.0.0.1:5080",
            "127.0.0.1:5060".parse().unwrap(),
            "z9hG4bKx",
            "t1",
            "c1",
            "v=0\r\n",
        );
        let SipMessage::Request(i) = parse(inv.bytes()).unwrap() else { panic!() };
        let SipMessage::Request(c) = parse(&inv.cancel()).unwrap() else { panic!() };
        assert_eq!((c.branch(), c.call_id(), c.from_tag()), (i.branch(), i.call_id(), i.from_tag()));
        assert_eq!(c.cseq().seq, INVITE_CSEQ);
        assert_eq!(c.request_uri(), i.request_uri());
        assert_eq!(c.to(), i.to());
        assert_eq!(inv.branch(), "z9hG4bKx");
    }
}
