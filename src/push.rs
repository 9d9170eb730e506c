//! The push connector: once a session's card (or bank account) is stored, tonewall POSTs it
//! to the processor's tokenization endpoint (`[push]`), so the processor need not pull it:
//! - over HTTPS only, presenting tonewall's client certificate (mutual TLS), checking the
//!   gateway's certificate against `push.ca` (or the web PKI);
//! - signed like the webhook: `Tonewall-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of
//!   "t.body">` under `push.secret`, with an `Idempotency-Key` that is the same on every try;
//! - tried `push.attempts` times at most, the wait doubling from `push.retry_base_ms`; a 4xx
//!   other than 408 and 429 is final. Redirects are not followed.
//!
//! The card is read back through the vault (`Vault::detokenize`, audited as the push
//! connector), which hands over the security code and forgets it: a push is its one use.
//! The gateway's `{"reference": "..."}` is stored beside tonewall's token, and the outcome
//! shows on the session (`SessionView::push`).
//!
//! A merchant with a push endpoint of its own (`crate::merchant`) has its cards sent there,
//! signed with its secret; tonewall's client certificate is the deployment's for all.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::capture::bank::AccountType;
use crate::capture::card::looks_like_card_number;
use crate::capture::plan::{Amount, PaymentMethod};
use crate::config::PushConfig;
use crate::merchant::MerchantId;
use crate::vault::crypto::SecretKey;
use crate::vault::webhook::{SIGNATURE_HEADER, signature};
use crate::vault::{Actor, ActorRole, Revealed, Vault, VaultError, audit};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push.{what} {path}: {why}")]
    File { what: &'static str, path: String, why: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// How a session's push stands, as the session shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PushView {
    Pending,
    Delivered { reference: String, attempts: u32 },
    Failed { error: String, attempts: u32 },
}

/// Who reads the card back for a push, in the audit trail.
const PUSHER: Actor<'static> = Actor { id: "push-connector", role: ActorRole::System, origin: "local", merchant: None };

/// The dev secret's file in the data directory.
pub const SECRET_FILE: &str = "push.dev.hex";

pub struct Pusher {
    url: String,
    agent: ureq::Agent,
    secret: SecretKey,
    attempts: u32,
    retry_base: Duration,
}

/// The JSON the gateway receives: a card or a bank account, and the amount confirmed.
#[derive(Serialize)]
struct Body<'a> {
    idempotency_key: &'a str,
    session_id: &'a str,
    token: &'a str,
    payment_method: PaymentMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postal_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_type: Option<AccountType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<Amount>,
}

#[derive(Deserialize)]
struct Answer {
    reference: String,
}

