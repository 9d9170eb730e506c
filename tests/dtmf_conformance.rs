//! The strict in-band detector against ITU-T Q.24 (North American limits), as tables of
//! generated signals: each row names the limit it checks. Signals are 8 kHz linear, fed in
//! 20 ms blocks as the call path does.

use tonewall::media::dtmf::signal::{Noise, TonePair, mix, push_silence, push_sines, push_tone, to_i16};
use tonewall::media::dtmf::{Detector, SAMPLE_RATE};
use tonewall::media::telephone_event::Key;

const KEYS: &str = "123A456B789C*0#D";

fn keys() -> impl Iterator<Item = Key> {
    KEYS.chars().map(|c| Key::from_char(c).unwrap())
}

/// Keys the detector reports for `x`, with their decision time in samples.
fn detect(x: &[f32]) -> Vec<(Key, u64)> {
    let mut d = Detector::new();
    to_i16(x).chunks(160).filter_map(|b| d.process(b)).map(|det| (det.key, det.at_sample)).collect()
}

/// 50 ms of silence, the tone, 50 ms of silence.
fn framed(pair: TonePair, ms: f32, lead_ms: f32) -> Vec<f32> {
    let mut x = Vec::new();
    push_silence(&mut x, lead_ms);
    push_tone(&mut x, pair, ms);
    push_silence(&mut x, 60.0);
    x
}

fn assert_detects(x: &[f32], key: Key, case: &str) {
    let got: Vec<Key> = detect(x).into_iter().map(|d| d.0).collect();
    assert_eq!(got, vec![key], "{case}");
}

fn assert_rejects(x: &[f32], case: &str) {
    let got = detect(x);
    assert!(got.is_empty(), "{case}: detected {got:?}");
}

#[test]
fn frequency_tolerance_accept_within_1_5_percent_plus_2_hz_reject_from_3_5_percent() {
    for key in keys() {
        let t = TonePair::key(key, -10.0);
        // (case, pair, accept?)
        let cases = [
            ("both tones +1.5% +2 Hz", t.offset(1.5, 2.0), true),
            ("both tones -1.5% -2 Hz", t.offset(-1.5, -2.0), true),
            ("row +3.5%", TonePair { row_hz: t.row_hz * 1.035, ..t }, false),
            ("row -3.5%", TonePair { row_hz: t.row_hz * 0.965, ..t }, false),
            ("column +3.5%", TonePair { col_hz: t.col_hz * 1.035, ..t }, false),
            ("column -3.5%", TonePair { col_hz: t.col_hz * 0.965, ..t }, false),
            ("row -3.8% (a known detector's miss)", TonePair { row_hz: t.row_hz * 0.962, ..t }, false),
        ];
        for (case, pair, accept) in cases {
            let x = framed(pair, 60.0, 50.0);
            let name = format!("{key:?} {case}");
            if accept { assert_detects(&x, key, &name) } else { assert_rejects(&x, &name) }
        }
    }
}

#[test]
fn levels_from_minus_36_to_plus_3_dbm0_per_tone() {
    for key in keys() {
        for level in [-36.0, -30.0, -20.0, -10.0, 0.0, 3.0] {
            assert_detects(&framed(TonePair::key(key, level), 60.0, 50.0), key, &format!("{key:?} at {level} dBm0"));
        }
    }
}

#[test]
fn twist_normal_8_db_reverse_4_db_and_beyond_rejected() {
    for key in keys() {
        let t = TonePair::key(key, -12.0);
        assert_detects(&framed(t.twist(8.0), 60.0, 50.0), key, &format!("{key:?} normal twist 8 dB"));
        assert_detects(&framed(t.twist(-4.0), 60.0, 50.0), key, &format!("{key:?} reverse twist 4 dB"));
        assert_rejects(&framed(t.twist(9.5), 60.0, 50.0), &format!("{key:?} normal twist 9.5 dB"));
        assert_rejects(&framed(t.twist(-5.5), 60.0, 50.0), &format!("{key:?} reverse twist 5.5 dB"));
    }
}

#[test]
fn duration_40_ms_accepted_23_ms_rejected_at_every_alignment() {
    for key in keys() {
        for lead in [50.0, 51.0, 52.5, 54.0, 55.5, 57.0] {
            let t = TonePair::key(key, -10.0);
            assert_detects(&framed(t, 40.0, lead), key, &format!("{key:?} 40 ms, lead {lead}"));
            assert_rejects(&framed(t, 23.0, lead), &format!("{key:?} 23 ms, lead {lead}"));
        }
    }
}

