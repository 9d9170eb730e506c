//! Power loss (issue 22): the SQLite vault lives on `tests/powerloss/lossyfs.py`, a FUSE file
//! system that keeps every write in memory until the file is fsynced, so killing it is a
//! power cut that drops whatever was not synced (SIGKILL of the server alone keeps the page
//! cache, which proves nothing about durability). Four clients tokenize against
//! `tonewall serve` on it; the file system is killed mid-stream, then the server. On the
//! surviving bytes, without the file system in between: every acknowledged token detokenizes
//! to its card, has exactly one tokenize audit record, and `audit verify` passes. The same
//! run on a file system that ignores fsync for the database files (`vault.db*`, not the key
//! file) loses acknowledged tokens, which shows the check sees a loss when there is one.
//!
//! Needs /dev/fuse, fusermount and Debian's python3-fusepy (`scripts/test` installs them).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServeProcess, http, tonewall, visa_pan, write_config};

const LOSSYFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/powerloss/lossyfs.py");

fn require_fuse() {
    let fusepy = Command::new("/usr/bin/python3").args(["-c", "import fusepy"]).output();
    assert!(
        fusepy.is_ok_and(|o| o.status.success()) && Path::new("/dev/fuse").exists(),
        "the power-loss test needs /dev/fuse, fusermount and python3-fusepy: apt-get install -y fuse3 python3-fusepy"
    );
    common::require_tool("fusermount", "apt-get install -y fuse3");
}

/// The lossy file system mounted over `mnt`, its bytes kept in `backing`.
struct Lossy {
    child: Child,
    mnt: PathBuf,
    mounted: bool,
}

impl Lossy {
    /// `ignore_fsync`: for the database files, fsync does nothing (the control).
    fn mount(backing: &Path, mnt: &Path, ignore_fsync: bool) -> Lossy {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(LOSSYFS).arg(backing).arg(mnt).stdin(Stdio::null());
        if ignore_fsync {
            cmd.arg("--ignore-fsync=vault.db");
        }
        let child = cmd.spawn().expect("start lossyfs.py");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string("/proc/self/mounts").unwrap().contains(mnt.to_str().unwrap()) {
            assert!(Instant::now() < deadline, "lossyfs did not mount {}", mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Lossy { child, mnt: mnt.to_path_buf(), mounted: true }
    }

    /// The power cut: the file system dies with its unsynced images.
    fn cut(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new("fusermount").arg("-uz").arg(&self.mnt).status();
        }
    }
}

impl Drop for Lossy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// What survived one run: the acknowledged tokens, those that no longer detokenize to
/// their card (or have other than one tokenize record), and whether the audit verified.
struct Survived {
    acknowledged: usize,
    lost: Vec<String>,
    audit: Result<String, String>,
}

/// `rounds` times: the file system mounted over the same disk, the server started on it,
/// four clients tokenizing, and the power cut once `per_round` more are acknowledged (plus a
/// few milliseconds that vary, so the cut lands at different points of a write).
async fn tokenize_then_cut(ignore_fsync: bool, rounds: usize) -> Survived {
    let per_round = 40;
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    let config = write_config(
        dir.path(),
        &[
            ("detokenize_per_minute = 600", "detokenize_per_minute = 1000000"),
            ("bulk_alarm_per_hour = 1000", "bulk_alarm_per_hour = 1000000"),
        ],
    );
    let cfg = config.to_str().unwrap();
    let on_fuse = mnt.join("data");
    let log = dir.path().join("serve.log");
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let counter = Arc::new(AtomicU64::new(1));
    let mut key = String::new();
    for round in 0..rounds {
        let mut fs = Lossy::mount(&backing, &mnt, ignore_fsync);
        if round == 0 {
            let args = ["api-key", "create", "--role", "processor", "--config", cfg, "--data-dir"];
            let (ok, out, err) = tonewall(&[&args[..], &[on_fuse.to_str().unwrap()]].concat(), &[]);
            assert!(ok, "{err}");
            key = out.trim().to_string();
        }
        let serve = ServeProcess::start(&config, &on_fuse, &log, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (base, key, acked, counter, stop) =
                (serve.base.clone(), key.clone(), acknowledged.clone(), counter.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let p = visa_pan(counter.fetch_add(1, Ordering::Relaxed));
                    let body = format!(r#"{{"pan":"{p}","expiry":"1230"}}"#);
                    let (s, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&key), Some(&body)).await;
                    match s {
                        201 => {
                            acked.lock().unwrap().insert(v["token"].as_str().unwrap().to_string(), p);
                        }
                        // Refused once the disk is gone (503), or the server itself is gone (0).
                        _ => break,
                    }
                }
            }));
        }
        let want = (round + 1) * per_round;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged.lock().unwrap().len() < want {
            assert!(Instant::now() < deadline, "too few tokenizations on the FUSE disk:\n{}", serve_log(&log));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis((round as u64 * 7) % 23)).await;
        fs.cut();
        serve.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
    }
    let acked = acknowledged.lock().unwrap().clone();

    // The disk as the power cut left it, without the file system in between.
    let data = backing.join("data");
    let everything = || acked.keys().cloned().collect::<Vec<_>>();
    let started = std::panic::catch_unwind(|| ServeProcess::start(&config, &data, &log, &[]));
    let Ok(serve) = started else {
        let why = format!("the server does not start on what the disk kept:\n{}", serve_log(&log));
        return Survived { acknowledged: acked.len(), lost: everything(), audit: Err(why) };
    };
    let mut lost = Vec::new();
    for (token, p) in &acked {
        let body = format!(r#"{{"token":"{token}"}}"#);
        let (s, v) = http("POST", &format!("{}/v1/detokenize", serve.base), Some(&key), Some(&body)).await;
        if (s, v["pan"].as_str()) != (200, Some(p.as_str())) {
            lost.push(token.clone());
        }
    }
    serve.kill();
    let options = tonewall::vault::testing::TestDatabase::sqlite().options(&data);
    let vault = match tonewall::vault::Vault::open(options).await {
        Ok(v) => v,
        Err(e) => return Survived { acknowledged: acked.len(), lost: everything(), audit: Err(e.to_string()) },
    };
    let records = common::tokenize_records(vault.pool()).await;
    drop(vault);
    for token in acked.keys() {
        if records.get(token) != Some(&1) && !lost.contains(token) {
            lost.push(token.clone());
        }
    }
    let (ok, out, err) = tonewall(&["audit", "verify", "--config", cfg, "--data-dir", data.to_str().unwrap()], &[]);
    Survived { acknowledged: acked.len(), lost, audit: if ok { Ok(out) } else { Err(format!("{out}{err}")) } }
}

fn serve_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_acknowledged_token() {
    require_fuse();
    let s = tokenize_then_cut(false, 5).await;
    println!("5 power cuts, {} tokenizations acknowledged before them: {} lost", s.acknowledged, s.lost.len());
    assert!(s.lost.is_empty(), "acknowledged tokens lost in the power cut: {:?}", s.lost);
    let out = s.audit.unwrap_or_else(|e| panic!("audit verify after the power cut: {e}"));
    println!("{}", out.trim());

    // The control: a disk that ignores fsync for the database loses acknowledged tokens, and
    // the same checks say so.
    let control = tokenize_then_cut(true, 1).await;
    println!(
        "control (fsync of vault.db* ignored): {} acknowledged, {} lost, audit {}",
        control.acknowledged,
        control.lost.len(),
        if control.audit.is_ok() { "verifies" } else { "fails" }
    );
    assert!(!control.lost.is_empty(), "a disk that ignores fsync lost nothing: the check cannot see a loss");
}
