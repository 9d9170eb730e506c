//! `sip-config/tonewall.toml` → typed `Config`. Every key has a default (the file in the
//! repository is the default, embedded in the binary); a file layers over it key by key, so
//! `[vault]` with only `detokenize_per_minute` keeps every other vault default. Unknown keys
//! and bad values are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::call::Masking;
use crate::capture::collector::CollectorConfig;
use crate::capture::plan::{BackKey, Language};
use crate::media::masker::Replacement;
use crate::media::source_lock::RtpSource;
use crate::media::srtp::SrtpPolicy;
use crate::sip::transaction::Timers;
use crate::vault::VaultOptions;
use crate::vault::actor::Role;
use crate::vault::kek::KekSource;
use crate::vault::secret::SecretSource;
use crate::vault::token::TokenFormat;

pub const DEFAULT_PATH: &str = "sip-config/tonewall.toml";
const EMBEDDED: &str = include_str!("../sip-config/tonewall.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("config {path}: {why}")]
    Syntax { path: String, why: String },
    #[error("config key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
    /// A key or value the typed config refuses, with its dotted path (`vault.kek`).
    #[error("config {path}: key `{key}`: {why}")]
    Key { path: String, key: String, why: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sip: SipConfig,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub capture: CaptureConfig,
    pub storage: StorageConfig,
    pub vault: VaultConfig,
    pub recordings: RecordingsConfig,
    pub webhook: WebhookConfig,
    pub push: PushConfig,
    pub audit: AuditConfig,
    pub alerts: AlertsConfig,
    pub accounts: AccountsConfig,
    pub oidc: OidcConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingsConfig {
    pub enabled: bool,
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// UDP (and, with `tcp`, TCP) address SIP listens on; `[::]:5060` serves IPv6 and IPv4.
    pub listen: SocketAddr,
    /// host[:port] written into transfer URIs; the listen address when empty.
    #[serde(default)]
    pub public_host: String,
    pub tcp: bool,
    /// TLS listen address; empty for none.
    pub tls_listen: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// PEM CAs an agent's or inline target's TLS certificate must chain to; empty for the
    /// Mozilla roots.
    pub tls_ca: PathBuf,
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    /// Most open TCP and TLS connections, and from one address (trusted peers excepted).
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// A connection with no call on it and no traffic for this long is closed.
    pub idle_timeout_s: u64,
    /// New out-of-dialog requests per second one source address may send (twice that in a burst).
    pub rate_per_source: u32,
    /// On SIGTERM, how long calls in progress may go on before they are hung up.
    pub drain_timeout_s: u64,
    /// SRTP on the caller's leg of session calls.
    pub srtp: SrtpPolicy,
    /// SRTP on the agent's leg (and an inline call's target): required offers RTP/SAVP,
    /// optional offers the key on RTP/AVP and takes SRTP if the agent answers with a key.
    pub agent_srtp: SrtpPolicy,
    /// SDES keys (RFC 4568) only over SIP over TLS: offered over UDP or TCP they get 488.
    pub sdes_requires_tls: bool,
    /// The PBXs and SBCs in front (addresses or CIDRs): they may speak for any dialog and
    /// take one over with Replaces; everyone else only for their own dialogs.
    #[serde(deserialize_with = "addresses_or_cidrs")]
    pub trusted_peers: Vec<ipnet::IpNet>,
    /// Where a session's agent_uri and transfer_uri may point (addresses, CIDRs, domains).
    pub allowed_targets: crate::targets::AllowedTargets,
    /// Inline mode: calls whose Request-URI user starts with a route's prefix are forwarded
    /// to its target, media anchored, capture off until the API switches it on.
    #[serde(default)]
    pub routes: Vec<SipRoute>,
}

/// `"10.0.0.5"` (one address) or `"10.1.0.0/16"`.
fn addresses_or_cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items: Vec<String> = Deserialize::deserialize(d)?;
    items
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is neither an IP address nor a CIDR")))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipRoute {
    /// Shown in `GET /v1/calls`.
    pub name: String,
    /// Request-URI users that start with this go this way (`pay-` stays for sessions).
    pub user_prefix: String,
    /// The contact-center target, a sip: URI.
    pub target: String,
    /// The only sources (addresses or CIDRs) whose INVITEs this route takes: the PBX or SBC
    /// that routes calls here. Required: a route open to anyone relays anyone's call.
    #[serde(deserialize_with = "addresses_or_cidrs")]
    pub sources: Vec<ipnet::IpNet>,
    /// SRTP on the caller's leg of this route's calls.
    #[serde(default)]
    pub srtp: SrtpPolicy,
    /// The team whose agents see this route's calls (`crate::owner`); empty for every agent.
    #[serde(default)]
    pub team: String,
    /// The merchant whose calls these are (`crate::merchant`); empty for `default`.
    #[serde(default)]
    pub merchant: String,
}

impl SipRoute {
    /// The merchant its calls belong to (checked by `Config::validate`).
    pub fn merchant(&self) -> crate::merchant::MerchantId {
        crate::merchant::MerchantId::parse(&self.merchant)
            .unwrap_or_else(|_| crate::merchant::MerchantId::default_merchant())
    }
}

impl SipConfig {
    /// The inline route for a Request-URI user, if any.
    pub fn route_for(&self, user: &str) -> Option<&SipRoute> {
        self.routes.iter().find(|r| user.starts_with(&r.user_prefix))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// HTTPS (TLS 1.2 and 1.3) with `tls_cert` and `tls_key`.
    pub tls: bool,
    /// PEM files; "" means the pair `tonewall keys tls-dev` writes under data_dir/tls.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// PEM CAs for client certificates (mutual TLS for processors); empty for none.
    pub client_ca: PathBuf,
    /// A client that has not sent a whole request head within this long is disconnected.
    pub header_timeout_s: u64,
    /// Most connections open at once, and from one address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Who may show the pages in a frame: CSP `frame-ancestors` sources.
    pub frame_ancestors: Vec<String>,
    /// How long a session's embed token (`"embed": true`) opens it.
    pub embed_ttl_s: u64,
    /// Who may read `/metrics` and `/readyz` (addresses or CIDRs); `/healthz` is open.
    #[serde(deserialize_with = "addresses_or_cidrs")]
    pub monitoring_from: Vec<ipnet::IpNet>,
    /// The URL other nodes reach this node's API at ("" for `http(s)://listen`).
    pub advertise: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Whose packets a leg takes: its SDP's address only, or latched (symmetric RTP).
    pub rtp_source: RtpSource,
    /// Where an SDP may send media besides its signalling peer's own IP (addresses or CIDRs).
    #[serde(deserialize_with = "addresses_or_cidrs")]
    pub peer_networks: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    pub inter_digit_timeout_ms: u64,
    pub first_digit_timeout_ms: u64,
    pub max_attempts: u8,
    pub language: String,
    pub back_key: String,
    /// What the agent hears instead of a keypress tone.
    pub masking: Replacement,
    /// Mask in-band tones for the whole call, not only during capture (adds 20 ms throughout).
    pub mask_outside_capture: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Empty: SQLite under `data_dir`.
    pub database_url: String,
    /// Run the schema migrations at start; false when the runtime role may not (PostgreSQL
    /// with two roles, `crate::vault::store`).
    pub migrate: bool,
    /// A node that has not renewed its row in `nodes` for this long is lost: another node
    /// fails the captures it held (`node_lost`). Nodes renew it five times per lease.
    pub node_lease_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    pub kek: KekSource,
    /// While rotating the KEK: the one being replaced, still used to unwrap data keys that
    /// `tonewall keys rewrap` has not reached yet.
    #[serde(default)]
    pub previous_kek: Option<KekSource>,
    pub production: bool,
    pub token_format: TokenFormat,
    pub convergent: bool,
    pub token_ttl_days: u32,
    pub security_code_ttl_s: u64,
    pub max_encryptions_per_key: u64,
    pub detokenize_per_minute: u32,
    pub bulk_alarm_per_hour: u32,
}

/// Built-in accounts for people (`tonewall user add`), and their web sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// Agents, too, sign in with a one-time code (admin, qa and processor always do).
    pub agent_totp: bool,
    /// A signed-in session with no request for this long ends (PCI DSS 8.2.8: at most 900).
    pub idle_timeout_s: u64,
    /// And in any case after this long.
    pub max_session_s: u64,
}

/// Sign-in through the contact center's identity provider (`crate::accounts::oidc`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL (OpenID Connect Discovery 1.0 §4); empty: off.
    pub issuer: String,
    pub name: String,
    pub client_id: String,
    pub client_secret: ClientSecretSource,
    pub redirect_url: String,
    /// Extra CA certificates for the provider; empty: the Mozilla roots.
    pub ca: PathBuf,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub role_claim: String,
    /// Claim value → role.
    pub roles: std::collections::BTreeMap<String, Role>,
    pub team_claim: String,
    /// The claim that names the person's merchant; empty: `default` for everyone.
    pub merchant_claim: String,
    pub require_amr: Vec<String>,
    pub require_acr: Vec<String>,
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }
}

