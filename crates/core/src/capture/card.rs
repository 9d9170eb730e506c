//! Card data: the PAN and security code as types that cannot print their digits, and the
//! checks a keyed card must pass (ISO/IEC 7812 Luhn check digit, brand by IIN/BIN range,
//! expiry in the future, security-code length by brand).
//!
//! `Pan` and `SecurityCode` keep digits in zeroizing buffers and have no `Display`; their
//! `Debug` shows at most the brand and the last four digits (PCI DSS 3.4.1).

use std::fmt;

use serde::Serialize;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Why a keyed value was refused. Never carries the digits themselves.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CardError {
    #[error("card number must have 12 to 19 digits, got {0}")]
    PanLength(usize),
    #[error("card number fails the Luhn check")]
    Luhn,
    #[error("card number belongs to no accepted brand")]
    UnknownBrand,
    #[error("card number length {len} is not valid for {brand}")]
    BrandLength { brand: Brand, len: usize },
    #[error("expiry must be four digits MMYY")]
    ExpiryFormat,
    #[error("expiry month must be 01 to 12")]
    ExpiryMonth,
    #[error("card has expired")]
    Expired,
    #[error("security code must have {expected} digits, got {got}")]
    SecurityCodeLength { expected: usize, got: usize },
    #[error("postal code must have {min} to {max} digits, got {got}")]
    PostalCodeLength { min: u8, max: u8, got: usize },
    #[error("{0} cards are not accepted for this payment")]
    BrandNotAccepted(Brand),
    #[error("only the digits 0-9 are allowed")]
    NotDigits,
}

/// Card brands we accept, lowercase in JSON as the API promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    Unionpay,
}

impl Brand {
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::Diners => "diners",
            Brand::Unionpay => "unionpay",
        }
    }

    /// Digits of the security code: four on the front of an Amex card, three elsewhere.
    pub fn security_code_len(self) -> usize {
        if self == Brand::Amex { 4 } else { 3 }
    }

    fn accepts_length(self, len: usize) -> bool {
        match self {
            Brand::Visa => matches!(len, 13 | 16 | 19),
            Brand::Mastercard => len == 16,
            Brand::Amex => len == 15,
            Brand::Discover | Brand::Jcb | Brand::Unionpay => (16..=19).contains(&len),
            Brand::Diners => (14..=19).contains(&len),
        }
    }
}

impl fmt::Display for Brand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IIN ranges, as (first, last) on a prefix of the same length. Checked in order, so the
/// Discover co-brand range 622126–622925 wins over UnionPay's wider 62.
const BRANDS: &[(u32, u32, Brand)] = &[
    (4, 4, Brand::Visa),
    (51, 55, Brand::Mastercard),
    (2221, 2720, Brand::Mastercard),
    (34, 34, Brand::Amex),
    (37, 37, Brand::Amex),
    (6011, 6011, Brand::Discover),
    (622126, 622925, Brand::Discover),
    (644, 649, Brand::Discover),
    (65, 65, Brand::Discover),
    (3528, 3589, Brand::Jcb),
    (300, 305, Brand::Diners),
    (3095, 3095, Brand::Diners),
    (36, 36, Brand::Diners),
    (38, 39, Brand::Diners),
    (62, 62, Brand::Unionpay),
    (81, 81, Brand::Unionpay),
];

fn digits_len(n: u32) -> usize {
    n.to_string().len()
}

/// The brand a card number's leading digits belong to.
pub fn brand_of(digits: &[u8]) -> Option<Brand> {
    BRANDS.iter().find_map(|&(first, last, brand)| {
        let len = digits_len(first);
        if digits.len() < len {
            return None;
        }
        let prefix = digits[..len].iter().fold(0u32, |acc, d| acc * 10 + u32::from(*d));
        (first..=last).contains(&prefix).then_some(brand)
    })
}

