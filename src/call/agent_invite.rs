//! Our INVITE toward the agent, and the requests that must repeat parts of it: CANCEL
//! (RFC 3261 §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via) and the ACK
//! for a non-2xx final response (§17.1.1.3: same Via branch, To from the response).

use std::net::SocketAddr;

use crate::sip::message::{Method, RequestBuilder};

/// The CSeq number of the agent leg's INVITE.
pub const INVITE_CSEQ: u32 = 1;

#[derive(Debug)]
pub struct AgentInvite {
    uri: String,
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
        AgentInvite { uri: uri.to_string(), via, from, call_id: call_id.to_string(), bytes }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn cancel(&self) -> Vec<u8> {
        self.repeat(Method::Cancel, &format!("<{}>", self.uri))
    }

    /// `to` is the To header of the final response, with the agent's tag.
    pub fn ack_non_2xx(&self, to: &str) -> Vec<u8> {
        self.repeat(Method::Ack, to)
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
    fn cancel_and_ack_repeat_the_invite() {
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
        let SipMessage::Request(a) = parse(&inv.ack_non_2xx("<sip:a@127.0.0.1:5080>;tag=ag")).unwrap() else {
            panic!()
        };
        for r in [&c, &a] {
            assert_eq!((r.branch(), r.call_id(), r.from_tag()), (i.branch(), i.call_id(), i.from_tag()));
            assert_eq!(r.cseq().seq, INVITE_CSEQ);
            assert_eq!(r.request_uri(), i.request_uri());
        }
        assert_eq!(c.to(), i.to());
        assert_eq!(a.to_tag().as_deref(), Some("ag"));
    }
}