/// Where the OAuth client secret comes from.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientSecretSource {
    /// A public client, protected by PKCE alone.
    None,
    Env(String),
    /// A file readable by its owner only.
    File(PathBuf),
}

impl std::fmt::Debug for ClientSecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSecretSource::None => f.write_str("None"),
            ClientSecretSource::Env(v) => write!(f, "Env({v})"),
            ClientSecretSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// Where the audit chain is anchored outside the database (`crate::vault::anchor`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Empty: `data_dir/audit-checkpoints.jsonl`.
    pub checkpoint_file: PathBuf,
    pub checkpoint_interval_s: u64,
}

/// Security events for people on call (`crate::alerts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// JSON lines for a SIEM; empty: `data_dir/security.jsonl`.
    pub log_file: PathBuf,
    /// POSTed each event, signed; empty: none.
    pub webhook_url: String,
    pub webhook_secret: SecretSource,
}

impl Config {
    pub fn checkpoint_file(&self) -> PathBuf {
        or_in_data_dir(&self.audit.checkpoint_file, &self.storage.data_dir, "audit-checkpoints.jsonl")
    }

    pub fn security_log(&self) -> PathBuf {
        or_in_data_dir(&self.alerts.log_file, &self.storage.data_dir, "security.jsonl")
    }
}

