//! Merchants: many on one deployment. A merchant owns its API keys and people and everything
//! made in its name: sessions, calls, cards, recordings, webhook events and audit records.
//! Keys and people see only their own merchant's (404 for the rest, the answer for what does
//! not exist, so ids cannot be probed: `crate::owner`); a processor key detokenizes and erases
//! only its merchant's tokens (PCI DSS 7.2.1, 7.2.2: access by need to know).
//!
//! A merchant's settings override the deployment's: webhook and push endpoints, default
//! language, the card fields a session asks for by default, token format, convergent tokens
//! (scoped to the merchant: two merchants never share a token for one card) and recording
//! retention. Settings name secrets by file or environment variable; the database never
//! holds one (PCI DSS 3.6.1). `default` holds what existed before merchants; its admins
//! create and update merchants (`tonewall merchant`, `/v1/admin/merchants`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::AnyPool;

use crate::capture::card::looks_like_card_number;
use crate::capture::collector::FieldName;
use crate::capture::plan::Language;
use crate::vault::secret::SecretSource;
use crate::vault::token::TokenFormat;

pub const DEFAULT: &str = "default";
const MAX_RETENTION_DAYS: u32 = 3650;

/// A merchant's id: 1 to 64 lowercase letters, digits, `-`, `_` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MerchantId(String);

impl MerchantId {
    pub fn default_merchant() -> MerchantId {
        MerchantId(DEFAULT.to_string())
    }

    pub fn parse(id: &str) -> Result<MerchantId, MerchantError> {
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !well_formed || looks_like_card_number(id) {
            return Err(MerchantError::BadId);
        }
        Ok(MerchantId(id.to_string()))
    }

    /// An id as a row stores it (checked when it was written).
    pub fn from_stored(id: String) -> MerchantId {
        MerchantId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `default`, whose admins run the deployment's merchants.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT
    }
}

impl std::fmt::Display for MerchantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a merchant's webhook events or pushed cards go, and the secret that signs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub url: String,
    pub secret: SecretSource,
}

/// What a merchant sets for itself; what it leaves unset is the deployment's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Endpoint>,
    /// The push connector's endpoint (`crate::push`); its client certificate stays the
    /// deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// The fields a card session asks for when its request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_fields: Option<Vec<FieldName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_format: Option<TokenFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergent: Option<bool>,
    /// How long its recordings are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// What settings are checked against: the deployment's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deployment {
    /// `vault.production`: plain-HTTP webhooks refused too.
    pub production: bool,
    /// `[push]` has a client certificate, which every merchant's push presents.
    pub push: bool,
}

impl Deployment {
    pub fn of(config: &crate::config::Config) -> Deployment {
        Deployment { production: config.vault.production, push: !config.push.url.is_empty() }
    }
}

impl Settings {
    /// Refuses what the deployment could not honour: an endpoint it cannot reach as asked, a
    /// secret it cannot read now (a typo would otherwise surface as failed deliveries), a
    /// push without `[push]`'s client certificate.
    pub fn check(&self, deployment: Deployment) -> Result<(), MerchantError> {
        let production = deployment.production;
        let bad = |why: String| Err(MerchantError::Invalid(why));
        if self.push.is_some() && !deployment.push {
            return bad("push needs the deployment's [push] (its client certificate); it has none".into());
        }
        for (name, endpoint) in [("webhook", &self.webhook), ("push", &self.push)] {
            let Some(Endpoint { url, secret }) = endpoint else { continue };
            let parsed = url::Url::parse(url).map_err(|e| MerchantError::Invalid(format!("{name}.url: {e}")))?;
            match parsed.scheme() {
                "https" => {}
                "http" if name == "webhook" && !production => {}
                _ if name == "push" => return bad("push.url must be https:// (the card travels in it)".into()),
                _ => {
                    return bad(format!(
                        "{name}.url must be https://{}",
                        if production { " in production" } else { "" }
                    ));
                }
            }
            if !matches!(secret, SecretSource::File(_) | SecretSource::Env(_)) {
                return bad(format!(
                    "{name}.secret must be {{\"file\": …}} or {{\"env\": …}}: the database holds no secret"
                ));
            }
            // An environment variable may be set for `serve` only; a file is read by both.
            if let SecretSource::File(_) = secret
                && let Err(e) = secret.load(std::path::Path::new("/nonexistent"))
            {
                return bad(format!("{name}.secret: {e}"));
            }
        }
        if let Some(fields) = &self.card_fields {
            let card = [FieldName::Pan, FieldName::Expiry, FieldName::Cvv, FieldName::PostalCode];
            if !fields.contains(&FieldName::Pan) || fields.iter().any(|f| !card.contains(f)) {
                return bad("card_fields must include pan and name only pan, expiry, cvv, postal_code".into());
            }
        }
        if self.retention_days.is_some_and(|d| d == 0 || d > MAX_RETENTION_DAYS) {
            return bad(format!("retention_days must be 1 to {MAX_RETENTION_DAYS}"));
        }
        Ok(())
    }

