//! SIP messages (RFC 3261 §7) over rsipstack's `sip` parser: the only module that touches
//! that crate. It checks what RFC 3261 §8.2 and §16.3 make mandatory (Via, From, To,
//! Call-ID, CSeq whose method matches, a sane Content-Length) and exposes just the values
//! the transaction, dialog and call layers need. Outgoing messages are written as text by
//! the builders below, so their header order and casing are ours.

use std::fmt::Write as _;
use std::net::SocketAddr;

use rsipstack::sip as rs;
use rsipstack::sip::{HasHeaders, Header};
use thiserror::Error;

use super::syntax;

/// Largest SIP message accepted over UDP (RFC 3261 §18.1.1 allows 65,535 bytes).
pub const MAX_MESSAGE: usize = 65_535;
/// Most header lines a message may carry before it is refused.
pub const MAX_HEADERS: usize = 128;
/// Largest body accepted: an SDP offer with many codecs and crypto lines is a few KiB.
pub const MAX_BODY: usize = 16_384;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("message has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("unparseable SIP message: {0}")]
    Parse(String),
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    #[error("CSeq method does not match the request method")]
    CseqMismatch,
    #[error("body is shorter than Content-Length")]
    TruncatedBody,
    #[error("body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    #[error("malformed Request-Line")]
    BadRequestLine,
    #[error("malformed Request-URI")]
    BadRequestUri,
    #[error("SIP version other than SIP/2.0")]
    UnsupportedVersion,
    #[error("Request-URI scheme other than sip or sips")]
    UnsupportedScheme,
    #[error("method not implemented")]
    UnknownMethod,
}

impl MessageError {
    /// The stateless answer to a request with this fault (RFC 3261 §8.2, §21.4).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            MessageError::TooLarge(_) => (513, "Message Too Large"),
            MessageError::BodyTooLarge(_) => (413, "Request Entity Too Large"),
            MessageError::UnsupportedVersion => (505, "Version Not Supported"),
            MessageError::UnsupportedScheme => (416, "Unsupported URI Scheme"),
            MessageError::UnknownMethod => (501, "Not Implemented"),
            _ => (400, "Bad Request"),
        }
    }
}

/// The methods tonewall handles; anything else is carried by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Refer,
    Notify,
    Update,
    Other(String),
}

impl Method {
    fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "UPDATE" => Method::Update,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Update => "UPDATE",
            Method::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// The header values every message must have, checked once at parse time.
#[derive(Debug, Clone)]
struct Common {
    vias: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    cseq: CSeq,
    cseq_raw: String,
}

#[derive(Debug, Clone)]
pub struct Request {
    inner: rs::Request,
    common: Common,
}

#[derive(Debug, Clone)]
pub struct Response {
    inner: rs::Response,
    common: Common,
}

#[derive(Debug, Clone)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

/// Parses one datagram (or one framed stream message).
pub fn parse(bytes: &[u8]) -> Result<SipMessage, MessageError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(MessageError::TooLarge(bytes.len()));
    }
    if !bytes.starts_with(b"SIP/") {
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or(bytes);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        syntax::request_line(&String::from_utf8_lossy(line))?;
    }
    let msg = rs::parser::parse_message(bytes).map_err(|e| MessageError::Parse(short(&e.to_string())))?;
    match msg {
        rs::SipMessage::Request(r) => {
            let common = common(r.headers(), r.body.len())?;
            let method = Method::from_token(&r.method.to_string());
            if common.cseq.method != method {
                return Err(MessageError::CseqMismatch);
            }
            Ok(SipMessage::Request(Request { inner: r, common }))
        }
        rs::SipMessage::Response(r) => {
            let common = common(r.headers(), r.body.len())?;
            Ok(SipMessage::Response(Response { inner: r, common }))
        }
    }
}

