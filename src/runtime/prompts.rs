//! Prompt recordings, compiled into the binary so `tonewall demo` and `serve` need no files:
//! `prompts/<lang>/` holds one 8 kHz mono 16-bit WAV per clip its manifest names and per
//! number 0 to 99. Every language must have every clip `capture::speech` can ask for in it;
//! all are decoded once at start.

use std::io::Cursor;
use std::sync::Arc;

use include_dir::{Dir, include_dir};
use thiserror::Error;

use crate::call::Prompts;
use crate::capture::plan::Language;
use crate::capture::speech;
use crate::media::player::PromptAudio;

static BUILT_IN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/prompts");

/// The longest recording taken: a prompt longer than this keeps the caller waiting.
pub const MAX_PROMPT_SECONDS: u32 = 30;

#[derive(Debug, Error)]
pub enum PromptError {
    #[error("prompt {name}: {why}")]
    Bad { name: String, why: String },
    #[error("prompts/{lang}/{name}.wav is missing: run prompts/generate.sh {lang}")]
    Missing { lang: &'static str, name: String },
}

/// Decodes a WAV recording, which must be 8 kHz mono 16-bit PCM of 0.1 to 30 s with sound.
pub fn decode(name: &str, bytes: &[u8]) -> Result<PromptAudio, PromptError> {
    let bad = |why: String| PromptError::Bad { name: name.to_string(), why };
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| bad(format!("not a WAV file: {e}")))?;
    let spec = reader.spec();
    if spec.sample_rate != 8000
        || spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(bad(format!(
            "must be 8 kHz mono 16-bit PCM, is {} Hz {} channel(s) {} bit",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        )));
    }
    let samples = reader.duration();
    if !(800..=MAX_PROMPT_SECONDS * 8000).contains(&samples) {
        return Err(bad(format!(
            "must last 0.1 to {MAX_PROMPT_SECONDS} s, lasts {:.2} s",
            f64::from(samples) / 8000.0
        )));
    }
    let samples: Result<Vec<i16>, _> = reader.samples::<i16>().collect();
    let samples = samples.map_err(|e| bad(e.to_string()))?;
    if samples.iter().all(|s| s.unsigned_abs() < 100) {
        return Err(bad("is silent".into()));
    }
    Ok(Arc::from(samples))
}

/// The built-in recordings of every language.
pub fn built_in() -> Result<Prompts, PromptError> {
    let mut prompts = Prompts::default();
    for lang in Language::ALL {
        for name in speech::clip_names(lang) {
            let path = format!("{}/{name}.wav", lang.code());
            let file = BUILT_IN
                .get_file(&path)
                .ok_or_else(|| PromptError::Missing { lang: lang.code(), name: name.clone() })?;
            let audio = decode(&path, file.contents())?;
            prompts.insert(lang, name, audio);
        }
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::speech::{Clip, PromptId};

    #[test]
    fn every_language_has_every_clip_and_prompts_are_speech_length() {
        let p = built_in().unwrap();
        for lang in Language::ALL {
            for id in PromptId::ALL {
                let audio = p.get(lang, id.name()).unwrap();
                let secs = audio.len() as f64 / 8000.0;
                assert!((0.4..12.0).contains(&secs), "{lang:?} {}: {secs} s", id.name());
            }
            // Each language speaks its own words: its card prompt differs from English's.
            if lang != Language::En {
                let own = p.audio(lang, Clip::Prompt(PromptId::CardNumber)).unwrap();
                assert_ne!(own, p.audio(Language::En, Clip::Prompt(PromptId::CardNumber)).unwrap(), "{lang:?}");
            }
        }
    }

    #[test]
    fn a_recording_of_the_wrong_shape_is_refused_with_the_reason() {
        let wav = |rate: u32, channels: u16, samples: &[i16]| {
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut out = Cursor::new(Vec::new());
            let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
            for s in samples {
                w.write_sample(*s).unwrap();
            }
            w.finalize().unwrap();
            out.into_inner()
        };
        let tone: Vec<i16> = (0..8000).map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16).collect();
        assert_eq!(decode("ok", &wav(8000, 1, &tone)).unwrap().len(), 8000);
        let why = |bytes: &[u8]| decode("x", bytes).unwrap_err().to_string();
        assert!(why(&wav(16000, 1, &tone)).contains("must be 8 kHz mono 16-bit PCM, is 16000 Hz"));
        assert!(why(&wav(8000, 2, &tone)).contains("2 channel"));
        assert!(why(&wav(8000, 1, &tone[..400])).contains("must last 0.1 to 30 s, lasts 0.05 s"));
        assert!(why(&wav(8000, 1, &vec![0; 8000])).contains("silent"));
        assert!(why(b"RIFF....WAVEfmt ").contains("not a WAV file"));
        let long = vec![1000i16; 31 * 8000];
        assert!(why(&wav(8000, 1, &long)).contains("lasts 31.00 s"));
    }
}
