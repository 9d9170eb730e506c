//! The Replaces header (RFC 3891 §6.1): `callid *( ; to-tag / from-tag / early-only / param )`,
//! which names, from the recipient's side, the dialog an INVITE is to take over.

use super::message::Request;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    /// The recipient's (our) tag of the dialog.
    pub to_tag: String,
    /// The other side's tag.
    pub from_tag: String,
    /// Replace only a dialog that is still early (§6.1).
    pub early_only: bool,
}

impl Replaces {
    /// The request's Replaces header: `None` without one, `Some(Err(()))` for one that is
    /// malformed (no Call-ID or a missing tag), to be answered 400.
    pub fn of(req: &Request) -> Option<Result<Replaces, ()>> {
        req.header("Replaces").map(Replaces::parse)
    }

    fn parse(value: &str) -> Result<Replaces, ()> {
        let mut parts = value.split(';').map(str::trim);
        let call_id = parts.next().filter(|c| !c.is_empty() && !c.contains(char::is_whitespace)).ok_or(())?;
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let (k, v) = p.split_once('=').map_or((p, ""), |(k, v)| (k.trim(), v.trim()));
            match k.to_ascii_lowercase().as_str() {
                "to-tag" => to_tag = Some(v.to_string()),
                "from-tag" => from_tag = Some(v.to_string()),
                "early-only" => early_only = true,
                _ => {}
            }
        }
        let (Some(to_tag), Some(from_tag)) = (to_tag, from_tag) else { return Err(()) };
        Ok(Replaces { call_id: call_id.to_string(), to_tag, from_tag, early_only })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3891_examples() {
        let r = Replaces::parse("425928@bobster.example.org;to-tag=7743;from-tag=6472").unwrap();
        assert_eq!(
            (r.call_id.as_str(), r.to_tag.as_str(), r.from_tag.as_str(), r.early_only),
            ("425928@bobster.example.org", "7743", "6472", false)
        );
        let r = Replaces::parse("98732@sip.example.com ;from-tag = r33th4x0r ;to-tag=ff87ff;early-only").unwrap();
        assert_eq!((r.to_tag.as_str(), r.from_tag.as_str(), r.early_only), ("ff87ff", "r33th4x0r", true));
        assert_eq!(Replaces::parse("abc;to-tag=1"), Err(()));
        assert_eq!(Replaces::parse(";to-tag=1;from-tag=2"), Err(()));
    }
}
