//! What the caller hears, as a list of recorded clips: the prompts, and amounts and last
//! four digits said by joining number clips with each language's rules.
//!
//! Each language records the numbers 0 to 99 whole (its own rules for them, such as French
//! *soixante-dix* or German *einundzwanzig*, are in the recording), and the rules here join
//! them into larger numbers and amounts:
//! - hundreds and thousands: Spanish *cien* alone but *ciento* before more, *mil* and French
//!   *mille* without "one"; German *ein* before a noun or *tausend*;
//! - agreement with the currency: Spanish *un dólar*, *una libra*, *doscientas libras*,
//!   *veintiún euros*; French *une livre*, *vingt et une livres*;
//! - singular for one, plural otherwise (German units keep one form: *zwei Euro*).
//!
//! The runtime maps each `Clip::name` to a recording (`prompts/<lang>/`); a unit test there
//! checks that every name these rules can produce is recorded in every language.

use super::plan::{Amount, Currency, FieldName, Language};

/// The prompts: what each field asks, and the words around the read-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptId {
    CardNumber,
    Expiry,
    SecurityCode,
    PostalCode,
    RoutingNumber,
    AccountNumber,
    AccountType,
    /// "Please enter it again": the second entry of a field keyed twice.
    EnterAgain,
    /// The two entries differed; the field is asked again from the first entry.
    Mismatch,
    /// The card's brand is not one this payment takes.
    CardTypeNotAccepted,
    Invalid,
    ThankYou,
    /// "You are paying …" before the amount.
    YouArePaying,
    /// "… with the card ending in …" before the last four digits.
    CardEnding,
    AccountEnding,
    /// "Press 1 to confirm, or 2 to cancel."
    ConfirmKeys,
    /// The caller pressed 2: nothing was charged or stored.
    PaymentStopped,
}

impl PromptId {
    pub const ALL: [PromptId; 17] = [
        PromptId::CardNumber,
        PromptId::Expiry,
        PromptId::SecurityCode,
        PromptId::PostalCode,
        PromptId::RoutingNumber,
        PromptId::AccountNumber,
        PromptId::AccountType,
        PromptId::EnterAgain,
        PromptId::Mismatch,
        PromptId::CardTypeNotAccepted,
        PromptId::Invalid,
        PromptId::ThankYou,
        PromptId::YouArePaying,
        PromptId::CardEnding,
        PromptId::AccountEnding,
        PromptId::ConfirmKeys,
        PromptId::PaymentStopped,
    ];

    /// The recording's name, as `prompts/<lang>/manifest.toml` and custom uploads name it.
    pub fn name(self) -> &'static str {
        match self {
            PromptId::CardNumber => "card_number",
            PromptId::Expiry => "expiry",
            PromptId::SecurityCode => "security_code",
            PromptId::PostalCode => "postal_code",
            PromptId::RoutingNumber => "routing_number",
            PromptId::AccountNumber => "account_number",
            PromptId::AccountType => "account_type",
            PromptId::EnterAgain => "enter_again",
            PromptId::Mismatch => "mismatch",
            PromptId::CardTypeNotAccepted => "card_type_not_accepted",
            PromptId::Invalid => "invalid",
            PromptId::ThankYou => "thank_you",
            PromptId::YouArePaying => "you_are_paying",
            PromptId::CardEnding => "card_ending",
            PromptId::AccountEnding => "account_ending",
            PromptId::ConfirmKeys => "confirm_keys",
            PromptId::PaymentStopped => "payment_stopped",
        }
    }

    pub fn parse(name: &str) -> Option<PromptId> {
        PromptId::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What asks the caller for `field` (the confirmation is said by `confirmation`).
    pub fn for_field(field: FieldName) -> PromptId {
        match field {
            FieldName::Pan => PromptId::CardNumber,
            FieldName::Expiry => PromptId::Expiry,
            FieldName::Cvv => PromptId::SecurityCode,
            FieldName::PostalCode => PromptId::PostalCode,
            FieldName::RoutingNumber => PromptId::RoutingNumber,
            FieldName::AccountNumber => PromptId::AccountNumber,
            FieldName::AccountType => PromptId::AccountType,
            FieldName::Confirm => PromptId::ConfirmKeys,
        }
    }
}

/// A word of a number or amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word {
    /// 0 to 99, as counted.
    Number(u8),
    /// A number ending in one said before a noun, where the language shortens or inflects
    /// it: Spanish *un*/*una*, *veintiún*/*veintiuna*; French *une*; German *ein*.
    OneBefore {
        n: u8,
        feminine: bool,
    },
    /// 1 to 9 hundred; `more` where the language says it differently before more digits
    /// (Spanish *ciento* against *cien*).
    Hundreds {
        h: u8,
        feminine: bool,
        more: bool,
    },
    Thousand,
    /// Between the major and minor units: *and*, *con*, *et*, *und*.
    And,
    Major {
        currency: Currency,
        plural: bool,
    },
    Minor {
        currency: Currency,
        plural: bool,
    },
}

