//! Tokens (PCI Tokenization Product Security Guidelines): random, never derived from the PAN.
//! - `Random`: `tok_` and 22 base62 characters from the OS-seeded CSPRNG; one whose digits
//!   could pass for a card number (12 or more digits that pass Luhn) is drawn again.
//! - `FormatPreserving`: as many digits as the PAN, its first six and last four around random
//!   ones, adjusted to fail the Luhn check, so it can never equal any real card number, the
//!   stored ones included.

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::capture::card::luhn_valid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    #[default]
    Random,
    FormatPreserving,
}

impl TokenFormat {
    /// A fresh token for a card with these PAN digits.
    pub fn generate(self, pan: &str) -> String {
        match self {
            TokenFormat::Random => new_token(),
            TokenFormat::FormatPreserving => format_preserving(pan),
        }
    }
}

/// First six and last four of `pan` kept, the middle random, never Luhn-valid.
pub fn format_preserving(pan: &str) -> String {
    let digits = pan.as_bytes();
    let mut rng = rand::rng();
    let mut out: Vec<u8> = digits.to_vec();
    let middle = 6..digits.len().saturating_sub(4).max(6);
    for d in &mut out[middle.clone()] {
        *d = b'0' + rng.random_range(0..10u8);
    }
    let as_numbers: Vec<u8> = out.iter().map(|b| b - b'0').collect();
    if luhn_valid(&as_numbers) {
        // Changing one digit by one always changes the Luhn sum by a non-multiple of 10.
        if let Some(last) = middle.clone().last() {
            out[last] = b'0' + (out[last] - b'0' + 1) % 10;
        }
    }
    // Invariant: only ASCII digits were written.
    String::from_utf8(out).expect("digits")
}

pub const PREFIX: &str = "tok_";
const RANDOM_LEN: usize = 22;

pub fn new_token() -> String {
    loop {
        let body: String = rand::rng().sample_iter(&Alphanumeric).take(RANDOM_LEN).map(char::from).collect();
        let token = format!("{PREFIX}{body}");
        if !looks_like_pan(&token) {
            return token;
        }
    }
}

/// Whether the digits of `s`, read alone, could be mistaken for a valid card number.
pub fn looks_like_pan(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    digits.len() >= 12 && luhn_valid(&digits)
}

/// A random key of `len` base62 characters, for API keys and ids.
pub fn random_base62(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_well_formed_unique_and_never_luhn_valid() {
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let t = new_token();
            assert_eq!(t.len(), 26);
            assert!(t.starts_with("tok_"));
            assert!(t[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(!looks_like_pan(&t));
            assert!(seen.insert(t));
        }
    }

    #[test]
    fn format_preserving_tokens_keep_bin_and_last4_and_never_pass_luhn() {
        let pan = "4111111111111111";
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            let t = format_preserving(pan);
            assert_eq!((t.len(), &t[..6], &t[12..]), (16, "411111", "1111"));
            assert!(t.bytes().all(|b| b.is_ascii_digit()));
            let digits: Vec<u8> = t.bytes().map(|b| b - b'0').collect();
            assert!(!luhn_valid(&digits), "{t} must fail Luhn");
            assert_ne!(t, pan);
            seen.insert(t);
        }
        assert!(seen.len() > 4000, "random middles: {} distinct", seen.len());
        for pan in ["378282246310005", "6011111111111117", "4000056655665556123"] {
            let t = format_preserving(pan);
            assert_eq!((t.len(), &t[..6], &t[t.len() - 4..]), (pan.len(), &pan[..6], &pan[pan.len() - 4..]));
        }
    }

    #[test]
    fn looks_like_pan_spots_card_numbers() {
        assert!(looks_like_pan("4111111111111111"));
        assert!(looks_like_pan("tok_4111a1111b1111c1111"));
        assert!(!looks_like_pan("4111111111111112"));
        assert!(!looks_like_pan("tok_41111"));
    }
}
