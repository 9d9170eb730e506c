//! What one capture asks the caller for: the payment method and its fields, the card brands
//! it takes, field lengths, whether number fields are keyed twice, the amount to confirm,
//! the language of the prompts and the key that goes back a field. The API builds a plan,
//! `check` says whether it holds together, and the collector follows it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::card::Brand;
use crate::media::telephone_event::Key;

/// A step of a capture: a field the caller keys, or the closing confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldName {
    Pan,
    Expiry,
    Cvv,
    PostalCode,
    RoutingNumber,
    AccountNumber,
    AccountType,
    /// The amount read back; 1 confirms, 2 stops. Added by the plan when it has an amount.
    Confirm,
}

impl FieldName {
    pub const ALL: [FieldName; 8] = [
        FieldName::Pan,
        FieldName::Expiry,
        FieldName::Cvv,
        FieldName::PostalCode,
        FieldName::RoutingNumber,
        FieldName::AccountNumber,
        FieldName::AccountType,
        FieldName::Confirm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FieldName::Pan => "pan",
            FieldName::Expiry => "expiry",
            FieldName::Cvv => "cvv",
            FieldName::PostalCode => "postal_code",
            FieldName::RoutingNumber => "routing_number",
            FieldName::AccountNumber => "account_number",
            FieldName::AccountType => "account_type",
            FieldName::Confirm => "confirm",
        }
    }

    pub fn parse(s: &str) -> Option<FieldName> {
        FieldName::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Fields a caller keys once per key press rather than as a digit string.
    pub fn is_single_key(self) -> bool {
        matches!(self, FieldName::AccountType | FieldName::Confirm)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentMethod {
    #[default]
    Card,
    /// A US bank account debited through ACH: ABA routing number and account number.
    Ach,
}

impl PaymentMethod {
    /// The fields asked for when a request names none.
    pub fn default_fields(self) -> Vec<FieldName> {
        match self {
            PaymentMethod::Card => vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
            PaymentMethod::Ach => vec![FieldName::RoutingNumber, FieldName::AccountNumber, FieldName::AccountType],
        }
    }

    /// Every field the method may ask for, in the order they are asked.
    fn order(self) -> &'static [FieldName] {
        match self {
            PaymentMethod::Card => &[FieldName::Pan, FieldName::Expiry, FieldName::Cvv, FieldName::PostalCode],
            PaymentMethod::Ach => &[FieldName::RoutingNumber, FieldName::AccountNumber, FieldName::AccountType],
        }
    }

    /// The fields the method cannot do without.
    fn required(self) -> &'static [FieldName] {
        match self {
            PaymentMethod::Card => &[FieldName::Pan],
            PaymentMethod::Ach => &[FieldName::RoutingNumber, FieldName::AccountNumber],
        }
    }
}

/// The language prompts and read-backs are spoken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Es,
    Fr,
    De,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::En, Language::Es, Language::Fr, Language::De];

    /// The ISO 639-1 code, as the API, the config and `prompts/<code>/` name it.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Es => "es",
            Language::Fr => "fr",
            Language::De => "de",
        }
    }

    pub fn parse(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }
}

/// The currencies whose amounts tonewall can read back (ISO 4217, two minor digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Currency {
    Usd,
    Eur,
    Gbp,
}

impl Currency {
    pub const ALL: [Currency; 3] = [Currency::Usd, Currency::Eur, Currency::Gbp];

    pub fn code(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
        }
    }
}

/// An amount in minor units (cents, pence), at most 999 999.99 so that it reads back in
/// words a caller can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub minor: u64,
    pub currency: Currency,
}

pub const MAX_AMOUNT_MINOR: u64 = 99_999_999;

