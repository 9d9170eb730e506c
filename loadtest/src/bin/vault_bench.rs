//! Vault throughput: `--count` tokenizations, `--concurrency` at a time, through
//! `Vault::tokenize` with durability on (SQLite WAL with synchronous=FULL in a throw-away
//! directory, or a throw-away PostgreSQL database), each with its audit record, then as
//! many detokenizations. Prints operations per second and p50/p99 latency. Bounded by count
//! and by `--max-seconds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::sync::Semaphore;
use tonewall::capture::card::Pan;
use tonewall::capture::collector::{Captured, CapturedCard, Payment};
use tonewall::merchant::MerchantId;
use tonewall::vault::testing::TestDatabase;
use tonewall::vault::{Actor, ActorRole, Role, Vault};

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Tokenizations in all (at most 100000).
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// In flight at once (1..=256).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

const ACTOR: Actor<'static> =
    Actor { id: "bench", role: ActorRole::Key(Role::Processor), origin: "local", merchant: None };

/// A Luhn-valid 16-digit Visa test number from a counter.
fn pan(n: usize) -> String {
    let body = format!("4{n:014}");
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", tonewall::capture::card::luhn_check_digit(&digits))
}

fn report(what: &str, backend: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{backend:<8} {what:<11} {:>6} ops in {:>6.2} s = {:>7.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

/// Runs `op(i)` for i in 0..count, `concurrency` at a time; returns each latency and the wall time.
async fn run<F, Fut>(
    count: usize,
    concurrency: usize,
    deadline: Instant,
    op: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        anyhow::ensure!(Instant::now() < deadline, "out of time after {i} operations");
        let permit = gate.clone().acquire_owned().await?;
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = fut.await;
            drop(permit);
            r.map(|()| t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for t in tasks {
        latencies.push(t.await??);
    }
    Ok((latencies, started.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.count <= 100_000 && (1..=256).contains(&args.concurrency),
        "--count ≤ 100000, --concurrency 1..=256"
    );
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir()?;
    let (db, label) = match args.backend {
        Backend::Sqlite => (TestDatabase::sqlite(), "sqlite"),
        Backend::Postgres => (TestDatabase::postgres().await, "postgres"),
    };
    let vault = Arc::new(Vault::open(db.options(dir.path())).await?);
    let tokens = Arc::new(std::sync::Mutex::new(vec![String::new(); args.count]));
    let (lat, wall) = run(args.count, args.concurrency, deadline, |i| {
        let (vault, tokens) = (vault.clone(), tokens.clone());
        async move {
            let p = Pan::parse(pan(i).as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let card = Captured { payment: Payment::Card(CapturedCard::new(p, None, None)), confirmed: None };
            let rec =
                vault.tokenize(card, ACTOR, &MerchantId::default_merchant(), None, std::time::Instant::now()).await?;
            tokens.lock().unwrap_or_else(|p| p.into_inner())[i] = rec.token;
            Ok(())
        }
    })
    .await?;
    report("tokenize", label, lat, wall);
    let (lat, wall) = run(args.count, args.concurrency, deadline, |i| {
        let (vault, tokens) = (vault.clone(), tokens.clone());
        async move {
            let token = tokens.lock().unwrap_or_else(|p| p.into_inner())[i].clone();
            let card = vault
                .detokenize(&token, &MerchantId::default_merchant(), ACTOR, std::time::Instant::now())
                .await?
                .into_card();
            anyhow::ensure!(card.is_some_and(|c| *c.pan == pan(i)), "token {i} gave another card");
            Ok(())
        }
    })
    .await?;
    report("detokenize", label, lat, wall);
    Ok(())
}