/// Parser errors can quote the input: keep them to one short line, and never let a run of
/// digits long enough to be part of a card number through into a log.
fn short(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars().take(120).chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() >= 6 { "[digits]" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn common(headers: &rs::Headers, body_len: usize) -> Result<Common, MessageError> {
    if headers.len() > MAX_HEADERS {
        return Err(MessageError::TooManyHeaders);
    }
    if body_len > MAX_BODY {
        return Err(MessageError::BodyTooLarge(body_len));
    }
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    let (mut content_length, mut max_forwards, mut content_type) = (None, None, None);
    // Headers that may appear once (RFC 3261 §7.3.1, RFC 4475 §3.3.9).
    fn once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), MessageError> {
        match slot.replace(value) {
            Some(_) => Err(MessageError::DuplicateHeader(name)),
            None => Ok(()),
        }
    }
    for h in headers.iter() {
        match h {
            Header::Via(v) => {
                syntax::via(v.value())?;
                vias.push(v.value().to_string())
            }
            Header::From(v) => once(&mut from, v.value().to_string(), "From")?,
            Header::To(v) => once(&mut to, v.value().to_string(), "To")?,
            Header::CallId(v) => once(&mut call_id, v.value().trim().to_string(), "Call-ID")?,
            Header::CSeq(v) => once(&mut cseq, v.value().trim().to_string(), "CSeq")?,
            Header::MaxForwards(_) => once(&mut max_forwards, (), "Max-Forwards")?,
            Header::ContentType(_) => once(&mut content_type, (), "Content-Type")?,
            Header::ContentLength(v) => {
                let declared: usize =
                    v.value().trim().parse().map_err(|_| MessageError::BadHeader("Content-Length"))?;
                once(&mut content_length, (), "Content-Length")?;
                if declared > body_len {
                    return Err(MessageError::TruncatedBody);
                }
            }
            _ => {}
        }
    }
    if vias.is_empty() {
        return Err(MessageError::MissingHeader("Via"));
    }
    let from = from.ok_or(MessageError::MissingHeader("From"))?;
    let to = to.ok_or(MessageError::MissingHeader("To"))?;
    syntax::name_addr(&from, "From")?;
    syntax::name_addr(&to, "To")?;
    let call_id = call_id.filter(|c| !c.is_empty()).ok_or(MessageError::MissingHeader("Call-ID"))?;
    let cseq_raw = cseq.ok_or(MessageError::MissingHeader("CSeq"))?;
    let mut parts = cseq_raw.split_whitespace();
    let seq = parts.next().and_then(|n| n.parse::<u32>().ok()).ok_or(MessageError::BadHeader("CSeq"))?;
    let method = parts.next().map(Method::from_token).ok_or(MessageError::BadHeader("CSeq"))?;
    if parts.next().is_some() || seq >= 1 << 31 {
        return Err(MessageError::BadHeader("CSeq"));
    }
    Ok(Common { vias, from, to, call_id, cseq: CSeq { seq, method }, cseq_raw })
}

/// The value of `;name=value` in a header value's parameters (after any `<...>` URI).
pub fn param(value: &str, name: &str) -> Option<String> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `host[:port]` of a Via value: `SIP/2.0/UDP host:port;params`.
pub fn via_sent_by(via: &str) -> &str {
    let after_proto = via.trim_start().split_once(char::is_whitespace).map_or("", |(_, r)| r);
    after_proto.split(';').next().unwrap_or("").trim()
}

/// `host` and `port` of `host[:port]`, IPv6 references kept in brackets.
pub fn split_host_port(hostport: &str) -> (&str, Option<u16>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else { return (hostport, None) };
        let host = &hostport[..h.len() + 2];
        return (host, after.strip_prefix(':').and_then(|p| p.trim().parse().ok()));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.trim().parse().ok()),
        None => (hostport, None),
    }
}

/// The ACK for a non-2xx final response to `invite` (§17.1.1.3): the INVITE's Request-URI,
/// top Via, From, Call-ID, CSeq number and Route, with the response's To.
pub fn ack_for(invite: &Request, response_to: &str) -> Vec<u8> {
    let mut b = RequestBuilder::new(&Method::Ack, &invite.request_uri())
        .header("Via", invite.top_via())
        .header("Max-Forwards", "70")
        .header("From", invite.from())
        .header("To", response_to)
        .header("Call-ID", invite.call_id())
        .header("CSeq", &format!("{} ACK", invite.cseq().seq));
    for r in invite.headers_named("Route") {
        b = b.header("Route", r);
    }
    b.build()
}