    /// These settings with `patch` applied: a key with a value replaces, a key with `null`
    /// goes back to the deployment's.
    pub fn patched(&self, patch: &Map<String, Value>) -> Result<Settings, MerchantError> {
        let Value::Object(mut merged) = serde_json::to_value(self).map_err(invalid)? else {
            return Err(MerchantError::Invalid("settings are not an object".into()));
        };
        for (key, value) in patch {
            match value {
                Value::Null => merged.remove(key),
                v => merged.insert(key.clone(), v.clone()),
            };
        }
        serde_json::from_value(Value::Object(merged)).map_err(invalid)
    }
}

fn invalid(e: serde_json::Error) -> MerchantError {
    let text = e.to_string();
    MerchantError::Invalid(if looks_like_card_number(&text) {
        "a setting has the wrong type or value".into()
    } else {
        text
    })
}

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error("a merchant id is 1 to 64 lowercase letters, digits, '-', '_' or '.'")]
    BadId,
    #[error("merchant {0} already exists")]
    Exists(MerchantId),
    #[error("no merchant {0}")]
    NoSuch(MerchantId),
    #[error("{0}")]
    Invalid(String),
}

/// A merchant as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub settings: Settings,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    settings: String,
    created_at: i64,
    updated_at: i64,
}

impl Row {
    fn merchant(self) -> Result<Merchant, MerchantError> {
        let settings = serde_json::from_str(&self.settings).map_err(invalid)?;
        Ok(Merchant {
            id: MerchantId(self.id),
            name: self.name,
            settings,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn check_name(name: &str) -> Result<(), MerchantError> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) || looks_like_card_number(name)
    {
        return Err(MerchantError::Invalid("name must be 1 to 200 printable characters".into()));
    }
    Ok(())
}

pub async fn create(
    pool: &AnyPool,
    id: &MerchantId,
    name: &str,
    settings: &Settings,
    deployment: Deployment,
) -> Result<Merchant, MerchantError> {
    check_name(name)?;
    settings.check(deployment)?;
    let now = unix_now();
    let json = serde_json::to_string(settings).map_err(invalid)?;
    let inserted =
        sqlx::query("INSERT INTO merchants (id, name, settings, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
            .bind(id.as_str())
            .bind(name)
            .bind(&json)
            .bind(now)
            .execute(pool)
            .await;
    match inserted {
        Ok(_) => get(pool, id).await?.ok_or_else(|| MerchantError::NoSuch(id.clone())),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(MerchantError::Exists(id.clone())),
        Err(e) => Err(e.into()),
    }
}

pub async fn get(pool: &AnyPool, id: &MerchantId) -> Result<Option<Merchant>, MerchantError> {
    let row: Option<Row> =
        sqlx::query_as("SELECT * FROM merchants WHERE id = $1").bind(id.as_str()).fetch_optional(pool).await?;
    row.map(Row::merchant).transpose()
}

/// A merchant's settings; the deployment's (none set) for an id with no merchant.
pub async fn settings(pool: &AnyPool, id: &MerchantId) -> Result<Settings, MerchantError> {
    Ok(get(pool, id).await?.map(|m| m.settings).unwrap_or_default())
}

/// Every merchant, by id.
pub async fn list(pool: &AnyPool) -> Result<Vec<Merchant>, MerchantError> {
    let rows: Vec<Row> = sqlx::query_as("SELECT * FROM merchants ORDER BY id").fetch_all(pool).await?;
    rows.into_iter().map(Row::merchant).collect()
}

/// Renames and/or patches a merchant's settings (`Settings::patched`).
pub async fn update(
    pool: &AnyPool,
    id: &MerchantId,
    name: Option<&str>,
    patch: &Map<String, Value>,
    deployment: Deployment,
) -> Result<Merchant, MerchantError> {
    let current = get(pool, id).await?.ok_or_else(|| MerchantError::NoSuch(id.clone()))?;
    let name = name.unwrap_or(&current.name);
    check_name(name)?;
    let settings = current.settings.patched(patch)?;
    settings.check(deployment)?;
    let json = serde_json::to_string(&settings).map_err(invalid)?;
    sqlx::query("UPDATE merchants SET name = $1, settings = $2, updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(&json)
        .bind(unix_now())
        .bind(id.as_str())
        .execute(pool)
        .await?;
    get(pool, id).await?.ok_or_else(|| MerchantError::NoSuch(id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEV: Deployment = Deployment { production: false, push: true };
    const PRODUCTION: Deployment = Deployment { production: true, push: true };

    #[test]
    fn ids_are_checked() {
        assert!(MerchantId::parse("acme-eu.1").is_ok());
        for bad in ["", "Acme", "a b", "a/b", &"x".repeat(65), "4111111111111111"] {
            assert!(MerchantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_patch_and_check() {
        let s = Settings::default();
        let patch = |v: Value| v.as_object().unwrap().clone();
        let s = s
            .patched(&patch(json!({"language": "es", "token_format": "format_preserving", "retention_days": 30})))
            .unwrap();
        assert_eq!(
            (s.language, s.token_format, s.retention_days),
            (Some(Language::Es), Some(TokenFormat::FormatPreserving), Some(30))
        );
        let s = s.patched(&patch(json!({"language": null}))).unwrap();
        assert_eq!(s.language, None, "null goes back to the deployment's");
        assert_eq!(s.retention_days, Some(30), "what the patch leaves out stays");
        assert!(s.patched(&patch(json!({"langauge": "es"}))).is_err(), "a misspelt key is refused");
        let hook = |url: &str, secret: Value| {
            Settings::default().patched(&patch(json!({"webhook": {"url": url, "secret": secret}}))).unwrap()
        };
        assert!(hook("https://p.example/h", json!({"env": "ACME_HOOK"})).check(PRODUCTION).is_ok());
        assert!(hook("http://127.0.0.1:9/h", json!({"env": "X"})).check(DEV).is_ok());
        assert!(hook("http://p.example/h", json!({"env": "X"})).check(PRODUCTION).is_err(), "production: https only");
        let inline = hook("https://p.example/h", json!({"hex": "00".repeat(32)}));
        assert!(inline.check(DEV).unwrap_err().to_string().contains("holds no secret"));
        let push = Settings::default()
            .patched(&patch(json!({"push": {"url": "http://127.0.0.1:9/p", "secret": {"env": "X"}}})))
            .unwrap();
        assert!(push.check(DEV).is_err(), "a card is pushed over https only");
        let push = Settings::default()
            .patched(&patch(json!({"push": {"url": "https://gw.example/p", "secret": {"env": "X"}}})))
            .unwrap();
        let no_push = Deployment { push: false, ..DEV };
        assert!(push.check(DEV).is_ok());
        assert!(push.check(no_push).unwrap_err().to_string().contains("[push]"), "no client certificate to present");
        let missing = hook("https://p.example/h", json!({"file": "/nonexistent/acme.hex"}));
        assert!(missing.check(DEV).unwrap_err().to_string().contains("webhook.secret"), "a file that cannot be read");
        let fields = |v: Value| Settings::default().patched(&patch(json!({"card_fields": v}))).unwrap().check(DEV);
        assert!(fields(json!(["pan", "expiry", "postal_code"])).is_ok());
        assert!(fields(json!(["expiry"])).is_err() && fields(json!(["pan", "routing_number"])).is_err());
        let days = |d: u32| Settings { retention_days: Some(d), ..Settings::default() }.check(DEV);
        assert!(days(1).is_ok() && days(0).is_err() && days(MAX_RETENTION_DAYS + 1).is_err());
    }

    #[tokio::test]
    async fn merchants_are_stored_listed_and_updated() {
        for db in crate::vault::testing::TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = crate::vault::Vault::open(db.options(dir.path())).await.unwrap();
            let pool = vault.pool();
            let acme = MerchantId::parse("acme").unwrap();
            let french = Settings { language: Some(Language::Fr), ..Settings::default() };
            let made = create(pool, &acme, "Acme Ltd", &french, DEV).await.unwrap();
            assert_eq!((made.name.as_str(), made.settings.language), ("Acme Ltd", Some(Language::Fr)));
            assert!(matches!(create(pool, &acme, "Again", &french, DEV).await, Err(MerchantError::Exists(_))));
            let ids: Vec<String> = list(pool).await.unwrap().into_iter().map(|m| m.id.0).collect();
            assert_eq!(ids, ["acme", "default"], "the migration made `default`");
            let patch = json!({"convergent": true}).as_object().unwrap().clone();
            let updated = update(pool, &acme, Some("Acme"), &patch, DEV).await.unwrap();
            assert_eq!(
                (updated.name.as_str(), updated.settings.convergent, updated.settings.language),
                ("Acme", Some(true), Some(Language::Fr))
            );
            let nobody = MerchantId::parse("nobody").unwrap();
            assert!(matches!(update(pool, &nobody, None, &patch, DEV).await, Err(MerchantError::NoSuch(_))));
            assert_eq!(settings(pool, &nobody).await.unwrap(), Settings::default());
        }
    }
}
