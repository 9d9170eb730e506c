//! The collector's unit tests: the card fields, then the plan's options. Test builds only:
//! its public test card numbers never reach a build that runs.
#![cfg(test)]

use super::*;
use crate::capture::speech::Clip;

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

/// The completed capture among `events`.
fn captured(events: Vec<CaptureEvent>) -> Captured {
    let found = events.into_iter().find_map(|e| match e {
        CaptureEvent::Completed(c) => Some(*c),
        _ => None,
    });
    found.expect("completed")
}

fn card_of(events: Vec<CaptureEvent>) -> CapturedCard {
    match captured(events).payment {
        Payment::Card(card) => card,
        Payment::Bank(_) => panic!("a card capture took a bank account"),
    }
}

fn with_plan(plan: CapturePlan, now: Instant) -> Collector {
    assert_eq!(plan.check(), Ok(()));
    Collector::new(plan, CollectorConfig::default(), YearMonth { year: 2026, month: 11 }, now)
}

/// The prompt names asked, in order.
fn said(events: &[CaptureEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Say(clips) => Some(clips.iter().map(|c| c.name()).collect::<Vec<_>>().join(" ")),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[CaptureEvent]) -> Vec<(FieldName, Rejection)> {
    events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::FieldRejected { field, reason, .. } => Some((*field, reason.clone())),
            _ => None,
        })
        .collect()
}

fn collector(now: Instant) -> Collector {
    let today = YearMonth { year: 2026, month: 11 };
    Collector::new(
        CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv]),
        CollectorConfig::default(),
        today,
        now,
    )
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
            CaptureEvent::FieldDone { field, masked, .. } => Some((*field, masked.clone())),
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
    let card = card_of(ev);
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
    let card = card_of(drain(&mut c));
    assert_eq!(card.pan.expose(), "5555555555554444", "the second card is the one captured");
    assert_eq!(card.security_code.as_ref().map(|c| c.expose()), Some("321"));
    assert_eq!(c.restart(FieldName::Pan, t), Err(RestartError::NotCollecting));
    let mut only_pan = Collector::new(
        CapturePlan::card(vec![FieldName::Pan]),
        CollectorConfig::default(),
        YearMonth { year: 2026, month: 11 },
        t,
    );
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
    assert_eq!(
        ev.iter().filter(|e| matches!(e, CaptureEvent::Say(v) if v == &[Clip::Prompt(PromptId::Invalid)])).count(),
        2
    );
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
    let states = |c: &Collector| c.progress().iter().map(|f| (f.state, f.digits, f.attempts_left)).collect::<Vec<_>>();
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

#[test]
fn a_postal_code_of_the_session_length_is_taken_with_the_card() {
    let t = crate::test_origin();
    let mut plan = CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::PostalCode]);
    plan.lengths.postal_code = crate::capture::plan::LengthRange::new(5, 5);
    let mut c = with_plan(plan, t);
    // Five digits end the field without `#`; four then `#` is too short.
    keys(&mut c, "4111111111111111#12309410#94105", t);
    let ev = drain(&mut c);
    assert_eq!(
        rejections(&ev),
        [(FieldName::PostalCode, Rejection::Invalid(CardError::PostalCodeLength { min: 5, max: 5, got: 4 }))]
    );
    let card = card_of(ev);
    assert_eq!(card.postal_code.as_ref().map(PostalCode::expose), Some("94105"));
    assert!(card.security_code.is_none());
}

#[test]
fn a_brand_outside_valid_card_types_gets_its_own_prompt_then_a_valid_card_passes() {
    let t = crate::test_origin();
    let mut plan = CapturePlan::card(vec![FieldName::Pan]);
    plan.valid_card_types = vec![crate::capture::card::Brand::Visa, crate::capture::card::Brand::Mastercard];
    let mut c = with_plan(plan, t);
    keys(&mut c, "378282246310005#", t);
    let ev = drain(&mut c);
    assert_eq!(
        rejections(&ev),
        [(FieldName::Pan, CardError::BrandNotAccepted(crate::capture::card::Brand::Amex).into())]
    );
    assert_eq!(said(&ev), ["card_number", "card_type_not_accepted", "card_number"]);
    keys(&mut c, "4111111111111111#", t);
    assert_eq!(card_of(drain(&mut c)).pan.last4(), "1111");
}

