//! Whole calls for what a payment line offers beyond the card: a Spanish session that reads
//! the amount back and takes card, postal code and confirmation; an ACH capture whose
//! second entry differs and is asked again; a brand outside `valid_card_types` refused, then
//! a valid card taken; a French session that goes back a field; and a payment the caller
//! stops at the read-back. Which prompts played is read from the audio the caller heard:
//! each clip's first frames, as G.711 carries them, must be in it.

mod common;

use std::time::Duration;

use common::{TestServer, detokenize_session, http, wait_final};
use serde_json::Value;
use tonewall::api::auth::Role;
use tonewall::capture::plan::Language;
use tonewall::media::g711::Codec;
use tonewall::media::rtp::FRAME_SAMPLES;
use tonewall_testkit::caller::{self, CallerOptions, CallerReport};

async fn session(t: &TestServer, key: &str, body: &str) -> (String, String) {
    let (s, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(key), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string())
}

async fn call(t: &TestServer, uri: &str, keypad: &str) -> CallerReport {
    caller::place_call(CallerOptions {
        linger: Duration::from_secs(10),
        ..CallerOptions::new(t.server.sip_addr, uri, keypad)
    })
    .await
    .expect("call placed")
}

/// How many times the caller heard the start of `lang`'s built-in clip `name`.
fn times_heard(report: &CallerReport, lang: Language, name: &str) -> usize {
    let prompts = tonewall::runtime::prompts::built_in().unwrap();
    let clip = prompts.get(lang, name).unwrap_or_else(|| panic!("no {lang:?} clip {name}"));
    times_heard_audio(report, clip)
}

/// How many times the caller heard the start of `clip`: its first three frames, through PCMU
/// as tonewall sends them, at a frame boundary of what was heard.
fn times_heard_audio(report: &CallerReport, clip: &[i16]) -> usize {
    let want: Vec<i16> = clip[..3 * FRAME_SAMPLES].iter().map(|s| Codec::Pcmu.decode(Codec::Pcmu.encode(*s))).collect();
    let heard = &report.heard_audio;
    (0..heard.len().saturating_sub(want.len()))
        .step_by(FRAME_SAMPLES)
        .filter(|&i| heard[i..i + want.len()] == want[..])
        .count()
}

fn without_account_digits(v: &Value, digits: &[&str]) {
    let text = v.to_string();
    for d in digits {
        assert!(!text.contains(d), "the session shows {d}: {text}");
    }
}

#[tokio::test]
async fn a_spanish_caller_hears_the_amount_and_confirms_card_and_postal_code() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let body = r#"{"fields":["pan","expiry","cvv","postal_code"],"language":"es","amount":"1250.50","currency":"EUR",
        "lengths":{"postal_code":{"min":5,"max":5}},"reference":"es-1"}"#;
    let (id, uri) = session(&t, &key, body).await;
    // Ten seconds after the postal code: the whole read-back plays before the caller presses 1.
    let report = call(&t, &uri, ",,4111111111111111#,1230,123,28013,,,,,,,,,,,1").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["result"]["amount_confirmed"], serde_json::json!({"minor": 125050, "currency": "EUR"}), "{s}");
    assert_eq!(s["result"]["postal_code"], true);
    assert_eq!(s["capture"]["language"], "es");
    let steps: Vec<(&str, &str)> = s["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["masked"].as_str().unwrap()))
        .collect();
    assert_eq!(steps[3], ("postal_code", "•••••"));
    assert_eq!(steps[4], ("confirm", "confirmed"));
    let stored = detokenize_session(&t.base, &t.key(Role::Processor).await, &s, "es").await;
    assert_eq!((stored["pan"].as_str(), stored["postal_code"].as_str()), (Some("4111111111111111"), Some("28013")));
    without_account_digits(&s, &["28013", "411111"]);
    // "Va a pagar mil doscientos cincuenta euros con cincuenta céntimos, con la tarjeta que
    // termina en 1 1 1 1. Pulse uno para confirmar…", all in Spanish, none in English.
    for clip in [
        "card_number",
        "postal_code",
        "you_are_paying",
        "thousand",
        "h2",
        "eur_pl",
        "and",
        "eur_minor_pl",
        "card_ending",
        "confirm_keys",
        "thank_you",
    ] {
        assert!(times_heard(&report, Language::Es, clip) >= 1, "the Spanish {clip} was not heard");
    }
    assert_eq!(times_heard(&report, Language::Es, "n50"), 2, "cincuenta euros con cincuenta céntimos");
    assert_eq!(times_heard(&report, Language::Es, "n1"), 4, "the last four digits, one by one");
    assert_eq!(times_heard(&report, Language::En, "card_number"), 0, "no English prompt");
    t.stop().await;
}

