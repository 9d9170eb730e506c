//! Where each field of a capture stands, as the agent's desktop shows it: states, counts and
//! masks, never a digit. The collector owns this; the session registry only stores the
//! latest copy the call reports (`CallEvent::Progress`).

use serde::{Deserialize, Serialize};

use super::collector::masked_pan;
use super::plan::FieldName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldState {
    Pending,
    Entering,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProgress {
    pub name: FieldName,
    pub state: FieldState,
    /// Digits keyed into the field so far (for a done field: how many it took).
    pub digits: usize,
    /// Dots for keyed digits; a done card number shows its last four, a done expiry MM/YY.
    pub masked: String,
    pub attempts_left: u8,
    /// A field keyed twice: the first entry is in, the second is being keyed.
    #[serde(default)]
    pub second_entry: bool,
}

impl FieldProgress {
    /// A field nobody has reached yet.
    pub fn pending(name: FieldName, attempts_left: u8) -> FieldProgress {
        FieldProgress {
            name,
            state: FieldState::Pending,
            digits: 0,
            masked: String::new(),
            attempts_left,
            second_entry: false,
        }
    }
}

/// A capture about to start: the first field is being entered.
pub fn initial(fields: &[FieldName], max_attempts: u8) -> Vec<FieldProgress> {
    let mut all: Vec<FieldProgress> = fields.iter().map(|f| FieldProgress::pending(*f, max_attempts)).collect();
    if let Some(first) = all.first_mut() {
        first.state = FieldState::Entering;
    }
    all
}

/// The mask of `count` digits being keyed into `field`.
pub fn entering_mask(field: FieldName, count: usize) -> String {
    match field {
        FieldName::Pan => masked_pan(count, None),
        _ => "•".repeat(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_starts_on_its_first_field_and_masks_show_no_digit() {
        let p = initial(&[FieldName::Pan, FieldName::Expiry], 3);
        assert_eq!((p[0].state, p[1].state), (FieldState::Entering, FieldState::Pending));
        assert!(p.iter().all(|f| f.attempts_left == 3 && f.digits == 0));
        assert_eq!(entering_mask(FieldName::Pan, 6), "•••• ••");
        assert_eq!(entering_mask(FieldName::Cvv, 3), "•••");
        assert!(initial(&[], 3).is_empty());
    }
}
