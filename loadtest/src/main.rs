//! tonewall load generator: starts tonewall in-process on loopback (a throw-away data
//! directory), then places `--calls` payment calls, `--concurrency` at a time, each with a
//! softphone agent and a softphone caller keying a test card by RFC 4733. Reports completed
//! sessions, correct last-4s, telephone-event packets that reached an agent (must be 0),
//! agent stream gaps, and wall time. Bounded: every call has a deadline, the run has a total.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;
use tonewall::softphone::agent::Agent;
use tonewall::softphone::caller::{self, CallerOptions};
use tonewall::softphone::desktop;

#[derive(Parser)]
struct Args {
    /// Calls to place in all (at most 10000).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Calls in flight at once (at most 500).
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(Default, Debug)]
struct Outcome {
    completed: usize,
    right_last4: usize,
    failed: usize,
    leaked_event_packets: u64,
    agent_gaps: u64,
}

const CARDS: [(&str, &str); 3] =
    [("4111111111111111", "1111"), ("5555555555554444", "4444"), ("378282246310005", "0005")];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.calls <= 10_000 && (1..=500).contains(&args.concurrency),
        "--calls ≤ 10000, --concurrency 1..=500"
    );
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::embedded();
    cfg.sip.listen = "127.0.0.1:0".parse()?;
    cfg.http.listen = "127.0.0.1:0".parse()?;
    cfg.storage.data_dir = dir.path().to_path_buf();
    let server = Server::start(cfg).await.context("starting tonewall")?;
    let (_, key) = auth::create_key(server.shared.vault.pool(), Role::Agent).await?;
    let base = format!("http://{}", server.http_addr);
    let sip = server.sip_addr;
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.calls {
        let (gate, key, base) = (gate.clone(), key.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let (pan, last4) = CARDS[i % CARDS.len()];
            let cvv = if pan.starts_with('3') { "1234" } else { "123" };
            let result = tokio::time::timeout(Duration::from_secs(60), one_call(sip, &base, &key, pan, cvv)).await;
            Some(match result {
                Ok(Ok((session, leaks, gaps))) => {
                    if session["state"] != "completed" {
                        eprintln!("call {i}: session {} ({})", session["state"], session["error"]);
                    }
                    (session["state"] == "completed", session["result"]["last4"] == last4, leaks, gaps)
                }
                Ok(Err(e)) => {
                    eprintln!("call {i}: {e:#}");
                    (false, false, 0, 0)
                }
                Err(_) => {
                    eprintln!("call {i}: no result within 60 s");
                    (false, false, 0, 0)
                }
            })
        }));
    }
    let mut out = Outcome::default();
    let deadline = Duration::from_secs(args.max_seconds);
    for t in tasks {
        let remaining = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, t).await {
            Ok(Ok(Some((done, right, leaks, gaps)))) => {
                out.completed += usize::from(done);
                out.right_last4 += usize::from(right);
                out.failed += usize::from(!done);
                out.leaked_event_packets += leaks;
                out.agent_gaps += gaps;
            }
            _ => out.failed += 1,
        }
    }
    let wall = started.elapsed();
    server.shutdown(Duration::from_secs(5)).await;
    println!("calls={} concurrency={} wall={:.1}s", args.calls, args.concurrency, wall.as_secs_f64());
    println!(
        "completed={} right_last4={} failed={} telephone_event_packets_at_agent={} agent_stream_gaps={}",
        out.completed, out.right_last4, out.failed, out.leaked_event_packets, out.agent_gaps
    );
    anyhow::ensure!(out.failed == 0 && out.leaked_event_packets == 0, "load test found failures or leaks");
    Ok(())
}

async fn one_call(
    sip: std::net::SocketAddr,
    base: &str,
    key: &str,
    pan: &str,
    cvv: &str,
) -> anyhow::Result<(Value, u64, u64)> {
    let agent = Agent::start().await?;
    let body = json!({"fields": ["pan", "expiry", "cvv"], "reference": "load", "agent_uri": agent.uri});
    let created = desktop::create_session(base, key, body).await?;
    let id = created["id"].as_str().context("id")?.to_string();
    let uri = created["transfer_uri"].as_str().context("uri")?.to_string();
    let keypad = format!("{pan}#,1230,{cvv}");
    caller::place_call(CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(sip, &uri, &keypad) })
        .await?;
    let session = desktop::session(base, key, &id).await?;
    let heard = agent.finish().await?;
    Ok((session, heard.non_audio_packets, heard.sequence_gaps + heard.timestamp_jumps))
}