impl Word {
    pub fn clip_name(self) -> String {
        match self {
            Word::Number(n) => format!("n{n}"),
            Word::OneBefore { n, feminine } => format!("n{n}_one{}", if feminine { "_f" } else { "" }),
            Word::Hundreds { h, feminine, more } => {
                format!("h{h}{}{}", if feminine { "_f" } else { "" }, if more { "_more" } else { "" })
            }
            Word::Thousand => "thousand".into(),
            Word::And => "and".into(),
            Word::Major { currency, plural } => {
                format!("{}{}", currency.code().to_lowercase(), if plural { "_pl" } else { "" })
            }
            Word::Minor { currency, plural } => {
                format!("{}_minor{}", currency.code().to_lowercase(), if plural { "_pl" } else { "" })
            }
        }
    }
}

/// One recording to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Clip {
    Prompt(PromptId),
    Word(Word),
}

impl Clip {
    pub fn name(self) -> String {
        match self {
            Clip::Prompt(p) => p.name().to_string(),
            Clip::Word(w) => w.clip_name(),
        }
    }
}

/// What the caller hears for `amount`, in `lang`.
pub fn amount(lang: Language, amount: Amount) -> Vec<Word> {
    let (major, minor) = (amount.minor / 100, amount.minor % 100);
    let mut words = Vec::new();
    let feminine = |noun_is_major: bool| {
        noun_is_major && amount.currency == Currency::Gbp && matches!(lang, Language::Es | Language::Fr)
    };
    if major > 0 {
        count(lang, major, feminine(true), &mut words);
        words.push(Word::Major { currency: amount.currency, plural: major != 1 });
    }
    if minor > 0 {
        if major > 0 {
            words.push(Word::And);
        }
        count(lang, minor, feminine(false), &mut words);
        words.push(Word::Minor { currency: amount.currency, plural: minor != 1 });
    }
    words
}

/// Each digit of `digits` said alone ("one one one one").
pub fn digits(digits: &str) -> Vec<Word> {
    digits.bytes().filter(u8::is_ascii_digit).map(|b| Word::Number(b - b'0')).collect()
}

/// What was captured, for the read-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Card,
    Account,
}

/// The confirmation: "You are paying <amount> with the card ending in <d d d d>. Press 1 to
/// confirm, or 2 to cancel."
pub fn confirmation(lang: Language, to_pay: Amount, ending: Ending, last4: &str) -> Vec<Clip> {
    let mut clips = vec![Clip::Prompt(PromptId::YouArePaying)];
    clips.extend(amount(lang, to_pay).into_iter().map(Clip::Word));
    clips.push(Clip::Prompt(match ending {
        Ending::Card => PromptId::CardEnding,
        Ending::Account => PromptId::AccountEnding,
    }));
    clips.extend(digits(last4).into_iter().map(Clip::Word));
    clips.push(Clip::Prompt(PromptId::ConfirmKeys));
    clips
}

/// `n` (1 to 999 999) counting a noun of the given gender.
fn count(lang: Language, n: u64, feminine: bool, out: &mut Vec<Word>) {
    let (thousands, rest) = (n / 1000, n % 1000);
    if thousands > 0 {
        // Spanish *mil* and French *mille* take no "one"; English "one thousand".
        if !(thousands == 1 && matches!(lang, Language::Es | Language::Fr)) {
            below_thousand(lang, thousands as u16, feminine, out);
        }
        out.push(Word::Thousand);
    }
    if rest > 0 {
        below_thousand(lang, rest as u16, feminine, out);
    }
}

/// 1 to 999, before a noun (or before "thousand").
fn below_thousand(lang: Language, n: u16, feminine: bool, out: &mut Vec<Word>) {
    let (h, r) = ((n / 100) as u8, (n % 100) as u8);
    if h > 0 {
        // Only Spanish inflects hundreds (doscientos, doscientas), and only from two hundred.
        let feminine = feminine && lang == Language::Es && h >= 2;
        let more = lang == Language::Es && h == 1 && r > 0;
        out.push(Word::Hundreds { h, feminine, more });
    }
    if r > 0 {
        out.push(units(lang, r, feminine));
    }
}

fn units(lang: Language, r: u8, feminine: bool) -> Word {
    let ends_in_one = r % 10 == 1 && r != 11;
    match lang {
        Language::Es if ends_in_one => Word::OneBefore { n: r, feminine },
        // 71 and 91 end in *onze*, which does not agree.
        Language::Fr if ends_in_one && feminine && r != 71 && r != 91 => Word::OneBefore { n: r, feminine },
        Language::De if r == 1 => Word::OneBefore { n: 1, feminine: false },
        _ => Word::Number(r),
    }
}