impl Amount {
    /// Parses a decimal such as `"12.50"` or `"7"`: digits, then at most two decimals.
    pub fn parse(decimal: &str, currency: Currency) -> Result<Amount, PlanError> {
        let bad = || PlanError::Amount;
        let (whole, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
        let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.len() > 2 || (decimal.contains('.') && !digits(frac)) {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let cents: u64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        let minor = whole * 100 + cents;
        if minor == 0 || minor > MAX_AMOUNT_MINOR {
            return Err(bad());
        }
        Ok(Amount { minor, currency })
    }

    /// `"12.50"`, as the API shows it.
    pub fn decimal(&self) -> String {
        format!("{}.{:02}", self.minor / 100, self.minor % 100)
    }
}

/// The shortest and longest entry a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthRange {
    pub min: u8,
    pub max: u8,
}

impl LengthRange {
    pub const fn new(min: u8, max: u8) -> LengthRange {
        LengthRange { min, max }
    }

    pub fn contains(&self, len: usize) -> bool {
        (usize::from(self.min)..=usize::from(self.max)).contains(&len)
    }

    fn within(&self, outer: LengthRange) -> bool {
        self.min <= self.max && self.min >= outer.min && self.max <= outer.max
    }
}

/// The lengths a session may set, each within what its standard allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldLengths {
    #[serde(default = "FieldLengths::pan_default")]
    pub pan: LengthRange,
    #[serde(default = "FieldLengths::postal_code_default")]
    pub postal_code: LengthRange,
    #[serde(default = "FieldLengths::account_number_default")]
    pub account_number: LengthRange,
}

impl FieldLengths {
    /// ISO/IEC 7812: 12 to 19 digits.
    const PAN: LengthRange = LengthRange::new(12, 19);
    /// US ZIP (5) and ZIP+4 (9), Canadian and other numeric codes up to 10.
    const POSTAL_CODE: LengthRange = LengthRange::new(5, 10);
    /// NACHA: a DFI account number has up to 17 characters; shorter than 4 is no account.
    const ACCOUNT_NUMBER: LengthRange = LengthRange::new(4, 17);

    fn pan_default() -> LengthRange {
        Self::PAN
    }
    fn postal_code_default() -> LengthRange {
        Self::POSTAL_CODE
    }
    fn account_number_default() -> LengthRange {
        Self::ACCOUNT_NUMBER
    }

    /// The range `field`'s entry must fall in, for the fields whose length varies.
    pub fn of(&self, field: FieldName) -> Option<LengthRange> {
        match field {
            FieldName::Pan => Some(self.pan),
            FieldName::PostalCode => Some(self.postal_code),
            FieldName::AccountNumber => Some(self.account_number),
            _ => None,
        }
    }
}

impl Default for FieldLengths {
    fn default() -> Self {
        FieldLengths { pan: Self::PAN, postal_code: Self::POSTAL_CODE, account_number: Self::ACCOUNT_NUMBER }
    }
}

/// The key that takes the caller back to the field before. `*` and `#` go back only when
/// pressed on an empty entry (on a keyed one `*` still restarts the field and `#` ends it);
/// A to D go back whenever pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackKey(pub Key);

impl BackKey {
    pub fn parse(s: &str) -> Option<BackKey> {
        let mut chars = s.chars();
        let key = match (chars.next(), chars.next()) {
            (Some('*'), None) => Key::Star,
            (Some('#'), None) => Key::Hash,
            (Some(c @ 'A'..='D'), None) => Key::Letter(c as u8),
            _ => return None,
        };
        Some(BackKey(key))
    }

    pub fn as_char(self) -> char {
        match self.0 {
            Key::Star => '*',
            Key::Hash => '#',
            Key::Letter(c) => char::from(c),
            Key::Digit(d) => char::from(b'0' + d),
        }
    }
}

impl Serialize for BackKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_char().to_string())
    }
}

impl<'de> Deserialize<'de> for BackKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackKey::parse(&s).ok_or_else(|| serde::de::Error::custom("back_key must be \"*\", \"#\" or \"A\" to \"D\""))
    }
}

/// Everything one capture asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePlan {
    pub method: PaymentMethod,
    /// The fields keyed, in order (the confirmation is not one of them; see `steps`).
    pub fields: Vec<FieldName>,
    /// Card brands taken; empty takes every brand tonewall knows.
    #[serde(default)]
    pub valid_card_types: Vec<Brand>,
    #[serde(default)]
    pub lengths: FieldLengths,
    /// Card and account numbers are keyed twice and must match (as Twilio's `<Pay>` does).
    #[serde(default)]
    pub require_matching_inputs: bool,
    /// Read back at the end, with the last four digits; the caller confirms or stops.
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub language: Language,
    #[serde(default)]
    pub back_key: Option<BackKey>,
}

