//! The `tonewall` command line: serve, demo, api-key create, check-config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;
use tonewall::vault::Vault;

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
    /// Validate the configuration and print the effective values.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it (only its hash is stored).
    Create {
        #[arg(long, value_enum)]
        role: Role,
        #[command(flatten)]
        common: Common,
    },
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { common, sip_listen, http_listen } => {
            init_logging();
            let mut cfg = common.load()?;
            cfg.sip.listen = sip_listen.unwrap_or(cfg.sip.listen);
            cfg.http.listen = http_listen.unwrap_or(cfg.http.listen);
            let server = Server::start(cfg).await?;
            println!("tonewall serving: SIP udp:{}  HTTP http://{}", server.sip_addr, server.http_addr);
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
            tracing::info!("shutting down: hanging up active calls");
            server.shutdown(Duration::from_secs(5)).await;
            Ok(())
        }
        Command::Demo { data_dir } => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging();
            }
            let outcome = tonewall::demo::run(&data_dir).await?;
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
            tonewall::demo::verify(&outcome)?;
            println!("demo OK");
            Ok(())
        }
        Command::ApiKey { action: ApiKeyAction::Create { role, common } } => {
            let cfg = common.load()?;
            let vault = Vault::open(Path::new(&cfg.storage.data_dir)).await?;
            let key = auth::create_key(vault.pool(), role).await?;
            println!("{key}");
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
