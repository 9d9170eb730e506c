//! SDP offer/answer (RFC 3264 §5–§6, SDP syntax RFC 4566) for one audio stream: G.711
//! (PCMU/PCMA) and telephone-event (RFC 4733 §7.1.1), whatever payload type the offer gives
//! it. Parsing goes through webrtc-rs's rtc-sdp; the answers and offers we write are short
//! enough to write by hand.

use std::fmt::Write as _;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::description::session::SessionDescription;
use thiserror::Error;

use crate::media::g711::Codec;
use crate::media::srtp::CryptoAttr;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Parse(String),
    #[error("SDP has no active audio stream over RTP/AVP or RTP/SAVP")]
    NoAudio,
    #[error("SDP has a malformed crypto attribute")]
    BadCrypto,
    #[error("SDP offers no codec we support (PCMU, PCMA)")]
    NoCommonCodec,
    #[error("SDP has no usable connection address")]
    NoAddress,
}

/// What the far end asked for or agreed to: where to send, in which codec, and the
/// payload type of telephone-events if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaParams {
    pub remote: SocketAddr,
    pub codec: Codec,
    pub event_pt: Option<u8>,
}

/// Which way media flows, from the describing side's point of view (RFC 3264 §5.1, §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction an answer gives to an offer's (§6.1): sendonly ↔ recvonly.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the describing side wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// The transport profile of the audio stream: plain RTP (RFC 3551) or SRTP (RFC 3711 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Avp,
    Savp,
}

/// An offer or answer, reduced to its first audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescription {
    pub remote: SocketAddr,
    /// Supported audio codecs in the sender's order of preference.
    pub codecs: Vec<Codec>,
    pub event_pt: Option<u8>,
    pub direction: Direction,
    pub profile: Profile,
    /// The SDES keys (RFC 4568) of an `RTP/SAVP` stream we can use, in preference order.
    pub crypto: Vec<CryptoAttr>,
}

impl RemoteDescription {
    pub fn parse(body: &[u8]) -> Result<RemoteDescription, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::Parse("not UTF-8".into()))?;
        // rtc-sdp wants CRLF or LF lines; a missing final newline is common in the wild.
        let mut owned = text.to_string();
        if !owned.ends_with('\n') {
            owned.push_str("\r\n");
        }
        let sd = SessionDescription::unmarshal(&mut Cursor::new(owned.as_bytes()))
            .map_err(|e| SdpError::Parse(e.to_string().chars().take(120).collect()))?;
        let media = sd
            .media_descriptions
            .iter()
            .find(|m| {
                m.media_name.media == "audio"
                    && m.media_name.port.value > 0
                    && matches!(m.media_name.protos.join("/").as_str(), "RTP/AVP" | "RTP/SAVP")
            })
            .ok_or(SdpError::NoAudio)?;
        let profile = if media.media_name.protos.join("/") == "RTP/SAVP" { Profile::Savp } else { Profile::Avp };
        let mut crypto = Vec::new();
        for a in media.attributes.iter().filter(|a| a.key == "crypto") {
            let value = a.value.as_deref().unwrap_or("");
            match (CryptoAttr::parse(value), profile) {
                (Ok(c), _) => crypto.extend(c),
                (Err(_), Profile::Savp) => return Err(SdpError::BadCrypto),
                // Keys on an RTP/AVP stream are best-effort SRTP: a bad one is no key at all.
                (Err(_), Profile::Avp) => {}
            }
        }
        let port = u16::try_from(media.media_name.port.value).map_err(|_| SdpError::NoAudio)?;
        let conn = media.connection_information.as_ref().or(sd.connection_information.as_ref());
        let ip: IpAddr =
            conn.and_then(|c| c.address.as_ref()).and_then(|a| a.address.parse().ok()).ok_or(SdpError::NoAddress)?;
        let rtpmaps = media.codecs();
        let mut codecs = Vec::new();
        let mut event_pt = None;
        for fmt in &media.media_name.formats {
            let Ok(pt) = fmt.parse::<u8>() else { continue };
            let name = rtpmaps.get(&pt).map(|c| c.name.to_ascii_uppercase());
            let codec = match (pt, name.as_deref()) {
                (_, Some("TELEPHONE-EVENT")) => {
                    event_pt.get_or_insert(pt);
                    None
                }
                (0, None) | (_, Some("PCMU")) => Some(Codec::Pcmu),
                (8, None) | (_, Some("PCMA")) => Some(Codec::Pcma),
                _ => None,
            };
            if let Some(c) = codec.filter(|c| !codecs.contains(c)) {
                codecs.push(c);
            }
        }
        if codecs.is_empty() {
            return Err(SdpError::NoCommonCodec);
        }
        // Media-level attributes win over session-level ones; c=0.0.0.0 is RFC 2543 hold.
        let attr = |name: &str| media.attribute(name).is_some() || sd.attribute(name).is_some();
        let direction = if ip.is_unspecified() || attr("inactive") {
            Direction::Inactive
        } else if attr("sendonly") {
            Direction::SendOnly
        } else if attr("recvonly") {
            Direction::RecvOnly
        } else {
            Direction::SendRecv
        };
        Ok(RemoteDescription { remote: SocketAddr::new(ip, port), codecs, event_pt, direction, profile, crypto })
    }

    /// RFC 3264 §6.1: answer with the offerer's first codec we support, and echo its
    /// telephone-event payload type.
    pub fn negotiate(&self) -> MediaParams {
        MediaParams { remote: self.remote, codec: self.codecs[0], event_pt: self.event_pt }
    }
}