fn or_in_data_dir(path: &Path, data_dir: &Path, name: &str) -> PathBuf {
    if path.as_os_str().is_empty() { data_dir.join(name) } else { path.to_path_buf() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: SecretSource,
    pub retry_base_s: u64,
    /// Also one event per completed field (`session.field_completed`).
    pub field_events: bool,
}

/// `[push]`: the card pushed to the processor's gateway (`crate::push`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub url: String,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub ca: PathBuf,
    pub secret: SecretSource,
    pub attempts: u32,
    pub retry_base_ms: u64,
}

impl Config {
    /// Reads `path`, or without one the default file if present, else the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.into(), why: e.to_string() })?;
                (p.display().to_string(), text)
            }
            None if Path::new(DEFAULT_PATH).exists() => {
                let text = std::fs::read_to_string(DEFAULT_PATH)
                    .map_err(|e| ConfigError::Read { path: DEFAULT_PATH.into(), why: e.to_string() })?;
                (DEFAULT_PATH.to_string(), text)
            }
            None => ("(built-in defaults)".to_string(), EMBEDDED.to_string()),
        };
        Config::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Syntax { path: name.to_string(), why: e.to_string() };
        let file: toml::Table = toml::from_str(text).map_err(syntax)?;
        let merged = layer(defaults_table(), file);
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            ConfigError::Key { path: name.to_string(), key: e.path().to_string(), why: e.inner().to_string() }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn embedded() -> Config {
        // Invariant: the embedded default is checked by a unit test.
        Config::parse("(built-in defaults)", EMBEDDED).expect("embedded config is valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, why: &str| Err(ConfigError::Invalid { key, why: why.to_string() });
        if self.media.rtp_port_min < 1024 || self.media.rtp_port_min >= self.media.rtp_port_max {
            return bad("media.rtp_port_min", "must be at least 1024 and below media.rtp_port_max");
        }
        if self.media.rtp_port_max - self.media.rtp_port_min < 3 {
            return bad("media.rtp_port_max", "the range must hold at least two calls' ports");
        }
        if !(50..=10_000).contains(&self.sip.t1_ms) {
            return bad("sip.t1_ms", "must be between 50 and 10000");
        }
        if self.sip.t2_ms < self.sip.t1_ms {
            return bad("sip.t2_ms", "must not be below sip.t1_ms");
        }
        if !(100..=60_000).contains(&self.sip.t4_ms) {
            return bad("sip.t4_ms", "must be between 100 and 60000");
        }
        if !(1..=86_400).contains(&self.sip.drain_timeout_s) {
            return bad("sip.drain_timeout_s", "must be between 1 and 86400");
        }
        if !(1..=3_600).contains(&self.storage.node_lease_s) {
            return bad("storage.node_lease_s", "must be between 1 and 3600");
        }
        if self.sip.rate_per_source == 0 {
            return bad("sip.rate_per_source", "must be at least 1");
        }
        if self.sip.max_connections == 0 || self.sip.max_connections_per_address == 0 || self.sip.idle_timeout_s == 0 {
            return bad("sip.max_connections", "connection limits must be at least 1");
        }
        for r in &self.sip.routes {
            if r.name.is_empty()
                || r.user_prefix.is_empty()
                || r.user_prefix.starts_with(crate::endpoint::SESSION_PREFIX)
            {
                return bad("sip.routes", "each route needs a name and a user_prefix that does not start with pay-");
            }
            let target_ok = crate::targets::host_port(&r.target).is_some()
                && crate::targets::transport_of(&r.target).is_some()
                && !r.target.contains(['<', '>', ' ', '"']);
            if !target_ok {
                return bad("sip.routes", "a route's target must be a sip: URI such as sip:queue@10.0.0.5:5060");
            }
            if r.sources.is_empty() || (self.vault.production && r.sources.iter().any(|n| n.prefix_len() == 0)) {
                return bad(
                    "sip.routes",
                    "a route's sources must name the PBXs that send its calls (no /0 in production)",
                );
            }
            if !r.merchant.is_empty() && crate::merchant::MerchantId::parse(&r.merchant).is_err() {
                return bad("sip.routes", "a route's merchant must be a merchant id (tonewall merchant list)");
            }
        }
        if let Some(key) = self.tls_listen_addr().err() {
            return bad(key, "must be empty or an address such as 127.0.0.1:5061");
        }
        if !(1..=10).contains(&self.capture.max_attempts) {
            return bad("capture.max_attempts", "must be between 1 and 10");
        }
        if self.capture.inter_digit_timeout_ms < 500 || self.capture.first_digit_timeout_ms < 500 {
            return bad("capture.inter_digit_timeout_ms", "timeouts must be at least 500 ms");
        }
        if Language::parse(&self.capture.language).is_none() {
            return bad("capture.language", "must be \"en\", \"es\", \"fr\" or \"de\"");
        }
        if !self.capture.back_key.is_empty() && BackKey::parse(&self.capture.back_key).is_none() {
            return bad("capture.back_key", "must be \"\" (none), \"*\", \"#\" or \"A\" to \"D\"");
        }
        match self.capture.masking {
            Replacement::FlatTone { hz, dbm0 }
                // Clear of the DTMF band, and of the band-stop that runs over it in a capture.
                if (600.0..=1800.0).contains(&hz) || !(300.0..=3400.0).contains(&hz) || dbm0 > -10.0 =>
            {
                return bad(
                    "capture.masking",
                    "a flat tone must lie in 300-600 or 1800-3400 Hz (away from DTMF and the capture band-stop) at -10 dBm0 or below",
                );
            }
            Replacement::ComfortNoise { dbm0 } if dbm0 > -40.0 => {
                return bad("capture.masking", "comfort noise must be at -40 dBm0 or below");
            }
            _ => {}
        }
        if self.sip.public_host.contains(['<', '>', ' ', ';']) {
            return bad("sip.public_host", "must be host or host:port");
        }
        if !self.storage.database_url.is_empty() && !self.storage.database_url.starts_with("postgres") {
            return bad("storage.database_url", "must be empty (SQLite) or a postgres:// URL");
        }
        if !(1..=(1u64 << 32) - (1 << 24)).contains(&self.vault.max_encryptions_per_key) {
            return bad("vault.max_encryptions_per_key", "must be between 1 and 2^32 - 2^24");
        }
        if self.vault.security_code_ttl_s == 0 || self.vault.security_code_ttl_s > 3600 {
            return bad("vault.security_code_ttl_s", "must be between 1 and 3600 seconds");
        }
        if self.vault.detokenize_per_minute == 0 {
            return bad("vault.detokenize_per_minute", "must be at least 1");
        }
        if self.vault.production && self.vault.kek.is_development() {
            return bad("vault.kek", "production mode refuses the development key and a key inside the config file");
        }
        if self.http.header_timeout_s == 0 || self.http.header_timeout_s > 300 {
            return bad("http.header_timeout_s", "must be between 1 and 300 seconds");
        }
        if self.accounts.idle_timeout_s == 0 || self.accounts.idle_timeout_s > 900 || self.accounts.max_session_s == 0 {
            return bad(
                "accounts.idle_timeout_s",
                "a signed-in session must end after at most 15 minutes idle (PCI DSS 8.2.8)",
            );
        }
        if self.vault.production && !self.accounts.agent_totp {
            return bad(
                "accounts.agent_totp",
                "production mode needs a one-time code from agents with built-in accounts too (PCI DSS 8.4.2: multi-factor authentication for all access to the cardholder data environment)",
            );
        }
        self.validate_oidc()?;
        let advertise = &self.http.advertise;
        let is_url = advertise.starts_with("http://") || advertise.starts_with("https://");
        if !advertise.is_empty() && !is_url {
            return bad("http.advertise", "must be empty or an http:// or https:// URL");
        }
        if self.http.embed_ttl_s == 0 || self.http.embed_ttl_s > 86_400 {
            return bad("http.embed_ttl_s", "an embed token must live between 1 second and a day");
        }
        if self.http.max_connections == 0 || self.http.max_connections_per_address == 0 {
            return bad("http.max_connections", "must be at least 1, and so must http.max_connections_per_address");
        }
        let ancestor_ok = |a: &String| {
            matches!(a.as_str(), "'self'" | "'none'")
                || (a.starts_with("https://") || a.starts_with("http://"))
                    && !a.contains([' ', ';', ',', '\'', '"'])
                    && a.len() <= 200
        };
        if self.http.frame_ancestors.is_empty() || !self.http.frame_ancestors.iter().all(ancestor_ok) {
            return bad(
                "http.frame_ancestors",
                "each entry must be 'self', 'none' or an origin such as https://crm.example.com",
            );
        }
        if !self.http.client_ca.as_os_str().is_empty() && !self.http.tls {
            return bad("http.client_ca", "client certificates need HTTPS (http.tls = true)");
        }
        let advertised_host = advertise.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or("");
        let advertised_loopback = advertised_host == "localhost"
            || advertised_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if self.vault.production && advertise.starts_with("http://") && !advertised_loopback {
            return bad(
                "http.advertise",
                "production mode refuses plain HTTP between nodes off loopback: security codes travel over it (PCI DSS 4.2.1)",
            );
        }
        if self.vault.production && !self.http.tls && !self.http.listen.ip().is_loopback() {
            return bad(
                "http.tls",
                "production mode refuses plain HTTP off loopback: the API carries card data and bearer keys (PCI DSS 4.2.1)",
            );
        }
        if self.vault.production && self.sip.trusted_peers.iter().any(|n| n.prefix_len() == 0) {
            return bad("sip.trusted_peers", "production mode refuses trusting every address (a /0 prefix)");
        }
        let srtp_anywhere =
            self.sip.srtp != SrtpPolicy::Off || self.sip.routes.iter().any(|r| r.srtp != SrtpPolicy::Off);
        if self.vault.production && srtp_anywhere && !self.sip.sdes_requires_tls {
            return bad(
                "sip.sdes_requires_tls",
                "production mode needs SDES keys to travel over SIP over TLS (or sip.srtp = \"off\"): over UDP or TCP anyone who sees the SIP can decrypt the media",
            );
        }
        if self.vault.production && self.media.peer_networks.iter().any(|n| n.prefix_len() == 0) {
            return bad(
                "media.peer_networks",
                "production mode refuses sending media wherever an SDP says (a /0 prefix)",
            );
        }
        if self.vault.production && self.media.rtp_source == RtpSource::Latch {
            return bad("media.rtp_source", "production mode refuses latching media to whoever sends first");
        }
        if self.vault.production && !self.webhook.url.is_empty() && self.webhook.secret.is_development() {
            return bad("webhook.secret", "production mode refuses a development secret");
        }
        if self.vault.production && self.webhook.url.starts_with("http://") {
            return bad("webhook.url", "production mode sends card events over https:// only");
        }
        if !self.push.url.is_empty() {
            if !self.push.url.starts_with("https://") {
                return bad("push.url", "card data is pushed over https:// only");
            }
            if self.push.client_cert.as_os_str().is_empty() || self.push.client_key.as_os_str().is_empty() {
                return bad("push.client_cert", "pushing needs a client certificate and key (mutual TLS)");
            }
            if !(1..=20).contains(&self.push.attempts) {
                return bad("push.attempts", "must be between 1 and 20");
            }
            if self.vault.production && self.push.secret.is_development() {
                return bad("push.secret", "production mode refuses a development secret");
            }
        }
        if !self.webhook.url.is_empty()
            && !self.webhook.url.starts_with("http://")
            && !self.webhook.url.starts_with("https://")
        {
            return bad("webhook.url", "must be an http:// or https:// URL");
        }
        let alerts = &self.alerts.webhook_url;
        if !alerts.is_empty() && !alerts.starts_with("http://") && !alerts.starts_with("https://") {
            return bad("alerts.webhook_url", "must be an http:// or https:// URL");
        }
        if self.vault.production && alerts.starts_with("http://") {
            return bad("alerts.webhook_url", "production mode sends security events over https:// only");
        }
        if self.vault.production && !alerts.is_empty() && self.alerts.webhook_secret.is_development() {
            return bad("alerts.webhook_secret", "production mode refuses a development secret");
        }
        if self.vault.production && self.vault.previous_kek.as_ref().is_some_and(KekSource::is_development) {
            return bad(
                "vault.previous_kek",
                "production mode refuses the development key and a key inside the config file",
            );
        }
        if self.audit.checkpoint_interval_s == 0 {
            return bad("audit.checkpoint_interval_s", "must be at least 1");
        }
        Ok(())
    }

    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let bad = |key, why: &str| Err(ConfigError::Invalid { key, why: why.to_string() });
        let o = &self.oidc;
        if !o.enabled() {
            return Ok(());
        }
        if !o.issuer.starts_with("https://") {
            return bad("oidc.issuer", "must be an https:// URL (OpenID Connect Discovery 1.0 §3)");
        }
        if o.client_id.is_empty() {
            return bad("oidc.client_id", "the client id the provider registered for tonewall is needed");
        }
        if !o.redirect_url.starts_with("https://") || !o.redirect_url.ends_with("/v1/auth/oidc/callback") {
            return bad("oidc.redirect_url", "must be https://HOST[:PORT]/v1/auth/oidc/callback");
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            return bad("oidc.scopes", "must include openid");
        }
        if o.username_claim.is_empty() || o.role_claim.is_empty() || o.roles.is_empty() {
            return bad(
                "oidc.roles",
                "needs oidc.username_claim, oidc.role_claim and at least one claim value → role in oidc.roles",
            );
        }
        if self.vault.production && o.require_amr.is_empty() && o.require_acr.is_empty() {
            return bad(
                "oidc.require_amr",
                "production mode needs the provider's multi-factor authentication checked (PCI DSS 8.4.2): set oidc.require_amr or oidc.require_acr",
            );
        }
        Ok(())
    }

    /// Production mode (`--production` or `vault.production`): validated again, since the
    /// flag can turn it on after the file was read.
    pub fn set_production(&mut self) -> Result<(), ConfigError> {
        self.vault.production = true;
        self.validate()
    }

    pub fn timers(&self) -> Timers {
        Timers {
            t1: Duration::from_millis(self.sip.t1_ms),
            t2: Duration::from_millis(self.sip.t2_ms),
            t4: Duration::from_millis(self.sip.t4_ms),
        }
    }

    /// The TLS certificate and key files; empty settings mean data_dir/tls/{cert,key}.pem.
    pub fn tls_files(&self) -> (PathBuf, PathBuf) {
        let or_default = |p: &PathBuf, name: &str| {
            if p.as_os_str().is_empty() { self.storage.data_dir.join("tls").join(name) } else { p.clone() }
        };
        (or_default(&self.sip.tls_cert, "cert.pem"), or_default(&self.sip.tls_key, "key.pem"))
    }

    /// Where each leg's SDP may send media (`media.peer_networks`, `sip.trusted_peers`).
    pub fn media_policy(&self) -> crate::media::address_policy::MediaAddressPolicy {
        crate::media::address_policy::MediaAddressPolicy {
            peer_networks: self.media.peer_networks.clone(),
            trusted_peers: self.sip.trusted_peers.clone(),
            rtp_source: self.media.rtp_source,
        }
    }

    /// The API's certificate chain and key (the SIP pair's defaults when unset).
    pub fn http_tls_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = self.tls_files();
        let or = |p: &PathBuf, d: PathBuf| if p.as_os_str().is_empty() { d } else { p.clone() };
        (or(&self.http.tls_cert, cert), or(&self.http.tls_key, key))
    }

    /// The TLS listen address, if TLS is on.
    pub fn tls_listen_addr(&self) -> Result<Option<SocketAddr>, &'static str> {
        match self.sip.tls_listen.trim() {
            "" => Ok(None),
            a => a.parse().map(Some).map_err(|_| "sip.tls_listen"),
        }
    }

    pub fn masking(&self) -> Masking {
        Masking { replacement: self.capture.masking, always: self.capture.mask_outside_capture }
    }

    /// The language and back key of a session that names neither (checked by `validate`).
    pub fn capture_defaults(&self) -> (Language, Option<BackKey>) {
        (Language::parse(&self.capture.language).unwrap_or_default(), BackKey::parse(&self.capture.back_key))
    }

    pub fn collector(&self) -> CollectorConfig {
        CollectorConfig {
            inter_digit: Duration::from_millis(self.capture.inter_digit_timeout_ms),
            first_digit: Duration::from_millis(self.capture.first_digit_timeout_ms),
            max_attempts: self.capture.max_attempts,
        }
    }
}

