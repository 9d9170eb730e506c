//! Backgrounds for the masking tests: recorded speech in five languages and music on hold
//! from Debian's `asterisk-core-sounds-*-wav` and `asterisk-moh-opsound-wav` (CC-BY-SA-3.0 /
//! CC-BY-3.0, under /usr/share/asterisk), white noise from a seeded generator, pink noise
//! from sox, and babble (three speakers at once). Pauses are taken out of recordings, so a
//! level set by RMS is the level of what is heard.

use std::path::{Path, PathBuf};

use tonewall::media::dtmf::dbm0_to_amplitude;
use tonewall::media::dtmf::signal::Noise;
use tonewall::media::rtp::FRAME_SAMPLES;

use super::require_tool;

const SOUNDS: &str = "/usr/share/asterisk/sounds";
const MOH: &str = "/usr/share/asterisk/moh";
pub const INSTALL: &str = "apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav \
asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-moh-opsound-wav sox";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    Speech(&'static str),
    Music,
    White,
    Pink,
    Babble,
}

impl Background {
    pub const ALL: [Background; 9] = [
        Background::Speech("en_US_f_Allison"),
        Background::Speech("es_MX_f_Allison"),
        Background::Speech("fr_CA_f_June"),
        Background::Speech("it_IT_m_Carlo"),
        Background::Speech("ru_RU_f_IvrvoiceRU"),
        Background::Music,
        Background::White,
        Background::Pink,
        Background::Babble,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Background::Speech(d) => &d[..2],
            Background::Music => "music",
            Background::White => "white",
            Background::Pink => "pink",
            Background::Babble => "babble",
        }
    }
}

fn wavs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}. Install the corpus with: {INSTALL}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    out.sort();
    out
}

/// About `seconds` of a recording set with its pauses taken out (20 ms frames below
/// −50 dBm0 dropped), so the level is the level of what is heard.
fn active_audio(files: &[PathBuf], seconds: usize) -> Vec<f32> {
    let floor = dbm0_to_amplitude(-50.0) / 2f32.sqrt();
    let mut out = Vec::new();
    for f in files {
        let mut r = hound::WavReader::open(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let spec = r.spec();
        assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (8000, 1, 16), "{}", f.display());
        let pcm: Vec<f32> = r.samples::<i16>().map(|s| f32::from(s.unwrap())).collect();
        for frame in pcm.chunks_exact(FRAME_SAMPLES) {
            if rms(frame) >= floor {
                out.extend_from_slice(frame);
            }
        }
        if out.len() >= seconds * 8000 {
            break;
        }
    }
    assert!(out.len() >= seconds * 8000, "too little audio in the corpus. Install it with: {INSTALL}");
    out
}

pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Scales to unit RMS.
pub fn normalized(mut x: Vec<f32>) -> Vec<f32> {
    let r = rms(&x);
    x.iter_mut().for_each(|v| *v /= r);
    x
}

const SOURCE_SECONDS: usize = 120;

pub fn speech(dir: &str) -> Vec<f32> {
    active_audio(&wavs(&Path::new(SOUNDS).join(dir)), SOURCE_SECONDS)
}

/// Pink noise from sox (`-R`: the same every run).
fn pink() -> Vec<f32> {
    require_tool("sox", INSTALL);
    let out = std::process::Command::new("sox")
        .args(["-R", "-n", "-r", "8000", "-b", "16", "-e", "signed", "-c", "1", "-t", "raw", "-"])
        .args(["synth", &SOURCE_SECONDS.to_string(), "pinknoise", "vol", "0.3"])
        .output()
        .expect("sox runs");
    assert!(out.status.success(), "sox pinknoise failed");
    out.stdout.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))).collect()
}

impl Background {
    /// About two minutes of this background at unit RMS.
    pub fn unit_rms(self) -> Vec<f32> {
        normalized(match self {
            Background::Speech(dir) => speech(dir),
            Background::Music => active_audio(&wavs(Path::new(MOH)), SOURCE_SECONDS),
            Background::White => {
                let mut n = Noise::new(0x5eed);
                (0..SOURCE_SECONDS * 8000).map(|_| n.gaussian()).collect()
            }
            Background::Pink => pink(),
            Background::Babble => {
                // Three speakers talking at once, each at the same level.
                let voices = ["en_US_f_Allison", "fr_CA_f_June", "it_IT_m_Carlo"].map(|d| normalized(speech(d)));
                (0..SOURCE_SECONDS * 8000).map(|i| voices.iter().map(|v| v[i]).sum()).collect()
            }
        })
    }
}