/// Our description of one audio stream: used for answers (one codec) and offers (several).
pub fn write(local: SocketAddr, session_id: u64, codecs: &[Codec], event_pt: Option<u8>) -> String {
    write_version(local, session_id, session_id, codecs, event_pt, Direction::SendRecv, None)
}

/// The same, for a later description in the session: `version` must grow with every change
/// (RFC 3264 §8), and `direction` says whether we send, receive, both or neither. With
/// `crypto` the stream is `RTP/SAVP` keyed by that SDES line.
pub fn write_version(
    local: SocketAddr,
    session_id: u64,
    version: u64,
    codecs: &[Codec],
    event_pt: Option<u8>,
    direction: Direction,
    crypto: Option<&CryptoAttr>,
) -> String {
    describe(local, (session_id, version), codecs, event_pt, direction, crypto.map(|c| (c, Profile::Savp)))
}

/// Our offer toward an agent: no telephone-event, and with `keyed` our SDES key on an
/// `RTP/SAVP` stream (SRTP or nothing) or on an `RTP/AVP` one (best-effort SRTP: a peer
/// that ignores the key answers plain RTP).
pub fn write_offer(
    local: SocketAddr,
    session_id: u64,
    codecs: &[Codec],
    keyed: Option<(&CryptoAttr, Profile)>,
) -> String {
    describe(local, (session_id, session_id), codecs, None, Direction::SendRecv, keyed)
}

