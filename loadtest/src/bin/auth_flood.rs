//! Legitimate detokenize under an unknown-key flood: starts tonewall in-process on loopback
//! (SQLite, durable), stores one card, then measures `--count` detokenizations by a
//! processor key, `--concurrency` at a time, first alone and then while `--flood-rate`
//! requests a second with unknown keys come from `--sources` loopback addresses
//! (127.0.0.2 on). Prints throughput and p50/p99 for both, their ratios, what the flood got
//! back and how many audit records it cost. Bounded by counts and by `--max-seconds`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;
use tonewall::vault::audit;

#[derive(Parser)]
struct Args {
    /// Detokenizations per phase (at most 100000).
    #[arg(long, default_value_t = 3000)]
    count: usize,
    /// Legitimate requests in flight at once (1..=64).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Unknown-key requests per second during the second phase (at most 20000).
    #[arg(long, default_value_t = 5000)]
    flood_rate: u32,
    /// Loopback addresses the flood comes from (1..=200).
    #[arg(long, default_value_t = 100)]
    sources: u8,
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
}

/// One HTTP/1.1 keep-alive connection: sends a request, reads the status and body.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(to: SocketAddr, from: Option<IpAddr>) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        Ok(Conn { stream: socket.connect(to).await?, buf: Vec::with_capacity(4096) })
    }

    async fn post(&mut self, path: &str, key: &str, body: &str) -> anyhow::Result<u16> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
            let status: u16 = head.get(9..12).context("status line")?.parse()?;
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .map_or(Ok(0), |v| v.parse::<usize>())?;
            if self.buf.len() >= end + 4 + length {
                return Ok(status);
            }
        }
    }
}

struct Phase {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn at(&self, q: f64) -> Duration {
        self.latencies[((self.latencies.len() as f64 * q) as usize).min(self.latencies.len() - 1)]
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<12} {:>6} detokenize in {:>6.2} s = {:>7.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
            self.latencies.len(),
            self.wall.as_secs_f64(),
            self.rate(),
            self.at(0.5).as_secs_f64() * 1e3,
            self.at(0.99).as_secs_f64() * 1e3
        );
    }
}

async fn legitimate(
    http: SocketAddr,
    key: Arc<str>,
    body: Arc<str>,
    args: &Args,
    deadline: Instant,
) -> anyhow::Result<Phase> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.count)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (next, latencies, key, body, count) =
            (next.clone(), latencies.clone(), key.clone(), body.clone(), args.count);
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(http, None).await?;
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let t = Instant::now();
                let status = conn.post("/v1/detokenize", &key, &body).await?;
                if status != 200 {
                    bail!("detokenize answered {status}");
                }
                latencies.lock().await.push(t.elapsed());
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let wall = started.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    if latencies.is_empty() {
        bail!("no detokenization finished");
    }
    Ok(Phase { latencies, wall })
}

/// Unknown keys at `rate` a second from `sources` addresses until `stop`; what came back.
async fn flood(http: SocketAddr, rate: u32, sources: u8, stop: Arc<AtomicBool>) -> BTreeMap<String, u64> {
    let per_source = Duration::from_secs_f64(f64::from(sources) / f64::from(rate));
    let mut tasks = Vec::new();
    for s in 0..sources {
        let stop = stop.clone();
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + s));
        tasks.push(tokio::spawn(async move {
            let mut got: BTreeMap<String, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(per_source);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut conn = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if conn.is_none() {
                    conn = Conn::open(http, Some(from)).await.ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                i += 1;
                let outcome = match c.post("/v1/detokenize", &format!("twk_flood{s}x{i}"), r#"{"token":"tok_x"}"#).await
                {
                    Ok(status) => status.to_string(),
                    Err(_) => {
                        conn = None;
                        "connection lost".to_string()
                    }
                };
                *got.entry(outcome).or_default() += 1;
            }
            got
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        if let Ok(got) = t.await {
            for (k, v) in got {
                *all.entry(k).or_default() += v;
            }
        }
    }
    all
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.count > 100_000 || !(1..=64).contains(&args.concurrency) {
        bail!("--count must be 1..=100000 and --concurrency 1..=64");
    }
    if args.flood_rate == 0 || args.flood_rate > 20_000 || !(1..=200).contains(&args.sources) {
        bail!("--flood-rate must be 1..=20000 and --sources 1..=200");
    }
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded();
    config.sip.listen = "127.0.0.1:0".parse()?;
    config.sip.tcp = false;
    config.http.listen = "127.0.0.1:0".parse()?;
    config.storage.data_dir = dir.path().to_path_buf();
    config.vault.detokenize_per_minute = 10_000_000;
    config.vault.bulk_alarm_per_hour = 100_000_000;
    let server = Server::start(config).await?;
    let http = server.http_addr;
    let pool = server.shared.vault.pool().clone();
    let key: Arc<str> = auth::create_key(&pool, Role::Processor).await?.1.into();
    let mut conn = Conn::open(http, None).await?;
    let card = r#"{"pan":"4111111111111111","expiry":"1230"}"#;
    let status = conn.post("/v1/tokenize", &key, card).await?;
    if status != 201 && status != 200 {
        bail!("tokenize answered {status}");
    }
    let text = String::from_utf8_lossy(&conn.buf).to_string();
    let token = text.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).context("no token")?.to_string();
    let body: Arc<str> = format!(r#"{{"token":"{token}"}}"#).into();

    let alone = legitimate(http, key.clone(), body.clone(), &args, deadline).await?;
    alone.print("alone");
    let audit_before = audit::records(&pool, 0, 1_000_000).await?.len();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(http, args.flood_rate, args.sources, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flood_started = Instant::now();
    let under = legitimate(http, key, body, &args, deadline).await?;
    let flood_wall = flood_started.elapsed() + Duration::from_millis(500);
    stop.store(true, Ordering::Relaxed);
    let got = flooding.await?;
    under.print("under flood");
    let sent: u64 = got.values().sum();
    let audit_rows = audit::records(&pool, 0, 1_000_000).await?.len() - audit_before - under.latencies.len();
    println!(
        "flood        {sent} unknown-key requests in {:.1} s = {:.0}/s from {} addresses: {got:?}",
        flood_wall.as_secs_f64(),
        sent as f64 / flood_wall.as_secs_f64(),
        args.sources
    );
    println!("audit        {audit_rows} records for the flood (besides one per detokenization)");
    println!(
        "ratios       throughput {:.2} of alone, p99 {:.2}× alone",
        under.rate() / alone.rate(),
        under.at(0.99).as_secs_f64() / alone.at(0.99).as_secs_f64()
    );
    server.shutdown(Duration::from_secs(3)).await;
    Ok(())
}