#[tokio::test]
async fn an_ach_account_keyed_twice_is_asked_again_when_the_entries_differ() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) =
        session(&t, &key, r#"{"payment_method":"ach","require_matching_inputs":true,"reference":"ach-1"}"#).await;
    let report = call(&t, &uri, ",021000021,021000021,12345678#,12345679#,,,,,12345678#,12345678#,2").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(times_heard(&report, Language::En, "mismatch"), 1, "the differing entry was refused once");
    assert_eq!(times_heard(&report, Language::En, "account_number"), 2, "and the account number asked again");
    assert_eq!(times_heard(&report, Language::En, "enter_again"), 3);
    let result = &s["result"];
    assert_eq!((result["payment_method"].as_str(), result["last4"].as_str()), (Some("ach"), Some("5678")));
    assert_eq!((result["account_type"].as_str(), result.get("brand")), (Some("savings"), None));
    let masks: Vec<&str> = s["fields"].as_array().unwrap().iter().map(|f| f["masked"].as_str().unwrap()).collect();
    assert_eq!(masks, ["••••• 0021", "•••• 5678", "savings"]);
    without_account_digits(&s, &["12345678", "021000021"]);
    let stored = detokenize_session(&t.base, &t.key(Role::Processor).await, &s, "ach").await;
    assert_eq!(stored["payment_method"], "ach");
    assert_eq!(
        (stored["routing_number"].as_str(), stored["account_number"].as_str()),
        (Some("021000021"), Some("12345678"))
    );
    assert_eq!((stored["account_type"].as_str(), stored.get("pan")), (Some("savings"), None));
    // A wrong routing number is refused as it is keyed: its check digit fails.
    let (id, uri) = session(&t, &key, r#"{"payment_method":"ach","reference":"ach-2"}"#).await;
    let report = call(&t, &uri, ",021000022,021000021,12345678#,1").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(times_heard(&report, Language::En, "invalid"), 1);
    t.stop().await;
}

#[tokio::test]
async fn a_brand_outside_valid_card_types_is_refused_then_a_valid_card_is_taken() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, r#"{"valid_card_types":["visa"],"reference":"brands"}"#).await;
    let report = call(&t, &uri, ",5555555555554444#,,4111111111111111#,1230,123").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!((s["result"]["brand"].as_str(), s["result"]["last4"].as_str()), (Some("visa"), Some("1111")));
    assert_eq!(times_heard(&report, Language::En, "card_type_not_accepted"), 1);
    assert_eq!(times_heard(&report, Language::En, "invalid"), 0, "its own prompt, not the generic one");
    // The API refuses a brand it does not know.
    let (status, v) =
        http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(r#"{"valid_card_types":["vsia"]}"#)).await;
    assert_eq!(status, 400, "{v}");
    t.stop().await;
}

#[tokio::test]
async fn a_french_caller_goes_back_a_field_with_the_back_key() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) = session(&t, &key, r#"{"language":"fr","back_key":"*","reference":"fr-1"}"#).await;
    // Card, two expiry digits, * (restarts the expiry), * again on the empty entry (back to
    // the card number), then another card whole.
    let report = call(&t, &uri, ",5555555555554444#,12*,*,,4111111111111111#,1230,123").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["result"]["last4"], "1111", "the card keyed after going back is the one stored");
    assert_eq!(times_heard(&report, Language::Fr, "card_number"), 2, "asked for the card number again");
    assert_eq!(times_heard(&report, Language::Fr, "expiry"), 3, "first, after *, and after the new card");
    assert_eq!(times_heard(&report, Language::En, "card_number"), 0);
    t.stop().await;
}