fn describe(
    local: SocketAddr,
    (session_id, version): (u64, u64),
    codecs: &[Codec],
    event_pt: Option<u8>,
    direction: Direction,
    keyed: Option<(&CryptoAttr, Profile)>,
) -> String {
    let ip_kind = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let mut fmts: Vec<String> = codecs.iter().map(|c| c.payload_type().to_string()).collect();
    fmts.extend(event_pt.map(|pt| pt.to_string()));
    let mut s = format!(
        "v=0\r\no=tonewall {session_id} {version} IN {ip_kind} {ip}\r\ns=tonewall\r\nc=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {} {} {}\r\n",
        local.port(),
        if matches!(keyed, Some((_, Profile::Savp))) { "RTP/SAVP" } else { "RTP/AVP" },
        fmts.join(" ")
    );
    for c in codecs {
        let _ = write!(s, "a=rtpmap:{} {}/8000\r\n", c.payload_type(), c.name());
    }
    if let Some(pt) = event_pt {
        let _ = write!(s, "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-15\r\n");
    }
    let _ = write!(s, "a=ptime:20\r\na={}\r\n", direction.attribute());
    if let Some((c, _)) = keyed {
        s.push_str(&c.sdp_line());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 8 0 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\n";

    #[test]
    fn answer_takes_offerers_first_codec_and_its_event_payload_type() {
        let offer = RemoteDescription::parse(OFFER.as_bytes()).unwrap();
        let m = offer.negotiate();
        assert_eq!(m.codec, Codec::Pcma);
        assert_eq!(m.event_pt, Some(96));
        assert_eq!(m.remote, "127.0.0.1:6000".parse().unwrap());
        let ans = write("127.0.0.1:20000".parse().unwrap(), 5, &[m.codec], m.event_pt);
        let back = RemoteDescription::parse(ans.as_bytes()).unwrap();
        assert_eq!(back.codecs, vec![Codec::Pcma]);
        assert_eq!(back.event_pt, Some(96));
        assert_eq!(back.remote.port(), 20000);
    }

    #[test]
    fn static_payload_types_without_rtpmap_and_media_level_connection() {
        let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 7000 RTP/AVP 18 0\nc=IN IP4 127.0.0.2";
        let d = RemoteDescription::parse(sdp.as_bytes()).unwrap();
        assert_eq!(d.codecs, vec![Codec::Pcmu]);
        assert_eq!(d.event_pt, None);
        assert_eq!(d.remote, "127.0.0.2:7000".parse().unwrap());
    }

    #[test]
    fn hold_directions() {
        let d = |extra: &str| RemoteDescription::parse(format!("{OFFER}{extra}").as_bytes()).unwrap().direction;
        assert_eq!(d(""), Direction::SendRecv);
        assert_eq!(d("a=sendonly\r\n"), Direction::SendOnly);
        assert_eq!(d("a=inactive\r\n"), Direction::Inactive);
        let old_hold = OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(RemoteDescription::parse(old_hold.as_bytes()).unwrap().direction, Direction::Inactive);
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
        let ans = write_version("127.0.0.1:2".parse().unwrap(), 7, 9, &[Codec::Pcmu], None, Direction::RecvOnly, None);
        assert!(ans.contains("o=tonewall 7 9 IN IP4") && ans.contains("a=recvonly\r\n"), "{ans}");
        assert_eq!(RemoteDescription::parse(ans.as_bytes()).unwrap().direction, Direction::RecvOnly);
    }

    #[test]
    fn savp_offers_carry_their_usable_keys_and_answers_carry_ours() {
        let savp = OFFER.replace("RTP/AVP", "RTP/SAVP")
            + "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n"
            + "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20\r\n";
        let d = RemoteDescription::parse(savp.as_bytes()).unwrap();
        assert_eq!(d.profile, Profile::Savp);
        assert_eq!(d.crypto.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![2]);
        let ours = CryptoAttr::answer(&d.crypto[0], &crate::media::srtp::MasterKey::from_random(&[3; 30]));
        let local = "127.0.0.1:2".parse().unwrap();
        let ans = write_version(local, 7, 9, &[Codec::Pcmu], None, Direction::SendRecv, Some(&ours));
        assert!(ans.contains("m=audio 2 RTP/SAVP 0\r\n") && ans.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert_eq!(RemoteDescription::parse(ans.as_bytes()).unwrap().crypto, vec![ours]);
        assert_eq!(RemoteDescription::parse(OFFER.as_bytes()).unwrap().profile, Profile::Avp);
    }

    #[test]
    fn refusals() {
        let g729 = OFFER.replace("RTP/AVP 8 0 96", "RTP/AVP 18 96");
        assert_eq!(RemoteDescription::parse(g729.as_bytes()), Err(SdpError::NoCommonCodec));
        let video = OFFER.replace("m=audio", "m=video");
        assert_eq!(RemoteDescription::parse(video.as_bytes()), Err(SdpError::NoAudio));
        let bad_key = OFFER.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\n";
        assert_eq!(RemoteDescription::parse(bad_key.as_bytes()), Err(SdpError::BadCrypto));
        let avpf = OFFER.replace("RTP/AVP", "RTP/AVPF");
        assert_eq!(RemoteDescription::parse(avpf.as_bytes()), Err(SdpError::NoAudio));
        let no_c = OFFER.replace("c=IN IP4 127.0.0.1\r\n", "");
        assert_eq!(RemoteDescription::parse(no_c.as_bytes()), Err(SdpError::NoAddress));
        assert!(matches!(RemoteDescription::parse(b"hello"), Err(SdpError::Parse(_))));
    }
}
