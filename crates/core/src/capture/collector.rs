//! Turns keypresses into payment fields, following a `CapturePlan`: one field at a time, `#`
//! ends a field, `*` restarts it, the plan's back key returns to the field before,
//! fixed-length fields end on their last digit, an inter-digit timeout submits what was
//! keyed, a field keyed twice must match its first entry, and a field that fails
//! validation is asked again up to `max_attempts` times. With an amount, the caller hears it
//! read back with the last four digits and presses 1 to confirm or 2 to stop.
//!
//! Sans-IO: every input carries the time it happened; `poll_timeout` says when to call
//! `handle_timeout`. The keyed digits live in zeroizing buffers and never leave this
//! module except inside the validated types of `card` and `bank`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::bank::{AccountNumber, AccountType, BankAccount, BankError, RoutingNumber};
use super::card::{Brand, CardError, Expiry, Pan, PostalCode, SecurityCode, YearMonth};
pub use super::plan::FieldName;
use super::plan::{Amount, CapturePlan, PaymentMethod};
use super::progress::{self, FieldProgress, FieldState};
pub use super::speech::PromptId;
use super::speech::{self, Clip, Ending};
use crate::media::telephone_event::Key;

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
    pub postal_code: Option<PostalCode>,
}

impl CapturedCard {
    /// A card with only its number and maybe expiry and code (the card API, tests).
    pub fn new(pan: Pan, expiry: Option<Expiry>, security_code: Option<SecurityCode>) -> CapturedCard {
        CapturedCard { pan, expiry, security_code, postal_code: None }
    }
}

/// What a capture took.
#[derive(Debug)]
pub enum Payment {
    Card(CapturedCard),
    Bank(BankAccount),
}

/// A completed capture: the payment details and, if the plan had an amount, the amount
/// the caller confirmed.
#[derive(Debug)]
pub struct Captured {
    pub payment: Payment,
    pub confirmed: Option<Amount>,
}

