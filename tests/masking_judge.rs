//! The masking contract judged by a detector that is not ours: multimon-ng (Debian
//! `multimon-ng`) listens to everything the agent heard during whole calls on loopback and
//! must find no digit, whether the caller keys by RFC 4733, in-band, both at once, over
//! speech, or through a link with 5% loss and 20 ms jitter. Each call must still capture the
//! card right.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, http, require_tool, wait_final};
use tonewall::api::auth::Role;
use tonewall::media::dtmf::signal::{TonePair, push_silence, push_tone, to_i16};
use tonewall::media::telephone_event::Key;
use tonewall::softphone::agent::Agent;
use tonewall::softphone::caller::{self, CallerOptions, Keying};

const KEYPAD: &str = "5555555555554444#,1230,321";

/// The digits multimon-ng hears in 8 kHz linear audio.
fn multimon_digits(pcm: &[i16]) -> String {
    require_tool("multimon-ng", "apt-get install -y multimon-ng");
    require_tool("sox", "apt-get install -y sox");
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("heard.wav");
    let resampled = dir.path().join("heard-22050.wav");
    let spec =
        hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for s in pcm {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
    let st = std::process::Command::new("sox").arg(&wav).args(["-r", "22050"]).arg(&resampled).status().unwrap();
    assert!(st.success(), "sox failed");
    let out = std::process::Command::new("multimon-ng")
        .args(["-q", "-c", "-a", "DTMF", "-t", "wav"])
        .arg(&resampled)
        .output()
        .unwrap();
    assert!(out.status.success(), "multimon-ng failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("DTMF: ")).collect()
}

#[test]
fn the_judge_hears_digits_in_unmasked_tones() {
    let mut x = Vec::new();
    for c in "5551#".chars() {
        push_tone(&mut x, TonePair::key(Key::from_char(c).unwrap(), -10.0), 100.0);
        push_silence(&mut x, 100.0);
    }
    assert_eq!(multimon_digits(&to_i16(&x)), "5551#");
}

/// Speech under the keys, about −22 dBm0: one of tonewall's own prompts, looped.
fn speech() -> Arc<[i16]> {
    let prompts = tonewall::runtime::prompts::english().unwrap();
    prompts.card_number.iter().map(|s| s / 3).collect::<Vec<_>>().into()
}

async fn judged_call(keying: Keying, background: bool, loss_percent: u8, jitter_ms: u64) {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"judge","agent_uri":"{}"}}"#, agent.uri);
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(&body)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let uri = v["transfer_uri"].as_str().unwrap().to_string();
    let report = caller::place_call(CallerOptions {
        keying,
        background: background.then(speech),
        loss_percent,
        jitter: Duration::from_millis(jitter_ms),
        linger: Duration::from_secs(3),
        ..CallerOptions::new(t.server.sip_addr, &uri, KEYPAD)
    })
    .await
    .unwrap();
    let case = format!("{keying:?}, speech {background}, loss {loss_percent}%, jitter {jitter_ms} ms");
    assert_eq!(report.keys_sent, if keying == Keying::InBand { 0 } else { 24 }, "{case}");
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{case}: {s}");
    assert_eq!(
        (s["result"]["brand"].as_str(), s["result"]["last4"].as_str()),
        (Some("mastercard"), Some("4444")),
        "{case}"
    );
    let heard = agent.finish().await.unwrap();
    assert!(heard.audio.len() > 8000 * 8, "{case}: the agent heard the whole capture");
    assert_eq!(heard.non_audio_packets, 0, "{case}");
    let digits = multimon_digits(&heard.audio);
    assert_eq!(digits, "", "{case}: the judge heard digits on the agent leg");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc4733_only() {
    judged_call(Keying::Rfc4733, false, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_only() {
    judged_call(Keying::InBand, false, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc4733_and_in_band_at_once() {
    judged_call(Keying::Both, false, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_over_speech() {
    judged_call(Keying::InBand, true, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_with_loss_and_jitter() {
    judged_call(Keying::InBand, false, 5, 20).await;
}
