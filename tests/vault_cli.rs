//! The vault's command line against a running `tonewall serve`: key rotation beside traffic,
//! interrupted and finished by the server; `keys status`; `audit verify` on an intact and a
//! tampered trail; KEK sources and production mode; core dumps off.

mod common;

use std::time::Duration;

use common::{ServeProcess, http, tonewall, write_config};

struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    data: std::path::PathBuf,
}

impl Setup {
    fn new(replace: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), replace);
        let data = dir.path().join("data");
        Setup { dir, config, data }
    }

    fn args<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut a = cmd.to_vec();
        a.extend(["--config", self.config.to_str().unwrap(), "--data-dir", self.data.to_str().unwrap()]);
        a
    }

    fn run(&self, cmd: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        tonewall(&self.args(cmd), env)
    }

    fn serve(&self, env: &[(&str, &str)]) -> ServeProcess {
        ServeProcess::start(&self.config, &self.data, &self.dir.path().join("serve.log"), env)
    }
}

/// (id, records, current) per encryption key, from `keys status`.
fn encryption_keys(status: &str) -> Vec<(u32, u64, bool)> {
    status
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.get(1) == Some(&"encryption"))
        .map(|w| (w[0].parse().unwrap(), w[5].parse().unwrap(), w.last() == Some(&"current")))
        .collect()
}

