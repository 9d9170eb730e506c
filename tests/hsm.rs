//! The key-encrypting key in a PKCS#11 token (feature `hsm`), against Debian's SoftHSM2:
//! a token initialized in a temporary directory, the KEK made inside it by `tonewall keys
//! hsm-create`, then `serve` tokenizing and detokenizing with data keys wrapped by the token,
//! across a restart, with a rotation and an audit check; a wrong PIN or a missing key is a
//! clear error.
#![cfg(feature = "hsm")]

mod common;

use common::{ServeProcess, http, require_tool, tonewall, write_config};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_wrapped_inside_a_softhsm_token() {
    require_tool("softhsm2-util", "apt-get install -y softhsm2");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .unwrap();
    let conf_s = conf.to_str().unwrap().to_string();
    let init = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "tonewall", "--pin", "1234", "--so-pin", "4321"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let kek = format!(
        "kek = {{ pkcs11 = {{ module = \"{MODULE}\", token_label = \"tonewall\", key_label = \"tonewall-kek\", pin_env = \"TEST_HSM_PIN\" }} }}"
    );
    let config = write_config(dir.path(), &[("kek = \"dev_file\"", &kek)]);
    let data = dir.path().join("data");
    let args = |cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        a.extend(["--config".into(), config.display().to_string(), "--data-dir".into(), data.display().to_string()]);
        a
    };
    let env = [("SOFTHSM2_CONF", conf_s.as_str()), ("TEST_HSM_PIN", "1234")];
    let run = |cmd: &[&str], env: &[(&str, &str)]| {
        let a = args(cmd);
        tonewall(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };

    let (ok, _, err) = run(&["keys", "status"], &env);
    assert!(!ok && err.contains("no key labelled \"tonewall-kek\""), "before the key exists: {err}");
    let (ok, out, err) = run(&["keys", "hsm-create"], &env);
    assert!(ok && out.contains("not extractable"), "{out}{err}");
    let (ok, _, err) = run(&["keys", "hsm-create"], &env);
    assert!(!ok && err.contains("already exists"), "{err}");

    let (ok, key, err) = run(&["api-key", "create", "--role", "processor"], &env);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let log = dir.path().join("serve.log");
    let serve = ServeProcess::start(&config, &data, &log, &env);
    let (s, v) =
        http("POST", &format!("{}/v1/tokenize", serve.base), Some(&key), Some(r#"{"pan":"5555555555554444"}"#)).await;
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    serve.kill();
    assert!(!data.join("kek.dev.hex").exists(), "no development key");

    // After a restart the token unwraps the data keys again.
    let serve = ServeProcess::start(&config, &data, &log, &env);
    let body = format!(r#"{{"token":"{token}"}}"#);
    let (s, v) = http("POST", &format!("{}/v1/detokenize", serve.base), Some(&key), Some(&body)).await;
    assert_eq!((s, v["pan"].as_str()), (200, Some("5555555555554444")));
    serve.kill();
    let (ok, out, err) = run(&["keys", "rotate"], &env);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(&["audit", "verify"], &env);
    assert!(ok, "{out}");

    let (ok, _, err) = run(&["keys", "status"], &[("SOFTHSM2_CONF", conf_s.as_str()), ("TEST_HSM_PIN", "9999")]);
    assert!(!ok && err.contains("login"), "a wrong PIN: {err}");
    let (ok, _, err) = run(&["keys", "status"], &[("SOFTHSM2_CONF", conf_s.as_str())]);
    assert!(!ok && err.contains("TEST_HSM_PIN"), "no PIN: {err}");
}
