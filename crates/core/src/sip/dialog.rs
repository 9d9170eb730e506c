//! Dialog state (RFC 3261 §12): identifiers, CSeq spaces, remote target and route set, and
//! the in-dialog requests built from them (§12.2.1.1), including the ACK for a 2xx (§13.2.2.4).

use super::message::{Method, Request, RequestBuilder, Response, uri_of};
use super::stream::Transport;

#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our address-of-record as it appears in From of our requests (without tag).
    local_uri: String,
    /// Theirs, for To of our requests (without tag).
    remote_uri: String,
    /// Where in-dialog requests go: the peer's Contact.
    pub remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    /// Our host:port for Via and Contact.
    local_addr: String,
    /// The transport our requests in this dialog go out on.
    transport: Transport,
}

/// A header value without its `;tag=` parameter.
fn strip_tag(value: &str) -> String {
    let uri_end = value.rfind('>').map_or(0, |i| i + 1);
    let (head, params) = value.split_at(uri_end);
    let kept: Vec<&str> = params.split(';').filter(|p| !p.trim().to_ascii_lowercase().starts_with("tag=")).collect();
    format!("{head}{}", kept.join(";")).trim().to_string()
}

impl Dialog {
    /// The UAS half, from an INVITE we answer with a 2xx carrying `local_tag`.
    pub fn uas(invite: &Request, local_tag: &str, local_addr: &str, transport: Transport) -> Dialog {
        Dialog {
            call_id: invite.call_id().to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: invite.from_tag().unwrap_or_default(),
            local_uri: strip_tag(invite.to()),
            remote_uri: strip_tag(invite.from()),
            remote_target: invite.contact_uri().map_or_else(|| uri_of(invite.from()).to_string(), str::to_string),
            route_set: invite.headers_named("Record-Route").into_iter().map(str::to_string).collect(),
            local_cseq: 0,
            remote_cseq: Some(invite.cseq().seq),
            local_addr: local_addr.to_string(),
            transport,
        }
    }

    /// The UAC half, from the 2xx to an INVITE we sent with `invite_cseq`.
    pub fn uac(resp: &Response, invite_cseq: u32, local_addr: &str, transport: Transport) -> Dialog {
        let mut route_set: Vec<String> = resp.headers_named("Record-Route").into_iter().map(str::to_string).collect();
        route_set.reverse();
        Dialog {
            call_id: resp.call_id().to_string(),
            local_tag: resp.from_tag().unwrap_or_default(),
            remote_tag: resp.to_tag().unwrap_or_default(),
            local_uri: strip_tag(resp.from()),
            remote_uri: strip_tag(resp.to()),
            remote_target: resp.contact_uri().map_or_else(|| uri_of(resp.to()).to_string(), str::to_string),
            route_set,
            local_cseq: invite_cseq,
            remote_cseq: None,
            local_addr: local_addr.to_string(),
            transport,
        }
    }

    /// Whether a request belongs to this dialog (§12.2.2: Call-ID, and the tags reversed).
    pub fn matches(&self, req: &Request) -> bool {
        req.call_id() == self.call_id
            && req.to_tag().as_deref() == Some(self.local_tag.as_str())
            && req.from_tag().unwrap_or_default() == self.remote_tag
    }

    /// §12.2.2: a lower CSeq than the last one seen is out of order (answer 500).
    pub fn accept_remote_cseq(&mut self, req: &Request) -> bool {
        let seq = req.cseq().seq;
        if req.method() == Method::Ack {
            return true;
        }
        match self.remote_cseq {
            Some(last) if seq < last => false,
            _ => {
                self.remote_cseq = Some(seq);
                true
            }
        }
    }

    /// A new in-dialog request (BYE, INFO, re-INVITE) with the next local CSeq.
    pub fn request(&mut self, method: Method, branch: &str) -> RequestBuilder<'static> {
        self.local_cseq += 1;
        let seq = self.local_cseq;
        self.builder(method, seq, branch)
    }

    /// The ACK for a 2xx: same CSeq number as the INVITE, a new branch (§13.2.2.4).
    pub fn ack(&self, invite_cseq: u32, branch: &str) -> Vec<u8> {
        self.builder(Method::Ack, invite_cseq, branch).build()
    }

    fn builder(&self, method: Method, seq: u32, branch: &str) -> RequestBuilder<'static> {
        let mut b = RequestBuilder::new(&method, &self.remote_target)
            .header("Via", &format!("SIP/2.0/{} {};branch={branch};rport", self.transport.via_token(), self.local_addr))
            .header("Max-Forwards", "70")
            .header("From", &format!("{};tag={}", self.local_uri, self.local_tag))
            .header("To", &format!("{};tag={}", self.remote_uri, self.remote_tag))
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{seq} {}", method.as_str()));
        for r in &self.route_set {
            b = b.header("Route", r);
        }
        b.header("Contact", &format!("<sip:tonewall@{}{}>", self.local_addr, self.transport.uri_param()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{SipMessage, parse};

    const INVITE: &str = "INVITE sip:pay-1@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\n\
Record-Route: <sip:p1.example;lr>\r\nRecord-Route: <sip:p2.example;lr>\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=abc\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\n\
Call-ID: c1\r\nCSeq: 7 INVITE\r\nContact: <sip:caller@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn uas_bye_targets_contact_with_route_set_and_swapped_tags() {
        let SipMessage::Request(inv) = parse(INVITE.as_bytes()).unwrap() else { panic!() };
        let mut d = Dialog::uas(&inv, "tw1", "127.0.0.1:5060", Transport::Udp);
        let bye = d.request(Method::Bye, "z9hG4bKb").build();
        let SipMessage::Request(bye) = parse(&bye).unwrap() else { panic!() };
        assert_eq!(bye.request_uri(), "sip:caller@127.0.0.1:5070");
        assert_eq!(bye.from_tag().as_deref(), Some("tw1"));
        assert_eq!(bye.to_tag().as_deref(), Some("abc"));
        assert_eq!(bye.cseq().seq, 1);
        assert_eq!(bye.headers_named("Route"), vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
        // A BYE from the caller in this dialog matches; one with an older CSeq is refused.
        let their_bye = INVITE
            .replace("INVITE sip", "BYE sip")
            .replace("7 INVITE", "8 BYE")
            .replace("<sip:pay-1@127.0.0.1:5060>\r\n", "<sip:pay-1@127.0.0.1:5060>;tag=tw1\r\n");
        let SipMessage::Request(their_bye) = parse(their_bye.as_bytes()).unwrap() else { panic!() };
        assert!(d.matches(&their_bye));
        assert!(d.accept_remote_cseq(&their_bye));
        let old = INVITE.replace("INVITE sip", "BYE sip").replace("7 INVITE", "6 BYE");
        let SipMessage::Request(old) = parse(old.as_bytes()).unwrap() else { panic!() };
        assert!(!d.accept_remote_cseq(&old));
    }

    #[test]
    fn strip_tag_keeps_other_params() {
        assert_eq!(strip_tag("<sip:a@b>;tag=1;x=2"), "<sip:a@b>;x=2");
        assert_eq!(strip_tag("<sip:a@b;tag=in-uri>"), "<sip:a@b;tag=in-uri>");
    }
}