#[test]
fn ach_with_matching_inputs_asks_again_when_the_entries_differ() {
    let t = crate::test_origin();
    let mut plan = CapturePlan::card(PaymentMethod::Ach.default_fields());
    plan.method = PaymentMethod::Ach;
    plan.require_matching_inputs = true;
    let mut c = with_plan(plan, t);
    // Routing number twice (9 digits end each entry), then the account number keyed
    // differently the second time, asked again, then both entries alike; then savings.
    keys(&mut c, "021000021021000021", t);
    keys(&mut c, "12345678#12345679#", t);
    let ev = drain(&mut c);
    assert_eq!(rejections(&ev), [(FieldName::AccountNumber, Rejection::Mismatch)]);
    assert_eq!(
        said(&ev),
        ["routing_number", "enter_again", "account_number", "enter_again", "mismatch", "account_number"]
    );
    assert_eq!(c.progress()[1].attempts_left, 2, "a mismatch costs an attempt");
    keys(&mut c, "12345678#", t);
    assert!(c.progress()[1].second_entry, "the desktop shows the second entry is awaited");
    keys(&mut c, "12345678#2", t);
    let ev = drain(&mut c);
    let masks: Vec<String> = c.progress().into_iter().map(|f| f.masked).collect();
    assert_eq!(masks, ["••••• 0021", "•••• 5678", "savings"]);
    match captured(ev).payment {
        Payment::Bank(b) => {
            assert_eq!((b.routing.expose(), b.account.expose()), ("021000021", "12345678"));
            assert_eq!(b.kind, Some(AccountType::Savings));
        }
        Payment::Card(_) => panic!("an ACH capture took a card"),
    }
    // An invalid first entry is refused at once, not asked for again.
    let mut plan = CapturePlan::card(PaymentMethod::Ach.default_fields());
    plan.method = PaymentMethod::Ach;
    plan.require_matching_inputs = true;
    let mut c = with_plan(plan, t);
    keys(&mut c, "021000022", t);
    assert_eq!(rejections(&drain(&mut c)), [(FieldName::RoutingNumber, BankError::RoutingCheck.into())]);
}

#[test]
fn the_back_key_returns_to_the_field_before() {
    let t = crate::test_origin();
    let mut plan = CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv]);
    plan.back_key = crate::capture::plan::BackKey::parse("*");
    let mut c = with_plan(plan.clone(), t);
    keys(&mut c, "4111111111111111#12*", t);
    assert_eq!(c.current_field(), Some(FieldName::Expiry), "* on a keyed entry restarts it");
    keys(&mut c, "*", t);
    assert_eq!(c.current_field(), Some(FieldName::Pan), "* on an empty entry goes back");
    keys(&mut c, "*", t);
    assert_eq!(c.current_field(), Some(FieldName::Pan), "nothing before the first field");
    keys(&mut c, "5555555555554444#1230321", t);
    assert_eq!(card_of(drain(&mut c)).pan.last4(), "4444", "the number keyed after going back is the one kept");
    plan.back_key = crate::capture::plan::BackKey::parse("A");
    let mut c = with_plan(plan, t);
    keys(&mut c, "4111111111111111#12", t);
    c.handle_key(Key::Letter(b'A'), t);
    assert_eq!(c.current_field(), Some(FieldName::Pan), "a letter goes back even mid-entry");
    assert!(c.progress().iter().all(|f| f.state != FieldState::Done));
}

#[test]
fn the_amount_is_read_back_and_1_confirms_2_stops_anything_else_asks_again() {
    let t = crate::test_origin();
    let mut plan = CapturePlan::card(vec![FieldName::Pan]);
    plan.amount = Some(Amount { minor: 1250, currency: crate::capture::plan::Currency::Eur });
    plan.language = crate::capture::plan::Language::Es;
    let mut c = with_plan(plan.clone(), t);
    keys(&mut c, "4111111111111111#", t);
    let ev = drain(&mut c);
    assert_eq!(
        said(&ev).last().map(String::as_str),
        Some("you_are_paying n12 eur_pl and n50 eur_minor_pl card_ending n1 n1 n1 n1 confirm_keys")
    );
    keys(&mut c, "7", t);
    assert_eq!(rejections(&drain(&mut c)), [(FieldName::Confirm, Rejection::NotAnOption)]);
    keys(&mut c, "1", t);
    let done = captured(drain(&mut c));
    assert_eq!(done.confirmed, plan.amount);
    let mut c = with_plan(plan, t);
    keys(&mut c, "4111111111111111#2", t);
    let ev = drain(&mut c);
    assert!(matches!(ev.last(), Some(CaptureEvent::Declined)), "{ev:?}");
    assert!(!ev.iter().any(|e| matches!(e, CaptureEvent::Completed(_))));
    assert!(c.is_finished());
}
