//! Leak scan (PCI DSS 3.3, 3.5): a scripted run with test cards — cards imported through the
//! API with their security codes, a whole phone call keyed on the keypad, detokenizations, a
//! key rotation, an audit check — against `tonewall serve` on SQLite and on PostgreSQL at
//! debug log level. Then every file of the data directory (the SQLite file with its WAL and
//! shared memory, the security log, the checkpoints, sealed recordings), on PostgreSQL a
//! `pg_dump`, this database's files in the server's data directory, its WAL and the server's
//! log, every log line, every command's output, and every API response's headers and raw body
//! except detokenize's are searched for the test card numbers and a bank account number
//! keyed in an ACH call — their digits in order with
//! any separators (spaces, dashes, one per line, UTF-16), and in hex and base64 — and for the
//! security codes in clear: zero hits. Sealed recordings are searched for card numbers only
//! (see `scan`). A file the scan cannot read fails it. The push connector sends each
//! payment to a gateway in another process over mutual TLS: its log, outside tonewall, is
//! where the card number is found.

mod common;

use std::time::Duration;

use common::{ServeProcess, files_under, gateway, http, http_raw, require_tool, tonewall, wait_final, write_config};
use serde_json::Value;
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
/// A bank account keyed in an ACH call: routing number (public, not searched for) and an
/// account number searched for like a card number.
const CALL_ACCOUNT: (&str, &str) = ("322271627", "73920461358");

/// The card number's digits in order, with up to three separator bytes between each two:
/// "4111 1111", "4-1-1-1", "4.1/1_1", one digit per line (CR LF), UTF-16 (a NUL after each
/// digit). Separators are punctuation, white space and NUL; other bytes between digits are
/// binary structure (arrays of small integers in database pages would otherwise spell numbers).
fn digits_in_order(hay: &[u8], pan: &str) -> bool {
    let d = pan.as_bytes();
    memchr::memchr_iter(d[0], hay).any(|start| {
        let (mut at, mut next) = (start + 1, 1);
        while next < d.len() {
            let gap = hay[at.min(hay.len())..].iter().take(4).position(u8::is_ascii_digit);
            let separators = |skip: usize| hay[at..at + skip].iter().all(|b| b" -._/,:;\t\r\n\0".contains(b));
            match gap {
                Some(skip) if hay[at + skip] == d[next] && separators(skip) => {
                    at += skip + 1;
                    next += 1;
                }
                _ => return false,
            }
        }
        true
    })
}

/// The card number as hex (either case) or base64 (at each of the three alignments, without
/// the characters its neighbours change) of its ASCII digits.
fn encodings(pan: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let hex: String = pan.bytes().map(|b| format!("{b:02x}")).collect();
    let mut out = vec![hex.clone().into_bytes(), hex.to_uppercase().into_bytes()];
    for lead in 0..3usize {
        let bytes = [vec![b'x'; lead], pan.as_bytes().to_vec()].concat();
        let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        let skip = [0, 2, 3][lead];
        out.push(enc.as_bytes()[skip..enc.len() - 3].to_vec());
    }
    out
}