/// The product name in Server and User-Agent: no version, so scanners learn nothing from it.
pub const PRODUCT: &str = "tonewall";

/// The URI inside a name-addr (`"Name" <sip:x@y>;tag=1`) or an addr-spec (`sip:x@y;tag=1`).
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

macro_rules! common_accessors {
    () => {
        pub fn call_id(&self) -> &str {
            &self.common.call_id
        }
        pub fn cseq(&self) -> &CSeq {
            &self.common.cseq
        }
        pub fn from(&self) -> &str {
            &self.common.from
        }
        pub fn to(&self) -> &str {
            &self.common.to
        }
        pub fn from_tag(&self) -> Option<String> {
            param(&self.common.from, "tag")
        }
        pub fn to_tag(&self) -> Option<String> {
            param(&self.common.to, "tag")
        }
        /// The branch of the top Via (RFC 3261 §8.1.1.7), the transaction key.
        pub fn branch(&self) -> Option<String> {
            let top = self.common.vias[0].split(',').next().unwrap_or("");
            param(top, "branch")
        }
        /// The first Via value (the first of a comma-separated list, too).
        pub fn top_via(&self) -> &str {
            self.common.vias[0].split(',').next().unwrap_or("").trim()
        }
        /// The top Via's sent-by (`host[:port]`, §18.2.2).
        pub fn top_via_sent_by(&self) -> &str {
            via_sent_by(self.top_via())
        }
        pub fn body(&self) -> &[u8] {
            &self.inner.body
        }
        /// The first value of a header by name (case-insensitive, compact forms expanded).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.inner.headers().iter().find(|h| h.name().eq_ignore_ascii_case(name)).map(|h| h.value())
        }
        /// All values of a header, in order.
        pub fn headers_named(&self, name: &str) -> Vec<&str> {
            self.inner.headers().iter().filter(|h| h.name().eq_ignore_ascii_case(name)).map(|h| h.value()).collect()
        }
        pub fn contact_uri(&self) -> Option<&str> {
            self.header("Contact").map(uri_of)
        }
    };
}

impl Request {
    common_accessors!();

    pub fn method(&self) -> Method {
        Method::from_token(&self.inner.method.to_string())
    }

    pub fn request_uri(&self) -> String {
        self.inner.uri.to_string()
    }

    /// The option tags in Require that are not in `supported` (§20.32).
    pub fn unsupported_required(&self, supported: &[&str]) -> Vec<String> {
        self.headers_named("Require")
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .map(str::to_string)
            .collect()
    }

    /// Records where the request really came from in its top Via (§18.2.1, RFC 3581 §4):
    /// `received` when the source address differs from sent-by or `rport` was asked for,
    /// and the source port in an empty `rport`.
    pub fn stamp_source(&mut self, source: SocketAddr) {
        let top = self.top_via().to_string();
        let (host, _) = split_host_port(via_sent_by(&top));
        let wants_rport = param(&top, "rport").is_some();
        let ip = source.ip().to_string();
        let mut stamped = String::with_capacity(top.len() + 48);
        for (i, p) in top.split(';').enumerate() {
            let name = p.split('=').next().unwrap_or("").trim();
            if i > 0 && (name.eq_ignore_ascii_case("rport") || name.eq_ignore_ascii_case("received")) {
                continue;
            }
            if i > 0 {
                stamped.push(';');
            }
            stamped.push_str(p);
        }
        if wants_rport || host.trim_matches(['[', ']']) != ip {
            let _ = write!(stamped, ";received={ip}");
        }
        if wants_rport {
            let _ = write!(stamped, ";rport={}", source.port());
        }
        let rest = self.common.vias[0].split_once(',').map(|(_, r)| format!(",{r}")).unwrap_or_default();
        self.common.vias[0] = format!("{stamped}{rest}");
    }

