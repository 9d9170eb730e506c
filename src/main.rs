//! The `tonewall` command line: serve, demo, api-key create, keys rotate|status, audit verify,
//! check-config.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonewall::accounts;
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::merchant::{self, MerchantId};
use tonewall::recording::Purge;
use tonewall::runtime::Server;
use tonewall::vault::kek::{self, KekSource};
use tonewall::vault::{Actor, ActorRole, Vault, VaultOptions, audit, keyring};

#[derive(Parser)]
#[command(name = "tonewall", version, about = "PCI DSS payment capture for phone calls")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// Config file (default: sip-config/tonewall.toml if present, else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (SQLite vault, development key); overrides storage.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            cfg.storage.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the SIP endpoint and the HTTP API until Ctrl-C.
    Serve {
        #[command(flatten)]
        common: Common,
        /// SIP UDP listen address; overrides sip.listen.
        #[arg(long)]
        sip_listen: Option<SocketAddr>,
        /// HTTP listen address; overrides http.listen.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Refuse the development key sources (as vault.production = true).
        #[arg(long)]
        production: bool,
    },
    /// A whole payment call on this machine, end to end, with a summary of what each party saw.
    Demo {
        /// Where the demo keeps its vault and the agent's recording.
        #[arg(long, default_value = "tonewall-data/demo")]
        data_dir: PathBuf,
    },
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// Data keys: rotate, or show versions and use counts (never key material).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Merchants: many on one deployment, each with its own keys, people, data and settings.
    Merchant {
        #[command(subcommand)]
        action: MerchantAction,
    },
    /// People's built-in accounts for the pages.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Call recordings.
    Recordings {
        #[command(subcommand)]
        action: RecordingsAction,
    },
    /// Stop detokenize and new captures at once, in every process sharing the vault (incident
    /// response); only an admin lifts it.
    Lockdown {
        #[command(subcommand)]
        action: LockdownAction,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// The vault's database schema.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// An encrypted, consistent copy of a SQLite vault, taken while serve runs. The KEK is not
    /// in it: restoring needs the same key source.
    Backup {
        /// The backup file to create (refused if it exists).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Brings a backup back into an empty data directory (the configured KEK opens it).
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Validate the configuration and print the effective values.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum MerchantAction {
    /// Create a merchant. Settings are JSON (keys: webhook, push, language, card_fields,
    /// token_format, convergent, retention_days); secrets are named by file or env var.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "{}")]
        settings: String,
        #[command(flatten)]
        common: Common,
    },
    /// Every merchant: id, name, settings (no secret: settings only name where they are).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Rename and/or change settings: each key given replaces, a key set to null goes back to
    /// the deployment's.
    Update {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "{}")]
        settings: String,
        #[command(flatten)]
        common: Common,
    },
}

/// A `--merchant` argument: a merchant that exists, or `default` when absent.
async fn merchant_arg(vault: &Vault, id: Option<&str>) -> anyhow::Result<MerchantId> {
    let Some(id) = id else { return Ok(MerchantId::default_merchant()) };
    let id = MerchantId::parse(id)?;
    anyhow::ensure!(
        merchant::get(vault.pool(), &id).await?.is_some(),
        "no merchant {id}: create it with `tonewall merchant create`"
    );
    Ok(id)
}