fn has_pan(hay: &[u8], pan: &str) -> bool {
    digits_in_order(hay, pan) || encodings(pan).iter().any(|e| memchr::memmem::find(hay, e).is_some())
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

/// An API call whose response, headers and raw body, goes into the scan.
async fn scanned(
    outputs: &mut Vec<(String, Vec<u8>)>,
    name: &str,
    url: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let method = if body.is_some() { "POST" } else { "GET" };
    let (status, headers, text) = http_raw(method, url, Some(key), body).await;
    outputs.push((format!("{method} {name}"), format!("{headers}\n{text}").into_bytes()));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn scripted_run(db: &TestDatabase) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url_line = format!("database_url = \"{}\"", db.url);
    // The push connector delivers each card to a gateway in another process: the one place
    // the card number may be found, and it is (checked at the end).
    let certs = gateway::certs(dir.path());
    let port = gateway::free_port();
    let gw = gateway::Gateway::start(port, &certs, dir.path());
    let push_lines = format!(
        "url = \"https://127.0.0.1:{port}/tokenize\"\nclient_cert = {:?}\nclient_key = {:?}",
        certs.ours.0, certs.ours.1
    );
    let push_trust =
        format!("ca = {:?}\nsecret = {{ hex = \"{}\" }}\n# Tries", certs.gateway_ca, gateway::SECRET_HEX.repeat(32));
    let config = write_config(
        dir.path(),
        &[
            ("database_url = \"\"", &url_line),
            ("url = \"\"\nclient_cert = \"\"\nclient_key = \"\"", &push_lines),
            ("ca = \"\"\nsecret = \"dev_file\"\n# Tries", &push_trust),
        ],
    );
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
        let tokenize = format!("{base}/v1/tokenize");
        let (s, v) = scanned(&mut outputs, "/v1/tokenize", &tokenize, &processor, Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        tokens.push(v["token"].as_str().unwrap().to_string());
        // Malformed and invalid submissions of the same card: their errors are scanned too,
        // as are a card number pasted into a reference and a route that does not exist.
        for bad in [format!(r#"{{"pan":{pan}}}"#), format!(r#"{{"pan":"{pan}0"}}"#), format!(r#"{{"pan":"{pan}""#)] {
            scanned(&mut outputs, "/v1/tokenize (bad)", &tokenize, &processor, Some(&bad)).await;
        }
        let pasted = format!(r#"{{"fields":["pan"],"reference":"{pan}","agent_uri":"sip:a@127.0.0.1"}}"#);
        scanned(&mut outputs, "/v1/sessions (pasted)", &format!("{base}/v1/sessions"), &agent_key, Some(&pasted)).await;
        scanned(&mut outputs, "/v1/<pan>", &format!("{base}/v1/{pan}"), &processor, None).await;
    }
    // A whole call: transfer, keypad entry, tokenization, the agent bridged throughout.
    let agent = Agent::start().await.unwrap();
    let body = format!(
        r#"{{"fields":["pan","expiry","cvv","postal_code"],"amount":"12.50","currency":"USD","reference":"leak-scan","agent_uri":"{}"}}"#,
        agent.uri
    );
    let (_, v) = scanned(&mut outputs, "/v1/sessions", &format!("{base}/v1/sessions"), &agent_key, Some(&body)).await;
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let keys = format!("{}#,1230,{},94105#,1", CALL_CARD.0, CALL_CARD.1);
    let opts = CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(serve.sip, &uri, &keys) };
    caller::place_call(opts).await.unwrap();
    wait_final(&base, &agent_key, &id, Duration::from_secs(5)).await;
    let (_, s) =
        scanned(&mut outputs, "/v1/sessions/{id}", &format!("{base}/v1/sessions/{id}"), &agent_key, None).await;
    assert_eq!(s["state"], "completed", "{s}");
    tokens.push(s["result"]["token"].as_str().unwrap().to_string());
    agent.finish().await.unwrap();
    // A bank account, keyed twice (ACH with matching inputs).
    let body = r#"{"payment_method":"ach","require_matching_inputs":true,"reference":"leak-scan-ach"}"#;
    let (_, v) =
        scanned(&mut outputs, "/v1/sessions (ach)", &format!("{base}/v1/sessions"), &agent_key, Some(body)).await;
    let (id, uri) = (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string());
    let (routing, account) = CALL_ACCOUNT;
    let keys = format!("{routing},{routing},{account}#,{account}#,1");
    let opts = CallerOptions { linger: Duration::from_secs(3), ..CallerOptions::new(serve.sip, &uri, &keys) };
    caller::place_call(opts).await.unwrap();
    wait_final(&base, &agent_key, &id, Duration::from_secs(5)).await;
    let (_, s) =
        scanned(&mut outputs, "/v1/sessions/{id} (ach)", &format!("{base}/v1/sessions/{id}"), &agent_key, None).await;
    assert_eq!(s["state"], "completed", "{s}");
    let ach_token = s["result"]["token"].as_str().unwrap().to_string();
    let (status, v) = http(
        "POST",
        &format!("{base}/v1/detokenize"),
        Some(&processor),
        Some(&format!(r#"{{"token":"{ach_token}"}}"#)),
    )
    .await;
    assert_eq!((status, v["account_number"].as_str()), (200, Some(account)));
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
        if *pan == CALL_CARD.0 {
            assert_eq!(v["postal_code"], "94105", "the call's postal code was sealed with its card");
        }
    }
    // Both calls' payments reached the gateway, whole, and only there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gw.accepted().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = std::fs::read_to_string(&gw.log).unwrap();
    assert_eq!(gw.accepted().len(), 2, "the card and the account were pushed: {delivered}");
    for whole in [CALL_CARD.0, CALL_CARD.1, CALL_ACCOUNT.1] {
        assert!(delivered.contains(whole), "the gateway received the payment whole");
    }
    serve.kill();
    run(&["keys", "rotate"], &mut outputs);
    run(&["keys", "status"], &mut outputs);
    run(&["audit", "verify"], &mut outputs);
    // One upkeep pass of a fresh server: it has run when the server anchored its start record.
    let anchors = data.join("audit-checkpoints.jsonl");
    let lines = || std::fs::read_to_string(&anchors).map_or(0, |t| t.lines().count());
    let before = lines();
    let serve = ServeProcess::start(&config, &data, &log, &debug);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lines() == before {
        assert!(std::time::Instant::now() < deadline, "the server wrote no checkpoint within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve.kill();

    outputs.push(("serve log".into(), std::fs::read(&log).unwrap()));
    let files = files_under(&data);
    let read = |suffix: &str| files.iter().any(|(name, bytes)| name.ends_with(suffix) && !bytes.is_empty());
    for must in ["security.jsonl", "audit-checkpoints.jsonl"] {
        assert!(read(must), "the scan read {must}");
    }
    if db.url.is_empty() {
        assert!(read("vault.db") && read("vault.db-wal"), "the scan read the database and its WAL");
    }
    outputs.extend(files);
    if !db.url.is_empty() {
        outputs.extend(postgres_files(db).await);
    }
    let log_text = String::from_utf8_lossy(&outputs.iter().find(|o| o.0 == "serve log").unwrap().1).to_string();
    assert!(log_text.contains("DEBUG") && log_text.contains("card tokenized"), "the log was at debug level");
    outputs
}

/// On PostgreSQL: a `pg_dump`, this database's files in the server's data directory (after a
/// CHECKPOINT wrote them), the WAL and the server's log.
async fn postgres_files(db: &TestDatabase) -> Vec<(String, Vec<u8>)> {
    use sqlx::Connection;
    require_tool("pg_dump", "apt-get install -y postgresql-client");
    let dump = std::process::Command::new("pg_dump").arg(&db.url).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(common::contains(&dump.stdout, b"audit_log"), "the dump holds the tables");
    let mut out = vec![("pg_dump".to_string(), dump.stdout)];
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await.unwrap();
    let (dir,): (String,) = sqlx::query_as("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (oid,): (i64,) = sqlx::query_as("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let tables = files_under(&std::path::Path::new(&dir).join("base").join(oid.to_string()));
    let bytes: usize = tables.iter().map(|f| f.1.len()).sum();
    assert!(bytes > 100_000, "this database's files were read: {bytes} bytes");
    out.extend(tables);
    let wal = files_under(&std::path::Path::new(&dir).join("pg_wal"));
    assert!(wal.iter().any(|f| f.1.len() >= 16 << 20), "a WAL segment was read");
    out.extend(wal);
    let logs = files_under(std::path::Path::new("/var/log/postgresql"));
    assert!(logs.iter().any(|f| f.0.ends_with(".log") && !f.1.is_empty()), "the server log was read");
    // Where the server quotes statements and values: searched for security codes too (the
    // rest of its log is full of counts, searched for card numbers).
    let quoted: Vec<u8> = logs
        .iter()
        .flat_map(|f| f.1.split(|b| *b == b'\n'))
        .filter(|l| [&b"STATEMENT:"[..], b"DETAIL:", b"ERROR:"].iter().any(|k| memchr::memmem::find(l, k).is_some()))
        .flat_map(|l| [l, b"\n"].concat())
        .collect();
    out.push(("postgres log: statements and values".into(), quoted));
    out.extend(logs);
    out
}

async fn scan(db: TestDatabase) {
    let outputs = scripted_run(&db).await;
    let mut hits = Vec::new();
    for (name, bytes) in &outputs {
        if has_pan(bytes, CALL_ACCOUNT.1) {
            hits.push(format!("{name}: the bank account number"));
        }
        for (pan, code) in CARDS.iter().chain([&CALL_CARD]) {
            if has_pan(bytes, pan) {
                hits.push(format!("{name}: card number ending {}", &pan[pan.len() - 4..]));
            }
            // A sealed recording is a few hundred KB of AES-GCM output, and PostgreSQL's pages
            // and WAL are megabytes of binary, where three given bytes between two
            // non-alphanumeric ones turn up by chance: they are searched for card numbers
            // only. What a recording holds is audio, judged by the DTMF detector in
            // tests/masking_judge.rs; the database's text is in the `pg_dump`, searched for both,
            // and so are the lines of the server's log that quote statements and values.
            let binary = name.ends_with(".twrec") || name.starts_with("/var/lib/postgresql/");
            let binary = binary || name.starts_with("/var/log/postgresql/");
            if let Some(around) = code_at(bytes, code).filter(|_| !binary) {
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
    use base64::Engine;
    let pan = "4111111111111111";
    assert!(has_pan(b"x 4111 1111 1111 1111 y", pan));
    assert!(has_pan(b"x4111-1111-1111-1111", pan));
    assert!(has_pan(b"4.1.1.1/1111_1111 1111", pan));
    assert!(has_pan(pan.chars().map(|c| format!("{c}\r\n")).collect::<String>().as_bytes(), pan), "one per line");
    let utf16: Vec<u8> = pan.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(has_pan(&utf16, pan), "UTF-16");
    assert!(has_pan(b"card=34313131313131313131313131313131;", pan), "hex");
    for lead in ["", "a", "ab"] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{lead}{pan}!"));
        assert!(has_pan(b64.as_bytes(), pan), "base64 after {lead:?}: {b64}");
    }
    assert!(!has_pan(b"411111******1111", pan));
    assert!(!has_pan(b"4111 1111 1111 111", pan), "one digit short");
    assert!(!has_pan(b"4111 1111 1111 1112", pan), "another number");
    assert!(!has_pan(b"4111 1111 \x00\x00\x00\x00 1111 1111", pan), "four bytes apart is not one number");
    let ints: Vec<u8> = b"4111111111111111".iter().enumerate().flat_map(|(i, d)| [*d, 0, 0, b'<' + i as u8]).collect();
    assert!(!has_pan(&ints, pan), "binary structure between the digits");
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
