//! The parts of the RFC 3261 §25 grammar that rsipstack's lenient parser lets through and
//! that RFC 4475 §3.1.2 and RFC 5118 §4 say a receiver must refuse: the Request-Line
//! (§25.1 `Request-Line`, §7.1), Via (`via-parm`, §20.42) and the `name-addr`/`addr-spec`
//! of From and To (§20.20, §20.39). Each check names the rule broken, never the bytes.

use super::message::MessageError;

/// Methods rsipstack can carry; any other token is an extension method we do not implement.
const KNOWN_METHODS: &[&str] = &[
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

/// `token` (§25.1): alphanumerics and `-.!%*_+`'~`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// `Method SP Request-URI SP SIP-Version`, single spaces, nothing after the version.
pub fn request_line(line: &str) -> Result<(), MessageError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MessageError::BadRequestLine);
    };
    if !is_token(method) || uri.is_empty() {
        return Err(MessageError::BadRequestLine);
    }
    if version != "SIP/2.0" {
        let numbered = version
            .strip_prefix("SIP/")
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(a, b)| is_digits(a) && is_digits(b));
        return Err(if numbered { MessageError::UnsupportedVersion } else { MessageError::BadRequestLine });
    }
    request_uri(uri)?;
    if !KNOWN_METHODS.contains(&method) {
        return Err(MessageError::UnknownMethod);
    }
    Ok(())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A SIP or SIPS Request-URI (§19.1.1): no angle brackets or whitespace, no header part
/// (not allowed in a Request-URI), an IPv6 host only in brackets (RFC 5118 §4.10).
fn request_uri(uri: &str) -> Result<(), MessageError> {
    let Some((scheme, rest)) = uri.split_once(':') else { return Err(MessageError::BadRequestUri) };
    let scheme_ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || uri.contains(['<', '>']) {
        return Err(MessageError::BadRequestUri);
    }
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return Err(MessageError::UnsupportedScheme);
    }
    // The user part may hold `?` and `:`; the host part may not carry headers.
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host_part.contains('?') {
        return Err(MessageError::BadRequestUri);
    }
    let hostport = host_part.split(';').next().unwrap_or("");
    if hostport.is_empty() || (!hostport.starts_with('[') && hostport.matches(':').count() > 1) {
        return Err(MessageError::BadRequestUri);
    }
    Ok(())
}

