//! Where tonewall may place a call or send a caller (`sip.allowed_targets`): a session's
//! `agent_uri` and `transfer_uri` name hosts the API's client chose, so tonewall checks them
//! when the session is created and again once the host is resolved. An entry is a CIDR or
//! an address (the resolved address must be inside it) or a domain (the host is that name
//! or a name under it). The host of a `sip:` URI is RFC 3261 §19.1.1's `hostport`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::sip::stream::Transport;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Net(IpNet),
    Domain(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedTargets(Vec<Target>);

impl<'de> Deserialize<'de> for AllowedTargets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<String> = Deserialize::deserialize(d)?;
        items.iter().map(|s| parse(s).map_err(serde::de::Error::custom)).collect::<Result<_, _>>().map(AllowedTargets)
    }
}

fn parse(s: &str) -> Result<Target, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(Target::Net(net));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target::Net(IpNet::from(ip)));
    }
    let name = s.trim_start_matches("*.").trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.contains('.') && name.split('.').all(label_ok) {
        Ok(Target::Domain(name))
    } else {
        Err(format!("`{s}` is neither an address, a CIDR nor a domain name"))
    }
}

/// The host and port of a `sip:` or `sips:` `user@host:port;params` URI.
pub fn host_port(uri: &str) -> Option<(&str, Option<&str>)> {
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?', '>']).next()?;
    match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']')?;
            Some((h, rest.strip_prefix(':')))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => Some((h, Some(p))),
            None => Some((hostport, None)),
        },
    }
}

/// How a URI is reached (RFC 3261 §19.1.1, §26.2): a `sips:` URI and `;transport=tls`
/// over TLS, `;transport=tcp` over TCP, `;transport=udp` or none over UDP; and the port
/// when the URI names none (§19.1.2: 5061 for TLS, 5060 otherwise). None for a transport
/// tonewall does not speak (SCTP, WebSocket).
pub fn transport_of(uri: &str) -> Option<(Transport, u16)> {
    let sips = uri.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:"));
    let params = uri.split(['?', '>']).next()?.split(';').skip(1);
    let named = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("transport"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    let transport = match (sips, named.as_deref()) {
        (true, None | Some("tls" | "tcp")) | (false, Some("tls")) => Transport::Tls,
        (false, Some("tcp")) => Transport::Tcp,
        (false, None | Some("udp")) => Transport::Udp,
        _ => return None,
    };
    Some((transport, if transport == Transport::Tls { 5061 } else { 5060 }))
}

/// What the URI alone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An address inside an entry, or a name under a domain entry.
    Allowed,
    /// A name under no domain entry: allowed only if it resolves inside a CIDR entry.
    IfResolvedInside,
    Refused,
}

impl AllowedTargets {
    pub fn check_uri(&self, uri: &str) -> Verdict {
        let Some((host, _)) = host_port(uri) else { return Verdict::Refused };
        match host.parse::<IpAddr>() {
            Ok(ip) if self.allows_ip(ip) => Verdict::Allowed,
            Ok(_) => Verdict::Refused,
            Err(_) if self.allows_name(host) => Verdict::Allowed,
            Err(_) if self.0.iter().any(|t| matches!(t, Target::Net(_))) => Verdict::IfResolvedInside,
            Err(_) => Verdict::Refused,
        }
    }

    /// Whether `host`, resolved to `ip`, may be called.
    pub fn allows_resolved(&self, host: &str, ip: IpAddr) -> bool {
        self.allows_name(host) || self.allows_ip(ip)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|t| matches!(t, Target::Net(n) if n.contains(&ip)))
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|t| match t {
            Target::Domain(d) => host == *d || host.strip_suffix(d.as_str()).is_some_and(|h| h.ends_with('.')),
            Target::Net(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(items: &[&str]) -> AllowedTargets {
        AllowedTargets(items.iter().map(|s| parse(s).unwrap()).collect())
    }

    #[test]
    fn addresses_cidrs_and_domains() {
        let a = allowed(&["10.0.0.0/16", "192.0.2.7", "pbx.example.com"]);
        assert_eq!(a.check_uri("sip:agent@10.0.3.4:5060"), Verdict::Allowed);
        assert_eq!(a.check_uri("sip:agent@192.0.2.7"), Verdict::Allowed);
        assert_eq!(a.check_uri("sip:agent@192.0.2.8"), Verdict::Refused, "outside every entry");
        assert_eq!(a.check_uri("sip:agent@[2001:db8::1]:5070"), Verdict::Refused);
        assert_eq!(a.check_uri("sip:queue@pbx.example.com;transport=udp"), Verdict::Allowed);
        assert_eq!(a.check_uri("sip:queue@east.pbx.example.com"), Verdict::Allowed, "a name under the domain");
        assert_eq!(a.check_uri("sip:queue@agents.internal"), Verdict::IfResolvedInside);
        assert!(!a.allows_resolved("evilpbx.example.com", "198.51.100.1".parse().unwrap()), "not a label boundary");
        assert!(a.allows_resolved("agents.internal", "10.0.9.9".parse().unwrap()), "resolved inside a CIDR");
        assert!(!a.allows_resolved("agents.internal", "198.51.100.1".parse().unwrap()));
        assert_eq!(a.check_uri("tel:+441632960123"), Verdict::Refused);
        assert!(parse("not a host!").is_err() && parse("localhost").is_err());
        let names_only = allowed(&["pbx.example.com"]);
        assert_eq!(names_only.check_uri("sip:a@other.example.org"), Verdict::Refused, "no CIDR can let it in");
    }

    #[test]
    fn splits_uris_into_host_and_port() {
        assert_eq!(host_port("sip:agent@127.0.0.1:5070"), Some(("127.0.0.1", Some("5070"))));
        assert_eq!(host_port("sip:agent@[::1]:5070;transport=udp"), Some(("::1", Some("5070"))));
        assert_eq!(host_port("sip:pbx.example.com"), Some(("pbx.example.com", None)));
        assert_eq!(host_port("tel:+123"), None);
    }

    #[test]
    fn a_uri_names_its_transport_and_default_port() {
        assert_eq!(transport_of("sip:agent@10.0.0.5"), Some((Transport::Udp, 5060)));
        assert_eq!(transport_of("sip:agent@10.0.0.5:5070;transport=UDP"), Some((Transport::Udp, 5060)));
        assert_eq!(transport_of("sip:agent@10.0.0.5;transport=tcp"), Some((Transport::Tcp, 5060)));
        assert_eq!(transport_of("sip:agent@pbx.example.com;lr;transport=tls"), Some((Transport::Tls, 5061)));
        assert_eq!(transport_of("sips:agent@pbx.example.com"), Some((Transport::Tls, 5061)));
        assert_eq!(transport_of("SIPS:agent@pbx.example.com;transport=tcp"), Some((Transport::Tls, 5061)));
        assert_eq!(transport_of("sips:agent@pbx.example.com;transport=udp"), None, "SIPS never goes over UDP");
        assert_eq!(transport_of("sip:agent@10.0.0.5;transport=sctp"), None);
        assert_eq!(host_port("sips:agent@[::1]:5071;transport=tls"), Some(("::1", Some("5071"))));
    }
}