#[tokio::test]
async fn a_caller_who_presses_2_at_the_read_back_stops_the_payment_and_nothing_is_stored() {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let (id, uri) =
        session(&t, &key, r#"{"fields":["pan"],"language":"de","amount":"21","currency":"EUR","reference":"stop"}"#)
            .await;
    let report = call(&t, &uri, ",4111111111111111#,,,,,2").await;
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(10)).await;
    assert_eq!((s["state"].as_str(), s["reason"].as_str()), (Some("failed"), Some("declined")), "{s}");
    assert!(s["result"].is_null());
    assert_eq!(times_heard(&report, Language::De, "n21"), 1, "einundzwanzig Euro");
    assert_eq!(times_heard(&report, Language::De, "payment_stopped"), 1);
    let (cards,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM cards").fetch_one(t.server.shared.vault.pool()).await.unwrap();
    assert_eq!(cards, 0, "a stopped payment stores no card");
    assert!(report.hung_up_by_tonewall);
    t.stop().await;
}

/// An admin uploads a Spanish card prompt: it is checked (a 16 kHz file is refused with the
/// reason, and audited), the next Spanish call plays it instead of the built-in one, and
/// once removed the built-in one plays again.
#[tokio::test]
async fn an_uploaded_prompt_plays_in_its_language_and_its_removal_restores_the_built_in_one() {
    let t = TestServer::start().await;
    let (admin, agent) = (t.key(Role::Admin).await, t.key(Role::Agent).await);
    let ours: Vec<i16> = (0..16000).map(|i| ((i as f64 * 0.25).sin() * 8000.0) as i16).collect();
    let wav = |rate: u32, samples: &[i16]| {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        samples.iter().for_each(|s| w.write_sample(*s).unwrap());
        w.finalize().unwrap();
        out.into_inner()
    };
    let url = format!("{}/v1/admin/prompts/es/card_number", t.base);
    let put = |body: Vec<u8>, key: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut r = agent
                .put(&url)
                .header("Authorization", &format!("Bearer {key}"))
                .header("Content-Type", "audio/wav")
                .send(&body[..])
                .unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        })
    };
    let (status, text) = put(wav(16000, &ours), admin.clone()).await.unwrap();
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("must be 8 kHz mono 16-bit PCM, is 16000 Hz"), "{text}");
    assert_eq!(put(wav(8000, &ours), agent.clone()).await.unwrap().0, 403, "admins only");
    let (status, text) = put(wav(8000, &ours), admin.clone()).await.unwrap();
    assert_eq!(status, 201, "{text}");
    let (_, listed) = http("GET", &format!("{}/v1/admin/prompts", t.base), Some(&admin), None).await;
    assert_eq!(listed["uploads"][0]["name"], "card_number", "{listed}");

    let body = r#"{"fields":["pan"],"language":"es"}"#;
    let (id, uri) = session(&t, &agent, body).await;
    let report = call(&t, &uri, ",,4111111111111111#").await;
    wait_final(&t.base, &agent, &id, Duration::from_secs(10)).await;
    assert_eq!(times_heard_audio(&report, &ours), 1, "the upload played");
    assert_eq!(times_heard(&report, Language::Es, "card_number"), 0, "not the built-in one");

    let (status, _) = http("DELETE", &url, Some(&admin), None).await;
    assert_eq!(status, 200);
    let (id, uri) = session(&t, &agent, body).await;
    let report = call(&t, &uri, ",,4111111111111111#").await;
    wait_final(&t.base, &agent, &id, Duration::from_secs(10)).await;
    assert_eq!((times_heard_audio(&report, &ours), times_heard(&report, Language::Es, "card_number")), (0, 1));
    let records = tonewall::vault::audit::records(t.server.shared.vault.pool(), 0, 200).await.unwrap();
    let prompt_records: Vec<String> = records
        .iter()
        .filter(|r| r.action.starts_with("prompt."))
        .map(|r| format!("{}:{}", r.action, r.outcome))
        .collect();
    assert_eq!(prompt_records, ["prompt.upload:refused", "prompt.upload:stored", "prompt.remove:removed"]);
    t.stop().await;
}