#[test]
fn a_40_ms_gap_separates_digits_and_a_10_ms_dropout_does_not() {
    for key in keys() {
        let t = TonePair::key(key, -10.0);
        for lead in [50.0, 52.0, 55.0] {
            let mut x = Vec::new();
            push_silence(&mut x, lead);
            push_tone(&mut x, t, 45.0);
            push_silence(&mut x, 40.0);
            push_tone(&mut x, t, 45.0);
            push_silence(&mut x, 60.0);
            assert_eq!(detect(&x).len(), 2, "{key:?}: two keys across a 40 ms gap, lead {lead}");
            let mut y = Vec::new();
            push_silence(&mut y, lead);
            push_tone(&mut y, t, 60.0);
            push_silence(&mut y, 10.0);
            push_tone(&mut y, t, 60.0);
            push_silence(&mut y, 60.0);
            assert_eq!(detect(&y).len(), 1, "{key:?}: one key across a 10 ms drop-out, lead {lead}");
        }
    }
}

#[test]
fn dial_tone_at_minus_15_dbm0_under_a_digit() {
    for key in keys() {
        let mut x = framed(TonePair::key(key, -10.0), 60.0, 50.0);
        let mut dial = Vec::new();
        // 350 + 440 Hz, −15 dBm0 together (−18 dBm0 each).
        push_sines(&mut dial, &[(350.0, -18.0), (440.0, -18.0)], x.len() as f32 * 1000.0 / SAMPLE_RATE);
        mix(&mut x, &dial, 0);
        assert_detects(&x, key, &format!("{key:?} over dial tone"));
    }
}

/// Detection rate over 16 keys × `trials` tones at S/N `snr_db` (signal: both tones, noise:
/// white over the band), and the decision latencies in ms.
fn noise_run(snr_db: f32, trials: u64) -> (f64, Vec<f32>) {
    let mut found = 0;
    let mut latencies = Vec::new();
    let mut total = 0;
    for (k, key) in keys().enumerate() {
        for trial in 0..trials {
            // −10 dBm0 per tone is −7 dBm0 for the pair.
            let mut x = Vec::new();
            push_silence(&mut x, 50.0 + trial as f32 % 8.0);
            let onset = x.len() as u64;
            push_tone(&mut x, TonePair::key(key, -10.0), 50.0);
            push_silence(&mut x, 60.0);
            Noise::new(1 + k as u64 * 1000 + trial).add(&mut x, -7.0 - snr_db);
            let got = detect(&x);
            total += 1;
            if got.len() == 1 && got[0].0 == key {
                found += 1;
                latencies.push((got[0].1 - onset) as f32 / 8.0);
            }
        }
    }
    (found as f64 / total as f64, latencies)
}

#[test]
fn white_noise_all_detected_at_15_db_and_lowest_99_percent_reported() {
    let (rate, mut lat) = noise_run(15.0, 25);
    assert_eq!(rate, 1.0, "detection rate at 15 dB S/N");
    lat.sort_by(f32::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!("decision latency from onset (15 dB S/N, 50 ms tones): p50 {:.1} ms, p99 {:.1} ms", p(0.5), p(0.99));
    // The README states 34 ms (p50) and 38 ms (p99); the noise is seeded, so the margin is
    // one 1 ms step of rounding plus one more.
    assert!(p(0.5) <= 36.0 && p(0.99) <= 40.0, "decision p50 {} ms, p99 {} ms", p(0.5), p(0.99));
    // 1,024 tones a level (64 per key): one miss is 0.1%, so 99% is a measured figure.
    let rates: Vec<(f32, f64)> =
        [12.0, 10.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0].into_iter().map(|snr| (snr, noise_run(snr, 64).0)).collect();
    for (snr, rate) in &rates {
        println!("S/N {snr} dB: {:.2}% of 1024 detected", rate * 100.0);
    }
    // The lowest S/N down to which every level detects 99%.
    let lowest = rates.iter().take_while(|(_, r)| *r >= 0.99).last().map_or(15.0, |(snr, _)| *snr);
    println!("lowest S/N with 99% detection: {lowest} dB");
    assert!(lowest <= 8.0, "99% at 8 dB S/N");
    assert!(
        lowest <= LOWEST_99_PERCENT_SNR_DB,
        "99% only down to {lowest} dB, the README says {LOWEST_99_PERCENT_SNR_DB}"
    );
}

/// The lowest white-noise S/N the README states 99% detection for.
const LOWEST_99_PERCENT_SNR_DB: f32 = 4.0;
