//! Sign-in through the contact center's identity provider: OpenID Connect Core 1.0 §3.1
//! (the authorization code flow) with PKCE (RFC 7636, S256) and a nonce (§3.1.2.1), through
//! the `openidconnect` crate, which also checks the ID token (§3.1.3.7: signature against
//! the provider's JWKS, issuer, audience, expiry, nonce). tonewall then checks what the
//! provider says about how the person authenticated — `amr` (RFC 8176) and `acr` — when
//! configured to require it, and maps configured claims to a role and a team.
//!
//! A sign-in that starts here is bound to the browser that started it: the `state` names a
//! pending entry held in memory for `PENDING_TTL`, taken once, and the browser must also
//! present the random binding set in a cookie at the start (RFC 9700 §4.7.1), so a code
//! and state sent to somebody else's browser sign nobody in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::{Source, User};
use crate::config::{ClientSecretSource, OidcConfig};
use crate::merchant::MerchantId;
use crate::owner::Team;
use crate::vault::actor::Role;
use crate::vault::token::random_base62;

/// The cookie that binds a sign-in to the browser that started it.
pub const BINDING_COOKIE: &str = "tw_oidc";
/// How long a started sign-in may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Started sign-ins held at once: a flood of starts cannot grow memory without bound.
pub const MAX_PENDING: usize = 10_000;
/// The provider's discovery document and keys are fetched again after this long.
const METADATA_TTL: Duration = Duration::from_secs(600);

/// Every claim of the ID token beyond the standard ones, for the role and team claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, Value>,
}
impl AdditionalClaims for OtherClaims {}

type Fields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
/// `CoreClient`, but keeping the claims it does not know.
type Client = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
pub type Claims = IdTokenClaims<OtherClaims, CoreGenderClaim>;

/// Where the browser goes once signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Desktop,
    Qa,
}

impl Page {
    pub fn parse(s: &str) -> Option<Page> {
        match s {
            "desktop" => Some(Page::Desktop),
            "qa" => Some(Page::Qa),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Page::Desktop => "/desktop",
            Page::Qa => "/qa",
        }
    }
}

#[derive(Debug, Error)]
pub enum OidcError {
    #[error("oidc.client_secret: {0}")]
    Secret(String),
    #[error("oidc.ca: {0}")]
    Ca(String),
    #[error("oidc: {0}")]
    Url(String),
    #[error("the identity provider's discovery document: {0}")]
    Discovery(String),
    #[error("too many sign-ins under way: try again in a few minutes")]
    Busy,
}

/// Why a browser coming back from the provider is not signed in. The audit trail names it
/// (`outcome`); the person is told in general terms (`Display`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("this sign-in is unknown or has expired: start again")]
    UnknownState,
    #[error("this sign-in was started in another browser: start again")]
    OtherBrowser,
    #[error("the answer came from another identity provider")]
    OtherIssuer,
    #[error("the identity provider refused the sign-in")]
    ProviderSaidNo(String),
    #[error("the identity provider could not be reached or refused the code")]
    Exchange(String),
    #[error("the identity provider's answer did not verify")]
    IdToken(String),
    /// With what the provider did report (`amr` values, `acr`).
    #[error("the identity provider did not report multi-factor authentication, which this server requires")]
    NoMfa(String),
    #[error("the identity provider did not say who you are")]
    NoUsername,
    #[error("your account at the identity provider has no role on this server")]
    NoRole,
    #[error("your account at the identity provider names more than one role on this server")]
    TwoRoles,
    #[error("your account at the identity provider names no merchant on this server")]
    NoMerchant,
}

impl Refusal {
    /// The audit record's outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::UnknownState => "unknown_state",
            Refusal::OtherBrowser => "other_browser",
            Refusal::OtherIssuer => "other_issuer",
            Refusal::ProviderSaidNo(_) => "provider_refused",
            Refusal::Exchange(_) => "code_exchange_failed",
            Refusal::IdToken(_) => "id_token_invalid",
            Refusal::NoMfa(_) => "mfa_missing",
            Refusal::NoUsername => "no_username",
            Refusal::NoRole => "no_role",
            Refusal::TwoRoles => "two_roles",
            Refusal::NoMerchant => "no_merchant",
        }
    }

    /// What the provider or the verifier said, for the audit record's detail.
    pub fn detail(&self) -> &str {
        match self {
            Refusal::ProviderSaidNo(d) | Refusal::Exchange(d) | Refusal::IdToken(d) | Refusal::NoMfa(d) => d,
            _ => "",
        }
    }
}

struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    binding: [u8; 32],
    then: Page,
    started: Instant,
}

/// A started sign-in: where to send the browser, and the binding for its cookie.
pub struct Started {
    pub authorize_url: String,
    pub binding: String,
}

/// The relying party: one per server.
pub struct Oidc {
    config: OidcConfig,
    secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    issuer: IssuerUrl,
    http: ureq::Agent,
    client: tokio::sync::Mutex<Option<(Instant, Client)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Oidc {
    /// Reads the client secret and the CA file; the provider is first asked at sign-in, so a
    /// provider that is down does not stop calls.
    pub fn new(config: &OidcConfig) -> Result<Oidc, OidcError> {
        let secret = match &config.client_secret {
            ClientSecretSource::None => None,
            ClientSecretSource::Env(var) => {
                let v = std::env::var(var)
                    .map_err(|_| OidcError::Secret(format!("environment variable {var} is not set")))?;
                Some(ClientSecret::new(v.trim().to_string()))
            }
            ClientSecretSource::File(path) => Some(ClientSecret::new(read_secret_file(path)?)),
        };
        let redirect = RedirectUrl::new(config.redirect_url.clone()).map_err(|e| OidcError::Url(e.to_string()))?;
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| OidcError::Url(e.to_string()))?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if !config.ca.as_os_str().is_empty() {
            let certs = crate::runtime::tls::read_certs(&config.ca).map_err(|e| OidcError::Ca(e.to_string()))?;
            let roots: Vec<_> = certs.iter().map(|c| ureq::tls::Certificate::from_der(c).to_owned()).collect();
            tls = tls.root_certs(ureq::tls::RootCerts::from(roots));
        }
        let http = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(Duration::from_secs(10)))
            // Following redirects from the provider's endpoints invites SSRF (RFC 9700 §4.11).
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Oidc {
            config: config.clone(),
            secret,
            redirect,
            issuer,
            http,
            client: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The name shown on the sign-in button.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client, from the provider's discovery document (fetched again when old).
    async fn client(&self, now: Instant) -> Result<Client, OidcError> {
        let mut cached = self.client.lock().await;
        if let Some((at, client)) = cached.as_ref()
            && now.saturating_duration_since(*at) < METADATA_TTL
        {
            return Ok(client.clone());
        }
        let http = self.http_client();
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        let client =
            Client::from_provider_metadata(metadata, ClientId::new(self.config.client_id.clone()), self.secret.clone())
                .set_redirect_uri(self.redirect.clone());
        *cached = Some((now, client.clone()));
        Ok(client)
    }

    fn http_client(&self) -> impl Fn(openidconnect::HttpRequest) -> HttpFuture + use<> {
        let agent = self.http.clone();
        move |request| Box::pin(send(agent.clone(), request))
    }

    /// Starts a sign-in: the provider's authorization URL (with PKCE and a nonce) and the
    /// binding the browser must bring back.
    pub async fn begin(&self, then: Page, now: Instant) -> Result<Started, OidcError> {
        {
            let mut pending = self.pending();
            pending.retain(|_, p| now.saturating_duration_since(p.started) < PENDING_TTL);
            if pending.len() >= MAX_PENDING {
                return Err(OidcError::Busy);
            }
        }
        let client = self.client(now).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.config.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let binding = random_base62(43);
        let entry = Pending { verifier, nonce, binding: Sha256::digest(binding.as_bytes()).into(), then, started: now };
        self.pending().insert(state.secret().clone(), entry);
        Ok(Started { authorize_url: url.to_string(), binding })
    }

    /// Finishes a sign-in the provider sent back: the person and the page they started from.
    /// `iss` is the issuer the answer names (RFC 9207 §2.4: an answer from another provider
    /// is a mix-up attack).
    pub async fn finish(
        &self,
        state: &str,
        answer: Answer<'_>,
        iss: Option<&str>,
        binding: Option<&str>,
        now: Instant,
    ) -> Result<(User, Page), Refusal> {
        let p = self.pending().remove(state).ok_or(Refusal::UnknownState)?;
        if now.saturating_duration_since(p.started) >= PENDING_TTL {
            return Err(Refusal::UnknownState);
        }
        let sent: [u8; 32] = Sha256::digest(binding.unwrap_or("").as_bytes()).into();
        if !bool::from(sent.ct_eq(&p.binding)) {
            return Err(Refusal::OtherBrowser);
        }
        if iss.is_some_and(|i| i != self.issuer.as_str()) {
            return Err(Refusal::OtherIssuer);
        }
        let code = match answer {
            Answer::Code(code) => code,
            Answer::Error(e) => return Err(Refusal::ProviderSaidNo(e.chars().take(200).collect())),
        };
        let client = self.client(now).await.map_err(|e| Refusal::Exchange(e.to_string()))?;
        let http = self.http_client();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Refusal::Exchange(e.to_string()))?
            .set_pkce_verifier(p.verifier)
            .request_async(&http)
            .await
            .map_err(|e| Refusal::Exchange(error_chain(&e)))?;
        let id_token = tokens.extra_fields().id_token().ok_or(Refusal::IdToken("no ID token".into()))?;
        let claims =
            id_token.claims(&client.id_token_verifier(), &p.nonce).map_err(|e| Refusal::IdToken(error_chain(&e)))?;
        Ok((identify(claims, &self.config)?, p.then))
    }
}

