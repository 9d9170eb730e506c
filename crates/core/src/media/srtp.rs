//! SRTP (RFC 3711) keyed by SDES (RFC 4568): the `a=crypto` attribute of an `RTP/SAVP`
//! offer or answer (§9.1 grammar), the suites we take (AES_CM_128_HMAC_SHA1_80, RFC 4568
//! §6.2.1; AEAD_AES_128_GCM, RFC 7714 §12), and the two contexts of one leg through
//! webrtc-rs's rtc-srtp with ring.
//!
//! Key material lives in `MasterKey`, which zeroizes on drop and whose `Debug` prints no
//! byte of it; the only way out is `CryptoAttr::sdp_line`, written into our SDP answer.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rtc_srtp::context::Context;
use rtc_srtp::option::srtp_replay_protection;
use rtc_srtp::protection_profile::ProtectionProfile;
use serde::Deserialize;
use thiserror::Error;
use zeroize::Zeroizing;

/// Whether a route takes SRTP: insist, take it when offered, or refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    Required,
    #[default]
    Optional,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AeadAes128Gcm,
}

impl Suite {
    fn from_name(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AEAD_AES_128_GCM" => Some(Suite::AeadAes128Gcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    /// Master key plus master salt, in bytes.
    fn material_len(self) -> usize {
        let p = self.profile();
        p.key_len() + p.salt_len()
    }
}

/// The longest key||salt of the suites we take: what the driver draws per call.
pub const MAX_MATERIAL: usize = 30;

/// Master key || master salt. Never printed, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(Zeroizing<Vec<u8>>);

impl MasterKey {
    /// Our key for one call, from `random` bytes the driver drew from the OS generator.
    pub fn from_random(random: &[u8; MAX_MATERIAL]) -> MasterKey {
        MasterKey(Zeroizing::new(random.to_vec()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SrtpError {
    #[error("malformed a=crypto attribute")]
    BadAttribute,
    #[error("SRTP context: {0}")]
    Context(String),
    #[error("SRTP packet failed authentication or replay check")]
    Unprotect,
    #[error("RTP packet could not be protected")]
    Protect,
}

/// One `a=crypto:<tag> <suite> inline:<key||salt>` we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttr {
    pub tag: u32,
    pub suite: Suite,
    key: MasterKey,
}

impl CryptoAttr {
    /// The value after `a=crypto:`. `Ok(None)` for a well-formed line we cannot use: an
    /// unknown suite, several keys, an MKI, or session parameters (§6.3) we do not implement.
    pub fn parse(value: &str) -> Result<Option<CryptoAttr>, SrtpError> {
        let mut parts = value.split_whitespace();
        let (Some(tag), Some(suite), Some(key_params)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SrtpError::BadAttribute);
        };
        let tag: u32 = tag.parse().map_err(|_| SrtpError::BadAttribute)?;
        let Some(suite) = Suite::from_name(suite) else { return Ok(None) };
        if parts.next().is_some() || key_params.contains(';') {
            return Ok(None);
        }
        let inline = key_params.strip_prefix("inline:").ok_or(SrtpError::BadAttribute)?;
        let mut fields = inline.split('|');
        let encoded = fields.next().unwrap_or("");
        // A lifetime is fine (we never send 2^31 packets on one call); an MKI is not supported.
        if fields.any(|f| f.contains(':')) {
            return Ok(None);
        }
        let key = Zeroizing::new(STANDARD.decode(encoded).map_err(|_| SrtpError::BadAttribute)?);
        if key.len() != suite.material_len() {
            return Err(SrtpError::BadAttribute);
        }
        Ok(Some(CryptoAttr { tag, suite, key: MasterKey(key) }))
    }

    /// Our offer of one key (§6.1): tag 1, the suite every SDES peer takes.
    pub fn offer(ours: &MasterKey) -> CryptoAttr {
        let suite = Suite::AesCm128HmacSha1_80;
        CryptoAttr { tag: 1, suite, key: MasterKey(Zeroizing::new(ours.0[..suite.material_len()].to_vec())) }
    }

    /// Whether `answer` accepts this offered key: the same tag and suite (§7.1.3).
    pub fn accepted_by(&self, answer: &CryptoAttr) -> bool {
        self.tag == answer.tag && self.suite == answer.suite
    }

    /// Our answer to `offer`: its tag and suite, our own key (§7.1.2).
    pub fn answer(offer: &CryptoAttr, ours: &MasterKey) -> CryptoAttr {
        let key = Zeroizing::new(ours.0[..offer.suite.material_len()].to_vec());
        CryptoAttr { tag: offer.tag, suite: offer.suite, key: MasterKey(key) }
    }

    /// The SDP line that carries this key. It holds key material: it goes into the SDP we
    /// send and nowhere else.
    pub fn sdp_line(&self) -> String {
        format!("a=crypto:{} {} inline:{}\r\n", self.tag, self.suite.name(), STANDARD.encode(&*self.key.0))
    }

    fn context(&self, inbound: bool) -> Result<Context, SrtpError> {
        let provider = rtc_crypto::default_provider().map_err(|e| SrtpError::Context(e.to_string()))?;
        let profile = self.suite.profile();
        let (key, salt) = self.key.0.split_at(profile.key_len());
        // Replay protection on what we receive (RFC 3711 §3.3.2); 64 packets of window.
        let replay = inbound.then(|| srtp_replay_protection(64));
        Context::new(key, salt, profile, replay, None, provider.crypto()).map_err(|e| SrtpError::Context(e.to_string()))
    }
}

/// The SRTP contexts of one leg: the peer's key for what arrives, ours for what we send.
pub struct SrtpLeg {
    inbound: Context,
    outbound: Context,
}

impl fmt::Debug for SrtpLeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SrtpLeg")
    }
}

impl SrtpLeg {
    pub fn new(remote: &CryptoAttr, local: &CryptoAttr) -> Result<SrtpLeg, SrtpError> {
        Ok(SrtpLeg { inbound: remote.context(true)?, outbound: local.context(false)? })
    }

