//! KEK rotation end to end (PCI DSS 3.6.4, 3.7.4): `tonewall serve` tokenizes under KEK A with
//! a tiny data-key budget (so there are many data keys to move); it is restarted with KEK B
//! and A as `previous_kek` while clients keep tokenizing; `tonewall keys rewrap` is killed
//! with SIGKILL part way, together with the server, and then run again to the end. With only
//! KEK B configured every acknowledged token still detokenizes to its card and the audit chain
//! verifies; with only KEK A the vault no longer opens.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServeProcess, http, tonewall, visa_pan, write_config};
use tonewall::vault::testing::TestDatabase;

const KEK_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEK_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

type Acked = Arc<Mutex<HashMap<String, String>>>;

/// Clients tokenizing until `stop`; what the server acknowledged lands in `acked`.
fn tokenize_until(
    base: &str,
    key: &str,
    acked: &Acked,
    counter: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..3)
        .map(|_| {
            let (base, key, acked, counter, stop) =
                (base.to_string(), key.to_string(), acked.clone(), counter.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let p = visa_pan(counter.fetch_add(1, Ordering::Relaxed));
                    let body = format!(r#"{{"pan":"{p}","expiry":"1230"}}"#);
                    let (s, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&key), Some(&body)).await;
                    match s {
                        201 => drop(acked.lock().unwrap().insert(v["token"].as_str().unwrap().to_string(), p)),
                        0 => break, // the server was killed
                        _ => panic!("tokenize answered {s}: {v}"),
                    }
                }
            })
        })
        .collect()
}

async fn stop_clients(stop: &AtomicBool, clients: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
}

fn config(dir: &std::path::Path, db: &TestDatabase, name: &str, keks: &str) -> std::path::PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let url = format!("database_url = \"{}\"", db.url);
    write_config(
        &sub,
        &[
            ("database_url = \"\"", &url),
            ("kek = \"dev_file\"\n", keks),
            ("max_encryptions_per_key = 1000000000", "max_encryptions_per_key = 3"),
            ("detokenize_per_minute = 600", "detokenize_per_minute = 1000000"),
            ("bulk_alarm_per_hour = 1000", "bulk_alarm_per_hour = 1000000"),
        ],
    )
}

/// Waits for `n` acknowledged tokens, at most 60 s.
async fn until_acked(acked: &Acked, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "only {} tokens acknowledged", acked.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rotate(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (d, log) = (data.to_str().unwrap(), dir.path().join("serve.log"));
    let only_a = config(dir.path(), &db, "a", &format!("kek = {{ hex = \"{KEK_A}\" }}\n"));
    let rotating = config(
        dir.path(),
        &db,
        "rotating",
        &format!("kek = {{ hex = \"{KEK_B}\" }}\nprevious_kek = {{ hex = \"{KEK_A}\" }}\n"),
    );
    let only_b = config(dir.path(), &db, "b", &format!("kek = {{ hex = \"{KEK_B}\" }}\n"));
    let cfg = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
    let (ok, key, err) =
        tonewall(&["api-key", "create", "--role", "processor", "--config", &cfg(&only_a), "--data-dir", d], &[]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let (acked, counter): (Acked, _) = (Arc::default(), Arc::new(AtomicU64::new(1)));

    // Under KEK A: enough cards for dozens of data keys.
    let serve = ServeProcess::start(&only_a, &data, &log, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokenize_until(&serve.base, &key, &acked, &counter, &stop);
    until_acked(&acked, 150).await;
    stop_clients(&stop, clients).await;
    serve.kill();

    // KEK B with A as the previous one, traffic on; the rewrap and the server killed part way.
    let serve = ServeProcess::start(&rotating, &data, &log, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokenize_until(&serve.base, &key, &acked, &counter, &stop);
    let mut rewrap = std::process::Command::new(common::BIN)
        .args(["keys", "rewrap", "--batch", "1", "--pause-ms", "30", "--config", &cfg(&rotating), "--data-dir", d])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(rewrap.stdout.take().unwrap()).lines();
    let first = loop {
        let line = lines.next().expect("rewrap printed progress").unwrap();
        if line.starts_with("rewrapped 10 keys") {
            break line;
        }
    };
    rewrap.kill().unwrap(); // SIGKILL
    rewrap.wait().unwrap();
    serve.kill();
    stop_clients(&stop, clients).await;
    println!("{}: killed the rewrap and the server at \"{first}\"", db.label);
    let left: usize = first.split(", ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    assert!(left > 10, "{}: the kill came part way, {left} keys left", db.label);

    let serve = ServeProcess::start(&rotating, &data, &log, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokenize_until(&serve.base, &key, &acked, &counter, &stop);
    let before = acked.lock().unwrap().len();
    until_acked(&acked, before + 60).await;
    let (ok, out, err) = tonewall(&["keys", "rewrap", "--config", &cfg(&rotating), "--data-dir", d], &[]);
    assert!(ok && out.contains("0 left under the previous KEK"), "{out}{err}");
    println!("{}: resumed: {}", db.label, out.lines().next().unwrap_or_default());
    stop_clients(&stop, clients).await;
    serve.kill();

    // KEK B alone opens everything; KEK A alone opens nothing.
    let serve = ServeProcess::start(&only_b, &data, &log, &[]);
    let acked = acked.lock().unwrap().clone();
    for (token, p) in &acked {
        let body = format!(r#"{{"token":"{token}"}}"#);
        let (s, v) = http("POST", &format!("{}/v1/detokenize", serve.base), Some(&key), Some(&body)).await;
        assert_eq!((s, v["pan"].as_str()), (200, Some(p.as_str())), "{}: token {token} after the rotation", db.label);
    }
    serve.kill();
    let (ok, out, err) = tonewall(&["audit", "verify", "--config", &cfg(&only_b), "--data-dir", d], &[]);
    assert!(ok, "{}: {out}{err}", db.label);
    let (ok, _, err) = tonewall(&["keys", "status", "--config", &cfg(&only_a), "--data-dir", d], &[]);
    assert!(!ok && err.contains("decrypt"), "{}: the old KEK still opens the vault: {err}", db.label);
    let (ok, status, err) = tonewall(&["keys", "status", "--config", &cfg(&only_b), "--data-dir", d], &[]);
    assert!(ok, "{err}");
    let data_keys = status.lines().filter(|l| l.contains("encryption")).count();
    assert!(data_keys > 40, "{}: {data_keys} data keys", db.label);
    println!(
        "{}: {} tokens acknowledged across the rotation, {data_keys} data keys re-wrapped or made under KEK B, every token detokenized; {}",
        db.label,
        acked.len(),
        out.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_under_traffic_survives_sigkill_on_sqlite() {
    rotate(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_under_traffic_survives_sigkill_on_postgres() {
    rotate(TestDatabase::postgres().await).await;
}
