//! Turns keypresses into card fields: one field at a time, `#` ends a field, `*` restarts
//! it, fixed-length fields end on their last digit, an inter-digit timeout submits what was
//! keyed, and a field that fails validation is asked again up to `max_attempts` times.
//!
//! Sans-IO: every input carries the time it happened; `poll_timeout` says when to call
//! `handle_timeout`. The keyed digits live in a zeroizing buffer and never leave this
//! module except inside the validated `Pan`/`SecurityCode` types.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::card::{CardError, Expiry, Pan, SecurityCode, YearMonth};
use super::progress::{self, FieldProgress, FieldState};
use crate::media::telephone_event::Key;

/// A field the agent can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldName {
    Pan,
    Expiry,
    Cvv,
}

impl FieldName {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldName::Pan => "pan",
            FieldName::Expiry => "expiry",
            FieldName::Cvv => "cvv",
        }
    }

    /// The longest entry we buffer for this field before submitting it.
    fn max_len(self) -> usize {
        match self {
            FieldName::Pan => 19,
            FieldName::Expiry => 4,
            FieldName::Cvv => 4,
        }
    }
}

/// Prompts the capture flow asks the call to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptId {
    CardNumber,
    Expiry,
    SecurityCode,
    Invalid,
    ThankYou,
}