/// Every clip name the rules above can produce in `lang`, and the prompts: what a language's
/// recordings must include.
pub fn clip_names(lang: Language) -> Vec<String> {
    let mut names: Vec<String> = PromptId::ALL.iter().map(|p| p.name().to_string()).collect();
    let mut words: Vec<Word> = (0..100).map(Word::Number).collect();
    // Enough amounts to meet every rule: each ending in a ten, hundred and thousand, both
    // genders (GBP), and singular and plural units.
    for currency in Currency::ALL {
        for major in (1..=999).chain([1000, 1001, 2000, 21_000, 100_000, 200_000, 999_999]) {
            for minor in [0, 1, 21, 99] {
                words.extend(amount(lang, Amount { minor: major * 100 + minor, currency }));
            }
        }
    }
    for w in words {
        let name = w.clip_name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(lang: Language, minor: u64, currency: Currency) -> String {
        amount(lang, Amount { minor, currency }).into_iter().map(Word::clip_name).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn english_amounts() {
        assert_eq!(said(Language::En, 1250, Currency::Usd), "n12 usd_pl and n50 usd_minor_pl");
        assert_eq!(said(Language::En, 100, Currency::Usd), "n1 usd");
        assert_eq!(said(Language::En, 1, Currency::Gbp), "n1 gbp_minor");
        assert_eq!(said(Language::En, 12_345_678, Currency::Eur), "h1 n23 thousand h4 n56 eur_pl and n78 eur_minor_pl");
        assert_eq!(said(Language::En, 100_000, Currency::Usd), "n1 thousand usd_pl");
    }

    #[test]
    fn spanish_shortens_one_and_agrees_with_the_pound() {
        assert_eq!(said(Language::Es, 100, Currency::Usd), "n1_one usd");
        assert_eq!(said(Language::Es, 100, Currency::Gbp), "n1_one_f gbp");
        assert_eq!(said(Language::Es, 2100, Currency::Eur), "n21_one eur_pl");
        assert_eq!(said(Language::Es, 10000, Currency::Usd), "h1 usd_pl", "cien dólares");
        assert_eq!(said(Language::Es, 10100, Currency::Usd), "h1_more n1_one usd_pl", "ciento un dólares");
        assert_eq!(said(Language::Es, 20000, Currency::Gbp), "h2_f gbp_pl", "doscientas libras");
        assert_eq!(said(Language::Es, 100_000, Currency::Eur), "thousand eur_pl", "mil euros");
        assert_eq!(said(Language::Es, 125_050, Currency::Eur), "thousand h2 n50 eur_pl and n50 eur_minor_pl");
        assert_eq!(said(Language::Es, 2_100_000, Currency::Eur), "n21_one thousand eur_pl", "veintiún mil euros");
    }

    #[test]
    fn french_and_german_rules() {
        assert_eq!(said(Language::Fr, 100_000, Currency::Eur), "thousand eur_pl", "mille euros");
        assert_eq!(said(Language::Fr, 2100, Currency::Gbp), "n21_one_f gbp_pl", "vingt et une livres");
        assert_eq!(said(Language::Fr, 7100, Currency::Gbp), "n71 gbp_pl", "soixante et onze livres");
        assert_eq!(said(Language::Fr, 2100, Currency::Usd), "n21 usd_pl");
        assert_eq!(said(Language::Fr, 20075, Currency::Eur), "h2 eur_pl and n75 eur_minor_pl");
        assert_eq!(said(Language::De, 100, Currency::Eur), "n1_one eur", "ein Euro");
        assert_eq!(said(Language::De, 100_000, Currency::Eur), "n1_one thousand eur_pl", "eintausend Euro");
        assert_eq!(said(Language::De, 2100, Currency::Eur), "n21 eur_pl", "einundzwanzig Euro");
    }

    #[test]
    fn the_confirmation_reads_amount_then_the_last_four() {
        let clips = confirmation(Language::En, Amount { minor: 705, currency: Currency::Usd }, Ending::Card, "1111");
        let names: Vec<String> = clips.into_iter().map(Clip::name).collect();
        assert_eq!(
            names.join(" "),
            "you_are_paying n7 usd_pl and n5 usd_minor_pl card_ending n1 n1 n1 n1 confirm_keys"
        );
    }

    #[test]
    fn every_language_needs_numbers_hundreds_and_each_currency() {
        for lang in Language::ALL {
            let names = clip_names(lang);
            for must in ["n0", "n99", "thousand", "and", "usd_pl", "gbp_minor", "card_number", "h9"] {
                assert!(names.iter().any(|n| n == must), "{lang:?} lacks {must}");
            }
        }
        assert!(clip_names(Language::Es).iter().any(|n| n == "h1_more"));
        assert!(!clip_names(Language::En).iter().any(|n| n.contains("_one")));
    }
}