    /// Where a response to this request goes over an unreliable transport (§18.2.2 with
    /// RFC 3581 §4): the source address (`rport`), else the source host and the sent-by
    /// port. Always the source's IP: `maddr` is ignored, as honouring it would let one small
    /// request aim our responses and retransmitted 2xx at any host.
    pub fn reply_address(&self, source: SocketAddr) -> SocketAddr {
        let top = self.top_via();
        let (_, port) = split_host_port(via_sent_by(top));
        let port = port.unwrap_or(5060);
        match param(top, "rport").and_then(|p| p.parse::<u16>().ok()) {
            Some(rport) => SocketAddr::new(source.ip(), rport),
            None => SocketAddr::new(source.ip(), port),
        }
    }

    /// The user part of the Request-URI (`pay-<session>` for transfer-ins).
    pub fn uri_user(&self) -> Option<&str> {
        self.inner.uri.auth.as_ref().map(|a| a.user.as_str())
    }

    /// The user part of the From URI: the caller's number, usually.
    pub fn from_user(&self) -> &str {
        let uri = uri_of(self.from());
        let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
        rest.split(['@', ';']).next().unwrap_or("")
    }
}

impl Response {
    common_accessors!();

    pub fn status(&self) -> u16 {
        u16::from(self.inner.status_code.clone())
    }
}

/// Writes a response to `req` (RFC 3261 §8.2.6): Via, From, Call-ID and CSeq copied, To with
/// our tag added when given and absent.
pub struct ResponseBuilder<'a> {
    req: &'a Request,
    status: u16,
    reason: &'a str,
    to_tag: Option<&'a str>,
    extra: String,
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> ResponseBuilder<'a> {
    pub fn new(req: &'a Request, status: u16, reason: &'a str) -> Self {
        ResponseBuilder { req, status, reason, to_tag: None, extra: String::new(), body: None }
    }

    pub fn to_tag(mut self, tag: &'a str) -> Self {
        self.to_tag = Some(tag);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        let _ = write!(self.extra, "{name}: {value}\r\n");
        self
    }

    /// The request's Record-Route headers, in order: a response that creates a dialog
    /// carries them back so the caller learns the route set too (RFC 3261 §12.1.1).
    pub fn record_route(mut self) -> Self {
        for r in self.req.headers_named("Record-Route") {
            let _ = write!(self.extra, "Record-Route: {r}\r\n");
        }
        self
    }

    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    pub fn build(self) -> Vec<u8> {
        let c = &self.req.common;
        let mut s = format!("SIP/2.0 {} {}\r\n", self.status, self.reason);
        for v in &c.vias {
            let _ = write!(s, "Via: {v}\r\n");
        }
        let _ = write!(s, "From: {}\r\n", c.from);
        match self.to_tag {
            Some(tag) if param(&c.to, "tag").is_none() => {
                let _ = write!(s, "To: {};tag={tag}\r\n", c.to);
            }
            _ => {
                let _ = write!(s, "To: {}\r\n", c.to);
            }
        }
        let _ = write!(s, "Call-ID: {}\r\nCSeq: {}\r\nServer: {PRODUCT}\r\n", c.call_id, c.cseq_raw);
        s.push_str(&self.extra);
        finish(s, self.body)
    }
}

/// Writes a request from its parts; the caller supplies every header it needs.
pub struct RequestBuilder<'a> {
    head: String,
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> RequestBuilder<'a> {
    pub fn new(method: &Method, uri: &str) -> Self {
        RequestBuilder { head: format!("{} {uri} SIP/2.0\r\n", method.as_str()), body: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        let _ = write!(self.head, "{name}: {value}\r\n");
        self
    }

    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    pub fn build(mut self) -> Vec<u8> {
        let _ = write!(self.head, "User-Agent: {PRODUCT}\r\n");
        finish(self.head, self.body)
    }
}