impl PromptId {
    pub fn for_field(field: FieldName) -> PromptId {
        match field {
            FieldName::Pan => PromptId::CardNumber,
            FieldName::Expiry => PromptId::Expiry,
            FieldName::Cvv => PromptId::SecurityCode,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CollectorConfig {
    /// After a digit, how long to wait for the next one before submitting the entry.
    pub inter_digit: Duration,
    /// After a prompt starts, how long to wait for the first digit.
    pub first_digit: Duration,
    pub max_attempts: u8,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig { inter_digit: Duration::from_secs(8), first_digit: Duration::from_secs(20), max_attempts: 3 }
    }
}

/// A complete, validated card. Moved to the vault driver, never copied.
#[derive(Debug)]
pub struct CapturedCard {
    pub pan: Pan,
    pub expiry: Option<Expiry>,
    pub security_code: Option<SecurityCode>,
}

/// Why a field's entry was refused. Never carries the digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no digits were entered")]
    NothingEntered,
    #[error(transparent)]
    Invalid(#[from] CardError),
}

#[derive(Debug)]
pub enum CaptureEvent {
    Prompt(PromptId),
    DigitEntered { field: FieldName, count: usize },
    FieldRestarted { field: FieldName },
    FieldRejected { field: FieldName, attempts_left: u8, reason: Rejection },
    FieldDone { field: FieldName, masked: String },
    Completed(Box<CapturedCard>),
    Failed { field: FieldName },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    #[error("the session is not collecting")]
    NotCollecting,
    #[error("the session does not ask for this field")]
    NotRequested,
    #[error("the caller has not reached this field yet")]
    NotReached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Collecting,
    Completed,
    Failed,
}

pub struct Collector {
    config: CollectorConfig,
    today: YearMonth,
    fields: Vec<FieldName>,
    index: usize,
    entry: Zeroizing<Vec<u8>>,
    attempts: u8,
    deadline: Option<Instant>,
    phase: Phase,
    pan: Option<Pan>,
    expiry: Option<Expiry>,
    security_code: Option<SecurityCode>,
    /// Each done field's digit count and mask, for `progress`.
    done: Vec<Option<(usize, String)>>,
    events: VecDeque<CaptureEvent>,
}

impl Collector {
    /// `fields` must start with `Pan` (the API checks this); `today` is the current month.
    pub fn new(fields: Vec<FieldName>, config: CollectorConfig, today: YearMonth, now: Instant) -> Self {
        let done = vec![None; fields.len()];
        let mut c = Collector {
            config,
            today,
            fields,
            index: 0,
            entry: Zeroizing::new(Vec::with_capacity(19)),
            attempts: 0,
            deadline: None,
            phase: Phase::Collecting,
            pan: None,
            expiry: None,
            security_code: None,
            done,
            events: VecDeque::new(),
        };
        c.ask_current(now);
        c
    }

    pub fn current_field(&self) -> Option<FieldName> {
        (self.phase == Phase::Collecting).then(|| self.fields[self.index])
    }

    pub fn is_finished(&self) -> bool {
        self.phase != Phase::Collecting
    }

    /// Where every field stands: the one copy of the capture's progress.
    pub fn progress(&self) -> Vec<FieldProgress> {
        let max = self.config.max_attempts;
        let mut all = progress::initial(&self.fields, max);
        for (i, f) in all.iter_mut().enumerate() {
            if let Some((digits, masked)) = &self.done[i] {
                *f = FieldProgress { state: FieldState::Done, digits: *digits, masked: masked.clone(), ..f.clone() };
            } else if i == self.index {
                let count = self.entry.len();
                f.state = if self.phase == Phase::Failed { FieldState::Failed } else { FieldState::Entering };
                f.digits = count;
                f.masked = progress::entering_mask(f.name, count);
                f.attempts_left = max.saturating_sub(self.attempts);
            } else {
                f.state = FieldState::Pending;
            }
        }
        all
    }

    pub fn poll_event(&mut self) -> Option<CaptureEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_key(&mut self, key: Key, now: Instant) {
        let Some(field) = self.current_field() else { return };
        match key {
            Key::Digit(d) => {
                self.entry.push(b'0' + d);
                self.events.push_back(CaptureEvent::DigitEntered { field, count: self.entry.len() });
                self.deadline = Some(now + self.config.inter_digit);
                if self.entry_is_complete(field) {
                    self.submit(now);
                }
            }
            Key::Hash if !self.entry.is_empty() => self.submit(now),
            Key::Hash => {}
            Key::Star => {
                self.entry.clear();
                self.events.push_back(CaptureEvent::FieldRestarted { field });
                self.ask_current(now);
            }
            Key::Letter(_) => {}
        }
    }

    /// The agent asks the caller again for `field`, which must already have been reached:
    /// it and every field after it are collected again, with fresh attempts (the security
    /// code's length depends on the card, so nothing after a restarted field stands).
    pub fn restart(&mut self, field: FieldName, now: Instant) -> Result<(), RestartError> {
        if self.phase != Phase::Collecting {
            return Err(RestartError::NotCollecting);
        }
        let at = self.fields.iter().position(|f| *f == field).ok_or(RestartError::NotRequested)?;
        if at > self.index {
            return Err(RestartError::NotReached);
        }
        for d in &mut self.done[at..] {
            *d = None;
        }
        for f in &self.fields[at..=self.index] {
            match f {
                FieldName::Pan => self.pan = None,
                FieldName::Expiry => self.expiry = None,
                FieldName::Cvv => self.security_code = None,
            }
        }
        // One event: a restarted field takes those after it along.
        self.events.push_back(CaptureEvent::FieldRestarted { field });
        self.index = at;
        self.entry.clear();
        self.attempts = 0;
        self.ask_current(now);
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if now >= d && self.phase == Phase::Collecting => {
                self.deadline = None;
                if self.entry.is_empty() {
                    self.reject(Rejection::NothingEntered, now);
                } else {
                    self.submit(now);
                }
            }
            _ => {}
        }
    }

    fn entry_is_complete(&self, field: FieldName) -> bool {
        let len = self.entry.len();
        match field {
            FieldName::Pan => len >= field.max_len(),
            FieldName::Expiry => len == 4,
            FieldName::Cvv => {
                let want = self.pan.as_ref().map_or(3, |p| p.brand().security_code_len());
                len >= want
            }
        }
    }

    fn ask_current(&mut self, now: Instant) {
        self.events.push_back(CaptureEvent::Prompt(PromptId::for_field(self.fields[self.index])));
        self.deadline = Some(now + self.config.first_digit);
    }

    fn submit(&mut self, now: Instant) {
        let field = self.fields[self.index];
        let result = self.validate(field);
        let digits = self.entry.len();
        self.entry.clear();
        match result {
            Ok(masked) => {
                self.done[self.index] = Some((digits, masked.clone()));
                self.events.push_back(CaptureEvent::FieldDone { field, masked });
                self.attempts = 0;
                self.index += 1;
                if self.index == self.fields.len() {
                    self.complete();
                } else {
                    self.ask_current(now);
                }
            }
            Err(e) => self.reject(Rejection::Invalid(e), now),
        }
    }

    fn validate(&mut self, field: FieldName) -> Result<String, CardError> {
        match field {
            FieldName::Pan => {
                let pan = Pan::parse(&self.entry)?;
                let masked = masked_pan(self.entry.len(), Some(pan.last4()));
                self.pan = Some(pan);
                Ok(masked)
            }
            FieldName::Expiry => {
                let e = Expiry::parse(&self.entry, self.today)?;
                self.expiry = Some(e);
                Ok(format!("{:02}/{:02}", e.month(), e.year() % 100))
            }
            FieldName::Cvv => {
                let brand = self.pan.as_ref().map(|p| p.brand()).ok_or(CardError::UnknownBrand)?;
                let code = SecurityCode::parse(&self.entry, brand)?;
                let masked = "•".repeat(code.expose().len());
                self.security_code = Some(code);
                Ok(masked)
            }
        }
    }

    fn reject(&mut self, reason: Rejection, now: Instant) {
        let field = self.fields[self.index];
        self.attempts += 1;
        let attempts_left = self.config.max_attempts.saturating_sub(self.attempts);
        self.events.push_back(CaptureEvent::FieldRejected { field, attempts_left, reason });
        if attempts_left == 0 {
            self.phase = Phase::Failed;
            self.deadline = None;
            self.events.push_back(CaptureEvent::Failed { field });
        } else {
            self.events.push_back(CaptureEvent::Prompt(PromptId::Invalid));
            self.ask_current(now);
        }
    }

    fn complete(&mut self) {
        self.phase = Phase::Completed;
        self.deadline = None;
        // Invariant: the first field is always the PAN, so it is set once all fields are done.
        let Some(pan) = self.pan.take() else {
            self.phase = Phase::Failed;
            self.events.push_back(CaptureEvent::Failed { field: FieldName::Pan });
            return;
        };
        self.events.push_back(CaptureEvent::Completed(Box::new(CapturedCard {
            pan,
            expiry: self.expiry.take(),
            security_code: self.security_code.take(),
        })));
    }
}

/// Dots in groups of four for `count` digits, with the last four shown once known.
pub fn masked_pan(count: usize, last4: Option<&str>) -> String {
    let mut s = String::new();
    let hidden = if last4.is_some() { count.saturating_sub(4) } else { count };
    for i in 0..hidden {
        if i > 0 && i % 4 == 0 {
            s.push(' ');
        }
        s.push('•');
    }
    if let Some(l4) = last4 {
        if hidden > 0 {
            s.push(' ');
        }
        s.push_str(l4);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &mut Collector, s: &str, now: Instant) {
        for ch in s.chars() {
            let k = match ch {
                '*' => Key::Star,
                '#' => Key::Hash,
                d => Key::Digit(d.to_digit(10).unwrap() as u8),
            };
            c.handle_key(k, now);
        }
    }

    fn drain(c: &mut Collector) -> Vec<CaptureEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn collector(now: Instant) -> Collector {
        let today = YearMonth { year: 2026, month: 11 };
        Collector::new(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv], CollectorConfig::default(), today, now)
    }

