//! Prompt recordings, compiled into the binary so `tonewall demo` and `serve` need no files:
//! `prompts/<lang>/` holds one 8 kHz mono 16-bit WAV per clip its manifest names and per
//! number 0 to 99. Every language must have every clip `capture::speech` can ask for in it;
//! all are decoded once at start.
//!
//! An admin may upload recordings over them (`PromptLibrary`), per language and clip: they
//! are checked as the built-in ones are, kept in the vault's database so every node plays
//! them, and a clip without one plays the built-in recording.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};

use sha2::Digest as _;
use sqlx::AnyPool;

use include_dir::{Dir, include_dir};
use thiserror::Error;

use crate::call::Prompts;
use crate::capture::plan::Language;
use crate::capture::speech;
use crate::media::player::PromptAudio;
use crate::merchant::MerchantId;

static BUILT_IN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/prompts");

/// The longest recording taken: a prompt longer than this keeps the caller waiting.
pub const MAX_PROMPT_SECONDS: u32 = 30;

#[derive(Debug, Error)]
pub enum PromptError {
    #[error("prompt {name}: {why}")]
    Bad { name: String, why: String },
    #[error("prompts/{lang}/{name}.wav is missing: run prompts/generate.sh {lang}")]
    Missing { lang: &'static str, name: String },
    #[error(
        "{lang} has no clip named {name:?}: the prompts are {prompts}, the numbers n0 to n99, and the words amounts are read with"
    )]
    UnknownClip { lang: &'static str, name: String, prompts: String },
    #[error("the prompt store is unavailable: {0}")]
    Store(#[from] sqlx::Error),
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

/// A custom recording, as listed.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Custom {
    pub merchant: String,
    pub language: String,
    pub name: String,
    pub sha256: String,
    pub uploaded_at: i64,
    pub uploaded_by: String,
}

/// The prompts calls play: the built-in set with `default`'s uploads over it, and for a
/// merchant with uploads of its own, those over that. The API changes it; each new call takes
/// its merchant's set current when it starts.
pub struct PromptLibrary {
    built_in: Prompts,
    /// By merchant; `default`'s for every merchant with no uploads of its own.
    current: RwLock<HashMap<MerchantId, Arc<Prompts>>>,
    pool: AnyPool,
    /// The uploads' (merchant, language, name, sha256) the current sets were built with.
    loaded: Mutex<Vec<(String, String, String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PromptLibrary {
    /// The built-in set with every upload in the database over it.
    pub async fn open(pool: AnyPool) -> Result<PromptLibrary, PromptError> {
        let built_in = built_in()?;
        let sets = HashMap::from([(MerchantId::default_merchant(), Arc::new(built_in.clone()))]);
        let library = PromptLibrary { current: RwLock::new(sets), built_in, pool, loaded: Mutex::new(Vec::new()) };
        library.refresh().await?;
        Ok(library)
    }

    /// The set a call of `merchant` starting now plays.
    pub fn current(&self, merchant: &MerchantId) -> Arc<Prompts> {
        let sets = self.current.read().unwrap_or_else(|p| p.into_inner());
        // Invariant: `default`'s set is made at open and never removed.
        sets.get(merchant).or_else(|| sets.get(&MerchantId::default_merchant())).cloned().expect("default's prompts")
    }

    /// Rebuilds the sets if the uploads changed (on another node, too); says whether they had.
    pub async fn refresh(&self) -> Result<bool, PromptError> {
        let now: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT merchant, language, name, sha256 FROM prompts ORDER BY merchant, language, name")
                .fetch_all(&self.pool)
                .await?;
        if *lock(&self.loaded) == now {
            return Ok(false);
        }
        let rows: Vec<(String, String, String, Vec<u8>)> =
            sqlx::query_as("SELECT merchant, language, name, wav FROM prompts").fetch_all(&self.pool).await?;
        let mut uploads: HashMap<MerchantId, Vec<(Language, String, PromptAudio)>> = HashMap::new();
        for (merchant, code, name, wav) in rows {
            // Checked on upload; a row that no longer decodes keeps the built-in clip.
            match (Language::parse(&code), decode(&name, &wav)) {
                (Some(lang), Ok(audio)) => {
                    uploads.entry(MerchantId::from_stored(merchant)).or_default().push((lang, name, audio))
                }
                (_, Err(e)) => tracing::error!(language = code, error = %e, "uploaded prompt not used"),
                (None, _) => tracing::error!(language = code, name, "uploaded prompt of an unknown language not used"),
            }
        }
        let over = |base: &Prompts, clips: Vec<(Language, String, PromptAudio)>| {
            let mut set = base.clone(); // clips are shared (`Arc`), not copied
            for (lang, name, audio) in clips {
                set.insert(lang, name, audio);
            }
            set
        };
        let default = MerchantId::default_merchant();
        let base = over(&self.built_in, uploads.remove(&default).unwrap_or_default());
        let mut sets: HashMap<MerchantId, Arc<Prompts>> =
            uploads.into_iter().map(|(merchant, clips)| (merchant, Arc::new(over(&base, clips)))).collect();
        sets.insert(default, Arc::new(base));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = sets;
        *lock(&self.loaded) = now;
        Ok(true)
    }

    /// Checks and stores `wav` as `merchant`'s recording of `lang`'s clip `name`, and plays it
    /// on its calls (on every merchant's, for `default`) from the next call on.
    pub async fn upload(
        &self,
        merchant: &MerchantId,
        lang: Language,
        name: &str,
        wav: &[u8],
        by: &str,
    ) -> Result<Custom, PromptError> {
        known_clip(lang, name)?;
        decode(name, wav)?;
        let custom = Custom {
            merchant: merchant.as_str().to_string(),
            language: lang.code().to_string(),
            name: name.to_string(),
            sha256: crate::vault::crypto::hex(&sha2::Sha256::digest(wav)),
            uploaded_at: crate::vault::unix_now(),
            uploaded_by: by.to_string(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM prompts WHERE merchant = $1 AND language = $2 AND name = $3")
            .bind(&custom.merchant)
            .bind(&custom.language)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO prompts (merchant, language, name, wav, sha256, uploaded_at, uploaded_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&custom.merchant)
        .bind(&custom.language)
        .bind(name)
        .bind(wav.to_vec())
        .bind(&custom.sha256)
        .bind(custom.uploaded_at)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.refresh().await?;
        Ok(custom)
    }

    /// Removes `merchant`'s upload for `lang`'s clip `name`, if any: what plays under it
    /// (`default`'s upload, or the built-in clip) plays again.
    pub async fn remove(&self, merchant: &MerchantId, lang: Language, name: &str) -> Result<bool, PromptError> {
        known_clip(lang, name)?;
        let gone = sqlx::query("DELETE FROM prompts WHERE merchant = $1 AND language = $2 AND name = $3")
            .bind(merchant.as_str())
            .bind(lang.code())
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.refresh().await?;
        Ok(gone > 0)
    }

    /// The uploads `merchant`'s calls play: its own and `default`'s.
    pub async fn uploads(&self, merchant: &MerchantId) -> Result<Vec<Custom>, PromptError> {
        Ok(sqlx::query_as(
            "SELECT merchant, language, name, sha256, uploaded_at, uploaded_by FROM prompts \
             WHERE merchant = $1 OR merchant = 'default' ORDER BY language, name, merchant",
        )
        .bind(merchant.as_str())
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Refuses a name the language does not play.
fn known_clip(lang: Language, name: &str) -> Result<(), PromptError> {
    if speech::clip_names(lang).iter().any(|n| n == name) {
        return Ok(());
    }
    let prompts = crate::capture::speech::PromptId::ALL.map(|p| p.name()).join(", ");
    Err(PromptError::UnknownClip { lang: lang.code(), name: name.chars().take(40).collect(), prompts })
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

    /// A WAV of `samples` at `rate` Hz over `channels` channels, 16-bit.
    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
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
    }

    #[tokio::test]
    async fn an_upload_plays_on_every_node_and_its_removal_brings_the_built_in_back() {
        use crate::vault::testing::TestDatabase;
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = crate::vault::Vault::open(db.options(dir.path())).await.unwrap();
            let (a, b) = (
                PromptLibrary::open(vault.pool().clone()).await.unwrap(),
                PromptLibrary::open(vault.pool().clone()).await.unwrap(),
            );
            let card = Clip::Prompt(PromptId::CardNumber);
            let d = MerchantId::default_merchant();
            let built_in = a.current(&d).audio(Language::Fr, card).unwrap();
            let ours: Vec<i16> = (0..4000).map(|i| ((i as f64 * 0.2).sin() * 9000.0) as i16).collect();
            let refused = a.upload(&d, Language::Fr, "card_number", b"not a wav", "admin-1").await.unwrap_err();
            assert!(refused.to_string().contains("not a WAV file"), "{refused}");
            let refused = a.upload(&d, Language::Fr, "card_numbre", &wav(8000, 1, &ours), "admin-1").await.unwrap_err();
            assert!(refused.to_string().contains("fr has no clip named \"card_numbre\""), "{refused}");
            let custom = a.upload(&d, Language::Fr, "card_number", &wav(8000, 1, &ours), "admin-1").await.unwrap();
            assert_eq!((custom.language.as_str(), custom.uploaded_by.as_str()), ("fr", "admin-1"));
            assert_eq!(&a.current(&d).audio(Language::Fr, card).unwrap()[..], &ours[..], "{}", db.label);
            assert_eq!(
                a.current(&d).audio(Language::Es, card),
                b.current(&d).audio(Language::Es, card),
                "other languages keep theirs"
            );
            // The other node plays it once it refreshes (every 10 s in `serve`).
            assert!(b.refresh().await.unwrap());
            assert_eq!(&b.current(&d).audio(Language::Fr, card).unwrap()[..], &ours[..]);
            assert!(!b.refresh().await.unwrap(), "nothing changed since");
            assert_eq!(a.uploads(&d).await.unwrap().len(), 1);
            assert!(a.remove(&d, Language::Fr, "card_number").await.unwrap());
            assert_eq!(a.current(&d).audio(Language::Fr, card).unwrap(), built_in);
            assert!(!a.remove(&d, Language::Fr, "card_number").await.unwrap(), "nothing left to remove");

            // A merchant's own upload plays on its calls only, over `default`'s.
            let (acme, globex) = (MerchantId::parse("acme").unwrap(), MerchantId::parse("globex").unwrap());
            let theirs: Vec<i16> = ours.iter().map(|s| s / 2).collect();
            a.upload(&d, Language::Fr, "card_number", &wav(8000, 1, &ours), "admin-1").await.unwrap();
            a.upload(&acme, Language::Fr, "card_number", &wav(8000, 1, &theirs), "acme-admin").await.unwrap();
            let heard = |m: &MerchantId| a.current(m).audio(Language::Fr, card).unwrap();
            assert_eq!((&heard(&acme)[..], &heard(&globex)[..], &heard(&d)[..]), (&theirs[..], &ours[..], &ours[..]));
            let listed: Vec<String> = a.uploads(&globex).await.unwrap().into_iter().map(|c| c.merchant).collect();
            assert_eq!(listed, ["default"], "another merchant's uploads are not listed");
            assert!(a.remove(&acme, Language::Fr, "card_number").await.unwrap());
            assert_eq!(&heard(&acme)[..], &ours[..], "default's plays under it again");
        }
    }
}