/// Why a plan cannot be followed; the API answers 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("fields for {method} must be {allowed}, in that order, with {required}")]
    Fields { method: &'static str, allowed: String, required: String },
    #[error("fields must not repeat")]
    Repeated,
    #[error("\"confirm\" is not a field: give an amount and the caller confirms it")]
    ConfirmIsImplied,
    #[error("valid_card_types applies to card payments only")]
    CardTypesWithoutCard,
    #[error("lengths.{field} must lie within {min} to {max}, min before max")]
    Length { field: &'static str, min: u8, max: u8 },
    #[error("amount must be a decimal such as \"12.50\" above 0 and at most 999999.99")]
    Amount,
    #[error("back_key must not be a digit")]
    DigitBackKey,
}

impl CapturePlan {
    /// A card capture of `fields` with every default: tests and the simplest sessions.
    pub fn card(fields: Vec<FieldName>) -> CapturePlan {
        CapturePlan {
            method: PaymentMethod::Card,
            fields,
            valid_card_types: Vec::new(),
            lengths: FieldLengths::default(),
            require_matching_inputs: false,
            amount: None,
            language: Language::En,
            back_key: None,
        }
    }

    /// The steps in order: the fields, then the confirmation when there is an amount.
    pub fn steps(&self) -> Vec<FieldName> {
        let mut steps = self.fields.clone();
        if self.amount.is_some() {
            steps.push(FieldName::Confirm);
        }
        steps
    }

    /// Whether `brand` is taken.
    pub fn accepts(&self, brand: Brand) -> bool {
        self.valid_card_types.is_empty() || self.valid_card_types.contains(&brand)
    }

    /// Whether the caller keys `field` twice.
    pub fn keyed_twice(&self, field: FieldName) -> bool {
        self.require_matching_inputs
            && matches!(field, FieldName::Pan | FieldName::RoutingNumber | FieldName::AccountNumber)
    }

    pub fn check(&self) -> Result<(), PlanError> {
        if self.fields.contains(&FieldName::Confirm) {
            return Err(PlanError::ConfirmIsImplied);
        }
        let mut seen = self.fields.clone();
        seen.sort_by_key(|f| *f as u8);
        seen.dedup();
        if seen.len() != self.fields.len() {
            return Err(PlanError::Repeated);
        }
        let order = self.method.order();
        let positions: Option<Vec<usize>> = self.fields.iter().map(|f| order.iter().position(|o| o == f)).collect();
        let in_order = positions.is_some_and(|p| p.windows(2).all(|w| w[0] < w[1]));
        let complete = self.method.required().iter().all(|r| self.fields.contains(r));
        if !in_order || !complete {
            let names = |fs: &[FieldName]| fs.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ");
            let method = match self.method {
                PaymentMethod::Card => "card",
                PaymentMethod::Ach => "ach",
            };
            return Err(PlanError::Fields { method, allowed: names(order), required: names(self.method.required()) });
        }
        if self.method != PaymentMethod::Card && !self.valid_card_types.is_empty() {
            return Err(PlanError::CardTypesWithoutCard);
        }
        let defaults = FieldLengths::default();
        for (field, range, outer) in [
            ("pan", self.lengths.pan, defaults.pan),
            ("postal_code", self.lengths.postal_code, defaults.postal_code),
            ("account_number", self.lengths.account_number, defaults.account_number),
        ] {
            if !range.within(outer) {
                return Err(PlanError::Length { field, min: outer.min, max: outer.max });
            }
        }
        if self.amount.is_some_and(|a| a.minor == 0 || a.minor > MAX_AMOUNT_MINOR) {
            return Err(PlanError::Amount);
        }
        if matches!(self.back_key, Some(BackKey(Key::Digit(_)))) {
            return Err(PlanError::DigitBackKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(method: PaymentMethod, fields: &[FieldName]) -> CapturePlan {
        CapturePlan { method, ..CapturePlan::card(fields.to_vec()) }
    }

    #[test]
    fn fields_must_fit_their_method_in_order() {
        use FieldName::*;
        let card = PaymentMethod::Card;
        let ach = PaymentMethod::Ach;
        assert_eq!(plan(card, &[Pan, Expiry, Cvv, PostalCode]).check(), Ok(()));
        assert_eq!(plan(card, &[Pan, PostalCode]).check(), Ok(()));
        assert_eq!(plan(ach, &ach.default_fields()).check(), Ok(()));
        assert_eq!(plan(ach, &[RoutingNumber, AccountNumber]).check(), Ok(()));
        for (method, fields) in [
            (card, vec![Expiry, Pan]),
            (card, vec![Expiry]),
            (card, vec![Pan, RoutingNumber]),
            (ach, vec![RoutingNumber]),
            (ach, vec![AccountNumber, RoutingNumber]),
            (ach, vec![Pan]),
        ] {
            assert!(matches!(plan(method, &fields).check(), Err(PlanError::Fields { .. })), "{method:?} {fields:?}");
        }
        assert_eq!(plan(card, &[Pan, Pan]).check(), Err(PlanError::Repeated));
        assert_eq!(plan(card, &[Pan, Confirm]).check(), Err(PlanError::ConfirmIsImplied));
        let mut p = plan(ach, &[RoutingNumber, AccountNumber]);
        p.valid_card_types = vec![Brand::Visa];
        assert_eq!(p.check(), Err(PlanError::CardTypesWithoutCard));
    }

    #[test]
    fn lengths_stay_within_their_standard() {
        let mut p = CapturePlan::card(vec![FieldName::Pan, FieldName::PostalCode]);
        p.lengths.postal_code = LengthRange::new(5, 5);
        assert_eq!(p.check(), Ok(()));
        for (pc, acct) in
            [((4, 9), (4, 17)), ((5, 11), (4, 17)), ((9, 5), (4, 17)), ((5, 10), (3, 17)), ((5, 10), (4, 18))]
        {
            p.lengths.postal_code = LengthRange::new(pc.0, pc.1);
            p.lengths.account_number = LengthRange::new(acct.0, acct.1);
            assert!(matches!(p.check(), Err(PlanError::Length { .. })), "{pc:?} {acct:?}");
        }
    }

    #[test]
    fn amounts_parse_as_decimals_with_at_most_two_places() {
        let usd = Currency::Usd;
        assert_eq!(Amount::parse("12.50", usd).unwrap().minor, 1250);
        assert_eq!(Amount::parse("12.5", usd).unwrap().minor, 1250);
        assert_eq!(Amount::parse("7", usd).unwrap().minor, 700);
        assert_eq!(Amount::parse("999999.99", usd).unwrap().minor, MAX_AMOUNT_MINOR);
        assert_eq!(Amount::parse("0.01", usd).unwrap().decimal(), "0.01");
        for bad in ["", "0", "0.00", "1.234", "-1", "1,50", "1.", ".5", "1000000", "1e3", " 1"] {
            assert_eq!(Amount::parse(bad, usd), Err(PlanError::Amount), "{bad:?}");
        }
    }

    #[test]
    fn steps_end_with_the_confirmation_when_there_is_an_amount() {
        let mut p = CapturePlan::card(vec![FieldName::Pan]);
        assert_eq!(p.steps(), [FieldName::Pan]);
        p.amount = Some(Amount { minor: 100, currency: Currency::Eur });
        assert_eq!(p.steps(), [FieldName::Pan, FieldName::Confirm]);
        assert!(p.keyed_twice(FieldName::Pan) == p.require_matching_inputs);
    }

    #[test]
    fn back_keys_are_star_hash_or_a_letter() {
        assert_eq!(BackKey::parse("*"), Some(BackKey(Key::Star)));
        assert_eq!(BackKey::parse("D").map(BackKey::as_char), Some('D'));
        for bad in ["", "1", "E", "**", "a"] {
            assert_eq!(BackKey::parse(bad), None, "{bad:?}");
        }
    }
}