    #[test]
    fn full_card_completes() {
        let t = crate::test_origin();
        let mut c = collector(t);
        keys(&mut c, "4111111111111111#1230123", t);
        let ev = drain(&mut c);
        let done: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                CaptureEvent::FieldDone { field, masked } => Some((*field, masked.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            done,
            vec![
                (FieldName::Pan, "•••• •••• •••• 1111".to_string()),
                (FieldName::Expiry, "12/30".to_string()),
                (FieldName::Cvv, "•••".to_string())
            ]
        );
        let card = ev.into_iter().find_map(|e| match e {
            CaptureEvent::Completed(c) => Some(c),
            _ => None,
        });
        let card = card.expect("completed");
        // The whole card, as keyed: a code keyed as 123 and kept as 132 must fail here.
        assert_eq!(card.pan.expose(), "4111111111111111");
        assert_eq!(card.expiry.map(|e| (e.month(), e.year())), Some((12, 2030)));
        assert_eq!(card.security_code.as_ref().map(|c| c.expose()), Some("123"));
        assert!(c.is_finished());
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn star_restarts_the_field() {
        let t = crate::test_origin();
        let mut c = collector(t);
        keys(&mut c, "999*4111111111111111#", t);
        let ev = drain(&mut c);
        assert!(ev.iter().any(|e| matches!(e, CaptureEvent::FieldRestarted { field: FieldName::Pan })));
        assert!(ev.iter().any(|e| matches!(e, CaptureEvent::FieldDone { field: FieldName::Pan, .. })));
        assert_eq!(c.current_field(), Some(FieldName::Expiry));
    }

    #[test]
    fn the_agent_can_ask_again_for_a_field_already_entered() {
        let t = crate::test_origin();
        let mut c = collector(t);
        assert_eq!(c.restart(FieldName::Expiry, t), Err(RestartError::NotReached));
        keys(&mut c, "4111111111111111#12", t);
        drain(&mut c);
        assert_eq!(c.current_field(), Some(FieldName::Expiry));
        // Back to the card number: it and the half-entered expiry start over.
        c.restart(FieldName::Pan, t).unwrap();
        let restarted: Vec<FieldName> = drain(&mut c)
            .into_iter()
            .filter_map(|e| match e {
                CaptureEvent::FieldRestarted { field } => Some(field),
                _ => None,
            })
            .collect();
        assert_eq!(restarted, [FieldName::Pan]);
        assert_eq!(c.current_field(), Some(FieldName::Pan));
        keys(&mut c, "5555555555554444#1230321", t);
        let card = drain(&mut c).into_iter().find_map(|e| match e {
            CaptureEvent::Completed(c) => Some(c),
            _ => None,
        });
        let card = card.expect("completed");
        assert_eq!(card.pan.expose(), "5555555555554444", "the second card is the one captured");
        assert_eq!(card.security_code.as_ref().map(|c| c.expose()), Some("321"));
        assert_eq!(c.restart(FieldName::Pan, t), Err(RestartError::NotCollecting));
        let mut only_pan =
            Collector::new(vec![FieldName::Pan], CollectorConfig::default(), YearMonth { year: 2026, month: 11 }, t);
        assert_eq!(only_pan.restart(FieldName::Cvv, t), Err(RestartError::NotRequested));
    }

    #[test]
    fn three_invalid_attempts_fail() {
        let t = crate::test_origin();
        let mut c = collector(t);
        keys(&mut c, "4111111111111112#", t);
        keys(&mut c, "4111111111111113#", t);
        assert!(!c.is_finished());
        keys(&mut c, "4111111111111114#", t);
        let ev = drain(&mut c);
        let lefts: Vec<u8> = ev
            .iter()
            .filter_map(|e| match e {
                CaptureEvent::FieldRejected { attempts_left, .. } => Some(*attempts_left),
                _ => None,
            })
            .collect();
        assert_eq!(lefts, vec![2, 1, 0]);
        assert_eq!(ev.iter().filter(|e| matches!(e, CaptureEvent::Prompt(PromptId::Invalid))).count(), 2);
        assert!(matches!(ev.last(), Some(CaptureEvent::Failed { field: FieldName::Pan })));
        assert!(c.is_finished());
    }

    #[test]
    fn inter_digit_timeout_submits_the_entry() {
        let t = crate::test_origin();
        let mut c = collector(t);
        keys(&mut c, "4111111111111111", t);
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, t + CollectorConfig::default().inter_digit);
        c.handle_timeout(due - Duration::from_millis(1));
        assert_eq!(c.current_field(), Some(FieldName::Pan));
        c.handle_timeout(due);
        assert_eq!(c.current_field(), Some(FieldName::Expiry));
    }

    #[test]
    fn no_input_counts_as_an_attempt() {
        let t = crate::test_origin();
        let mut c = collector(t);
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        let ev = drain(&mut c);
        assert!(ev.iter().any(|e| matches!(e, CaptureEvent::FieldRejected { attempts_left: 2, .. })));
    }

    #[test]
    fn amex_wants_four_digit_code_and_expired_card_is_refused() {
        let t = crate::test_origin();
        let mut c = collector(t);
        keys(&mut c, "378282246310005#1025", t);
        let ev = drain(&mut c);
        assert!(ev.iter().any(|e| matches!(e, CaptureEvent::FieldRejected { field: FieldName::Expiry, .. })));
        keys(&mut c, "0128123", t);
        assert_eq!(c.current_field(), Some(FieldName::Cvv));
        keys(&mut c, "4", t);
        assert!(c.is_finished());
    }

    #[test]
    fn masked_pan_groups_and_shows_last4_only() {
        assert_eq!(masked_pan(0, None), "");
        assert_eq!(masked_pan(5, None), "•••• •");
        assert_eq!(masked_pan(15, Some("0005")), "•••• •••• ••• 0005");
    }

    #[test]
    fn progress_follows_keys_rejections_and_restarts() {
        let t = crate::test_origin();
        let mut c = collector(t);
        let states =
            |c: &Collector| c.progress().iter().map(|f| (f.state, f.digits, f.attempts_left)).collect::<Vec<_>>();
        assert_eq!(
            states(&c),
            vec![(FieldState::Entering, 0, 3), (FieldState::Pending, 0, 3), (FieldState::Pending, 0, 3)]
        );
        keys(&mut c, "411111", t);
        assert_eq!(c.progress()[0].masked, "•••• ••");
        keys(&mut c, "1111111112#", t); // fails the Luhn check
        assert_eq!(states(&c)[0], (FieldState::Entering, 0, 2));
        keys(&mut c, "4111111111111111#12", t);
        let p = c.progress();
        assert_eq!((p[0].state, p[0].digits, p[0].masked.as_str()), (FieldState::Done, 16, "•••• •••• •••• 1111"));
        assert_eq!((p[1].state, p[1].digits, p[1].masked.as_str()), (FieldState::Entering, 2, "••"));
        keys(&mut c, "*", t);
        assert_eq!(states(&c)[1], (FieldState::Entering, 0, 3), "the caller's * clears the field");
        c.restart(FieldName::Pan, t).unwrap();
        assert_eq!(states(&c)[..2], [(FieldState::Entering, 0, 3), (FieldState::Pending, 0, 3)], "the agent's restart");
        for _ in 0..3 {
            keys(&mut c, "1234#", t);
        }
        assert_eq!(states(&c)[0], (FieldState::Failed, 0, 0));
        let shown = format!("{:?}", c.progress());
        assert!(!shown.contains("1234") && !shown.contains("4111"), "progress shows no digit: {shown}");
    }
}
