//! The recordings calls play, by language and clip name (`capture::speech`), decoded once
//! by the driver and shared by every call.

use std::collections::HashMap;

use crate::capture::plan::Language;
use crate::capture::speech::Clip;
use crate::media::player::PromptAudio;

#[derive(Debug, Clone, Default)]
pub struct Prompts {
    by_language: HashMap<Language, HashMap<String, PromptAudio>>,
    /// What plays for a clip no language has: simulated calls and fuzzing use one recording
    /// for everything.
    fallback: Option<PromptAudio>,
}

impl Prompts {
    /// The same recording for every clip: where only a prompt's length matters.
    pub fn same(audio: PromptAudio) -> Prompts {
        Prompts { by_language: HashMap::new(), fallback: Some(audio) }
    }

    pub fn insert(&mut self, lang: Language, name: impl Into<String>, audio: PromptAudio) {
        self.by_language.entry(lang).or_default().insert(name.into(), audio);
    }

    /// `lang`'s own recording named `name`, if it has one.
    pub fn get(&self, lang: Language, name: &str) -> Option<&PromptAudio> {
        self.by_language.get(&lang).and_then(|clips| clips.get(name))
    }

    /// What plays for `clip` in `lang`: its own recording, else English's (a language is
    /// checked complete when loaded, so this is for clips added later), else the fallback.
    pub fn audio(&self, lang: Language, clip: Clip) -> Option<PromptAudio> {
        let name = clip.name();
        self.get(lang, &name).or_else(|| self.get(Language::En, &name)).or(self.fallback.as_ref()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::speech::{PromptId, Word};

    #[test]
    fn a_language_plays_its_own_clip_then_english_then_the_fallback() {
        let clip = |n: i16| -> PromptAudio { vec![n; 4].into() };
        let mut p = Prompts::default();
        p.insert(Language::En, "card_number", clip(1));
        p.insert(Language::Es, "card_number", clip(2));
        p.insert(Language::En, "n7", clip(3));
        let card = Clip::Prompt(PromptId::CardNumber);
        assert_eq!(p.audio(Language::Es, card).unwrap()[0], 2);
        assert_eq!(p.audio(Language::Fr, card).unwrap()[0], 1);
        assert_eq!(p.audio(Language::Es, Clip::Word(Word::Number(7))).unwrap()[0], 3);
        assert!(p.audio(Language::Es, Clip::Prompt(PromptId::Mismatch)).is_none());
        let same = Prompts::same(clip(9));
        assert_eq!(same.audio(Language::De, card).unwrap()[0], 9);
    }
}