/// Why a field's entry was refused. Never carries the digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no digits were entered")]
    NothingEntered,
    #[error(transparent)]
    Invalid(#[from] CardError),
    #[error(transparent)]
    Bank(#[from] BankError),
    #[error("the second entry did not match the first")]
    Mismatch,
    #[error("only 1 (confirm) or 2 (stop) is an answer here")]
    NotAnOption,
}

#[derive(Debug)]
pub enum CaptureEvent {
    /// Play these clips, in order.
    Say(Vec<Clip>),
    DigitEntered {
        field: FieldName,
        count: usize,
    },
    FieldRestarted {
        field: FieldName,
    },
    FieldRejected {
        field: FieldName,
        attempts_left: u8,
        reason: Rejection,
    },
    /// A field passed its checks: how the desktop shows it, the card's brand once the number
    /// is in, and the attempts it had left.
    FieldDone {
        field: FieldName,
        masked: String,
        brand: Option<Brand>,
        attempts_left: u8,
    },
    Completed(Box<Captured>),
    Failed {
        field: FieldName,
    },
    /// The caller heard the amount and pressed 2.
    Declined,
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

/// The validated values so far, each dropped (and zeroized) when its field restarts.
#[derive(Default)]
struct Values {
    pan: Option<Pan>,
    expiry: Option<Expiry>,
    security_code: Option<SecurityCode>,
    postal_code: Option<PostalCode>,
    routing: Option<RoutingNumber>,
    account: Option<AccountNumber>,
    account_type: Option<AccountType>,
    confirmed: bool,
}

impl Values {
    fn clear(&mut self, field: FieldName) {
        match field {
            FieldName::Pan => self.pan = None,
            FieldName::Expiry => self.expiry = None,
            FieldName::Cvv => self.security_code = None,
            FieldName::PostalCode => self.postal_code = None,
            FieldName::RoutingNumber => self.routing = None,
            FieldName::AccountNumber => self.account = None,
            FieldName::AccountType => self.account_type = None,
            FieldName::Confirm => self.confirmed = false,
        }
    }
}

pub struct Collector {
    config: CollectorConfig,
    plan: CapturePlan,
    today: YearMonth,
    /// The plan's fields, then the confirmation if it has an amount.
    steps: Vec<FieldName>,
    index: usize,
    entry: Zeroizing<Vec<u8>>,
    /// A field keyed twice: its first entry, while the second is keyed.
    first_entry: Option<Zeroizing<Vec<u8>>>,
    attempts: u8,
    deadline: Option<Instant>,
    phase: Phase,
    values: Values,
    /// Each done step's digit count and mask, for `progress`.
    done: Vec<Option<(usize, String)>>,
    events: VecDeque<CaptureEvent>,
}

impl Collector {
    /// `plan` must pass `CapturePlan::check` (the API checks it); `today` is the current month.
    pub fn new(plan: CapturePlan, config: CollectorConfig, today: YearMonth, now: Instant) -> Self {
        let steps = plan.steps();
        let done = vec![None; steps.len()];
        let mut c = Collector {
            config,
            plan,
            today,
            steps,
            index: 0,
            entry: Zeroizing::new(Vec::with_capacity(19)),
            first_entry: None,
            attempts: 0,
            deadline: None,
            phase: Phase::Collecting,
            values: Values::default(),
            done,
            events: VecDeque::new(),
        };
        if c.steps.is_empty() {
            c.phase = Phase::Failed;
        } else {
            c.ask_current(now);
        }
        c
    }

    pub fn current_field(&self) -> Option<FieldName> {
        (self.phase == Phase::Collecting).then(|| self.steps[self.index])
    }

    pub fn is_finished(&self) -> bool {
        self.phase != Phase::Collecting
    }

    /// Where every field stands: the one copy of the capture's progress.
    pub fn progress(&self) -> Vec<FieldProgress> {
        let max = self.config.max_attempts;
        let mut all = progress::initial(&self.steps, max);
        for (i, f) in all.iter_mut().enumerate() {
            if let Some((digits, masked)) = &self.done[i] {
                *f = FieldProgress { state: FieldState::Done, digits: *digits, masked: masked.clone(), ..f.clone() };
            } else if i == self.index {
                let count = self.entry.len();
                f.state = if self.phase == Phase::Failed { FieldState::Failed } else { FieldState::Entering };
                f.digits = count;
                f.masked = progress::entering_mask(f.name, count);
                f.attempts_left = max.saturating_sub(self.attempts);
                f.second_entry = self.first_entry.is_some();
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
        if self.goes_back(key) {
            let back_to = self.steps[self.index.saturating_sub(1)];
            // Checked above: the field is reached and the capture is collecting.
            let _ = self.restart(back_to, now);
            return;
        }
        match key {
            Key::Digit(d) if field.is_single_key() => {
                self.entry.push(b'0' + d);
                self.submit(now);
            }
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
                self.first_entry = None;
                self.events.push_back(CaptureEvent::FieldRestarted { field });
                self.ask_current(now);
            }
            Key::Letter(_) => {}
        }
    }

    /// Whether `key` is the plan's back key, pressed where it goes back.
    fn goes_back(&self, key: Key) -> bool {
        let Some(back) = self.plan.back_key else { return false };
        if back.0 != key {
            return false;
        }
        match key {
            // `*` and `#` also restart and end a field: they go back only on an empty entry.
            Key::Star | Key::Hash => self.entry.is_empty() && self.first_entry.is_none(),
            _ => true,
        }
    }

    /// The agent (or the back key) asks the caller again for `field`, which must already
    /// have been reached: it and every field after it are collected again, with fresh
    /// attempts (the security code's length depends on the card, so nothing after a
    /// restarted field stands).
    pub fn restart(&mut self, field: FieldName, now: Instant) -> Result<(), RestartError> {
        if self.phase != Phase::Collecting {
            return Err(RestartError::NotCollecting);
        }
        let at = self.steps.iter().position(|f| *f == field).ok_or(RestartError::NotRequested)?;
        if at > self.index {
            return Err(RestartError::NotReached);
        }
        for d in &mut self.done[at..] {
            *d = None;
        }
        for f in &self.steps[at..=self.index] {
            self.values.clear(*f);
        }
        // One event: a restarted field takes those after it along.
        self.events.push_back(CaptureEvent::FieldRestarted { field });
        self.index = at;
        self.entry.clear();
        self.first_entry = None;
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
            FieldName::Expiry => len == 4,
            FieldName::Cvv => {
                let want = self.values.pan.as_ref().map_or(3, |p| p.brand().security_code_len());
                len >= want
            }
            FieldName::RoutingNumber => len == 9,
            FieldName::AccountType | FieldName::Confirm => len == 1,
            FieldName::Pan | FieldName::PostalCode | FieldName::AccountNumber => {
                self.plan.lengths.of(field).is_some_and(|r| len >= usize::from(r.max))
            }
        }
    }

    fn ask_current(&mut self, now: Instant) {
        let field = self.steps[self.index];
        let clips = match (field, self.plan.amount) {
            (FieldName::Confirm, Some(amount)) => {
                let (ending, last4) = match (&self.values.pan, &self.values.account) {
                    (Some(pan), _) => (Ending::Card, pan.last4().to_string()),
                    (None, Some(account)) => (Ending::Account, account.last4().to_string()),
                    (None, None) => (Ending::Card, String::new()),
                };
                speech::confirmation(self.plan.language, amount, ending, &last4)
            }
            _ => vec![Clip::Prompt(PromptId::for_field(field))],
        };
        self.events.push_back(CaptureEvent::Say(clips));
        self.deadline = Some(now + self.config.first_digit);
    }

    fn submit(&mut self, now: Instant) {
        let field = self.steps[self.index];
        if field == FieldName::Confirm {
            return self.answer_confirmation(now);
        }
        let digits = self.entry.len();
        if self.plan.keyed_twice(field) {
            match self.first_entry.take() {
                None => {
                    // The first entry must be valid before it is asked for again.
                    return match self.validate(field) {
                        Ok(_) => {
                            self.values.clear(field);
                            self.first_entry = Some(std::mem::replace(&mut self.entry, Zeroizing::new(Vec::new())));
                            self.events.push_back(CaptureEvent::Say(vec![Clip::Prompt(PromptId::EnterAgain)]));
                            self.deadline = Some(now + self.config.first_digit);
                        }
                        Err(e) => {
                            self.entry.clear();
                            self.reject(e, now);
                        }
                    };
                }
                Some(first) if *first != *self.entry => {
                    self.entry.clear();
                    return self.reject(Rejection::Mismatch, now);
                }
                Some(_) => {}
            }
        }
        let result = self.validate(field);
        self.entry.clear();
        match result {
            Ok(masked) => self.field_done(field, digits, masked, now),
            Err(e) => self.reject(e, now),
        }
    }

    fn answer_confirmation(&mut self, now: Instant) {
        let key = self.entry.first().copied();
        self.entry.clear();
        match key {
            Some(b'1') => {
                self.values.confirmed = true;
                self.field_done(FieldName::Confirm, 1, "confirmed".into(), now);
            }
            Some(b'2') => {
                self.phase = Phase::Failed;
                self.deadline = None;
                self.events.push_back(CaptureEvent::Declined);
            }
            _ => self.reject(Rejection::NotAnOption, now),
        }
    }

    fn field_done(&mut self, field: FieldName, digits: usize, masked: String, now: Instant) {
        self.done[self.index] = Some((digits, masked.clone()));
        let brand = self.values.pan.as_ref().map(Pan::brand);
        let attempts_left = self.config.max_attempts.saturating_sub(self.attempts);
        self.events.push_back(CaptureEvent::FieldDone { field, masked, brand, attempts_left });
        self.attempts = 0;
        self.index += 1;
        if self.index == self.steps.len() {
            self.complete();
        } else {
            self.ask_current(now);
        }
    }

    /// Checks the entry for `field`, keeps its value and says how the desktop shows it.
    fn validate(&mut self, field: FieldName) -> Result<String, Rejection> {
        let entry: &[u8] = &self.entry;
        let dots = "•".repeat(entry.len());
        match field {
            FieldName::Pan => {
                if !self.plan.lengths.pan.contains(entry.len()) {
                    return Err(CardError::PanLength(entry.len()).into());
                }
                let pan = Pan::parse(entry)?;
                if !self.plan.accepts(pan.brand()) {
                    return Err(CardError::BrandNotAccepted(pan.brand()).into());
                }
                let masked = masked_pan(entry.len(), Some(pan.last4()));
                self.values.pan = Some(pan);
                Ok(masked)
            }
            FieldName::Expiry => {
                let e = Expiry::parse(entry, self.today)?;
                self.values.expiry = Some(e);
                Ok(format!("{:02}/{:02}", e.month(), e.year() % 100))
            }
            FieldName::Cvv => {
                let brand = self.values.pan.as_ref().map(|p| p.brand()).ok_or(CardError::UnknownBrand)?;
                self.values.security_code = Some(SecurityCode::parse(entry, brand)?);
                Ok(dots)
            }
            FieldName::PostalCode => {
                self.values.postal_code = Some(PostalCode::parse(entry, self.plan.lengths.postal_code)?);
                Ok(dots)
            }
            FieldName::RoutingNumber => {
                let rtn = RoutingNumber::parse(entry)?;
                let masked = format!("••••• {}", rtn.last4());
                self.values.routing = Some(rtn);
                Ok(masked)
            }
            FieldName::AccountNumber => {
                let account = AccountNumber::parse(entry, self.plan.lengths.account_number)?;
                let masked = format!("{} {}", "•".repeat(entry.len() - 4), account.last4());
                self.values.account = Some(account);
                Ok(masked)
            }
            FieldName::AccountType => {
                let digit = entry.first().map_or(0, |b| b.wrapping_sub(b'0'));
                let kind = AccountType::from_key(digit)?;
                self.values.account_type = Some(kind);
                Ok(kind.as_str().to_string())
            }
            // Answered by `answer_confirmation`.
            FieldName::Confirm => Err(Rejection::NotAnOption),
        }
    }

    fn reject(&mut self, reason: Rejection, now: Instant) {
        let field = self.steps[self.index];
        self.attempts += 1;
        let attempts_left = self.config.max_attempts.saturating_sub(self.attempts);
        let why = match reason {
            Rejection::Invalid(CardError::BrandNotAccepted(_)) => PromptId::CardTypeNotAccepted,
            Rejection::Mismatch => PromptId::Mismatch,
            _ => PromptId::Invalid,
        };
        self.events.push_back(CaptureEvent::FieldRejected { field, attempts_left, reason });
        if attempts_left == 0 {
            self.phase = Phase::Failed;
            self.deadline = None;
            self.events.push_back(CaptureEvent::Failed { field });
        } else {
            self.events.push_back(CaptureEvent::Say(vec![Clip::Prompt(why)]));
            self.ask_current(now);
        }
    }

    fn complete(&mut self) {
        self.phase = Phase::Completed;
        self.deadline = None;
        let v = std::mem::take(&mut self.values);
        let confirmed = if v.confirmed { self.plan.amount } else { None };
        // Invariant (`CapturePlan::check`): a card plan asks for the number, an ACH plan for
        // both numbers, so they are set once every step is done.
        let payment = match (self.plan.method, v.pan, v.routing, v.account) {
            (PaymentMethod::Card, Some(pan), _, _) => Payment::Card(CapturedCard {
                pan,
                expiry: v.expiry,
                security_code: v.security_code,
                postal_code: v.postal_code,
            }),
            (PaymentMethod::Ach, _, Some(routing), Some(account)) => {
                Payment::Bank(BankAccount { routing, account, kind: v.account_type })
            }
            _ => {
                self.phase = Phase::Failed;
                self.events.push_back(CaptureEvent::Failed { field: self.steps[0] });
                return;
            }
        };
        self.events.push_back(CaptureEvent::Completed(Box::new(Captured { payment, confirmed })));
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

mod tests;