/// What the provider sent back with the state (RFC 6749 §4.1.2, §4.1.2.1).
pub enum Answer<'a> {
    Code(&'a str),
    Error(&'a str),
}

/// The person an ID token names, if it satisfies the configured requirements.
pub fn identify(claims: &Claims, config: &OidcConfig) -> Result<User, Refusal> {
    let amr: Vec<&str> = claims.auth_method_refs().into_iter().flatten().map(|m| m.as_str()).collect();
    let acr = claims.auth_context_ref().map(|a| a.as_str()).unwrap_or_default();
    let amr_ok = config.require_amr.is_empty() || amr.iter().any(|m| config.require_amr.iter().any(|r| r == m));
    let acr_ok = config.require_acr.is_empty() || config.require_acr.iter().any(|r| r == acr);
    if !(amr_ok && acr_ok) {
        return Err(Refusal::NoMfa(format!("amr [{}], acr {acr:?}", amr.join(", "))));
    }
    // Standard and other claims alike, by name.
    let all = serde_json::to_value(claims).map_err(|e| Refusal::IdToken(e.to_string()))?;
    let text = |name: &str| all.get(name).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let username = text(&config.username_claim)
        .filter(|u| u.len() <= 128 && !u.chars().any(char::is_control))
        .ok_or(Refusal::NoUsername)?;
    let values: Vec<&str> = match all.get(&config.role_claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let mut roles: Vec<Role> = values.iter().filter_map(|v| config.roles.get(*v).copied()).collect();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    let role = match roles.as_slice() {
        [] => return Err(Refusal::NoRole),
        [one] => *one,
        _ => return Err(Refusal::TwoRoles),
    };
    let team = if config.team_claim.is_empty() { None } else { text(&config.team_claim).and_then(Team::named) };
    let merchant = match config.merchant_claim.as_str() {
        "" => MerchantId::default_merchant(),
        claim => text(claim).and_then(|m| MerchantId::parse(m).ok()).ok_or(Refusal::NoMerchant)?,
    };
    Ok(User {
        id: format!("oidc:{}", claims.subject().as_str()),
        username: username.to_string(),
        role,
        merchant,
        team,
        source: Source::Provider,
    })
}

type HttpFuture = std::pin::Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send>>;

#[derive(Debug, Error)]
#[error("{0}")]
pub struct HttpError(String);

/// One request to the provider, on a blocking thread (ureq).
async fn send(
    agent: ureq::Agent,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let blocking = move || -> Result<openidconnect::HttpResponse, ureq::Error> {
        let response = agent.run(request)?;
        let (parts, mut body) = response.into_parts();
        let bytes = body.with_config().limit(1 << 20).read_to_vec()?;
        Ok(openidconnect::http::Response::from_parts(parts, bytes))
    };
    match tokio::task::spawn_blocking(blocking).await {
        Ok(result) => result.map_err(|e| HttpError(e.to_string())),
        Err(e) => Err(HttpError(e.to_string())),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text.chars().take(500).collect()
}

fn read_secret_file(path: &Path) -> Result<String, OidcError> {
    let text = crate::vault::secret::read_owner_only(path)
        .map_err(|why| OidcError::Secret(format!("{}: {why}", path.display())))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        let mut c = crate::config::Config::load(None).unwrap().oidc;
        c.role_claim = "groups".into();
        c.roles = [("cc-agents".to_string(), Role::Agent), ("cc-qa".to_string(), Role::Qa)].into();
        c.team_claim = "team".into();
        c.require_amr = vec!["otp".into(), "hwk".into()];
        c
    }

    fn claims(extra: Value) -> Claims {
        let mut base = serde_json::json!({
            "iss": "https://idp.example", "aud": ["tonewall"], "exp": 2_000_000_000, "iat": 1_900_000_000,
            "sub": "248289761001", "preferred_username": "alice", "amr": ["pwd", "otp"],
            "groups": ["staff", "cc-agents"], "team": "north",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn an_id_token_maps_to_a_person_with_a_role_and_a_team() {
        let u = identify(&claims(serde_json::json!({})), &config()).unwrap();
        assert_eq!(u.username, "alice");
        assert_eq!(u.id, "oidc:248289761001");
        assert_eq!(u.role, Role::Agent);
        assert_eq!(u.team, Team::named("north"));
        assert_eq!(u.source, Source::Provider);
        assert_eq!(u.principal(), "oidc:alice");
    }

    #[test]
    fn an_id_token_without_the_required_factor_role_or_name_is_refused() {
        let c = config();
        let refused = |extra: Value| identify(&claims(extra), &c).unwrap_err();
        assert_eq!(refused(serde_json::json!({ "amr": ["pwd"] })), Refusal::NoMfa("amr [pwd], acr \"\"".into()));
        assert_eq!(refused(serde_json::json!({ "amr": null })).outcome(), "mfa_missing");
        assert_eq!(refused(serde_json::json!({ "groups": ["staff"] })), Refusal::NoRole);
        assert_eq!(refused(serde_json::json!({ "groups": null })), Refusal::NoRole);
        assert_eq!(refused(serde_json::json!({ "groups": ["cc-agents", "cc-qa"] })), Refusal::TwoRoles);
        assert_eq!(refused(serde_json::json!({ "preferred_username": null })), Refusal::NoUsername);
        assert_eq!(refused(serde_json::json!({ "preferred_username": "a\u{7}b" })), Refusal::NoUsername);
        let mut by_merchant = c.clone();
        by_merchant.merchant_claim = "tenant".into();
        let acme = identify(&claims(serde_json::json!({ "tenant": "acme" })), &by_merchant).unwrap();
        assert_eq!(acme.merchant.as_str(), "acme");
        assert_eq!(identify(&claims(serde_json::json!({})), &by_merchant).unwrap_err(), Refusal::NoMerchant);
        let bad = claims(serde_json::json!({ "tenant": "Acme Ltd" }));
        assert_eq!(identify(&bad, &by_merchant).unwrap_err().outcome(), "no_merchant");
        assert!(identify(&claims(serde_json::json!({})), &c).unwrap().merchant.is_default(), "no claim: default");
        let one = identify(&claims(serde_json::json!({ "groups": "cc-qa" })), &c).unwrap();
        assert_eq!(one.role, Role::Qa, "a single string names a role too");

        let mut acr = c.clone();
        acr.require_amr.clear();
        acr.require_acr = vec!["urn:mfa".into()];
        assert_eq!(identify(&claims(serde_json::json!({})), &acr).unwrap_err().outcome(), "mfa_missing");
        assert!(identify(&claims(serde_json::json!({ "acr": "urn:mfa" })), &acr).is_ok());
        let mut none = c;
        none.require_amr.clear();
        assert!(identify(&claims(serde_json::json!({ "amr": null })), &none).is_ok(), "not required: not checked");
    }
}
