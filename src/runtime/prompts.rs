//! Prompt recordings, compiled into the binary so `tonewall demo` and `serve` need no files:
//! 8 kHz mono 16-bit WAVs from `prompts/<lang>/` (see its manifest), decoded once at start.

use std::io::Cursor;
use std::sync::Arc;

use thiserror::Error;

use crate::call::Prompts;
use crate::media::player::PromptAudio;

#[derive(Debug, Error)]
pub enum PromptError {
    #[error("prompt {name}: {why}")]
    Bad { name: &'static str, why: String },
}

fn decode(name: &'static str, bytes: &[u8]) -> Result<PromptAudio, PromptError> {
    let bad = |why: String| PromptError::Bad { name, why };
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_rate != 8000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(bad(format!(
            "must be 8 kHz mono 16-bit, is {} Hz {} ch {} bit",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        )));
    }
    let samples: Result<Vec<i16>, _> = reader.samples::<i16>().collect();
    Ok(Arc::from(samples.map_err(|e| bad(e.to_string()))?))
}

pub fn english() -> Result<Prompts, PromptError> {
    Ok(Prompts {
        card_number: decode("card_number", include_bytes!("../../prompts/en/card_number.wav"))?,
        expiry: decode("expiry", include_bytes!("../../prompts/en/expiry.wav"))?,
        security_code: decode("security_code", include_bytes!("../../prompts/en/security_code.wav"))?,
        invalid: decode("invalid", include_bytes!("../../prompts/en/invalid.wav"))?,
        thank_you: decode("thank_you", include_bytes!("../../prompts/en/thank_you.wav"))?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipped_prompts_decode_and_are_speech_length() {
        let p = super::english().unwrap();
        for (name, audio) in [
            ("card", &p.card_number),
            ("expiry", &p.expiry),
            ("cvv", &p.security_code),
            ("invalid", &p.invalid),
            ("thanks", &p.thank_you),
        ] {
            let secs = audio.len() as f64 / 8000.0;
            assert!((1.0..10.0).contains(&secs), "{name}: {secs} s");
            assert!(audio.iter().any(|s| s.unsigned_abs() > 1000), "{name} is silent");
        }
    }
}
