//! ITU-T G.711 µ-law and A-law companding (the segment algorithm of G.711 §2/§3, as in the
//! ITU reference implementation G.191 `g711.c`).

/// A G.711 variant with its RTP static payload type (RFC 3551 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(sample),
            Codec::Pcma => alaw_encode(sample),
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_decode(byte),
            Codec::Pcma => alaw_decode(byte),
        }
    }

    /// The code word for zero amplitude.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = (7 - ((s as u32) << 17).leading_zeros().min(7)) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if sign != 0 { -magnitude as i16 } else { magnitude as i16 }
}

pub fn alaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample) >> 3; // A-law works on 13-bit magnitudes
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0
    };
    let s = s.min(0xFFF);
    let code = if s < 32 {
        s >> 1
    } else {
        // Segments 1..=7 start at 32, 64, ..., 2048: the segment is log2(s) - 4.
        let exponent = 31 - (s as u32).leading_zeros() as i32 - 4;
        (exponent << 4) | ((s >> exponent) & 0x0F)
    };
    ((sign | code) ^ 0x55) as u8
}

pub fn alaw_decode(byte: u8) -> i16 {
    let a = i32::from(byte ^ 0x55);
    let exponent = (a >> 4) & 0x07;
    let mantissa = a & 0x0F;
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if a & 0x80 != 0 { magnitude as i16 } else { -magnitude as i16 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_itu_reference_points() {
        // G.711 Table 2: code words (after inversion on the line) and decoded values.
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_encode(32767), 0x80);
        assert_eq!(ulaw_encode(-32768), 0x00);
        assert_eq!(ulaw_decode(0xFE), 8);
    }

    #[test]
    fn alaw_matches_itu_reference_points() {
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_encode(32767), 0xAA);
        assert_eq!(alaw_encode(-32768), 0x2A);
    }

    #[test]
    fn every_code_word_round_trips() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for b in 0..=255u8 {
                let s = codec.decode(b);
                let back = codec.encode(s);
                // µ-law has two zero code words (0x7F and 0xFF); both decode to 0.
                if codec == Codec::Pcmu && s == 0 {
                    assert!(back == 0xFF || back == 0x7F);
                } else {
                    assert_eq!(back, b, "{codec:?} {b:#04x} -> {s}");
                }
            }
        }
    }

    #[test]
    fn quantisation_error_stays_within_half_a_step() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for s in (-32000i32..32000).step_by(7) {
                let d = i32::from(codec.decode(codec.encode(s as i16)));
                let err = (d - s).abs();
                // Largest segment step is 1024 (µ-law) / 1024 (A-law): half is 512.
                assert!(err <= 512 + 8, "{codec:?} {s} -> {d}");
                // And relative error is small for loud samples (logarithmic law).
                if s.abs() > 1000 {
                    assert!(err * 100 / s.abs() <= 4, "{codec:?} {s} -> {d}");
                }
            }
        }
    }
}
