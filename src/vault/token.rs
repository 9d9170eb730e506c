//! Tokens (PCI tokenization guidelines): `tok_` and 22 base62 characters from the OS-seeded
//! CSPRNG, never derived from the PAN; a token whose digits could pass for a card number
//! (12 or more digits that pass Luhn) is drawn again.

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::capture::card::luhn_valid;

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
    fn looks_like_pan_spots_card_numbers() {
        assert!(looks_like_pan("4111111111111111"));
        assert!(looks_like_pan("tok_4111a1111b1111c1111"));
        assert!(!looks_like_pan("4111111111111112"));
        assert!(!looks_like_pan("tok_41111"));
    }
}