fn settings_json(text: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text).context("--settings must be a JSON object")? {
        serde_json::Value::Object(map) => Ok(map),
        _ => anyhow::bail!("--settings must be a JSON object"),
    }
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it (only its hash is stored).
    Create {
        #[arg(long, value_enum)]
        role: Role,
        /// The merchant whose data the key reaches (default: `default`).
        #[arg(long)]
        merchant: Option<String>,
        /// The team whose agents share this key's sessions (none: only the key itself and admins).
        #[arg(long)]
        team: Option<String>,
        /// Bind the key to this client certificate (PEM; the first certificate in the file):
        /// over HTTPS with `http.client_ca` it then works only with that certificate.
        #[arg(long)]
        client_cert: Option<PathBuf>,
        /// What the key is for ("crm integration", "alice's desk").
        #[arg(long, default_value = "")]
        name: String,
        /// Who holds it (a person, or the team that runs a service).
        #[arg(long, default_value = "")]
        owner: String,
        /// Days until it stops working; agent, qa and admin keys always expire (default 90,
        /// at most 365), processor keys only when this is given.
        #[arg(long)]
        expires_days: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Every key: id, name, owner, role, team, created, expires, last used, state, merchant
    /// (never the key).
    List {
        /// Only this merchant's keys.
        #[arg(long)]
        merchant: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a key at once.
    Revoke {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print a new key with the same role, team, name and owner; the old one keeps working
    /// for the overlap, then expires.
    Rotate {
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 24)]
        overlap_hours: u64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum LockdownAction {
    /// Start it (a running serve refuses at its next request).
    Start {
        #[arg(long)]
        reason: String,
        /// Also revoke every key of this role.
        #[arg(long, value_enum)]
        revoke_role: Option<Role>,
        #[command(flatten)]
        common: Common,
    },
    /// Lift it.
    Lift {
        #[command(flatten)]
        common: Common,
    },
    /// Whether one is in force, since when, by whom, why.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Make a new data key for new records and re-encrypt older records under it (resumable:
    /// run it again after a crash; a running `serve` also finishes the job).
    Rotate {
        #[command(flatten)]
        common: Common,
    },
    /// Make a new fingerprint key (the keyed hash that finds a card's convergent token) and
    /// fingerprint every card again under it (resumable; a running serve also finishes it).
    RotateFingerprint {
        #[command(flatten)]
        common: Common,
    },
    /// Make a new audit key: records from now on are MACed under it; older records keep
    /// verifying under the key that made them.
    RotateAudit {
        #[command(flatten)]
        common: Common,
    },
    /// KEK rotation: re-wrap every data key still under vault.previous_kek under vault.kek.
    /// Resumable (run it again after a crash) and safe beside a running serve.
    Rewrap {
        /// Keys per pass; progress is printed after each.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Pause between passes, to go easy on a hardware token.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Destroy retired data keys that no card or recording is sealed under (serve does this
    /// hourly with a 24-hour grace); audited.
    DestroyRetired {
        /// Only keys whose successor is at least this old (longer than any call).
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Key versions, what each has sealed, how many records each still holds.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Create the key-encrypting key inside the PKCS#11 token that vault.kek names
    /// (AES-256, non-extractable).
    HsmCreate {
        #[command(flatten)]
        common: Common,
    },
    /// Write a self-signed TLS certificate and key for SIP over TLS, for development, where
    /// sip.tls_cert and sip.tls_key look by default (data_dir/tls).
    TlsDev {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user; the password is the first line of standard input. With --totp, prints
    /// the one-time-code secret for the person's authenticator app (shown this once).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: Role,
        /// The merchant whose data the person reaches (default: `default`).
        #[arg(long)]
        merchant: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// A one-time code at sign-in (always for admin, qa and processor).
        #[arg(long)]
        totp: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Every user: role, team, second factor, disabled, locked (no secret).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Stop a user signing in; their open sessions end at their next request.
    Disable {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum RecordingsAction {
    /// Delete recordings (file and metadata) older than recordings.retention_days; audited.
    Purge {
        /// Use this many days instead of recordings.retention_days.
        #[arg(long, conflicts_with = "reference")]
        older_than_days: Option<u32>,
        /// Delete this reference's recordings now, whatever their age (erasure on request).
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Run the schema migrations as the owner role: TONEWALL_OWNER_DATABASE_URL, else
    /// storage.database_url. With --runtime-role (PostgreSQL), grant that role what serve
    /// needs: the audit table SELECT and INSERT only.
    Migrate {
        #[arg(long)]
        runtime_role: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the whole chain; exits non-zero naming each changed, deleted, inserted or
    /// reordered record.
    Verify {
        #[command(flatten)]
        common: Common,
    },
}

/// Runs a resumable batch job until a pass moves nothing, printing the running total.
async fn until_done<F, Fut>(what: &str, mut pass: F) -> anyhow::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, tonewall::vault::VaultError>>,
{
    let mut total = 0;
    loop {
        let n = pass().await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        println!("  {total} {what}");
    }
}

#[cfg(feature = "hsm")]
fn create_token_key(c: &kek::Pkcs11Config) -> anyhow::Result<()> {
    Ok(kek::hsm::TokenKey::create(c)?)
}

#[cfg(not(feature = "hsm"))]
fn create_token_key(_: &kek::Pkcs11Config) -> anyhow::Result<()> {
    anyhow::bail!("this build has no PKCS#11 support: build with `--features hsm`")
}

const CLI_ACTOR: Actor<'static> =
    Actor { id: "cli", role: ActorRole::Key(Role::Admin), origin: "local", merchant: None };

async fn open_vault(common: &Common) -> anyhow::Result<Vault> {
    let cfg = common.load()?;
    Ok(Vault::open(VaultOptions::from_config(&cfg)).await?)
}

/// No core dumps: a dump of this process could hold keys and card data (PCI DSS 3.3, 3.6).
fn forbid_core_dumps() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("disabling core dumps")?;
    nix::sys::prctl::set_dumpable(false).context("marking the process not dumpable")?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC.
fn utc(secs: i64) -> String {
    let (year, month, day) = tonewall::calendar::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what systemd, Kubernetes and `kill` send) and SIGINT (Ctrl-C).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    forbid_core_dumps()?;
    match cli.command {
        Command::Serve { common, sip_listen, http_listen, production } => {
            init_logging();
            let mut cfg = common.load()?;
            if production {
                cfg.set_production()?;
            }
            cfg.sip.listen = sip_listen.unwrap_or(cfg.sip.listen);
            cfg.http.listen = http_listen.unwrap_or(cfg.http.listen);
            let server = Server::start(cfg).await?;
            let tcp = if server.shared.config.sip.tcp { format!(" tcp:{}", server.sip_addr) } else { String::new() };
            let tls = server.tls_addr.map(|a| format!(" tls:{a}")).unwrap_or_default();
            println!("tonewall serving: SIP udp:{}{tcp}{tls}  HTTP http://{}", server.sip_addr, server.http_addr);
            let mut stop = StopSignals::new()?;
            stop.next().await;
            let timeout = Duration::from_secs(server.shared.config.sip.drain_timeout_s);
            // A second signal cuts the drain short.
            server.drain(timeout, async move { stop.next().await }).await;
            Ok(())
        }
        Command::Demo { data_dir } => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging();
            }
            let outcome = demo::run(&data_dir).await?;
            let s = &outcome.session;
            println!();
            println!("── summary ─────────────────────────────────────────────");
            println!("session      {} ({})", s["state"], s["reference"]);
            for f in s["fields"].as_array().into_iter().flatten() {
                println!(
                    "  {:<7} {:<22} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["masked"].as_str().unwrap_or(""),
                    f["state"]
                );
            }
            println!("token        {}", s["result"]["token"]);
            println!("brand/last4  {} / {}", s["result"]["brand"], s["result"]["last4"]);
            let a = &outcome.agent;
            println!(
                "agent heard  {} packets, {:.1} s of audio, {} telephone-event packets, {} sequence gaps, {} timestamp jumps",
                a.packets,
                a.audio.len() as f64 / 8000.0,
                a.non_audio_packets,
                a.sequence_gaps,
                a.timestamp_jumps
            );
            println!("agent WAV    {}", outcome.wav.display());
            demo::verify(&outcome)?;
            println!("demo OK");
            Ok(())
        }
        Command::ApiKey {
            action: ApiKeyAction::Create { role, merchant, team, client_cert, name, owner, expires_days, common },
        } => {
            // Read before anything is created: a wrong path leaves no key behind.
            let cert = match &client_cert {
                Some(path) => Some(auth::cert_fingerprint(&tonewall::runtime::tls::read_certs(path)?[0])),
                None => None,
            };
            let vault = open_vault(&common).await?;
            let merchant = merchant_arg(&vault, merchant.as_deref()).await?;
            let team = team.as_deref().and_then(tonewall::owner::Team::named);
            let new = auth::NewKey {
                merchant: Some(&merchant),
                team: team.as_ref(),
                name: &name,
                owner: &owner,
                expires_in_days: expires_days,
            };
            let (id, key) = auth::create(vault.pool(), role, &new).await?;
            let mut detail =
                format!("{}, merchant {merchant}", auth::created_detail(role, team.as_ref(), &name, &owner));
            if let Some(c) = &cert {
                auth::bind_client_cert(vault.pool(), &id, c).await?;
                detail = format!("{detail}, bound to client certificate sha256:{}", c.0);
            }
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("api_key.create", "created", &id) }).await?;
            println!("{key}");
            Ok(())
        }
        Command::Lockdown { action: LockdownAction::Start { reason, revoke_role, common } } => {
            anyhow::ensure!(
                !reason.trim().is_empty() && !tonewall::capture::card::looks_like_card_number(&reason),
                "--reason must say why, and hold no card number"
            );
            let vault = open_vault(&common).await?;
            let done = tonewall::api::lockdown::impose(&vault, CLI_ACTOR, reason.trim(), revoke_role).await?;
            if let Some((role, n)) = done.revoked {
                println!("{n} {} keys revoked", role.as_str());
            }
            vault.alerts().flush(Duration::from_secs(10)).await;
            println!("lockdown in force: detokenize and new captures are refused");
            Ok(())
        }
        Command::Lockdown { action: LockdownAction::Lift { common } } => {
            let vault = open_vault(&common).await?;
            tonewall::api::lockdown::release(&vault, CLI_ACTOR).await?;
            vault.alerts().flush(Duration::from_secs(10)).await;
            println!("no lockdown in force");
            Ok(())
        }
        Command::Lockdown { action: LockdownAction::Status { common } } => {
            let vault = open_vault(&common).await?;
            match tonewall::vault::lockdown::current(vault.pool()).await? {
                Some(l) => println!("locked since {} by {}: {}", utc(l.since), l.by_actor, l.reason),
                None => println!("no lockdown in force"),
            }
            Ok(())
        }
        Command::ApiKey { action: ApiKeyAction::List { merchant, common } } => {
            let vault = open_vault(&common).await?;
            let merchant = match merchant {
                Some(id) => Some(merchant_arg(&vault, Some(&id)).await?),
                None => None,
            };
            let when = |t: Option<i64>| t.map_or("-".to_string(), utc);
            println!("id\tname\towner\trole\tteam\tcreated\texpires\tlast_used\tcertificate\tstate\tmerchant");
            for k in auth::list(vault.pool(), merchant.as_ref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.owner,
                    k.role,
                    k.team.as_deref().unwrap_or("-"),
                    when(Some(k.created_at)),
                    when(k.expires_at),
                    when(k.last_used_at),
                    if k.bound_to_certificate { "bound" } else { "-" },
                    k.state,
                    k.merchant
                );
            }
            Ok(())
        }
        Command::ApiKey { action: ApiKeyAction::Revoke { id, common } } => {
            let vault = open_vault(&common).await?;
            auth::revoke(vault.pool(), &id, None).await?;
            vault.audit(&CLI_ACTOR.did("api_key.revoke", "revoked", &id)).await?;
            println!("key {id} revoked");
            Ok(())
        }
        Command::ApiKey { action: ApiKeyAction::Rotate { id, overlap_hours, common } } => {
            let vault = open_vault(&common).await?;
            let overlap = std::time::Duration::from_secs(overlap_hours.saturating_mul(3600));
            let (new_id, key) = auth::rotate(vault.pool(), &id, None, overlap).await?;
            let detail = auth::rotated_detail(&new_id, overlap_hours);
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("api_key.rotate", "rotated", &id) }).await?;
            eprintln!("key {new_id} replaces {id}, which stops working in {overlap_hours} h");
            println!("{key}");
            Ok(())
        }
        Command::Keys { action: KeysAction::Rotate { common } } => {
            let vault = open_vault(&common).await?;
            let id = vault.keys().rotate(vault.pool()).await?;
            let resource = id.to_string();
            vault.audit(&CLI_ACTOR.did("key.rotate", "created", &resource)).await?;
            println!("data key {id} is now current; re-encrypting older records");
            let total = until_done("records re-encrypted", || vault.reencrypt(500)).await?;
            let detail = format!("{total} records");
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("key.reencrypt", "done", &resource) }).await?;
            println!("done: every record is under data key {id}");
            Ok(())
        }
        Command::Keys { action: KeysAction::RotateAudit { common } } => {
            let vault = open_vault(&common).await?;
            let id = vault.keys().rotate_audit(vault.pool()).await?;
            vault.audit(&CLI_ACTOR.did("key.rotate_audit", "created", &id.to_string())).await?;
            println!("audit key {id} MACs new records from now on");
            Ok(())
        }
        Command::Keys { action: KeysAction::RotateFingerprint { common } } => {
            let vault = open_vault(&common).await?;
            let id = vault.keys().rotate_fingerprint(vault.pool()).await?;
            let resource = id.to_string();
            vault.audit(&CLI_ACTOR.did("key.rotate_fingerprint", "created", &resource)).await?;
            let total = until_done("cards re-fingerprinted", || vault.refingerprint(500)).await?;
            let detail = format!("{total} cards");
            let done = CLI_ACTOR.did("key.refingerprint", "done", &resource);
            vault.audit(&audit::Event { detail: &detail, ..done }).await?;
            println!("done: every card is fingerprinted under key {id}; the old key is destroyed once 24 h retired");
            Ok(())
        }
        Command::Keys { action: KeysAction::Rewrap { batch, pause_ms, common } } => {
            let vault = open_vault(&common).await?;
            vault.audit(&CLI_ACTOR.did("kek.rewrap", "started", "kek")).await?;
            let mut total = 0;
            loop {
                let pass = vault.keys().rewrap(vault.pool(), batch.max(1)).await?;
                total += pass.moved;
                println!("rewrapped {total} keys, {} left under the previous KEK", pass.left);
                if pass.left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            let detail = format!("{total} keys re-wrapped");
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("kek.rewrap", "done", "kek") }).await?;
            println!("done: every key is wrapped under the current KEK; vault.previous_kek can go");
            Ok(())
        }
        Command::Keys { action: KeysAction::DestroyRetired { grace_hours, common } } => {
            let vault = open_vault(&common).await?;
            let ids = vault.destroy_retired_keys(Duration::from_secs(grace_hours.saturating_mul(3600))).await?;
            println!("destroyed {} retired data keys {ids:?}", ids.len());
            Ok(())
        }
        Command::Keys { action: KeysAction::Status { common } } => {
            let vault = open_vault(&common).await?;
            println!("{:>4}  {:<12} {:<17} {:>12} {:>10}", "id", "purpose", "created (UTC)", "encryptions", "records");
            for k in keyring::status(vault.pool()).await? {
                println!(
                    "{:>4}  {:<12} {:<17} {:>12} {:>10}{}",
                    k.id,
                    k.purpose,
                    utc(k.created_at),
                    k.encryptions,
                    k.records,
                    if k.current { "  current" } else { "" }
                );
            }
            Ok(())
        }
        Command::Keys { action: KeysAction::HsmCreate { common } } => {
            let cfg = common.load()?;
            let KekSource::Pkcs11 { pkcs11 } = &cfg.vault.kek else {
                anyhow::bail!("vault.kek is not a PKCS#11 key: set vault.kek = {{ pkcs11 = {{ ... }} }}");
            };
            create_token_key(pkcs11)?;
            println!("created AES-256 key {:?} on token {:?} (not extractable)", pkcs11.key_label, pkcs11.token_label);
            Ok(())
        }
        Command::Keys { action: KeysAction::TlsDev { common } } => {
            let cfg = common.load()?;
            let (cert, key) = cfg.tls_files();
            tonewall::runtime::tls::write_dev_pair(&cert, &key)?;
            println!("wrote {} and {} (self-signed, development only)", cert.display(), key.display());
            Ok(())
        }
        Command::Merchant { action: MerchantAction::Create { id, name, settings, common } } => {
            let cfg = common.load()?;
            let vault = Vault::open(VaultOptions::from_config(&cfg)).await?;
            let id = MerchantId::parse(&id)?;
            let settings = merchant::Settings::default().patched(&settings_json(&settings)?)?;
            merchant::create(vault.pool(), &id, &name, &settings, merchant::Deployment::of(&cfg)).await?;
            vault.audit(&CLI_ACTOR.did("merchant.create", "created", id.as_str())).await?;
            println!("merchant {id} created");
            Ok(())
        }
        Command::Merchant { action: MerchantAction::List { common } } => {
            let vault = open_vault(&common).await?;
            println!("id\tname\tsettings");
            for m in merchant::list(vault.pool()).await? {
                println!("{}\t{}\t{}", m.id, m.name, serde_json::to_string(&m.settings)?);
            }
            Ok(())
        }
        Command::Merchant { action: MerchantAction::Update { id, name, settings, common } } => {
            let cfg = common.load()?;
            let vault = Vault::open(VaultOptions::from_config(&cfg)).await?;
            let id = MerchantId::parse(&id)?;
            let patch = settings_json(&settings)?;
            merchant::update(vault.pool(), &id, name.as_deref(), &patch, merchant::Deployment::of(&cfg)).await?;
            let detail = format!("settings changed: {}", patch.keys().cloned().collect::<Vec<_>>().join(", "));
            vault
                .audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("merchant.update", "updated", id.as_str()) })
                .await?;
            println!("merchant {id} updated");
            Ok(())
        }
        Command::User { action: UserAction::Add { username, role, merchant, team, totp, common } } => {
            let cfg = common.load()?;
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let vault = Vault::open(VaultOptions::from_config(&cfg)).await?;
            let team = team.as_deref().and_then(tonewall::owner::Team::named);
            let agent_totp = cfg.accounts.agent_totp;
            let merchant = merchant_arg(&vault, merchant.as_deref()).await?;
            let user = accounts::NewUser {
                username: &username,
                role,
                merchant: &merchant,
                team: team.as_ref(),
                with_totp: totp,
            };
            let secret = accounts::add_user(&vault, &user, password, agent_totp).await?;
            let totp = if secret.is_some() { ", with TOTP" } else { "" };
            let detail = format!("{}, merchant {merchant}{totp}", role.as_str());
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("user.add", "created", &username) }).await?;
            println!("added {username} ({detail})");
            if let Some(secret) = secret {
                println!("TOTP secret (base32, for the authenticator app; shown once): {secret}");
                println!("otpauth://totp/tonewall:{username}?secret={secret}&issuer=tonewall");
            }
            Ok(())
        }
        Command::User { action: UserAction::List { common } } => {
            let vault = open_vault(&common).await?;
            for u in accounts::list(vault.pool()).await? {
                let team = u.team.map_or("-".to_string(), |t| t.0);
                let flags = [(u.totp, "totp"), (u.disabled, "disabled"), (u.locked, "locked")];
                let flags: Vec<&str> = flags.iter().filter(|(on, _)| *on).map(|(_, f)| *f).collect();
                println!("{}\t{}\t{team}\t{}\t{}", u.username, u.role.as_str(), flags.join(","), u.merchant);
            }
            Ok(())
        }
        Command::User { action: UserAction::Disable { username, common } } => {
            let vault = open_vault(&common).await?;
            accounts::disable(vault.pool(), &username).await?;
            vault.audit(&CLI_ACTOR.did("user.disable", "disabled", &username)).await?;
            println!("disabled {username}");
            Ok(())
        }
        Command::Recordings { action: RecordingsAction::Purge { older_than_days, reference, common } } => {
            let cfg = common.load()?;
            let vault = Vault::open(VaultOptions::from_config(&cfg)).await?;
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            if reference.as_deref().is_some_and(tonewall::capture::card::looks_like_card_number) {
                anyhow::bail!("--reference looks like it holds a card number: refused (references never hold one)");
            }
            let data_dir = &cfg.storage.data_dir;
            let mut deleted = Vec::new();
            if let Some(r) = &reference {
                let n = tonewall::recording::purge(&vault, data_dir, Purge::Reference(None, r)).await?;
                deleted.push(format!("{n} recordings of reference {r:?}"));
            } else {
                // Each merchant's own retention, else the deployment's; --older-than-days for all.
                for m in merchant::list(vault.pool()).await? {
                    let days = older_than_days.or(m.settings.retention_days).unwrap_or(cfg.recordings.retention_days);
                    let before = now_ms - i64::from(days) * 86_400_000;
                    let n = tonewall::recording::purge(&vault, data_dir, Purge::StartedBefore(&m.id, before)).await?;
                    deleted.push(format!("{n} recordings of merchant {} older than {days} days", m.id));
                }
            }
            for detail in deleted {
                let event =
                    audit::Event { detail: &detail, ..CLI_ACTOR.did("recording.purge", "deleted", "recordings") };
                vault.audit(&event).await?;
                println!("deleted {detail}");
            }
            Ok(())
        }
        Command::Audit { action: AuditAction::Verify { common } } => {
            let vault = open_vault(&common).await?;
            let v = vault.verify_audit().await?;
            for f in &v.findings {
                println!("TAMPERED: {f}");
            }
            let anchor = vault.checkpoint_file().display();
            if v.unanchored {
                println!("WARNING: no checkpoint file at {anchor}: records cut from the end would not show");
            }
            if !v.findings.is_empty() {
                let findings = v.findings.iter().map(ToString::to_string).collect();
                vault.alerts().raise(tonewall::alerts::SecurityEvent::TamperFound { findings });
                vault.alerts().flush(Duration::from_secs(10)).await;
            }
            let outcome = if v.findings.is_empty() { "intact" } else { "tampered" };
            let detail = format!("{} records, {} checkpoints, {} findings", v.checked, v.checkpoints, v.findings.len());
            vault
                .audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("audit.verify", outcome, "audit_log") })
                .await?;
            if v.findings.is_empty() {
                // The verified head, and this run's own record, are vouched for from now on.
                vault.checkpoint().await?;
                println!(
                    "audit trail intact: {} records (signed checkpoints held against: {} in {anchor})",
                    v.checked, v.checkpoints
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "audit trail verification failed: {} finding(s) in {} records",
                    v.findings.len(),
                    v.checked
                )
            }
        }
        Command::Db { action: DbAction::Migrate { runtime_role, common } } => {
            let cfg = common.load()?;
            let url = match std::env::var("TONEWALL_OWNER_DATABASE_URL") {
                Ok(owner) => owner,
                Err(_) => tonewall::vault::store::url(&cfg.storage.database_url, &cfg.storage.data_dir),
            };
            tonewall::vault::store::migrate_as_owner(&url, runtime_role.as_deref()).await?;
            match runtime_role {
                Some(role) => println!("schema up to date; {role} may append to the audit trail but not change it"),
                None => println!("schema up to date"),
            }
            Ok(())
        }
        Command::Backup { to, common } => {
            let vault = open_vault(&common).await?;
            let b = vault.backup(&to, &CLI_ACTOR).await?;
            println!(
                "backup written to {}: {} bytes of database, audit trail up to record {}, {} checkpoints",
                to.display(),
                b.database_bytes,
                b.audit_seq,
                b.checkpoints
            );
            Ok(())
        }
        Command::Restore { from, common } => {
            let cfg = common.load()?;
            anyhow::ensure!(
                cfg.storage.database_url.is_empty(),
                "tonewall restore brings back a SQLite vault; restore PostgreSQL with pg_restore"
            );
            let options = VaultOptions::from_config(&cfg);
            std::fs::create_dir_all(&options.data_dir)
                .with_context(|| format!("creating {}", options.data_dir.display()))?;
            let kek = tonewall::vault::kek::Kek::open(&options.kek, &options.data_dir.join(tonewall::vault::KEK_FILE))?;
            let to = tonewall::vault::backup::RestoreTo {
                database: options.data_dir.join(tonewall::vault::DB_FILE),
                checkpoint_file: options.checkpoint_file.clone(),
            };
            let b = tonewall::vault::backup::restore(&from, &kek, &to)?;
            // Opening runs any newer migrations and proves the keys unwrap.
            let vault = Vault::open(options).await?;
            let detail = format!("from {}: audit up to {}", from.display(), b.audit_seq);
            vault.audit(&audit::Event { detail: &detail, ..CLI_ACTOR.did("backup.restore", "ok", "vault") }).await?;
            println!(
                "restored {} bytes of database into {}, audit trail up to record {}, {} checkpoints; run `tonewall audit verify`",
                b.database_bytes,
                to.database.display(),
                b.audit_seq,
                b.checkpoints
            );
            Ok(())
        }
        Command::CheckConfig { common } => {
            let cfg = common.load()?;
            println!("{cfg:#?}");
            println!("config OK");
            Ok(())
        }
    }
}