    /// The peer's new key (RFC 4568 §7.1.4); what we send keeps its context.
    pub fn set_inbound(&mut self, remote: &CryptoAttr) -> Result<(), SrtpError> {
        self.inbound = remote.context(true)?;
        Ok(())
    }

    /// The plain RTP packet inside an SRTP packet from the peer.
    pub fn unprotect(&mut self, packet: &[u8]) -> Result<impl AsRef<[u8]> + use<>, SrtpError> {
        self.inbound.decrypt_rtp(packet).map_err(|_| SrtpError::Unprotect)
    }

    /// Protects `buf[..len]` in place; the packet grows by the suite's tag.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let out = self.outbound.encrypt_rtp(&buf[..len]).map_err(|_| SrtpError::Protect)?;
        let dst = buf.get_mut(..out.len()).ok_or(SrtpError::Protect)?;
        dst.copy_from_slice(&out);
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4568 §9.1's example line.
    const EXAMPLE: &str = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_random(&[byte; MAX_MATERIAL])
    }

    #[test]
    fn parses_what_we_can_use_and_skips_what_we_cannot() {
        // With an MKI: well-formed, not usable.
        assert_eq!(CryptoAttr::parse(EXAMPLE), Ok(None));
        let a = CryptoAttr::parse("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20")
            .unwrap()
            .unwrap();
        assert_eq!((a.tag, a.suite), (1, Suite::AesCm128HmacSha1_80));
        let gcm = CryptoAttr::answer(&CryptoAttr { suite: Suite::AeadAes128Gcm, ..a.clone() }, &key(7));
        let back = CryptoAttr::parse(gcm.sdp_line().trim_end().strip_prefix("a=crypto:").unwrap()).unwrap();
        assert_eq!(back, Some(gcm));
        assert_eq!(CryptoAttr::parse("2 AES_256_CM_HMAC_SHA1_80 inline:AAAA"), Ok(None));
        assert_eq!(CryptoAttr::parse("3 AES_CM_128_HMAC_SHA1_80 inline:AAAA UNENCRYPTED_SRTP"), Ok(None));
        assert_eq!(CryptoAttr::parse("x AES_CM_128_HMAC_SHA1_80 inline:AAAA"), Err(SrtpError::BadAttribute));
        assert_eq!(CryptoAttr::parse("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"), Err(SrtpError::BadAttribute));
        assert_eq!(CryptoAttr::parse("1 AES_CM_128_HMAC_SHA1_80"), Err(SrtpError::BadAttribute));
    }

    #[test]
    fn keys_never_print() {
        let a = CryptoAttr::answer(&CryptoAttr::parse(EXAMPLE.trim_end_matches("|1:4")).unwrap().unwrap(), &key(9));
        let line = a.sdp_line();
        let encoded = line.split("inline:").nth(1).unwrap().trim_end();
        assert!(!format!("{a:?}").contains(encoded));
        assert!(format!("{a:?}").contains("redacted"));
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 160, 1, 2, 3, 4];
        p.extend([0x55u8; 160]);
        p
    }

    #[test]
    fn both_suites_round_trip_and_tampering_is_caught() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm] {
            let offer = CryptoAttr { tag: 1, suite, key: key(1) };
            let offer = CryptoAttr::answer(&offer, &key(1));
            let answer = CryptoAttr::answer(&offer, &key(2));
            let mut us = SrtpLeg::new(&offer, &answer).unwrap();
            let mut peer = SrtpLeg::new(&answer, &offer).unwrap();
            let plain = rtp(1);
            let mut buf = [0u8; 1024];
            buf[..plain.len()].copy_from_slice(&plain);
            let n = us.protect(&mut buf, plain.len()).unwrap();
            assert_eq!(n, plain.len() + if suite == Suite::AeadAes128Gcm { 16 } else { 10 });
            assert_ne!(&buf[12..plain.len()], &plain[12..], "payload is encrypted");
            assert_eq!(peer.unprotect(&buf[..n]).unwrap().as_ref(), &plain[..]);
            // A replay and a flipped bit are both refused.
            assert_eq!(peer.unprotect(&buf[..n]).err(), Some(SrtpError::Unprotect));
            let mut second = [0u8; 1024];
            let p2 = rtp(2);
            second[..p2.len()].copy_from_slice(&p2);
            let n2 = us.protect(&mut second, p2.len()).unwrap();
            second[20] ^= 1;
            assert_eq!(peer.unprotect(&second[..n2]).err(), Some(SrtpError::Unprotect));
        }
    }
}
