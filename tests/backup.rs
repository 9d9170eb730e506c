//! Backups under load: four clients tokenize against `tonewall serve` (SQLite) while
//! `tonewall backup` copies the vault. The backup restores into an empty data directory that
//! holds only the KEK; there `audit verify` passes and every token acknowledged before the
//! backup began detokenizes to its card. A backup that was cut, altered or is restored under
//! another KEK, or over an existing vault, is refused.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ServeProcess, http, tonewall, visa_pan, write_config};

/// Every token in `cards` detokenizes on `base` to its card number.
async fn all_detokenize(base: &str, key: &str, cards: &HashMap<String, String>, copy: &str) {
    for (token, p) in cards {
        let body = format!(r#"{{"token":"{token}"}}"#);
        let (s, v) = http("POST", &format!("{base}/v1/detokenize"), Some(key), Some(&body)).await;
        assert_eq!(s, 200, "{copy}: a token acknowledged before the copy answered {s}");
        assert!(v["pan"].as_str() == Some(p.as_str()), "{copy}: the card differs");
    }
    println!("{} tokens detokenized from {copy}", cards.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_load_restores_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored) = (dir.path().join("data"), dir.path().join("restored"));
    let config = write_config(
        dir.path(),
        &[
            ("detokenize_per_minute = 600", "detokenize_per_minute = 1000000"),
            ("bulk_alarm_per_hour = 1000", "bulk_alarm_per_hour = 1000000"),
        ],
    );
    let (cfg, data_s, restored_s) = (config.to_str().unwrap(), data.to_str().unwrap(), restored.to_str().unwrap());
    let (ok, key, err) =
        tonewall(&["api-key", "create", "--role", "processor", "--config", cfg, "--data-dir", data_s], &[]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let serve = ServeProcess::start(&config, &data, &dir.path().join("serve.log"), &[]);

    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (counter, stop) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicBool::new(false)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (base, key, acked, counter, stop) =
            (serve.base.clone(), key.clone(), acknowledged.clone(), counter.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: at most 5,000 requests a client.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let p = visa_pan(counter.fetch_add(1, Ordering::Relaxed));
                let body = format!(r#"{{"pan":"{p}","expiry":"1230"}}"#);
                let (s, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&key), Some(&body)).await;
                assert_eq!(s, 201, "tokenize: {v}");
                acked.lock().unwrap().insert(v["token"].as_str().unwrap().to_string(), p);
            }
        }));
    }
    // Let the load build up, then back up while it runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: HashMap<String, String> = acknowledged.lock().unwrap().clone();
    let file = dir.path().join("vault.twbak");
    let file_s = file.to_str().unwrap().to_string();
    let (cfg_b, data_b) = (cfg.to_string(), data_s.to_string());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        tonewall(&["backup", "--to", &file_s, "--config", &cfg_b, "--data-dir", &data_b], &[])
    })
    .await
    .unwrap();
    assert!(ok, "backup failed: {err}");
    let during = acknowledged.lock().unwrap().len() - before.len();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!("{out}{} tokens acknowledged before the backup, {during} while it ran", before.len());
    assert!(during > 0, "the backup ran under load");

    // The backup holds no card number or key in the clear.
    let bytes = std::fs::read(&file).unwrap();
    let kek_hex = std::fs::read_to_string(data.join("kek.dev.hex")).unwrap();
    assert!(!common::contains(&bytes, kek_hex.trim().as_bytes()), "the KEK is in the backup");
    for p in before.values().take(50) {
        assert!(!common::contains(&bytes, p.as_bytes()), "a card number is in the backup in the clear");
    }

    // Refused: an existing vault, a cut file, an altered byte, another KEK.
    let restore = |from: &std::path::Path, to: &str| {
        tonewall(&["restore", "--from", from.to_str().unwrap(), "--config", cfg, "--data-dir", to], &[])
    };
    let (ok, _, err) = restore(&file, data_s);
    assert!(!ok && err.contains("exists: restore only into an empty place"), "{err}");
    let cut = dir.path().join("cut.twbak");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let altered = dir.path().join("altered.twbak");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(&altered, &flipped).unwrap();
    let (ok, _, err) = restore(&file, restored_s);
    assert!(!ok && err.contains("KEK does not open it"), "under a fresh development KEK: {err}");
    std::fs::remove_dir_all(&restored).unwrap();
    std::fs::create_dir_all(&restored).unwrap();
    // The KEK comes from key custody, not from the backup.
    std::fs::copy(data.join("kek.dev.hex"), restored.join("kek.dev.hex")).unwrap();
    for (f, why) in [(&cut, "ends early"), (&altered, "fails its authentication")] {
        let (ok, _, err) = restore(f, restored_s);
        assert!(!ok && err.contains(why), "{}: {err}", f.display());
        assert!(!restored.join("vault.db").exists(), "a refused backup left a vault behind");
    }
    // A stale write-ahead log would be replayed into the restored copy.
    std::fs::write(restored.join("vault.db-wal"), b"stale").unwrap();
    let (ok, _, err) = restore(&file, restored_s);
    assert!(!ok && err.contains("vault.db-wal exists"), "{err}");
    std::fs::remove_file(restored.join("vault.db-wal")).unwrap();
    let (ok, out, err) = restore(&file, restored_s);
    assert!(ok, "restore failed: {err}");
    println!("{out}");
    serve.kill();

    let (ok, out, err) = tonewall(&["audit", "verify", "--config", cfg, "--data-dir", restored_s], &[]);
    assert!(ok && out.contains("audit trail intact"), "{out}{err}");
    let again = ServeProcess::start(&config, &restored, &dir.path().join("restored.log"), &[]);
    all_detokenize(&again.base, &key, &before, "the restored vault").await;
    again.kill();
}

