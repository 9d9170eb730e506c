//! What a stored record's ciphertext holds, and what the API may see of it.
//!
//! A card seals as `pan|MMYY|postal` (expiry and postal code empty when not captured;
//! records written before postal codes were captured have two parts), a bank account as
//! `ach|routing|account|type`. The security code is never sealed (PCI DSS 3.3.1).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::crypto::CryptoError;
use crate::capture::bank::{AccountType, BankAccount};
use crate::capture::card::{Brand, SecurityCode};
use crate::capture::collector::{Captured, Payment};
use crate::capture::plan::{Amount, PaymentMethod};

/// What the agent, the processor webhook and the session result may see of a stored payment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub token: String,
    #[serde(default)]
    pub payment_method: PaymentMethod,
    /// A card's brand (none for a bank account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<Brand>,
    /// Of the card number or the bank account number.
    pub last4: String,
    pub expiry_month: Option<u8>,
    pub expiry_year: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_type: Option<AccountType>,
    /// A postal code was captured and sealed with the card (for AVS at the processor).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub postal_code: bool,
    /// The amount the caller heard read back and confirmed with 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_confirmed: Option<Amount>,
}

/// A payment ready to seal: the plaintext, what its keyed fingerprint is taken of (the PAN
/// alone for a card, so convergent tokens match those stored before), and its clear columns.
pub struct Sealable {
    pub plaintext: Zeroizing<String>,
    pub fingerprinted: Zeroizing<String>,
    pub brand_column: &'static str,
    pub record: TokenRecord,
}

/// The `brand` column of a bank account's record.
pub const ACH_BRAND_COLUMN: &str = "ach";

pub fn sealable(captured: &Captured, token: String) -> Sealable {
    let confirmed = captured.confirmed;
    match &captured.payment {
        Payment::Card(card) => {
            let expiry = card.expiry.map(|e| format!("{:02}{:02}", e.month(), e.year() % 100)).unwrap_or_default();
            let postal = card.postal_code.as_ref().map_or("", |p| p.expose());
            Sealable {
                plaintext: Zeroizing::new(format!("{}|{expiry}|{postal}", card.pan.expose())),
                fingerprinted: Zeroizing::new(card.pan.expose().to_string()),
                brand_column: card.pan.brand().as_str(),
                record: TokenRecord {
                    token,
                    payment_method: PaymentMethod::Card,
                    brand: Some(card.pan.brand()),
                    last4: card.pan.last4().to_string(),
                    expiry_month: card.expiry.map(|e| e.month()),
                    expiry_year: card.expiry.map(|e| e.year()),
                    account_type: None,
                    postal_code: card.postal_code.is_some(),
                    amount_confirmed: confirmed,
                },
            }
        }
        Payment::Bank(BankAccount { routing, account, kind }) => Sealable {
            plaintext: Zeroizing::new(format!(
                "{ACH_BRAND_COLUMN}|{}|{}|{}",
                routing.expose(),
                account.expose(),
                kind.map_or("", AccountType::as_str)
            )),
            fingerprinted: Zeroizing::new(format!("{ACH_BRAND_COLUMN}:{}:{}", routing.expose(), account.expose())),
            brand_column: ACH_BRAND_COLUMN,
            record: TokenRecord {
                token,
                payment_method: PaymentMethod::Ach,
                brand: None,
                last4: account.last4().to_string(),
                expiry_month: None,
                expiry_year: None,
                account_type: *kind,
                postal_code: false,
                amount_confirmed: confirmed,
            },
        },
    }
}

/// A stored card decrypted for a processor. Zeroized on drop; no Debug.
pub struct RevealedCard {
    pub pan: Zeroizing<String>,
    /// MMYY, or empty when none was captured.
    pub expiry: Zeroizing<String>,
    /// Empty when none was captured.
    pub postal_code: Zeroizing<String>,
    pub security_code: Option<SecurityCode>,
}

/// A stored bank account decrypted for a processor. Zeroized on drop; no Debug.
pub struct RevealedAccount {
    pub routing_number: Zeroizing<String>,
    pub account_number: Zeroizing<String>,
    pub account_type: Option<AccountType>,
}