async fn tokenize(base: &str, key: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let (s, v) =
            http("POST", &format!("{base}/v1/tokenize"), Some(key), Some(r#"{"pan":"4111111111111111"}"#)).await;
        assert_eq!(s, 201, "{v}");
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_interrupted_by_a_crash_is_finished_by_the_server_while_traffic_continues() {
    let s = Setup::new(&[]);
    let (ok, key, err) = s.run(&["api-key", "create", "--role", "processor"], &[]);
    assert!(ok, "{err}");
    let key = key.trim();
    let serve = s.serve(&[]);
    let mut tokens = tokenize(&serve.base, key, 400).await;
    let (_, status, _) = s.run(&["keys", "status"], &[]);
    assert_eq!(encryption_keys(&status), [(1, 400, true)], "{status}");
    assert!(!status.contains(&std::fs::read_to_string(s.data.join("kek.dev.hex")).unwrap()), "no key material");

    // Rotate, and kill the rotation part-way through its re-encryption.
    let mut rotate = std::process::Command::new(common::BIN)
        .args(s.args(&["keys", "rotate"]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status, _) = s.run(&["keys", "status"], &[]);
        let keys = encryption_keys(&status);
        if keys.len() == 2 && keys[1].1 > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rotation never started: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rotate.kill().unwrap();
    rotate.wait().unwrap();
    let (_, status, _) = s.run(&["keys", "status"], &[]);
    let keys = encryption_keys(&status);
    assert!(keys[0].1 > 0, "interrupted with records still under the old key: {status}");
    // Traffic goes on under the new key while the server's upkeep finishes the move.
    tokens.extend(tokenize(&serve.base, key, 50).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let keys = loop {
        let (_, status, _) = s.run(&["keys", "status"], &[]);
        let keys = encryption_keys(&status);
        if keys[0].1 == 0 || tokio::time::Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(keys, [(1, 0, false), (3, 450, true)], "the server finished the re-encryption");
    for t in &tokens {
        let (st, _) =
            http("POST", &format!("{}/v1/detokenize", serve.base), Some(key), Some(&format!(r#"{{"token":"{t}"}}"#)))
                .await;
        assert_eq!(st, 200);
    }
    serve.kill();
    let (ok, out, err) = s.run(&["audit", "verify"], &[]);
    assert!(ok && out.contains("audit trail intact"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_a_tampered_record_and_fails() {
    let s = Setup::new(&[]);
    let (_, key, _) = s.run(&["api-key", "create", "--role", "processor"], &[]);
    let serve = s.serve(&[]);
    tokenize(&serve.base, key.trim(), 5).await;
    serve.kill();
    let (ok, out, _) = s.run(&["audit", "verify"], &[]);
    assert!(ok, "{out}");
    // The key's creation, serve's start, five tokenizations.
    assert!(out.contains("intact: 7 records"), "{out}");
    // Someone with database access rewrites who did something.
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&s.data)).await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'someone-else' WHERE seq = 4")
        .execute(vault.pool())
        .await
        .unwrap();
    drop(vault);
    let (ok, out, err) = s.run(&["audit", "verify"], &[]);
    assert!(!ok, "tampering must fail the check");
    assert!(out.contains("TAMPERED: record 4 fails its MAC"), "{out}{err}");
}

/// The attack the chain alone cannot see: cut records off the end and point the head at the
/// last survivor. The checkpoint that the first `audit verify` (and serve) left outside the
/// database still names the cut record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_a_cut_tail_through_its_checkpoint() {
    let s = Setup::new(&[]);
    let (_, key, _) = s.run(&["api-key", "create", "--role", "processor"], &[]);
    let serve = s.serve(&[]);
    tokenize(&serve.base, key.trim(), 5).await;
    serve.kill();
    let (ok, out, _) = s.run(&["audit", "verify"], &[]);
    assert!(ok && out.contains("intact: 7 records (signed checkpoints held against: 1 in"), "{out}");
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&s.data)).await.unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 5; \
         UPDATE audit_head SET seq = 5, mac = (SELECT mac FROM audit_log WHERE seq = 5)",
    )
    .execute(vault.pool())
    .await
    .unwrap();
    // Without the checkpoint file the chain looks whole: that is the attack.
    assert_eq!(tonewall::vault::audit::verify(vault.pool(), &vault.keys().audit).await.unwrap(), (5, vec![]));
    drop(vault);
    let (ok, out, err) = s.run(&["audit", "verify"], &[]);
    assert!(!ok, "a cut tail must fail the check: {out}");
    assert!(
        out.contains("TAMPERED: a signed checkpoint vouches for record 8 but the chain ends at record 5"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_from_the_environment_production_mode_and_no_core_dumps() {
    let kek = "5a".repeat(32);
    let s = Setup::new(&[
        ("kek = \"dev_file\"", "kek = { env = \"TONEWALL_TEST_KEK\" }"),
        // Production also wants SDES keys over TLS only, and one-time codes from agents.
        ("sdes_requires_tls = false", "sdes_requires_tls = true"),
        ("agent_totp = false", "agent_totp = true"),
    ]);
    let env = [("TONEWALL_TEST_KEK", kek.as_str())];
    let (ok, key, err) = s.run(&["api-key", "create", "--role", "processor"], &env);
    assert!(ok, "{err}");
    let serve = ServeProcess::start(&s.config, &s.data, &s.dir.path().join("serve.log"), &env);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.child.id())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(&core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    tokenize(&serve.base, key.trim(), 1).await;
    serve.kill();
    assert!(!s.data.join("kek.dev.hex").exists(), "no development key was made");

    // Another KEK opens nothing; a missing one is a clear error.
    let (ok, _, err) = s.run(&["keys", "status"], &[("TONEWALL_TEST_KEK", &"5b".repeat(32))]);
    assert!(!ok && err.contains("decryption failed"), "{err}");
    let (ok, _, err) = s.run(&["keys", "status"], &[]);
    assert!(!ok && err.contains("TONEWALL_TEST_KEK: not set"), "{err}");

    // Production: the environment KEK is accepted, the development key refused.
    let serve = std::process::Command::new(common::BIN)
        .args(s.args(&["serve", "--production", "--sip-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]))
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut serve = serve;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(serve.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.contains("tonewall serving"), "{line}");
    serve.kill().unwrap();
    serve.wait().unwrap();
    let dev = Setup::new(&[]);
    let (ok, _, err) = dev.run(&["serve", "--production"], &[]);
    assert!(!ok && err.contains("production mode refuses"), "{err}");
    assert!(!dev.data.join("kek.dev.hex").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_purge_deletes_old_recordings_and_is_audited() {
    let s = Setup::new(&[]);
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&s.data)).await.unwrap();
    let day_ms = 86_400_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for started in [now - 100 * day_ms, now - 10 * day_ms] {
        let mut w = tonewall::recording::Writer::create(&s.data, &vault, started).unwrap();
        w.write(&[0; tonewall::call::recording::STEREO_FRAME]).unwrap();
        w.finish(vault.pool(), &tonewall::merchant::MerchantId::default_merchant(), "call", "session", "ref", &[])
            .await
            .unwrap();
    }
    drop(vault);
    let (ok, out, err) = s.run(&["recordings", "purge"], &[]);
    assert!(ok && out.contains("deleted 1 recordings of merchant default older than 90 days"), "{out}{err}");
    let (ok, out, _) = s.run(&["recordings", "purge", "--older-than-days", "5"], &[]);
    assert!(ok && out.contains("deleted 1 recordings"), "{out}");
    assert_eq!(std::fs::read_dir(s.data.join("recordings")).unwrap().count(), 0);
    let vault = tonewall::vault::Vault::open(tonewall::vault::VaultOptions::development(&s.data)).await.unwrap();
    let records = tonewall::vault::audit::records(vault.pool(), 0, 100).await.unwrap();
    assert_eq!(records.iter().filter(|r| r.action == "recording.purge").count(), 2);
}