/// The vault's settings come from the config (config → vault, never the other way).
impl VaultOptions {
    pub fn from_config(c: &Config) -> VaultOptions {
        VaultOptions {
            url: crate::vault::store::url(&c.storage.database_url, &c.storage.data_dir),
            migrate: c.storage.migrate,
            data_dir: c.storage.data_dir.clone(),
            kek: c.vault.kek.clone(),
            production: c.vault.production,
            token_format: c.vault.token_format,
            convergent: c.vault.convergent,
            token_ttl: (c.vault.token_ttl_days > 0)
                .then(|| Duration::from_secs(u64::from(c.vault.token_ttl_days) * 86_400)),
            security_code_ttl: Duration::from_secs(c.vault.security_code_ttl_s),
            max_encryptions_per_key: c.vault.max_encryptions_per_key as i64,
            previous_kek: c.vault.previous_kek.clone(),
            checkpoint_file: c.checkpoint_file(),
            security_log: c.security_log(),
            alert_webhook: (!c.alerts.webhook_url.is_empty())
                .then(|| (c.alerts.webhook_url.clone(), c.alerts.webhook_secret.clone())),
            webhook: (!c.webhook.url.is_empty()).then(|| {
                (c.webhook.url.clone(), c.webhook.secret.clone(), Duration::from_secs(c.webhook.retry_base_s))
            }),
            webhook_field_events: c.webhook.field_events,
        }
    }

