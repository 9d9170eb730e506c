//! Leak scan (PCI DSS 3.3, 3.5): a scripted run with test cards — cards imported through the
//! API with their security codes, a whole phone call keyed on the keypad, detokenizations, a
//! key rotation, an audit check — against `tonewall serve` on SQLite and on PostgreSQL at
//! debug log level. Then the SQLite file with its WAL and shared memory, a `pg_dump`, every
//! log line, every command's output and every API response except detokenize's are searched
//! for the test card numbers (with or without spaces and dashes) and security codes in clear:
//! zero hits. Sealed recordings are searched for card numbers only (see `scan`).

mod common;

use std::time::Duration;

use common::{ServeProcess, files_under, http, require_tool, tonewall, wait_final, write_config};
use tonewall::vault::testing::TestDatabase;
use tonewall_testkit::agent::Agent;
use tonewall_testkit::caller::{self, CallerOptions};

/// Test cards with security codes chosen not to occur by chance in timestamps or ports.
const CARDS: [(&str, &str); 4] = [
    ("4111111111111111", "846"),
    ("5555555555554444", "972"),
    ("378282246310005", "6093"),
    ("6011111111111117", "518"),
];
const CALL_CARD: (&str, &str) = ("4012888888881881", "364");

/// The haystack with spaces and dashes taken out, so "4111 1111-1111 1111" is found too.
fn squeezed(hay: &[u8]) -> Vec<u8> {
    hay.iter().copied().filter(|b| *b != b' ' && *b != b'-').collect()
}

fn has_pan(hay: &[u8], pan: &str) -> bool {
    common::contains(&squeezed(hay), pan.as_bytes())
}

/// Where a security code stands as a token of its own (not inside a number, a decimal such
/// as a log's timing, a hex string or an identifier): the text around it, the code blanked.
fn code_at(hay: &[u8], code: &str) -> Option<String> {
    let c = code.as_bytes();
    let apart = |b: u8| !b.is_ascii_alphanumeric() && b != b'.';
    let at = hay.windows(c.len() + 2).position(|w| w[1..=c.len()] == *c && apart(w[0]) && apart(w[c.len() + 1]))?;
    let around = |r: std::ops::Range<usize>| String::from_utf8_lossy(&hay[r]).to_string();
    let (start, end) = (at.saturating_sub(40), (at + c.len() + 42).min(hay.len()));
    Some(format!("{}[code]{}", around(start..at + 1), around(at + 1 + c.len()..end)))
}

fn has_code(hay: &[u8], code: &str) -> bool {
    code_at(hay, code).is_some()
}