/// Every `via-parm` of a Via value: `SIP / 2.0 / transport LWS sent-by *( ; param )`.
pub fn via(value: &str) -> Result<(), MessageError> {
    let bad = || MessageError::BadHeader("Via");
    for parm in split_outside_quotes(value, ',') {
        let parm = parm.trim();
        let mut slashes = parm.splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) = (slashes.next(), slashes.next(), slashes.next()) else {
            return Err(bad());
        };
        let rest = rest.trim_start();
        let transport_end = rest.find(|c: char| c.is_ascii_whitespace()).ok_or_else(bad)?;
        let (transport, rest) = rest.split_at(transport_end);
        if !is_token(name.trim()) || !is_token(version.trim()) || !is_token(transport) {
            return Err(bad());
        }
        let mut params = rest.split(';');
        let sent_by = params.next().unwrap_or("").trim();
        if sent_by.is_empty() || sent_by.contains(char::is_whitespace) {
            return Err(bad());
        }
        for p in params {
            let (k, v) = p.split_once('=').unwrap_or((p, "x"));
            if !is_token(k.trim()) || v.trim().is_empty() {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// `( name-addr / addr-spec ) *( ; param )` of From or To.
pub fn name_addr(value: &str, header: &'static str) -> Result<(), MessageError> {
    let bad = || MessageError::BadHeader(header);
    let v = value.trim();
    let after_name = if let Some(quoted) = v.strip_prefix('"') {
        let end = closing_quote(quoted).ok_or_else(bad)?;
        let rest = quoted[end + 1..].trim_start();
        rest.starts_with('<').then_some(rest).ok_or_else(bad)?
    } else if let Some(i) = v.find('<') {
        // An unquoted display name is tokens separated by whitespace.
        if !v[..i].split_whitespace().all(is_token) {
            return Err(bad());
        }
        &v[i..]
    } else {
        v
    };
    let params = if let Some(inner) = after_name.strip_prefix('<') {
        let (addr, after) = inner.split_once('>').ok_or_else(bad)?;
        if addr.is_empty() || addr.contains(char::is_whitespace) || !addr.contains(':') {
            return Err(bad());
        }
        after.trim_start()
    } else {
        // A bare addr-spec: its parameters start at the first `;`.
        let (addr, params) = after_name.split_once(';').map_or((after_name, ""), |(a, p)| (a, p));
        let addr = addr.trim();
        if addr.contains(char::is_whitespace) || addr.contains(',') || !addr.contains(':') {
            return Err(bad());
        }
        return (params.is_empty() || params_ok(params)).then_some(()).ok_or_else(bad);
    };
    match params.strip_prefix(';') {
        Some(p) if params_ok(p) => Ok(()),
        None if params.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// `param *( ; param )`, each a token with an optional value.
fn params_ok(params: &str) -> bool {
    split_outside_quotes(params, ';').all(|p| {
        let k = p.split_once('=').map_or(p, |(k, _)| k);
        is_token(k.trim())
    })
}

/// Index of the quote ending a quoted-string whose opening quote is already consumed.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i),
            _ => {}
        }
    }
    None
}

fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(request_line("INVITE sip:pay-x@127.0.0.1 SIP/2.0"), Ok(()));
        assert_eq!(request_line("OPTIONS sip:[2001:db8::10]:5070 SIP/2.0"), Ok(()));
        assert_eq!(request_line("INVITE  sip:a@b SIP/2.0"), Err(MessageError::BadRequestLine));
        assert_eq!(request_line("INVITE sip:a@b SIP/2.0 "), Err(MessageError::BadRequestLine));
        assert_eq!(request_line("OPTIONS sip:a@b SIP/7.0"), Err(MessageError::UnsupportedVersion));
        assert_eq!(request_line("NEWMETHOD sip:a@b SIP/2.0"), Err(MessageError::UnknownMethod));
        assert_eq!(request_line("invite sip:a@b SIP/2.0"), Err(MessageError::UnknownMethod));
        assert_eq!(request_line("OPTIONS soap.beep://192.0.2.1:3002 SIP/2.0"), Err(MessageError::UnsupportedScheme));
        assert_eq!(request_line("INVITE <sip:a@b> SIP/2.0"), Err(MessageError::BadRequestUri));
        assert_eq!(request_line("INVITE sip:a@b?Route=%3Csip:c%3E SIP/2.0"), Err(MessageError::BadRequestUri));
        assert_eq!(request_line("REGISTER sip:2001:db8::10 SIP/2.0"), Err(MessageError::BadRequestUri));
    }

    #[test]
    fn vias() {
        assert_eq!(via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport"), Ok(()));
        assert_eq!(via("SIP  /   2.0  / UDP\r\n    192.0.2.2;branch=390skdjuw"), Ok(()));
        assert_eq!(via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9"), Ok(()));
        assert_eq!(via("SIP/2.0/UDP a;branch=1, SIP/2.0/TCP b:5060"), Ok(()));
        assert!(via("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(via("SIP/2.0/UDP").is_err());
        assert!(via("SIP/2.0 192.0.2.1").is_err());
    }

    #[test]
    fn name_addrs() {
        for ok in [
            "\"Caller\" <sip:caller@127.0.0.1:5070>;tag=1928301774",
            "<sip:pay-abc@127.0.0.1>",
            "sip:caller@example.net;tag=93334",
            "token1~` token2'+_ <sip:mundane@example.com>;tag=_token~1",
            "\"BEL:\\\u{7} NUL\" <sip:x@example.com>",
            "\"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423",
            "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        ] {
            assert_eq!(name_addr(ok, "From"), Ok(()), "{ok}");
        }
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "\"Watson, Thomas\" < sip:t.watson@example.org >",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "<sip:a@b",
            "sip:a @b;tag=1",
            "<sip:a@b>;",
        ] {
            assert!(name_addr(bad, "To").is_err(), "{bad}");
        }
    }
}