/// The Luhn check digit that completes `body` (digit values 0..=9) into a valid number: for
/// test and load-generation card numbers.
pub fn luhn_check_digit(body: &[u8]) -> u8 {
    let mut with_zero = body.to_vec();
    with_zero.push(0);
    (0..10)
        .find(|d| {
            with_zero[body.len()] = *d;
            luhn_valid(&with_zero)
        })
        .unwrap_or(0)
}

/// ISO/IEC 7812-1 Annex B: the Luhn check over digit values (0..=9).
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether free text (a reference, a merchant name) holds what looks like a card number
/// (PCI DSS 3.5.1: no PAN stored in clear where nobody looks for one): a Luhn-valid run of
/// 13 to 19 digits, written whole or in groups split by single spaces, dashes or dots
/// ("NNNN NNNN NNNN NNNN", "NNNN-NNNN-NNNN-NNNN"). Any consecutive groups of a run count, so
/// a number pasted between other digit groups is found too; an unbroken run of more than 19
/// digits is an identifier, not a card number.
pub fn looks_like_card_number(text: &str) -> bool {
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let run_has = |groups: &mut Vec<Vec<u8>>| {
        let found = (0..groups.len()).any(|start| {
            let mut digits = Zeroizing::new(Vec::new());
            groups[start..].iter().any(|g| {
                digits.extend_from_slice(g);
                (13..=19).contains(&digits.len()) && luhn_valid(&digits)
            })
        });
        for g in groups.iter_mut() {
            g.zeroize();
        }
        groups.clear();
        found
    };
    let bytes = text.as_bytes();
    let mut current: Vec<u8> = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            current.push(b - b'0');
            continue;
        }
        if !current.is_empty() {
            groups.push(std::mem::take(&mut current));
        }
        let separator = matches!(b, b' ' | b'-' | b'.');
        let digit_follows = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if !(separator && digit_follows && !groups.is_empty()) && run_has(&mut groups) {
            return true;
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    run_has(&mut groups)
}

fn to_digit_values(ascii: &[u8]) -> Result<Zeroizing<Vec<u8>>, CardError> {
    let mut out = Zeroizing::new(Vec::with_capacity(ascii.len()));
    for &c in ascii {
        if !c.is_ascii_digit() {
            return Err(CardError::NotDigits);
        }
        out.push(c - b'0');
    }
    Ok(out)
}

/// A primary account number that passed length, Luhn and brand checks.
pub struct Pan {
    /// ASCII digits; zeroized on drop.
    digits: Zeroizing<String>,
    brand: Brand,
}

impl Pan {
    /// Validates ASCII digits. The error never contains the digits.
    pub fn parse(ascii: &[u8]) -> Result<Pan, CardError> {
        let values = to_digit_values(ascii)?;
        if !(12..=19).contains(&values.len()) {
            return Err(CardError::PanLength(values.len()));
        }
        if !luhn_valid(&values) {
            return Err(CardError::Luhn);
        }
        let brand = brand_of(&values).ok_or(CardError::UnknownBrand)?;
        if !brand.accepts_length(values.len()) {
            return Err(CardError::BrandLength { brand, len: values.len() });
        }
        let digits = Zeroizing::new(String::from_utf8_lossy(ascii).into_owned());
        Ok(Pan { digits, brand })
    }

    pub fn brand(&self) -> Brand {
        self.brand
    }

    pub fn last4(&self) -> &str {
        &self.digits[self.digits.len() - 4..]
    }

    /// The digits, for the vault's encryption and fingerprint only.
    pub fn expose(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({} ••••{})", self.brand, self.last4())
    }
}

/// A card security code (CVV2/CVC2/CID). Memory only: never stored, logged or recorded.
pub struct SecurityCode(Zeroizing<String>);

