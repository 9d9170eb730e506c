//! Our INVITE toward the agent, and the CANCEL that must repeat parts of it (RFC 3261 §9.1:
//! same Request-URI, Call-ID, From, To, CSeq number and top Via). The ACK for a non-2xx
//! final response is the transaction's (`sip::message::ack_for`).

use crate::sip::message::{Method, RequestBuilder};
use crate::sip::stream::Transport;

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

/// The From user of our INVITE toward the agent: the caller's number for inline calls (the
/// contact center's screen pop needs it), when it is a plain SIP user; "tonewall" otherwise.
pub fn from_user(caller_user: Option<&str>) -> String {
    match caller_user {
        Some(u)
            if !u.is_empty()
                && u.len() <= 64
                && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-_.*#".contains(&b)) =>
        {
            u.to_string()
        }
        _ => "tonewall".to_string(),
    }
}

pub struct Identity<'a> {
    /// Our host:port on the agent's transport.
    pub local: &'a str,
    pub transport: Transport,
    pub from_user: &'a str,
    pub tag: &'a str,
    pub call_id: &'a str,
}

impl AgentInvite {
    pub fn new(uri: &str, id: &Identity, branch: &str, sdp: &str) -> AgentInvite {
        let Identity { local, transport, from_user, tag, call_id } = *id;
        let via = format!("SIP/2.0/{} {local};branch={branch};rport", transport.via_token());
        // §8.1.1.8: a SIPS Request-URI needs a SIPS Contact; ours names the TLS listener.
        let contact = match uri.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:")) {
            true => format!("<sips:tonewall@{local}>"),
            false => format!("<sip:tonewall@{local}{}>", transport.uri_param()),
        };
        let from = format!("<sip:{from_user}@{local}>;tag={tag}");
        let bytes = RequestBuilder::new(&Method::Invite, uri)
            .header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &format!("<{uri}>"))
            .header("Call-ID", call_id)
            .header("CSeq", &format!("{INVITE_CSEQ} INVITE"))
            .header("Contact", &contact)
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
        let id = Identity {
            local: "127.0.0.1:5060",
            transport: Transport::Udp,
            from_user: "+4412",
            tag: "t1",
            call_id: "c1",
        };
        let inv = AgentInvite::new("sip:a@127.0.0.1:5080", &id, "z9hG4bKx", "v=0\r\n");
        let SipMessage::Request(i) = parse(inv.bytes()).unwrap() else { panic!() };
        let SipMessage::Request(c) = parse(&inv.cancel()).unwrap() else { panic!() };
        assert_eq!((c.branch(), c.call_id(), c.from_tag()), (i.branch(), i.call_id(), i.from_tag()));
        assert_eq!(c.cseq().seq, INVITE_CSEQ);
        assert_eq!(c.request_uri(), i.request_uri());
        assert_eq!(c.to(), i.to());
        assert_eq!(inv.branch(), "z9hG4bKx");
        assert_eq!(i.from_user(), "+4412");
    }

    #[test]
    fn only_plain_caller_numbers_reach_the_agent_leg() {
        assert_eq!(from_user(Some("+441632960123")), "+441632960123");
        assert_eq!(from_user(Some("anonymous")), "anonymous");
        assert_eq!(from_user(Some("a b")), "tonewall");
        assert_eq!(from_user(Some("x%40y")), "tonewall");
        assert_eq!(from_user(Some("")), "tonewall");
        assert_eq!(from_user(None), "tonewall");
    }
}