    /// The built-in defaults with SQLite and the development key in `data_dir`.
    pub fn development(data_dir: &Path) -> VaultOptions {
        let mut c = Config::embedded();
        c.storage.data_dir = data_dir.to_path_buf();
        VaultOptions::from_config(&c)
    }
}

/// The embedded default file as a table, the base every config file layers over.
fn defaults_table() -> toml::Table {
    // Invariant: the embedded default is checked by a unit test.
    toml::from_str(EMBEDDED).expect("embedded config is valid TOML")
}

/// `file` over `base`, key by key within each section: a section the file names keeps the
/// base's other keys. A key's value (an inline table such as `vault.kek` included) replaces
/// the base's whole; a section or key the base lacks is kept, for the typed config to refuse
/// by name.
fn layer(mut base: toml::Table, file: toml::Table) -> toml::Table {
    for (section, value) in file {
        match (base.get_mut(&section), value) {
            (Some(toml::Value::Table(keys)), toml::Value::Table(over)) => keys.extend(over),
            (_, value) => {
                base.insert(section, value);
            }
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_the_documented_defaults() {
        let c = Config::embedded();
        assert_eq!(c.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.storage.data_dir, PathBuf::from("./tonewall-data"));
        assert_eq!(c.timers(), Timers::default());
    }

    #[test]
    fn push_goes_over_https_with_a_client_certificate_and_production_wants_a_real_secret() {
        let push = |url: &str, cert: &str| {
            EMBEDDED
                .replacen("url = \"\"\nclient_cert = \"\"", &format!("url = \"{url}\"\nclient_cert = \"{cert}\""), 1)
                .replace("client_key = \"\"", "client_key = \"/etc/tonewall/push.key\"")
        };
        let ok = Config::parse("x", &push("https://gw.example/tokenize", "/etc/tonewall/push.pem"));
        assert!(ok.is_ok(), "{:?}", ok.err());
        let e = Config::parse("x", &push("http://gw.example/tokenize", "/c.pem")).unwrap_err().to_string();
        assert!(e.contains("push.url") && e.contains("https:// only"), "{e}");
        let e = Config::parse("x", &push("https://gw.example/tokenize", "")).unwrap_err().to_string();
        assert!(e.contains("push.client_cert") && e.contains("mutual TLS"), "{e}");
        let attempts = push("https://gw.example/t", "/c.pem").replace("attempts = 6", "attempts = 0");
        assert!(Config::parse("x", &attempts).unwrap_err().to_string().contains("push.attempts"));
        let production = push("https://gw.example/t", "/c.pem")
            .replace("production = false", "production = true")
            .replace("sdes_requires_tls = false", "sdes_requires_tls = true")
            .replace("agent_totp = false", "agent_totp = true")
            .replace("kek = \"dev_file\"", "kek = { env = \"TONEWALL_KEK\" }");
        let e = Config::parse("x", &production).unwrap_err().to_string();
        assert!(e.contains("push.secret") && e.contains("development secret"), "{e}");
        let real =
            production.replacen("secret = \"dev_file\"\n# Tries", "secret = { env = \"PUSH_SECRET\" }\n# Tries", 1);
        assert!(Config::parse("x", &real).is_ok(), "{:?}", Config::parse("x", &real).err());
    }

    #[test]
    fn errors_name_the_key() {
        let bad_port = EMBEDDED.replace("rtp_port_min = 20000", "rtp_port_min = 40000");
        let e = Config::parse("x", &bad_port).unwrap_err().to_string();
        assert!(e.contains("media.rtp_port_min"), "{e}");
        let unknown = format!("{EMBEDDED}\n[extra]\nx = 1\n");
        let e = Config::parse("x", &unknown).unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");
        let wrong_type = EMBEDDED.replace("max_attempts = 3", "max_attempts = \"three\"");
        let e = Config::parse("x", &wrong_type).unwrap_err().to_string();
        assert!(e.contains("max_attempts"), "{e}");
        let tone = EMBEDDED
            .replace("mode = \"comfort_noise\", dbm0 = -65.0", "mode = \"flat_tone\", hz = 941.0, dbm0 = -20.0");
        assert!(Config::parse("x", &tone).unwrap_err().to_string().contains("capture.masking"));
        let ok_tone = EMBEDDED
            .replace("mode = \"comfort_noise\", dbm0 = -65.0", "mode = \"flat_tone\", hz = 2100.0, dbm0 = -20.0");
        assert_eq!(
            Config::parse("x", &ok_tone).unwrap().capture.masking,
            Replacement::FlatTone { hz: 2100.0, dbm0: -20.0 }
        );
        // Production with every other setting it insists on (SDES keys only over TLS, agents' codes).
        let dev = EMBEDDED
            .replace("production = false", "production = true")
            .replace("sdes_requires_tls = false", "sdes_requires_tls = true")
            .replace("agent_totp = false", "agent_totp = true");
        assert!(Config::parse("x", &dev).unwrap_err().to_string().contains("vault.kek"));
        let inline = dev.replace("kek = \"dev_file\"", &format!("kek = {{ hex = \"{}\" }}", "ab".repeat(32)));
        assert!(Config::parse("x", &inline).unwrap_err().to_string().contains("vault.kek"));
        let env = dev.replace("kek = \"dev_file\"", "kek = { env = \"TONEWALL_KEK\" }");
        assert!(Config::parse("x", &env).is_ok(), "production with the KEK in the environment");
        let agents_without_codes = env.replace("agent_totp = true", "agent_totp = false");
        let e = Config::parse("x", &agents_without_codes).unwrap_err().to_string();
        assert!(e.contains("accounts.agent_totp") && e.contains("8.4.2"), "{e}");
        let token = dev.replace(
            "kek = \"dev_file\"",
            "kek = { pkcs11 = { module = \"/m.so\", token_label = \"t\", key_label = \"k\", pin_env = \"P\" } }",
        );
        assert!(Config::parse("x", &token).is_ok(), "production with the KEK in a PKCS#11 token");
        let mut c = Config::embedded();
        assert!(c.set_production().unwrap_err().to_string().contains("vault.kek"), "--production refuses it too");
        let prod = env.clone();
        let in_clear = env.replace("sdes_requires_tls = true", "sdes_requires_tls = false");
        let keys_in_clear = Config::parse("x", &in_clear).unwrap_err().to_string();
        assert!(keys_in_clear.contains("sip.sdes_requires_tls"), "{keys_in_clear}");
        let no_srtp = in_clear.replace("srtp = \"optional\"", "srtp = \"off\"");
        assert!(Config::parse("x", &no_srtp).is_ok(), "without SRTP there are no keys to expose");
        let open = prod.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
        assert!(Config::parse("x", &open).unwrap_err().to_string().contains("http.tls"), "plain HTTP off loopback");
        assert!(Config::parse("x", &open.replace("tls = false", "tls = true")).is_ok(), "HTTPS off loopback");
        assert!(Config::parse("x", &prod).is_ok(), "plain HTTP on loopback (a proxy in front)");
        let advertise = |url: &str| prod.replace("advertise = \"\"", &format!("advertise = \"{url}\""));
        let plain_peer = Config::parse("x", &advertise("http://10.0.0.11:8080")).unwrap_err().to_string();
        assert!(plain_peer.contains("http.advertise"), "{plain_peer}");
        assert!(Config::parse("x", &advertise("https://node1.example:8443")).is_ok());
        assert!(Config::parse("x", &advertise("http://127.0.0.2:8080")).is_ok(), "between nodes on one machine");
        assert!(Config::parse("x", &advertise("node1:8080")).unwrap_err().to_string().contains("http.advertise"));
        let hook = |url: &str| {
            prod.replacen("\nurl = \"\"", &format!("\nurl = \"{url}\""), 1)
                .replace("secret = \"dev_file\"", "secret = { env = \"TONEWALL_HOOK_SECRET\" }")
        };
        let plain_hook = Config::parse("x", &hook("http://processor.example/hook")).unwrap_err().to_string();
        assert!(plain_hook.contains("webhook.url") && plain_hook.contains("https://"), "{plain_hook}");
        assert!(Config::parse("x", &hook("https://processor.example/hook")).is_ok());
        let frames = EMBEDDED
            .replace("frame_ancestors = [\"'self'\"]", "frame_ancestors = [\"https://crm.example.com; script-src *\"]");
        assert!(Config::parse("x", &frames).unwrap_err().to_string().contains("http.frame_ancestors"));
        let everyone = prod.replace("trusted_peers = []", "trusted_peers = [\"0.0.0.0/0\"]");
        assert!(Config::parse("x", &everyone).unwrap_err().to_string().contains("sip.trusted_peers"));
        let pbx = prod.replace("trusted_peers = []", "trusted_peers = [\"10.0.0.5\", \"10.1.0.0/16\"]");
        assert_eq!(Config::parse("x", &pbx).unwrap().sip.trusted_peers.len(), 2, "addresses and CIDRs");
        let route = |sources: &str| {
            format!(
                "{EMBEDDED}\n[[sip.routes]]\nname = \"s\"\nuser_prefix = \"s\"\ntarget = \"sip:q@10.0.0.5\"\n{sources}"
            )
        };
        let missing = Config::parse("x", &route("")).unwrap_err().to_string();
        assert!(missing.contains("sources"), "a route must name its sources: {missing}");
        assert!(Config::parse("x", &route("sources = []")).unwrap_err().to_string().contains("sip.routes"));
        assert!(Config::parse("x", &route("sources = [\"10.0.0.5\"]")).is_ok());
        let latch = prod.replace("rtp_source = \"sdp\"", "rtp_source = \"latch\"");
        assert!(Config::parse("x", &latch).unwrap_err().to_string().contains("media.rtp_source"));
        assert!(Config::parse("x", &EMBEDDED.replace("rtp_source = \"sdp\"", "rtp_source = \"latch\"")).is_ok());
        // `prod` with an identity provider.
        let oidc = |issuer: &str, amr: &str| {
            prod.replace("issuer = \"\"", &format!("issuer = \"{issuer}\""))
                .replace("client_id = \"\"", "client_id = \"tonewall\"")
                .replace("redirect_url = \"\"", "redirect_url = \"https://tw.example/v1/auth/oidc/callback\"")
                .replace("roles = {}", "roles = { \"cc-agents\" = \"agent\" }")
                .replace("require_amr = []", &format!("require_amr = [{amr}]"))
        };
        assert!(Config::parse("x", &oidc("https://idp.example", "\"otp\"")).is_ok());
        let plain = Config::parse("x", &oidc("http://idp.example", "\"otp\"")).unwrap_err().to_string();
        assert!(plain.contains("oidc.issuer"), "{plain}");
        let no_roles =
            oidc("https://idp.example", "\"otp\"").replace("roles = { \"cc-agents\" = \"agent\" }", "roles = {}");
        assert!(Config::parse("x", &no_roles).unwrap_err().to_string().contains("oidc.roles"));
        let unknown_role = oidc("https://idp.example", "\"otp\"").replace("\"agent\" }", "\"root\" }");
        assert!(Config::parse("x", &unknown_role).unwrap_err().to_string().contains("root"));
        let no_mfa = Config::parse("x", &oidc("https://idp.example", "")).unwrap_err().to_string();
        assert!(
            no_mfa.contains("oidc.require_amr") && no_mfa.contains("8.4.2"),
            "production checks the second factor: {no_mfa}"
        );
        let dev = oidc("https://idp.example", "").replace("production = true", "production = false");
        assert!(Config::parse("x", &dev).is_ok(), "outside production the provider's word is enough");
        let unknown_key = Config::parse("x", "[vault]\ndetokenize_per_mintue = 5\n").unwrap_err().to_string();
        assert!(unknown_key.contains("vault") && unknown_key.contains("detokenize_per_mintue"), "{unknown_key}");
        let bad_addr = EMBEDDED.replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\"");
        assert!(Config::parse("x", &bad_addr).unwrap_err().to_string().contains("listen"));
    }

    #[test]
    fn a_file_that_sets_one_key_keeps_the_other_defaults_of_its_section() {
        let c = Config::parse("x", "[vault]\ndetokenize_per_minute = 5\n").unwrap();
        assert_eq!(c.vault.detokenize_per_minute, 5);
        let d = Config::embedded();
        assert_eq!(c.vault.kek, d.vault.kek);
        assert_eq!(c.vault.bulk_alarm_per_hour, d.vault.bulk_alarm_per_hour);
        let c = Config::parse("x", "[capture]\nmax_attempts = 5\n").unwrap();
        assert_eq!((c.capture.max_attempts, c.capture.inter_digit_timeout_ms), (5, d.capture.inter_digit_timeout_ms));
        assert_eq!(c.capture.masking, d.capture.masking);
        let c = Config::parse("x", "").unwrap();
        assert_eq!(c.sip.listen, d.sip.listen);
        let kek = Config::parse("x", "[vault]\nkek = { env = \"TONEWALL_KEK\" }\n").unwrap();
        assert_eq!(kek.vault.kek, KekSource::Secret(SecretSource::Env("TONEWALL_KEK".into())));
        let typo = Config::parse("x", "[vault]\nkek = { env = \"K\", file = \"/k\" }\n");
        assert!(typo.unwrap_err().to_string().contains("vault.kek"), "an inline table replaces the default whole");
    }
}