/// PostgreSQL's own tools: `pg_dump -Fc` of a vault while `serve` tokenizes, `pg_restore` into
/// a new database; `audit verify` passes there and every token acknowledged before the dump
/// detokenizes. The card numbers are not in the dump in the clear.
#[tokio::test(flavor = "multi_thread")]
async fn a_pg_dump_restores_and_verifies() {
    use tonewall::vault::testing::TestDatabase;
    common::require_tool("pg_dump", "apt-get install -y postgresql-client");
    let (db, copy) = (TestDatabase::postgres().await, TestDatabase::postgres().await);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_for = |url: &str, name: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let line = format!("database_url = \"{url}\"");
        write_config(
            &sub,
            &[
                ("database_url = \"\"", line.as_str()),
                ("detokenize_per_minute = 600", "detokenize_per_minute = 1000000"),
                ("bulk_alarm_per_hour = 1000", "bulk_alarm_per_hour = 1000000"),
            ],
        )
    };
    let (config, restored_config) = (config_for(&db.url, "live"), config_for(&copy.url, "copy"));
    let (cfg, data_s) = (config.to_str().unwrap(), data.to_str().unwrap());
    let (ok, key, err) =
        tonewall(&["api-key", "create", "--role", "processor", "--config", cfg, "--data-dir", data_s], &[]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let serve = ServeProcess::start(&config, &data, &dir.path().join("serve.log"), &[]);
    let mut acknowledged = HashMap::new();
    for n in 0..200 {
        let p = visa_pan(10_000 + n);
        let body = format!(r#"{{"pan":"{p}","expiry":"1230"}}"#);
        let (s, v) = http("POST", &format!("{}/v1/tokenize", serve.base), Some(&key), Some(&body)).await;
        assert_eq!(s, 201, "tokenize: {v}");
        acknowledged.insert(v["token"].as_str().unwrap().to_string(), p);
    }
    // The dump is taken with serve still running (pg_dump reads one snapshot).
    let dump = dir.path().join("vault.dump");
    let out = std::process::Command::new("pg_dump").args(["-Fc", "-f"]).arg(&dump).arg(&db.url).output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    serve.kill();
    let bytes = std::fs::read(&dump).unwrap();
    assert!(acknowledged.values().all(|p| !common::contains(&bytes, p.as_bytes())), "a PAN in the dump");
    let out = std::process::Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "-d"])
        .arg(&copy.url)
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));

    let rcfg = restored_config.to_str().unwrap();
    let (ok, out, err) = tonewall(&["audit", "verify", "--config", rcfg, "--data-dir", data_s], &[]);
    assert!(ok && out.contains("audit trail intact"), "{out}{err}");
    let again = ServeProcess::start(&restored_config, &data, &dir.path().join("restored.log"), &[]);
    all_detokenize(&again.base, &key, &acknowledged, "the pg_restore'd copy").await;
    again.kill();
}
