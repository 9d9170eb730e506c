//! Crash safety: tokenization clients run against `tonewall serve` while the test kills the
//! server with SIGKILL at random moments and starts it again, 200 times on SQLite and 60 on
//! PostgreSQL. Afterwards every token the server acknowledged detokenizes to its card, every
//! stored row decrypts (no partial rows), and `tonewall audit verify` passes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServeProcess, http, tonewall, visa_pan, write_config};
use tonewall::vault::testing::TestDatabase;

/// xorshift64*: the kill schedule, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

async fn kill_loop(db: &TestDatabase, kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url_line = format!("database_url = \"{}\"", db.url);
    let config = write_config(
        dir.path(),
        &[
            ("database_url = \"\"", &url_line),
            ("detokenize_per_minute = 600", "detokenize_per_minute = 1000000"),
            ("bulk_alarm_per_hour = 1000", "bulk_alarm_per_hour = 1000000"),
        ],
    );
    let log = dir.path().join("serve.log");
    let (cfg, data_s) = (config.to_str().unwrap(), data.to_str().unwrap());
    let (ok, key, err) =
        tonewall(&["api-key", "create", "--role", "processor", "--config", cfg, "--data-dir", data_s], &[]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("{}: kill schedule seed {seed}", db.label);
    let mut rng = Rng(seed | 1);
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let started = Instant::now();
    for _ in 0..kills {
        let serve = ServeProcess::start(&config, &data, &log, &[]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (base, key, acked, counter, stop) =
                (serve.base.clone(), key.clone(), acknowledged.clone(), counter.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = visa_pan(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    let body = format!(r#"{{"pan":"{p}","expiry":"1230"}}"#);
                    let (s, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&key), Some(&body)).await;
                    if s == 201 {
                        acked.lock().unwrap().insert(v["token"].as_str().unwrap().to_string(), p);
                    } else if s == 0 {
                        break; // the server is gone
                    } else {
                        panic!("tokenize answered {s}: {v}");
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(10 + rng.below(120))).await;
        serve.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
    }
    let acked = acknowledged.lock().unwrap().clone();
    println!(
        "{}: {kills} SIGKILLs in {:.1} s, {} tokenizations acknowledged",
        db.label,
        started.elapsed().as_secs_f64(),
        acked.len()
    );
    assert!(acked.len() > kills, "the clients got work done between kills: {}", acked.len());

    let serve = ServeProcess::start(&config, &data, &log, &[]);
    let detokenize = |token: &str| {
        let (url, body) = (format!("{}/v1/detokenize", serve.base), format!(r#"{{"token":"{token}"}}"#));
        let key = key.clone();
        async move { http("POST", &url, Some(&key), Some(&body)).await }
    };
    for (token, p) in &acked {
        let (s, v) = detokenize(token).await;
        assert_eq!((s, v["pan"].as_str()), (200, Some(p.as_str())), "acknowledged token {token} lost or wrong");
    }
    // Every row in the table, acknowledged or not (killed before the reply), is whole.
    let options = db.options(&data);
    let vault = tonewall::vault::Vault::open(options).await.unwrap();
    let tokens: Vec<(String,)> = sqlx::query_as("SELECT token FROM cards").fetch_all(vault.pool()).await.unwrap();
    assert!(tokens.len() >= acked.len());
    for (token,) in &tokens {
        let (s, _) = detokenize(token).await;
        assert_eq!(s, 200, "stored row {token} does not decrypt");
    }
    // Tokens are unique, and each acknowledged one has exactly one tokenize record.
    let distinct: std::collections::HashSet<&String> = tokens.iter().map(|t| &t.0).collect();
    assert_eq!(distinct.len(), tokens.len(), "{}: duplicate tokens", db.label);
    let records = common::tokenize_records(vault.pool()).await;
    for token in acked.keys() {
        assert_eq!(records.get(token), Some(&1), "{}: audit records for acknowledged token {token}", db.label);
    }
    serve.kill();
    drop(vault);
    let (ok, out, err) = tonewall(&["audit", "verify", "--config", cfg, "--data-dir", data_s], &[]);
    assert!(ok, "audit verify failed after the kills:\n{out}\n{err}");
    println!("{}: {} rows, {}", db.label, tokens.len(), out.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_token_on_sqlite() {
    kill_loop(&TestDatabase::sqlite(), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_token_on_postgres() {
    kill_loop(&TestDatabase::postgres().await, 60).await;
}