fn finish(mut head: String, body: Option<(&str, &[u8])>) -> Vec<u8> {
    match body {
        Some((ct, b)) => {
            let _ = write!(head, "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n", b.len());
            let mut out = head.into_bytes();
            out.extend_from_slice(b);
            out
        }
        None => {
            head.push_str("Content-Length: 0\r\n\r\n");
            head.into_bytes()
        }
    }
}

/// The stateless answer to a request too broken to parse fully (400, or the status its fault
/// calls for), built from whatever Via, From, To, Call-ID and CSeq lines can still be found
/// (RFC 3261 §8.2: answer what can be answered; a 505 or 416 must reach the sender). `None`
/// for responses and for requests without a Via: those are dropped.
pub fn bad_request(bytes: &[u8], why: &MessageError) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_MESSAGE)]);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next()?;
    if start.starts_with("SIP/") || !start.contains(" SIP/") {
        return None;
    }
    let wanted = [("via", "v"), ("from", "f"), ("to", "t"), ("call-id", "i"), ("cseq", "")];
    let mut found: Vec<Option<&str>> = vec![None; wanted.len()];
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim().to_ascii_lowercase();
        let slot = wanted.iter().position(|(long, compact)| name == *long || (!compact.is_empty() && name == *compact));
        // The first of each: a duplicate may be what is wrong.
        if let Some(slot) = slot.and_then(|i| found.get_mut(i)).filter(|s| s.is_none()) {
            *slot = Some(value.trim());
        }
    }
    found[0]?;
    let names = ["Via", "From", "To", "Call-ID", "CSeq"];
    let (status, reason) = why.status();
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for (name, v) in names.iter().zip(found) {
        if let Some(v) = v {
            let _ = write!(s, "{name}: {v}\r\n");
        }
    }
    if status == 501 {
        let _ = write!(s, "Allow: {ALLOW}\r\n");
    }
    // The reason names the rule broken, never the offending bytes.
    let _ = write!(s, "Warning: 399 tonewall \"{}\"\r\n", why.to_string().replace('"', "'"));
    Some(finish(s, None))
}

/// The option tags tonewall supports (RFC 3261 §19.2, §20.37): session timers (RFC 4028)
/// and Replaces (RFC 3891).
pub const SUPPORTED: &[&str] = &["timer", "replaces"];
/// The same, as a Supported header value.
pub const SUPPORTED_HEADER: &str = "timer, replaces";

