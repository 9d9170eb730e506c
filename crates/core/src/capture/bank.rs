//! US bank accounts for ACH debits: the ABA routing transit number (its check digit, per the
//! ABA's *Routing Number Policy*: 3·(d1+d4+d7) + 7·(d2+d5+d8) + (d3+d6+d9) ≡ 0 mod 10, and
//! its first two digits in the Federal Reserve ranges), the account number (NACHA: up to 17
//! characters; tonewall takes digits only) and the account type.
//!
//! Like `Pan`, the numbers live in zeroizing buffers and print only their last four digits.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use super::plan::LengthRange;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BankError {
    #[error("routing number must have 9 digits, got {0}")]
    RoutingLength(usize),
    #[error("routing number fails its check digit")]
    RoutingCheck,
    #[error("routing number starts outside the Federal Reserve ranges")]
    RoutingPrefix,
    #[error("account number must have {min} to {max} digits, got {got}")]
    AccountLength { min: u8, max: u8, got: usize },
    #[error("account type must be 1 (checking), 2 (savings) or 3 (business checking)")]
    AccountType,
    #[error("only the digits 0-9 are allowed")]
    NotDigits,
}

fn digit_values(ascii: &[u8]) -> Result<Vec<u32>, BankError> {
    ascii.iter().map(|b| if b.is_ascii_digit() { Ok(u32::from(b - b'0')) } else { Err(BankError::NotDigits) }).collect()
}

/// An ABA routing transit number that passed its checks.
pub struct RoutingNumber(Zeroizing<String>);

impl RoutingNumber {
    pub fn parse(ascii: &[u8]) -> Result<RoutingNumber, BankError> {
        let d = Zeroizing::new(digit_values(ascii)?);
        if d.len() != 9 {
            return Err(BankError::RoutingLength(d.len()));
        }
        // 00 is the U.S. Government, 01–12 the Federal Reserve banks, 21–32 thrifts,
        // 61–72 electronic, 80 traveller's cheques.
        let prefix = d[0] * 10 + d[1];
        if !matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80) {
            return Err(BankError::RoutingPrefix);
        }
        let sum = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8]);
        if !sum.is_multiple_of(10) {
            return Err(BankError::RoutingCheck);
        }
        Ok(RoutingNumber(Zeroizing::new(String::from_utf8_lossy(ascii).into_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn last4(&self) -> &str {
        &self.0[5..]
    }
}

impl fmt::Debug for RoutingNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingNumber(•••••{})", self.last4())
    }
}

/// A bank account number of the length the session allows.
pub struct AccountNumber(Zeroizing<String>);

impl AccountNumber {
    pub fn parse(ascii: &[u8], lengths: LengthRange) -> Result<AccountNumber, BankError> {
        digit_values(ascii)?;
        if !lengths.contains(ascii.len()) {
            return Err(BankError::AccountLength { min: lengths.min, max: lengths.max, got: ascii.len() });
        }
        Ok(AccountNumber(Zeroizing::new(String::from_utf8_lossy(ascii).into_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountNumber(••••{})", self.last4())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountType {
    Checking,
    Savings,
    BusinessChecking,
}

impl AccountType {
    /// The key the caller presses for it: 1 checking, 2 savings, 3 business checking.
    pub fn from_key(digit: u8) -> Result<AccountType, BankError> {
        match digit {
            1 => Ok(AccountType::Checking),
            2 => Ok(AccountType::Savings),
            3 => Ok(AccountType::BusinessChecking),
            _ => Err(BankError::AccountType),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Checking => "checking",
            AccountType::Savings => "savings",
            AccountType::BusinessChecking => "business_checking",
        }
    }

    pub fn parse(s: &str) -> Option<AccountType> {
        [AccountType::Checking, AccountType::Savings, AccountType::BusinessChecking]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// A complete, validated bank account. Moved to the vault driver, never copied.
#[derive(Debug)]
pub struct BankAccount {
    pub routing: RoutingNumber,
    pub account: AccountNumber,
    pub kind: Option<AccountType>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_numbers_of_real_banks_pass_and_one_digit_off_fails() {
        // Published routing numbers (Federal Reserve E-Payments directory): JPMorgan Chase
        // NY, Bank of America CA, Wells Fargo MN, the Federal Reserve Bank of New York.
        for rtn in ["021000021", "121000358", "091000019", "011000015", "322271627"] {
            assert!(RoutingNumber::parse(rtn.as_bytes()).is_ok(), "{rtn}");
            for i in 0..9 {
                let mut off = rtn.as_bytes().to_vec();
                off[i] = b'0' + (off[i] - b'0' + 1) % 10;
                assert!(RoutingNumber::parse(&off).is_err(), "{rtn} with digit {i} changed");
            }
        }
        assert_eq!(RoutingNumber::parse(b"02100002").unwrap_err(), BankError::RoutingLength(8));
        // Check digit right, prefix 13 unassigned.
        assert_eq!(RoutingNumber::parse(b"130000006").unwrap_err(), BankError::RoutingPrefix);
        assert_eq!(RoutingNumber::parse(b"02100002a").unwrap_err(), BankError::NotDigits);
    }

    #[test]
    fn account_numbers_follow_the_session_lengths_and_never_print() {
        let range = LengthRange::new(4, 17);
        let a = AccountNumber::parse(b"000123456789", range).unwrap();
        assert_eq!(a.last4(), "6789");
        assert!(!format!("{a:?}").contains("12345"));
        assert!(AccountNumber::parse(b"123", range).is_err());
        assert!(AccountNumber::parse(b"123456789012345678", range).is_err());
        let err = AccountNumber::parse(b"12345", LengthRange::new(8, 12)).unwrap_err();
        assert_eq!(err, BankError::AccountLength { min: 8, max: 12, got: 5 });
        assert!(!format!("{:?}", RoutingNumber::parse(b"021000021").unwrap()).contains("02100"));
    }

    #[test]
    fn account_types_by_key() {
        assert_eq!(AccountType::from_key(1), Ok(AccountType::Checking));
        assert_eq!(AccountType::from_key(2), Ok(AccountType::Savings));
        assert_eq!(AccountType::from_key(3), Ok(AccountType::BusinessChecking));
        assert_eq!(AccountType::from_key(4), Err(BankError::AccountType));
        assert_eq!(AccountType::parse("savings"), Some(AccountType::Savings));
    }
}
