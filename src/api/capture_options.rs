//! The capture part of a request body, the same for `POST /v1/sessions` and an inline
//! call's `POST /v1/calls/{id}/capture`: payment method and fields, card types, lengths,
//! matching inputs, amount and currency, language and back key, and the reference.
//!
//! A body is one JSON object; the keys of the route's own options (`split`) are taken out
//! first, and the rest must all be capture options, so a misspelt key is refused, not
//! ignored.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::capture::card::{Brand, looks_like_card_number};
use crate::capture::collector::FieldName;
use crate::capture::plan::{Amount, BackKey, CapturePlan, Currency, FieldLengths, Language, PaymentMethod};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureOptions {
    #[serde(default)]
    payment_method: PaymentMethod,
    /// The method's default fields when absent.
    fields: Option<Vec<FieldName>>,
    #[serde(default)]
    valid_card_types: Vec<Brand>,
    #[serde(default)]
    lengths: FieldLengths,
    #[serde(default)]
    require_matching_inputs: bool,
    /// A decimal string such as "12.50", with `currency`.
    amount: Option<String>,
    currency: Option<Currency>,
    language: Option<Language>,
    back_key: Option<BackKey>,
    #[serde(default)]
    reference: String,
}

/// The answer to free text that holds what looks like a card number.
pub(super) const CARD_IN_TEXT: &str =
    "reference looks like it holds a card number: refused and not stored; card numbers are keyed by the caller";

/// Deserializes `value` as `T`; serde's message names the field, and is replaced when it
/// quotes something that looks like a card number.
fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        if looks_like_card_number(&text) { "a field has the wrong type or value".to_string() } else { text }
    })
}

/// Splits a body into the capture options and the route's own options `R`, whose keys are
/// `own_keys`.
pub fn split<R: DeserializeOwned>(body: Value, own_keys: &[&str]) -> Result<(CaptureOptions, R), String> {
    let Value::Object(mut all) = body else { return Err("the body must be a JSON object".into()) };
    let mut own = Map::new();
    for key in own_keys {
        if let Some(v) = all.remove(*key) {
            own.insert((*key).to_string(), v);
        }
    }
    Ok((from_value(Value::Object(all))?, from_value(Value::Object(own))?))
}

/// What a capture that names none of these gets: the deployment's language and back key
/// (`[capture]`), with its merchant's language and card fields over them.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub language: Language,
    pub back_key: Option<BackKey>,
    pub card_fields: Option<Vec<FieldName>>,
}

impl Defaults {
    /// The deployment's defaults under `merchant`'s settings.
    pub async fn for_merchant(
        state: &super::AppState,
        merchant: &crate::merchant::MerchantId,
    ) -> Result<Defaults, super::ApiError> {
        let settings = crate::merchant::settings(state.vault.pool(), merchant).await.map_err(|e| {
            tracing::error!(error = %e, "merchant settings unavailable");
            super::ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "merchant settings unavailable")
        })?;
        let (language, back_key) = state.capture_defaults;
        Ok(Defaults { language: settings.language.unwrap_or(language), back_key, card_fields: settings.card_fields })
    }
}

impl CaptureOptions {
    /// The plan these options ask for, with `defaults` for what they leave out; and the
    /// reference, checked.
    pub fn plan(self, defaults: &Defaults) -> Result<(CapturePlan, String), String> {
        check_reference(&self.reference)?;
        let amount = match (self.amount, self.currency) {
            (None, None) => None,
            (Some(decimal), Some(currency)) => Some(Amount::parse(&decimal, currency).map_err(|e| e.to_string())?),
            _ => return Err("amount and currency go together: give both or neither".into()),
        };
        let plan = CapturePlan {
            method: self.payment_method,
            fields: match (self.fields, self.payment_method, &defaults.card_fields) {
                (Some(fields), ..) => fields,
                (None, PaymentMethod::Card, Some(merchants)) => merchants.clone(),
                (None, method, _) => method.default_fields(),
            },
            valid_card_types: self.valid_card_types,
            lengths: self.lengths,
            require_matching_inputs: self.require_matching_inputs,
            amount,
            language: self.language.unwrap_or(defaults.language),
            back_key: self.back_key.or(defaults.back_key),
        };
        plan.check().map_err(|e| e.to_string())?;
        Ok((plan, self.reference))
    }
}

fn check_reference(reference: &str) -> Result<(), String> {
    if reference.len() > 200 || reference.chars().any(char::is_control) {
        return Err("reference must be at most 200 printable characters".into());
    }
    if looks_like_card_number(reference) {
        // Not echoed, not stored, not logged (PCI DSS 3.5.1).
        return Err(CARD_IN_TEXT.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        #[allow(dead_code)]
        agent_uri: Option<String>,
    }

    fn plan(body: Value) -> Result<CapturePlan, String> {
        let (options, _own): (CaptureOptions, Own) = split(body, &["agent_uri"])?;
        options.plan(&Defaults { language: Language::Fr, ..Defaults::default() }).map(|(p, _)| p)
    }

    #[test]
    fn a_body_becomes_a_plan_with_the_deployment_defaults() {
        let p = plan(json!({"agent_uri": "sip:a@127.0.0.1", "amount": "12.50", "currency": "EUR"})).unwrap();
        assert_eq!(p.fields, [FieldName::Pan, FieldName::Expiry, FieldName::Cvv]);
        assert_eq!((p.language, p.amount.map(|a| a.minor)), (Language::Fr, Some(1250)));
        let p = plan(json!({"payment_method": "ach", "language": "de", "require_matching_inputs": true})).unwrap();
        assert_eq!(p.fields, PaymentMethod::Ach.default_fields());
        assert!(p.require_matching_inputs && p.language == Language::De);
        let p =
            plan(json!({"fields": ["pan", "postal_code"], "lengths": {"postal_code": {"min": 5, "max": 5}}})).unwrap();
        assert_eq!(p.lengths.postal_code.max, 5);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason_that_never_quotes_a_card_number() {
        for (body, says) in [
            (json!({"langauge": "es"}), "unknown field `langauge`"),
            (json!({"language": "it"}), "unknown variant `it`"),
            (json!({"amount": "12.50"}), "amount and currency go together"),
            (json!({"amount": "12.505", "currency": "USD"}), "amount must be a decimal"),
            (json!({"currency": "JPY", "amount": "1"}), "unknown variant `JPY`"),
            (json!({"payment_method": "ach", "fields": ["pan"]}), "fields for ach must be"),
            (json!({"back_key": "5"}), "back_key must be"),
            (json!({"lengths": {"postal_code": {"min": 3, "max": 5}}}), "lengths.postal_code must lie within 5 to 10"),
            (json!({"reference": "4111 1111 1111 1111"}), "reference looks like it holds a card number"),
            (json!({"reference": 4111111111111111u64}), "a field has the wrong type or value"),
            (json!([1]), "must be a JSON object"),
        ] {
            let e = plan(body.clone()).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
            assert!(!e.contains("4111"), "{e}");
        }
    }
}
