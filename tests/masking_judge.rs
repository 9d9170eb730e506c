//! The masking contract judged by a detector that is not ours: multimon-ng (Debian
//! `multimon-ng`) listens to everything the agent heard during whole calls on loopback and
//! must find no digit, whether the caller keys by RFC 4733, in-band, both at once, over
//! speech, or through a link with 5% loss and 20 ms jitter; without speech, no DTMF frequency
//! may reach −55 dBm0 in any 20 ms of it. Each call must still capture the card right.

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

/// The loudest level, in dBm0, of any DTMF frequency over any 20 ms block (Hann window):
/// an independent measure of what is left of the tones.
fn dtmf_band_peak_dbm0(pcm: &[i16]) -> f32 {
    let freqs = [697.0f32, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0];
    let n = 160;
    let mut peak = f32::MIN;
    for block in pcm.chunks_exact(n) {
        for f in freqs {
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for (i, s) in block.iter().enumerate() {
                let w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n as f32).cos();
                let ph = 2.0 * std::f32::consts::PI * f * i as f32 / 8000.0;
                re += w * f32::from(*s) * ph.cos();
                im -= w * f32::from(*s) * ph.sin();
            }
            // Amplitude of the sine at f (Hann gain N/4), against a 0 dBm0 sine.
            let amplitude = (re * re + im * im).sqrt() * 4.0 / n as f32;
            let dbm0 = 20.0 * (amplitude.max(1e-3) / tonewall::media::dtmf::dbm0_to_amplitude(0.0)).log10();
            peak = peak.max(dbm0);
        }
    }
    peak
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
    if !background {
        // Without speech, everything at the DTMF frequencies would be what is left of a tone.
        let peak = dtmf_band_peak_dbm0(&heard.audio);
        assert!(peak < -55.0, "{case}: {peak:.1} dBm0 at a DTMF frequency on the agent leg");
    }
    judge_recording(&t, &case).await;
    t.stop().await;
}

/// The call's recording, fetched as QA would: stereo, the caller channel masked (the judge
/// hears no digit), the masked spans labelled by field, seekable by range.
async fn judge_recording(t: &TestServer, case: &str) {
    let qa = t.key(Role::Qa).await;
    // The recording is stored when the call ends; if the agent softphone stopped before
    // answering tonewall's BYE, that is after Timer F (64·T1 = 32 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let meta = loop {
        let (_, v) = http("GET", &format!("{}/v1/recordings?reference=judge", t.base), Some(&qa), None).await;
        if v["total"] == 1 {
            break v["recordings"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{case}: no recording: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = meta["masked_spans"].as_array().unwrap();
    assert!(!spans.is_empty(), "{case}: masked spans recorded: {meta}");
    for f in ["pan", "expiry", "cvv"] {
        assert!(spans.iter().any(|s| s["field"] == f), "{case}: a span labelled {f}: {meta}");
    }
    let url = format!("{}/v1/recordings/{}/audio", t.base, meta["id"].as_str().unwrap());
    let wav = fetch(&url, &qa, None).await;
    assert_eq!(wav.0, 200);
    let mut reader = hound::WavReader::new(std::io::Cursor::new(&wav.1)).unwrap();
    assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 8000), "{case}");
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let caller: Vec<i16> = samples.iter().step_by(2).copied().collect();
    assert!(caller.len() as i64 >= meta["duration_ms"].as_i64().unwrap() * 8 - 160, "{case}");
    assert!(caller.len() > 8000 * 8, "{case}: the recording holds the whole capture");
    assert_eq!(multimon_digits(&caller), "", "{case}: the judge heard digits in the recording");
    assert_eq!(multimon_digits(&samples), "", "{case}: nor in both channels read as one");
    let part = fetch(&url, &qa, Some("bytes=44-1043")).await;
    assert_eq!((part.0, part.1.as_slice()), (206, &wav.1[44..1044]), "{case}: range requests seek");
}

/// GET with an optional Range header: (status, body bytes).
async fn fetch(url: &str, key: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let (url, key, range) = (url.to_string(), key.to_string(), range.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::get(&url).header("Authorization", &format!("Bearer {key}"));
        if let Some(r) = &range {
            req = req.header("Range", r);
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_vec().unwrap())
    })
    .await
    .unwrap()
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