async fn scripted_run(db: &TestDatabase) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url_line = format!("database_url = \"{}\"", db.url);
    let config = write_config(dir.path(), &[("database_url = \"\"", &url_line)]);
    let log = dir.path().join("serve.log");
    let (cfg, data_s) = (config.to_str().unwrap(), data.to_str().unwrap());
    let debug = [("RUST_LOG", "debug")];
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let run = |args: &[&str], outputs: &mut Vec<(String, Vec<u8>)>| {
        let mut full = args.to_vec();
        full.extend(["--config", cfg, "--data-dir", data_s]);
        let (ok, out, err) = tonewall(&full, &debug);
        assert!(ok, "{args:?}: {err}");
        outputs.push((format!("tonewall {}", args.join(" ")), format!("{out}{err}").into_bytes()));
        out.trim().to_string()
    };
    let processor = run(&["api-key", "create", "--role", "processor"], &mut outputs);
    let agent_key = run(&["api-key", "create", "--role", "agent"], &mut outputs);
    let serve = ServeProcess::start(&config, &data, &log, &debug);
    let base = serve.base.clone();
    let mut tokens = Vec::new();
    for (pan, code) in CARDS {
        let body = format!(r#"{{"pan":"{pan}","expiry":"0931","security_code":"{code}"}}"#);
        let (s, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&processor), Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        outputs.push(("POST /v1/tokenize".into(), v.to_string().into_bytes()));
        tokens.push(v["token"].as_str().unwrap().to_string());
        // Malformed and invalid submissions of the same card: their errors are scanned too.
        for bad in [format!(r#"{{"pan":{pan}}}"#), format!(r#"{{"pan":"{pan}0"}}"#), format!(r#"{{"pan":"{pan}""#)] {
            let (_, v) = http("POST", &format!("{base}/v1/tokenize"), Some(&processor), Some(&bad)).await;
            outputs.push(("POST /v1/tokenize (bad)".into(), v.to_string().into_bytes()));
        }
    }
    // A whole call: transfer, keypad entry, tokenization, the agent bridged throughout.
    let agent = Agent::start().await.unwrap();
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"leak-scan","agent_uri":"{}"}}"#, agent.uri);
    let (_, v) = http("POST", &format!("{base}/v1/sessions"), Some(&agent_key), Some(&body)).await;
    outputs.push(("POST /v1/sessions".into(), v.to_string().into_bytes()));
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let keys = format!("{}#,1230,{}", CALL_CARD.0, CALL_CARD.1);
    let opts = CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(serve.sip, &uri, &keys) };
    caller::place_call(opts).await.unwrap();
    let s = wait_final(&base, &agent_key, &id, Duration::from_secs(5)).await;
    assert_eq!(s["state"], "completed", "{s}");
    outputs.push(("GET /v1/sessions/{id}".into(), s.to_string().into_bytes()));
    tokens.push(s["result"]["token"].as_str().unwrap().to_string());
    agent.finish().await.unwrap();
    // Detokenize: the one response allowed to hold the card, so it is checked, not scanned.
    for (token, (pan, _)) in tokens.iter().zip(CARDS.iter().chain([&CALL_CARD])) {
        let (s, v) = http(
            "POST",
            &format!("{base}/v1/detokenize"),
            Some(&processor),
            Some(&format!(r#"{{"token":"{token}"}}"#)),
        )
        .await;
        assert_eq!((s, v["pan"].as_str()), (200, Some(*pan)));
    }
    serve.kill();
    run(&["keys", "rotate"], &mut outputs);
    run(&["keys", "status"], &mut outputs);
    run(&["audit", "verify"], &mut outputs);
    let serve = ServeProcess::start(&config, &data, &log, &debug);
    tokio::time::sleep(Duration::from_millis(1500)).await; // one upkeep pass
    serve.kill();

    outputs.push(("serve log".into(), std::fs::read(&log).unwrap()));
    outputs.extend(files_under(&data));
    if !db.url.is_empty() {
        require_tool("pg_dump", "apt-get install -y postgresql-client");
        let dump = std::process::Command::new("pg_dump").arg(&db.url).output().unwrap();
        assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
        assert!(common::contains(&dump.stdout, b"audit_log"), "the dump holds the tables");
        outputs.push(("pg_dump".into(), dump.stdout));
    }
    let log_text = String::from_utf8_lossy(&outputs.iter().find(|o| o.0 == "serve log").unwrap().1).to_string();
    assert!(log_text.contains("DEBUG") && log_text.contains("card tokenized"), "the log was at debug level");
    outputs
}

async fn scan(db: TestDatabase) {
    let outputs = scripted_run(&db).await;
    let mut hits = Vec::new();
    for (name, bytes) in &outputs {
        for (pan, code) in CARDS.iter().chain([&CALL_CARD]) {
            if has_pan(bytes, pan) {
                hits.push(format!("{name}: card number ending {}", &pan[pan.len() - 4..]));
            }
            // A sealed recording is a few hundred KB of AES-GCM output, where three given
            // bytes between two non-alphanumeric ones turn up by chance; what the recording
            // holds is audio, judged by the DTMF detector in tests/masking_judge.rs.
            let sealed_audio = name.ends_with(".twrec");
            if let Some(around) = code_at(bytes, code).filter(|_| !sealed_audio) {
                hits.push(format!("{name}: a security code in {around:?}"));
            }
        }
    }
    let total: usize = outputs.iter().map(|o| o.1.len()).sum();
    println!("{}: scanned {} sources, {total} bytes", db.label, outputs.len());
    assert!(hits.is_empty(), "{}: card data in clear:\n{}", db.label, hits.join("\n"));
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    assert!(has_pan(b"x 4111 1111 1111 1111 y", "4111111111111111"));
    assert!(has_pan(b"x4111-1111-1111-1111", "4111111111111111"));
    assert!(!has_pan(b"411111******1111", "4111111111111111"));
    assert!(has_code(b"cvv=846;", "846") && has_code(b"\"846\"", "846"));
    assert!(!has_code(b"18460", "846") && !has_code(b"took 135.846ms", "846") && !has_code(b"a846f0", "846"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_data_in_clear_anywhere_on_sqlite() {
    scan(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_data_in_clear_anywhere_on_postgres() {
    scan(TestDatabase::postgres().await).await;
}