/// One try's outcome.
enum Try {
    Delivered(String),
    Again(String),
    Final(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, PushError> {
    std::fs::read(path).map_err(|e| PushError::File { what, path: path.display().to_string(), why: e.to_string() })
}

/// Every certificate in a PEM file, as the TLS listeners read them (`runtime::tls`).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, PushError> {
    let certs = crate::runtime::tls::read_certs(path).map_err(|e| PushError::File {
        what,
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(certs.iter().map(|c| ureq::tls::Certificate::from_der(c).to_owned()).collect())
}

impl Pusher {
    /// The connector `[push]` describes, or none when `push.url` is empty.
    pub fn from_config(c: &PushConfig, data_dir: &Path) -> Result<Option<Pusher>, PushError> {
        if c.url.is_empty() {
            return Ok(None);
        }
        let bad = |what: &'static str, path: &Path, why: String| PushError::File {
            what,
            path: path.display().to_string(),
            why,
        };
        let chain = certificates("client_cert", &c.client_cert)?;
        let key = ureq::tls::PrivateKey::from_pem(&read("client_key", &c.client_key)?)
            .map_err(|e| bad("client_key", &c.client_key, e.to_string()))?;
        let mut tls =
            ureq::tls::TlsConfig::builder().client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        if !c.ca.as_os_str().is_empty() {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certificates("ca", &c.ca)?));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .https_only(true)
            .timeout_global(Some(Duration::from_secs(10)))
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        let secret = c.secret.load(&data_dir.join(SECRET_FILE))?;
        let retry_base = Duration::from_millis(c.retry_base_ms);
        Ok(Some(Pusher { url: c.url.clone(), agent, secret, attempts: c.attempts, retry_base }))
    }

    /// Where `merchant`'s cards go and the secret that signs them: its own, else `[push]`'s.
    async fn endpoint(&self, vault: &Vault, merchant: &MerchantId) -> Result<(String, SecretKey), String> {
        let settings = crate::merchant::settings(vault.pool(), merchant).await.map_err(|e| e.to_string())?;
        match settings.push {
            // Merchants' secrets come from a file or the environment only (`Settings::check`).
            Some(own) => Ok((own.url, own.secret.load(Path::new("/nonexistent")).map_err(|e| e.to_string())?)),
            None => Ok((self.url.clone(), self.secret.clone())),
        }
    }

    /// Pushes `merchant`'s payment stored under `token` for `session`; the outcome to show.
    pub async fn push(
        &self,
        vault: &Vault,
        merchant: &MerchantId,
        session: &str,
        token: &str,
        amount: Option<Amount>,
    ) -> PushView {
        let (url, secret) = match self.endpoint(vault, merchant).await {
            Ok(e) => e,
            Err(e) => return PushView::Failed { error: format!("no push endpoint: {e}"), attempts: 0 },
        };
        let pusher = Actor { merchant: Some(merchant.as_str()), ..PUSHER };
        let revealed = match vault.detokenize(token, merchant, pusher, Instant::now()).await {
            Ok(r) => r,
            Err(e) => return PushView::Failed { error: format!("the card could not be read back: {e}"), attempts: 0 },
        };
        let id = uuid::Uuid::new_v4().to_string();
        let body = match body(&id, session, token, &revealed, amount) {
            Ok(b) => b,
            Err(e) => return PushView::Failed { error: e, attempts: 0 },
        };
        drop(revealed);
        let mut wait = self.retry_base;
        let mut outcome = PushView::Failed { error: "not tried".into(), attempts: 0 };
        for attempt in 1..=self.attempts {
            match self.send(&url, &secret, &body, &id).await {
                Try::Delivered(reference) => {
                    outcome = PushView::Delivered { reference, attempts: attempt };
                    break;
                }
                Try::Final(error) => {
                    outcome = PushView::Failed { error, attempts: attempt };
                    break;
                }
                Try::Again(error) => outcome = PushView::Failed { error, attempts: attempt },
            }
            if attempt < self.attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        drop(body);
        self.record(vault, pusher, token, &outcome).await;
        outcome
    }

    /// Stores the gateway's reference and audits the outcome.
    async fn record(&self, vault: &Vault, pusher: Actor<'_>, token: &str, outcome: &PushView) {
        let (result, detail) = match outcome {
            PushView::Delivered { reference, attempts } => {
                if let Err(e) = vault.set_gateway_reference(token, reference).await {
                    tracing::error!(error = %e, "gateway reference not stored");
                }
                ("delivered", format!("gateway reference {reference}, try {attempts}"))
            }
            PushView::Failed { error, attempts } => ("failed", format!("{error} (after {attempts} tries)")),
            PushView::Pending => return,
        };
        let event = audit::Event { detail: &detail, ..pusher.did("push", result, token) };
        if let Err(e) = vault.audit(&event).await {
            tracing::error!(error = %e, "push outcome not audited");
        }
    }

    async fn send(&self, url: &str, secret: &SecretKey, body: &Zeroizing<String>, id: &str) -> Try {
        let t = crate::vault::unix_now();
        let sig = signature(secret, t, body);
        let (agent, url, body, id) = (self.agent.clone(), url.to_string(), body.clone(), id.to_string());
        let blocking = move || -> Result<(u16, String), ureq::Error> {
            let mut resp = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .header("Idempotency-Key", &id)
                .send(body.as_bytes())?;
            let status = resp.status().as_u16();
            Ok((status, resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default()))
        };
        match tokio::task::spawn_blocking(blocking).await {
            Ok(Ok((status, text))) if (200..300).contains(&status) => match serde_json::from_str::<Answer>(&text) {
                Ok(a) if reference_ok(&a.reference) => Try::Delivered(a.reference),
                _ => Try::Final(format!("the gateway answered {status} without a usable {{\"reference\": …}}")),
            },
            Ok(Ok((status @ (408 | 429 | 500..), _))) => Try::Again(format!("the gateway answered {status}")),
            Ok(Ok((status, _))) => Try::Final(format!("the gateway refused the card: {status}")),
            // Connection refused, TLS handshake failed, timed out: the error names which.
            Ok(Err(e)) => Try::Again(e.to_string()),
            Err(e) => Try::Again(e.to_string()),
        }
    }
}

/// A gateway reference worth keeping: short, printable, and no card number.
fn reference_ok(r: &str) -> bool {
    !r.is_empty() && r.len() <= 128 && r.chars().all(|c| c.is_ascii_graphic()) && !looks_like_card_number(r)
}

fn body(
    id: &str,
    session: &str,
    token: &str,
    r: &Revealed,
    amount: Option<Amount>,
) -> Result<Zeroizing<String>, String> {
    let mut b = Body {
        idempotency_key: id,
        session_id: session,
        token,
        payment_method: PaymentMethod::Card,
        pan: None,
        expiry: None,
        security_code: None,
        postal_code: None,
        routing_number: None,
        account_number: None,
        account_type: None,
        amount,
    };
    match r {
        Revealed::Card(c) => {
            b.pan = Some(&c.pan);
            b.expiry = Some(&c.expiry).filter(|e| !e.is_empty()).map(|e| e.as_str());
            b.security_code = c.security_code.as_ref().map(|s| s.expose());
            b.postal_code = Some(&c.postal_code).filter(|p| !p.is_empty()).map(|p| p.as_str());
        }
        Revealed::Bank(a) => {
            b.payment_method = PaymentMethod::Ach;
            b.routing_number = Some(&a.routing_number);
            b.account_number = Some(&a.account_number);
            b.account_type = a.account_type;
        }
    }
    // The error cannot hold the card: serializing these types fails only on I/O.
    serde_json::to_string(&b).map(Zeroizing::new).map_err(|_| "the push body could not be written".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_reference_holding_a_card_number_is_not_kept() {
        assert!(reference_ok("gw_8f2a-771"));
        for bad in ["", "has space", "4111111111111111", "ref-4111-1111-1111-1111", &"x".repeat(129)] {
            assert!(!reference_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn outcomes_show_as_tagged_states() {
        let v = serde_json::to_value(PushView::Delivered { reference: "gw-1".into(), attempts: 2 }).unwrap();
        assert_eq!(v, serde_json::json!({"state": "delivered", "reference": "gw-1", "attempts": 2}));
        assert_eq!(serde_json::to_value(PushView::Pending).unwrap(), serde_json::json!({"state": "pending"}));
    }
}
