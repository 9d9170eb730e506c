//! The masking contract judged by detectors that are not ours, over whole calls on loopback
//! against a running server: spandsp and multimon-ng (tests/common/judges.rs) listen to
//! everything the agent heard and to each channel of the recording fetched through the QA
//! API, and must find no digit, whether the caller keys by RFC 4733, in-band, both at once,
//! over silence, recorded speech as loud as the tones, pink noise, or through a link with 5%
//! loss and 20 ms jitter. Each call has its positive control (the judges read the keys from
//! what the caller sent), a check that the caller's voice still reaches the agent, and the
//! card checked whole through detokenize.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backgrounds::{Background, rms};
use common::judges;
use common::{TestCard, TestServer, assert_card_whole, http, wait_final};
use tonewall::api::auth::Role;
use tonewall::media::dtmf::{dbm0_to_amplitude, signal::to_i16};
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions, Keying};

const KEYPAD: &str = "5555555555554444#,1230,321";
const CARD: TestCard = TestCard { pan: "5555555555554444", month: 12, year: 2030, code: "321" };
const KEYS: &str = "5555555555554444#1230321";
const TONE_DBM0: f32 = -10.0;

/// What the caller's phone picks up under the keys.
#[derive(Debug, Clone, Copy)]
enum Backdrop {
    Silence,
    /// Recorded speech (or noise), RMS this many dB against each tone.
    Under(Background, f32),
}

impl Backdrop {
    fn audio(self) -> Option<Arc<[i16]>> {
        let Backdrop::Under(b, db) = self else { return None };
        let gain = dbm0_to_amplitude(TONE_DBM0) / 2f32.sqrt() * 10f32.powf(db / 20.0);
        Some(to_i16(&b.unit_rms().iter().map(|v| v * gain).collect::<Vec<_>>()).into())
    }
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
            let dbm0 = 20.0 * (amplitude.max(1e-3) / dbm0_to_amplitude(0.0)).log10();
            peak = peak.max(dbm0);
        }
    }
    peak
}

/// How many of `keys` a judge's digits contain, in order.
fn in_order(keys: &str, heard: &str) -> usize {
    let mut it = heard.chars();
    keys.chars().filter(|k| it.by_ref().any(|h| h == *k)).count()
}

fn level_db(pcm: &[i16]) -> f32 {
    20.0 * rms(&pcm.iter().map(|s| f32::from(*s)).collect::<Vec<_>>()).max(1e-3).log10()
}

/// Both judges on one stream: the digits each heard.
fn judged(pcm: &[i16]) -> (String, String) {
    (judges::spandsp(pcm).iter().map(|h| h.digit).collect(), judges::multimon(pcm))
}

/// How many digits each judge heard in masked audio: counts only, so that a failure never
/// prints what leaked.
fn leaked(pcm: &[i16]) -> (usize, usize) {
    let (s, m) = judged(pcm);
    (s.len(), m.len())
}

struct Case {
    keying: Keying,
    backdrop: Backdrop,
    loss_percent: u8,
    jitter_ms: u64,
    /// Whether tonewall must capture the card (over a background as loud as the tones, an
    /// in-band card may fail its fields; the masking must hold either way).
    card_expected: bool,
}