pub enum Revealed {
    Card(RevealedCard),
    Bank(RevealedAccount),
}

impl Revealed {
    /// The card, for callers that stored one.
    pub fn into_card(self) -> Option<RevealedCard> {
        match self {
            Revealed::Card(c) => Some(c),
            Revealed::Bank(_) => None,
        }
    }

    /// What the keyed fingerprint is taken of, as `sealable` takes it.
    pub fn fingerprinted(&self) -> Zeroizing<String> {
        match self {
            Revealed::Card(c) => c.pan.clone(),
            Revealed::Bank(b) => Zeroizing::new(format!(
                "{ACH_BRAND_COLUMN}:{}:{}",
                b.routing_number.as_str(),
                b.account_number.as_str()
            )),
        }
    }
}

/// Reads a record's plaintext back.
pub fn reveal(text: &str) -> Result<Revealed, CryptoError> {
    let parts: Vec<&str> = text.split('|').collect();
    let own = |s: &str| Zeroizing::new(s.to_string());
    match parts.as_slice() {
        [ACH_BRAND_COLUMN, routing, account, kind] => Ok(Revealed::Bank(RevealedAccount {
            routing_number: own(routing),
            account_number: own(account),
            account_type: AccountType::parse(kind),
        })),
        [pan, expiry] => Ok(Revealed::Card(RevealedCard {
            pan: own(pan),
            expiry: own(expiry),
            postal_code: Zeroizing::default(),
            security_code: None,
        })),
        [pan, expiry, postal] => Ok(Revealed::Card(RevealedCard {
            pan: own(pan),
            expiry: own(expiry),
            postal_code: own(postal),
            security_code: None,
        })),
        _ => Err(CryptoError::Decrypt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::bank::{AccountNumber, RoutingNumber};
    use crate::capture::card::{Pan, PostalCode};
    use crate::capture::collector::CapturedCard;
    use crate::capture::plan::{Currency, LengthRange};

    #[test]
    fn cards_and_accounts_seal_and_read_back_whole() {
        let pan = Pan::parse(b"4111111111111111").unwrap();
        let mut card = CapturedCard::new(pan, None, None);
        card.postal_code = Some(PostalCode::parse(b"94105", LengthRange::new(5, 10)).unwrap());
        let amount = Amount { minor: 1250, currency: Currency::Usd };
        let s = sealable(&Captured { payment: Payment::Card(card), confirmed: Some(amount) }, "tok_a".into());
        assert_eq!((s.brand_column, s.fingerprinted.as_str()), ("visa", "4111111111111111"));
        assert!(s.record.postal_code && s.record.amount_confirmed == Some(amount));
        let Some(Revealed::Card(c)) = reveal(&s.plaintext).ok() else { panic!("a card") };
        assert_eq!((c.pan.as_str(), c.expiry.as_str(), c.postal_code.as_str()), ("4111111111111111", "", "94105"));
        // A record sealed before postal codes.
        let Some(Revealed::Card(old)) = reveal("5555555555554444|1230").ok() else { panic!("a card") };
        assert_eq!((old.expiry.as_str(), old.postal_code.as_str()), ("1230", ""));

        let bank = BankAccount {
            routing: RoutingNumber::parse(b"021000021").unwrap(),
            account: AccountNumber::parse(b"12345678", LengthRange::new(4, 17)).unwrap(),
            kind: Some(AccountType::Savings),
        };
        let s = sealable(&Captured { payment: Payment::Bank(bank), confirmed: None }, "tok_b".into());
        assert_eq!(s.record.payment_method, PaymentMethod::Ach);
        assert_eq!((s.record.brand, s.record.last4.as_str()), (None, "5678"));
        let Some(Revealed::Bank(b)) = reveal(&s.plaintext).ok() else { panic!("an account") };
        assert_eq!((b.routing_number.as_str(), b.account_number.as_str()), ("021000021", "12345678"));
        assert_eq!(b.account_type, Some(AccountType::Savings));
        assert!(reveal("only-one-part").is_err());
        let json = serde_json::to_string(&s.record).unwrap();
        assert!(!json.contains("12345678") && !json.contains("021000021"), "{json}");
    }
}