impl SecurityCode {
    pub fn parse(ascii: &[u8], brand: Brand) -> Result<SecurityCode, CardError> {
        to_digit_values(ascii)?;
        let expected = brand.security_code_len();
        if ascii.len() != expected {
            return Err(CardError::SecurityCodeLength { expected, got: ascii.len() });
        }
        Ok(SecurityCode(Zeroizing::new(String::from_utf8_lossy(ascii).into_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecurityCode(•••)")
    }
}

/// A postal code keyed for address verification (AVS), of the length the session allows.
/// Sealed with the card; shown as dots.
pub struct PostalCode(Zeroizing<String>);

impl PostalCode {
    pub fn parse(ascii: &[u8], lengths: super::plan::LengthRange) -> Result<PostalCode, CardError> {
        to_digit_values(ascii)?;
        if !lengths.contains(ascii.len()) {
            return Err(CardError::PostalCodeLength { min: lengths.min, max: lengths.max, got: ascii.len() });
        }
        Ok(PostalCode(Zeroizing::new(String::from_utf8_lossy(ascii).into_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostalCode(•••••)")
    }
}

/// A calendar month, the unit expiry dates are compared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct YearMonth {
    pub year: u16,
    pub month: u8,
}

/// A card expiry, valid through the end of its month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(pub YearMonth);

impl Expiry {
    /// Parses MMYY keyed by the caller; `today` is the current month (from the driver).
    pub fn parse(ascii: &[u8], today: YearMonth) -> Result<Expiry, CardError> {
        let v = to_digit_values(ascii)?;
        if v.len() != 4 {
            return Err(CardError::ExpiryFormat);
        }
        let month = v[0] * 10 + v[1];
        if !(1..=12).contains(&month) {
            return Err(CardError::ExpiryMonth);
        }
        let year = 2000 + u16::from(v[2]) * 10 + u16::from(v[3]);
        let ym = YearMonth { year, month };
        if ym < today {
            return Err(CardError::Expired);
        }
        Ok(Expiry(ym))
    }

    pub fn month(&self) -> u8 {
        self.0.month
    }

    pub fn year(&self) -> u16 {
        self.0.year
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: YearMonth = YearMonth { year: 2026, month: 11 };

    #[test]
    fn luhn_accepts_known_test_numbers_and_rejects_one_digit_off() {
        for pan in ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"] {
            let v: Vec<u8> = pan.bytes().map(|c| c - b'0').collect();
            assert!(luhn_valid(&v), "{pan}");
            let mut off = v.clone();
            off[3] = (off[3] + 1) % 10;
            assert!(!luhn_valid(&off), "{pan} with one digit changed");
            assert_eq!(luhn_check_digit(&v[..v.len() - 1]), v[v.len() - 1], "{pan}'s check digit");
        }
        assert!(!luhn_valid(&[]));
    }

    #[test]
    fn brand_table() {
        let cases: &[(&str, Option<Brand>)] = &[
            ("4111111111111111", Some(Brand::Visa)),
            ("5105105105105100", Some(Brand::Mastercard)),
            ("2221000000000009", Some(Brand::Mastercard)),
            ("2720990000000007", Some(Brand::Mastercard)),
            ("2721000000000004", None),
            ("2220990000000000", None),
            ("378282246310005", Some(Brand::Amex)),
            ("341111111111111", Some(Brand::Amex)),
            ("6011111111111117", Some(Brand::Discover)),
            ("6221260000000000", Some(Brand::Discover)),
            ("6229250000000000", Some(Brand::Discover)),
            ("6229260000000000", Some(Brand::Unionpay)),
            ("6500000000000002", Some(Brand::Discover)),
            ("3530111333300000", Some(Brand::Jcb)),
            ("30569309025904", Some(Brand::Diners)),
            ("38520000023237", Some(Brand::Diners)),
            ("6200000000000005", Some(Brand::Unionpay)),
            ("9999999999999995", None),
        ];
        for (pan, want) in cases {
            let v: Vec<u8> = pan.bytes().map(|c| c - b'0').collect();
            assert_eq!(brand_of(&v), *want, "{pan}");
        }
    }

    #[test]
    fn pan_parse_checks_length_luhn_brand() {
        assert_eq!(Pan::parse(b"4111111111111111").unwrap().brand(), Brand::Visa);
        assert_eq!(Pan::parse(b"4111111111111112").unwrap_err(), CardError::Luhn);
        assert_eq!(Pan::parse(b"41111111111").unwrap_err(), CardError::PanLength(11));
        assert_eq!(Pan::parse(b"41111111111111111111").unwrap_err(), CardError::PanLength(20));
        assert_eq!(Pan::parse(b"9999999999999995").unwrap_err(), CardError::UnknownBrand);
        assert_eq!(Pan::parse(b"41111a").unwrap_err(), CardError::NotDigits);
        // Mastercard is 16 digits only: a Luhn-valid 17-digit 5x number is refused.
        assert!(matches!(
            Pan::parse(b"55555555555544440").unwrap_err(),
            CardError::BrandLength { .. } | CardError::Luhn
        ));
    }

    #[test]
    fn pan_debug_and_errors_never_show_the_digits() {
        let pan = Pan::parse(b"5555555555554444").unwrap();
        let shown = format!("{pan:?}");
        assert_eq!(shown, "Pan(mastercard ••••4444)");
        assert!(!shown.contains("555555"));
        let err = Pan::parse(b"5555555555554445").unwrap_err().to_string();
        assert!(!err.contains("5555"));
        let cvv = SecurityCode::parse(b"123", Brand::Visa).unwrap();
        assert!(!format!("{cvv:?}").contains("123"));
    }

    #[test]
    fn expiry_rules() {
        assert_eq!(Expiry::parse(b"1230", TODAY).unwrap().0, YearMonth { year: 2030, month: 12 });
        assert_eq!(Expiry::parse(b"1126", TODAY).unwrap().0, YearMonth { year: 2026, month: 11 });
        assert_eq!(Expiry::parse(b"1026", TODAY).unwrap_err(), CardError::Expired);
        assert_eq!(Expiry::parse(b"0030", TODAY).unwrap_err(), CardError::ExpiryMonth);
        assert_eq!(Expiry::parse(b"1330", TODAY).unwrap_err(), CardError::ExpiryMonth);
        assert_eq!(Expiry::parse(b"123", TODAY).unwrap_err(), CardError::ExpiryFormat);
    }

    #[test]
    fn security_code_length_by_brand() {
        assert!(SecurityCode::parse(b"123", Brand::Visa).is_ok());
        assert!(SecurityCode::parse(b"1234", Brand::Amex).is_ok());
        assert_eq!(
            SecurityCode::parse(b"123", Brand::Amex).unwrap_err(),
            CardError::SecurityCodeLength { expected: 4, got: 3 }
        );
        assert!(SecurityCode::parse(b"1234", Brand::Visa).is_err());
    }
    #[test]
    fn postal_codes_take_the_session_lengths() {
        let zip = super::super::plan::LengthRange::new(5, 9);
        assert_eq!(PostalCode::parse(b"94105", zip).unwrap().expose(), "94105");
        assert!(PostalCode::parse(b"941051234", zip).is_ok());
        assert_eq!(
            PostalCode::parse(b"9410", zip).unwrap_err(),
            CardError::PostalCodeLength { min: 5, max: 9, got: 4 }
        );
        assert_eq!(PostalCode::parse(b"9410a", zip).unwrap_err(), CardError::NotDigits);
        assert!(!format!("{:?}", PostalCode::parse(b"94105", zip).unwrap()).contains("941"));
    }

    #[test]
    fn free_text_holding_a_card_number_is_recognised_in_any_common_spelling() {
        for text in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "order 4111-1111-1111-1111 for Bob",
            "4111.1111.1111.1111",
            "378282246310005",
            "ref 12 4111 1111 1111 1111 99",
            "6011111111111117x",
        ] {
            assert!(looks_like_card_number(text), "{text}");
        }
        for text in [
            "",
            "order-123",
            "4111111111111112",
            "4111 1111 1111 1112",
            "411111111111",
            "41111111111111111111",
            "2026-12-02 14:30",
            "4111  1111  1111  1111",
            "invoice 1234567890123",
        ] {
            assert!(!looks_like_card_number(text), "{text}");
        }
    }
}