async fn judged_call(c: Case) {
    let t = TestServer::start().await;
    let key = t.key(Role::Agent).await;
    let agent = Agent::start().await.unwrap();
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"judge","agent_uri":"{}"}}"#, agent.uri);
    let (_, v) = http("POST", &format!("{}/v1/sessions", t.base), Some(&key), Some(&body)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let uri = v["transfer_uri"].as_str().unwrap().to_string();
    let background = c.backdrop.audio();
    let caller = tokio::spawn(caller::place_call(CallerOptions {
        keying: c.keying,
        tone_dbm0: TONE_DBM0,
        background: background.clone(),
        loss_percent: c.loss_percent,
        jitter: Duration::from_millis(c.jitter_ms),
        linger: Duration::from_secs(3),
        ..CallerOptions::new(t.server.sip_addr, &uri, KEYPAD)
    }));
    let case = format!("{:?}, {:?}, loss {}%, jitter {} ms", c.keying, c.backdrop, c.loss_percent, c.jitter_ms);
    // Checked while the call is up: the security code is held only as long as the call.
    let s = wait_final(&t.base, &key, &id, Duration::from_secs(40)).await;
    println!("{case}: session {}", s["state"]);
    if c.card_expected {
        assert_card_whole(&t, &s, &CARD, &case).await;
    }
    let completed = s["state"] == "completed";
    let report = caller.await.unwrap().unwrap();
    assert_eq!(report.keys_sent, if c.keying == Keying::InBand { 0 } else { 24 }, "{case}");
    if c.keying != Keying::Rfc4733 {
        // The positive control: from what the caller sent, a judge reads the keys.
        let (s, m) = judged(&report.sent_audio);
        let best = in_order(KEYS, &s).max(in_order(KEYS, &m));
        assert!(best >= 20, "{case}: the judges read only {best} of 24 keys from the caller's own audio");
        println!(
            "{case}: unmasked, spandsp read {} and multimon-ng {} of 24 keys",
            in_order(KEYS, &s),
            in_order(KEYS, &m)
        );
    }
    let heard = agent.finish().await.unwrap();
    assert!(heard.audio.len() > 8000 * 8, "{case}: the agent heard the whole capture");
    assert_eq!(heard.non_audio_packets, 0, "{case}");
    assert_eq!(leaked(&heard.audio), (0, 0), "{case}: digits spandsp / multimon-ng heard on the agent leg");
    if background.is_some() {
        // The caller's voice still reaches the agent: at most 10 dB down (the DTMF band
        // taken out during capture, a few masked keys), where a muted leg would be −∞.
        let (sent, got) = (level_db(&report.sent_audio), level_db(&heard.audio));
        assert!(got > sent - 10.0, "{case}: the agent heard {got:.1} dB of the caller's {sent:.1} dB");
    } else {
        // Without a background, everything at the DTMF frequencies would be what is left of
        // a tone.
        let peak = dtmf_band_peak_dbm0(&heard.audio);
        assert!(peak < -55.0, "{case}: {peak:.1} dBm0 at a DTMF frequency on the agent leg");
    }
    judge_recording(&t, &case, completed).await;
    t.stop().await;
}

/// The call's recording, fetched as QA would: stereo at 8 kHz, each channel judged on its
/// own (caller masked, agent), the masked spans labelled by field (every field, when the
/// capture completed), seekable by range.
async fn judge_recording(t: &TestServer, case: &str, completed: bool) {
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
    for f in ["pan", "expiry", "cvv"].iter().take(if completed { 3 } else { 1 }) {
        assert!(spans.iter().any(|s| s["field"] == *f), "{case}: a span labelled {f}: {meta}");
    }
    let url = format!("{}/v1/recordings/{}/audio", t.base, meta["id"].as_str().unwrap());
    let wav = fetch(&url, &qa, None).await;
    assert_eq!(wav.0, 200);
    let mut reader = hound::WavReader::new(std::io::Cursor::new(&wav.1)).unwrap();
    assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 8000), "{case}");
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let caller = judges::channel(&samples, 0);
    assert!(caller.len() as i64 >= meta["duration_ms"].as_i64().unwrap() * 8 - 160, "{case}");
    assert!(caller.len() > 8000 * 8, "{case}: the recording holds the whole capture");
    assert_eq!(leaked(&caller), (0, 0), "{case}: digits the judges heard in the recording's caller channel");
    assert_eq!(leaked(&judges::channel(&samples, 1)), (0, 0), "{case}: and in its agent channel");
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

fn case(keying: Keying, backdrop: Backdrop) -> Case {
    Case { keying, backdrop, loss_percent: 0, jitter_ms: 0, card_expected: true }
}

const SPEECH: Background = Background::Speech("en_US_f_Allison");

#[tokio::test(flavor = "multi_thread")]
async fn rfc4733_only() {
    judged_call(case(Keying::Rfc4733, Backdrop::Silence)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_only() {
    judged_call(case(Keying::InBand, Backdrop::Silence)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc4733_and_in_band_at_once() {
    judged_call(case(Keying::Both, Backdrop::Silence)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_over_speech_8_db_below_the_tones() {
    judged_call(case(Keying::InBand, Backdrop::Under(SPEECH, -8.0))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_over_speech_as_loud_as_the_tones() {
    judged_call(Case { card_expected: false, ..case(Keying::InBand, Backdrop::Under(SPEECH, 0.0)) }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_over_pink_noise_1_db_below_the_tones() {
    judged_call(Case { card_expected: false, ..case(Keying::InBand, Backdrop::Under(Background::Pink, -1.0)) }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc4733_and_in_band_over_speech_2_db_below_the_tones() {
    judged_call(case(Keying::Both, Backdrop::Under(SPEECH, -2.0))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_with_loss_and_jitter() {
    judged_call(Case { loss_percent: 5, jitter_ms: 20, ..case(Keying::InBand, Backdrop::Silence) }).await;
}