/// The methods tonewall's endpoint answers (Allow, RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER, NOTIFY";

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:pay-abc@127.0.0.1:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
t: <sip:pay-abc@127.0.0.1>\r\n\
f: \"Caller\" <sip:caller@127.0.0.1:5070>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:caller@127.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
l: 4\r\n\r\nv=0\n";

    fn request(s: &str) -> Request {
        match parse(s.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("not a request"),
        }
    }

    #[test]
    fn parses_compact_headers() {
        let r = request(INVITE);
        assert_eq!(r.method(), Method::Invite);
        assert_eq!(r.uri_user(), Some("pay-abc"));
        assert_eq!(r.call_id(), "a84b4c76e66710@pc33");
        assert_eq!(r.cseq(), &CSeq { seq: 314159, method: Method::Invite });
        assert_eq!(r.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(r.to_tag(), None);
        assert_eq!(r.branch().as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(r.contact_uri(), Some("sip:caller@127.0.0.1:5070"));
        assert_eq!(r.body(), b"v=0\n");
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_to_tag() {
        let r = request(INVITE);
        let bytes = ResponseBuilder::new(&r, 200, "OK")
            .to_tag("xyz")
            .header("Contact", "<sip:tw@127.0.0.1>")
            .body("application/sdp", b"v=0\r\n")
            .build();
        let SipMessage::Response(resp) = parse(&bytes).unwrap() else { panic!() };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.to_tag().as_deref(), Some("xyz"));
        assert_eq!(resp.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(resp.call_id(), r.call_id());
        assert_eq!(resp.branch(), r.branch());
        assert_eq!(resp.body(), b"v=0\r\n");
    }

    #[test]
    fn refuses_what_rfc3261_requires() {
        let no_callid = INVITE.replace("i: a84b4c76e66710@pc33\r\n", "");
        assert_eq!(parse(no_callid.as_bytes()).unwrap_err(), MessageError::MissingHeader("Call-ID"));
        let mismatch = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
        assert_eq!(parse(mismatch.as_bytes()).unwrap_err(), MessageError::CseqMismatch);
        let bad_cseq = INVITE.replace("CSeq: 314159 INVITE", "CSeq: abc INVITE");
        assert_eq!(parse(bad_cseq.as_bytes()).unwrap_err(), MessageError::BadHeader("CSeq"));
        let long_body = INVITE.replace("l: 4", "l: 400");
        assert_eq!(parse(long_body.as_bytes()).unwrap_err(), MessageError::TruncatedBody);
        assert!(parse(b"garbage").is_err());
        assert!(parse(&vec![b'a'; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn bad_request_answers_when_it_can() {
        let bad = INVITE.replace("CSeq: 314159 INVITE", "CSeq: abc INVITE");
        let err = parse(bad.as_bytes()).unwrap_err();
        let resp = bad_request(bad.as_bytes(), &err).expect("answerable");
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"));
        assert!(text.contains("Call-ID: a84b4c76e66710@pc33\r\n"));
        assert!(text.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n"));
        assert!(bad_request(b"hello", &err).is_none());
    }

    #[test]
    fn limits_and_faults_get_their_own_status() {
        let big_body = "a".repeat(MAX_BODY + 1);
        let big = INVITE.replace("l: 4\r\n\r\nv=0\n", &format!("l: {}\r\n\r\n{big_body}", big_body.len()));
        let cases = [
            (big, "413 Request Entity Too Large", "body of 16385 bytes exceeds the 16384-byte limit"),
            (INVITE.replace("SIP/2.0\r\nv:", "SIP/3.0\r\nv:"), "505 Version Not Supported", "SIP version"),
            (INVITE.replace("INVITE sip:", "NEWMETHOD sip:"), "501 Not Implemented", "not implemented"),
            (INVITE.replace("sip:pay-abc@127.0.0.1:5060 SIP", "tel:+15551234 SIP"), "416 Unsupported", "scheme"),
            (INVITE.replace("i: a84b", "Call-ID: other\r\ni: a84b"), "400 Bad Request", "more than one Call-ID"),
            (INVITE.replace("Max-Forwards: 70\r\n", &"X-Pad: 1\r\n".repeat(MAX_HEADERS)), "400", "headers"),
        ];
        for (msg, status, warning) in cases {
            let err = parse(msg.as_bytes()).unwrap_err();
            let resp = String::from_utf8(bad_request(msg.as_bytes(), &err).expect("answerable")).unwrap();
            assert!(resp.starts_with(&format!("SIP/2.0 {status}")), "{resp}");
            assert!(resp.contains(warning), "{resp}");
            assert!(resp.contains("Call-ID: "), "{resp}");
        }
        // Too large for a datagram: refused before any parsing.
        assert_eq!(parse(&vec![b'a'; MAX_MESSAGE + 1]).unwrap_err().status().0, 513);
    }

    #[test]
    fn parser_errors_hide_long_digit_runs() {
        assert_eq!(short("bad header 4111111111111111 at 5060"), "bad header [digits] at 5060");
        assert_eq!(short("x"), "x");
    }

    #[test]
    fn params_and_uris() {
        assert_eq!(param("<sip:a@b;lr>;tag=12", "tag").as_deref(), Some("12"));
        assert_eq!(param("sip:a@b;tag=9", "TAG").as_deref(), Some("9"));
        assert_eq!(param("<sip:a@b;tag=no>", "tag"), None);
        assert_eq!(uri_of("\"A\" <sip:a@b:5>;tag=1"), "sip:a@b:5");
        assert_eq!(uri_of("sip:a@b;tag=1"), "sip:a@b");
    }
}
