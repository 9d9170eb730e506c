//! Shared helpers for the integration tests: an in-process server on free loopback ports
//! with a throw-away data directory, API keys, a small HTTP client that reports every
//! status, and the check that an external tool is installed.

#![allow(dead_code)]

pub mod backgrounds;
pub mod browser;
pub mod gateway;
pub mod judges;
pub mod sipp;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub base: String,
}

pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config::embedded();
    c.sip.listen = "127.0.0.1:0".parse().unwrap();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.storage.data_dir = data_dir.to_path_buf();
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        adjust(&mut c);
        let server = Server::start(c).await.expect("server starts");
        let base = format!("http://{}", server.http_addr);
        TestServer { server, dir, base }
    }

    pub async fn key(&self, role: Role) -> String {
        auth::create_key(self.server.shared.vault.pool(), role).await.unwrap().1
    }

    pub async fn stop(self) {
        self.server.shutdown(Duration::from_secs(3)).await;
    }
}

/// One HTTP exchange: (status, JSON body or Null). Never fails on 4xx/5xx; a connection
/// that cannot be made is status 0.
pub async fn http(method: &'static str, url: &str, key: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let (status, _, text) = http_raw(method, url, key, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A session for a whole card (pan, expiry, cvv) through the API: its id and transfer URI.
pub async fn create_session(base: &str, key: &str, reference: &str) -> (String, String) {
    create_session_for(base, key, reference, None).await
}

/// As `create_session`, with the agent tonewall dials and bridges while the caller keys.
pub async fn create_session_for(base: &str, key: &str, reference: &str, agent: Option<&str>) -> (String, String) {
    let agent = agent.map_or(String::new(), |uri| format!(r#","agent_uri":"{uri}""#));
    let body = format!(r#"{{"fields":["pan","expiry","cvv"],"reference":"{reference}"{agent}}}"#);
    let (s, v) = http("POST", &format!("{base}/v1/sessions"), Some(key), Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["transfer_uri"].as_str().unwrap().to_string())
}

/// The RFC 4733 packets (payload type 101) of each key in `keys`: 4 updates and 3 ends, with
/// consecutive sequence numbers from 1 and a new event timestamp per key.
pub fn keypad_events(keys: &str, ssrc: u32) -> Vec<Vec<Vec<u8>>> {
    use tonewall::media::telephone_event::{Key, TelephoneEvent};
    let mut seq = 1u16;
    keys.chars()
        .enumerate()
        .map(|(i, c)| {
            let code = Key::from_char(c).expect("a keypad key").event_code();
            (0..7u16)
                .map(|j| {
                    let ev =
                        TelephoneEvent { code, end: j >= 4, volume: 10, duration: (j.min(4) + 1) * 160 }.to_bytes();
                    seq += 1;
                    rtp_rs::RtpPacketBuilder::new()
                        .payload_type(101)
                        .ssrc(ssrc)
                        .sequence(rtp_rs::Seq::from(seq))
                        .timestamp(8000 + i as u32 * 1600)
                        .marked(j == 0)
                        .payload(&ev)
                        .build()
                        .unwrap()
                })
                .collect()
        })
        .collect()
}

/// Keys `keys` to `to` as RFC 4733 events from `ssrc`, 20 ms apart, as the `first` keys sent
/// before on the same stream left off: sequence numbers and event timestamps carry on.
pub async fn send_keys(rtp: &tokio::net::UdpSocket, to: std::net::SocketAddr, keys: &str, first: u32, ssrc: u32) {
    for (i, packets) in keypad_events(keys, ssrc).into_iter().enumerate() {
        for mut p in packets {
            let seq = u16::from_be_bytes([p[2], p[3]]).wrapping_add((first * 7) as u16);
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&(8000 + (first + i as u32) * 1600).to_be_bytes());
            rtp.send_to(&p, to).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails loudly when a tool the test needs is missing, naming how to install it.
pub fn require_tool(cmd: &str, install: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "`{cmd}` is not installed; this test needs it. Install with: {install}");
}

/// Polls a session until it reaches a final state (or the time runs out).
pub async fn wait_final(base: &str, key: &str, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, v) = http("GET", &format!("{base}/v1/sessions/{id}"), Some(key), None).await;
        let state = v["state"].as_str().unwrap_or("");
        if matches!(state, "completed" | "failed" | "cancelled") || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file under `dir`, as bytes (the SQLite database, its WAL and shared-memory files).
/// Every file under `dir` with its bytes. A file that cannot be read fails the test: a scan
/// must not pass by skipping what it could not open.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let p = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {} for the scan: {e}", p.display()));
            out.push((p.display().to_string(), bytes));
        }
    }
    out
}

/// One HTTP exchange as it went over the wire: status, the response's headers as text, and
/// the raw body (not parsed, so a plain-text answer is scanned as sent).
pub async fn http_raw(method: &'static str, url: &str, key: Option<&str>, body: Option<&str>) -> (u16, String, String) {
    let (url, key, body) = (url.to_string(), key.map(str::to_string), body.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = key.map(|k| format!("Bearer {k}"));
        let result = match method {
            "POST" | "PUT" | "PATCH" => {
                let req = match method {
                    "PUT" => agent.put(&url),
                    "PATCH" => agent.patch(&url),
                    _ => agent.post(&url),
                };
                let mut req = req.header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or_default())
            }
            "DELETE" => {
                let mut req = agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let Ok(mut resp) = result else { return (0, String::new(), String::new()) };
        let headers: String =
            resp.headers().iter().map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()))).collect();
        (resp.status().as_u16(), headers, resp.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .unwrap()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `tonewall serve` as its own process (the built binary), for tests that kill it or read its
/// logs. Loopback addresses are picked by the OS; stderr (the log) goes to `log`.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub base: String,
    /// UDP, and TCP on the same port.
    pub sip: std::net::SocketAddr,
    /// With `sip.tls_listen` set.
    pub tls: Option<std::net::SocketAddr>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_tonewall");

/// Writes a config file: the embedded default with `replace` pairs applied.
pub fn write_config(dir: &Path, replace: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sip-config/tonewall.toml")).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "config has no {from}");
        text = text.replace(from, to);
    }
    let path = dir.join("tonewall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs a `tonewall` command to completion: (success, stdout, stderr).
pub fn tonewall(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN).args(args).envs(env.iter().copied()).output().expect("run tonewall");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

impl ServeProcess {
    pub fn start(config: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> ServeProcess {
        Self::start_on(config, data_dir, log, env, "127.0.0.1:0")
    }

    /// `start` with SIP (and RTP) on `sip_listen`, `[::1]:0` for IPv6.
    pub fn start_on(
        config: &Path,
        data_dir: &Path,
        log: &Path,
        env: &[(&str, &str)],
        sip_listen: &str,
    ) -> ServeProcess {
        use std::io::BufRead;
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--sip-listen", sip_listen, "--http-listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn tonewall serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        // "tonewall serving: SIP udp:127.0.0.1:P tcp:127.0.0.1:P [tls:127.0.0.1:T]  HTTP http://127.0.0.1:Q"
        let field = |tag: &str| line.split_whitespace().find_map(|w| w.strip_prefix(tag)).map(str::to_string);
        let (Some(sip), Some(http)) = (field("udp:"), field("http://")) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("serve did not start: {line:?}\n{log}");
        };
        let tls = field("tls:").and_then(|t| t.parse().ok());
        ServeProcess { child, base: format!("http://{http}"), sip: sip.parse().unwrap(), tls }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// A test that ends, or fails, without killing its server does not leave it running.
impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test card as the caller keys it, to check whole after a call.
#[derive(Debug, Clone, Copy)]
pub struct TestCard {
    pub pan: &'static str,
    pub month: u64,
    pub year: u64,
    pub code: &'static str,
}

/// Asserts that the completed session's token detokenizes to exactly `card`: number, expiry
/// and security code (so a code keyed as 321 and stored as 312 fails), through the API as a
/// processor would. Nothing of the card is printed on failure but which part differs.
pub async fn assert_card_whole(t: &TestServer, session: &Value, card: &TestCard, case: &str) {
    assert_card_whole_at(&t.base, &t.key(Role::Processor).await, session, card, case).await;
}

/// [`assert_card_whole`] against any server: `base` URL and a processor key.
pub async fn assert_card_whole_at(base: &str, processor_key: &str, session: &Value, card: &TestCard, case: &str) {
    let stored = detokenize_session(base, processor_key, session, case).await;
    assert_eq!(
        card_differences(&stored, card),
        Vec::<&str>::new(),
        "{case}: the stored card differs from the keyed one"
    );
}

/// The detokenize answer for a completed session's token.
pub async fn detokenize_session(base: &str, processor_key: &str, session: &Value, case: &str) -> Value {
    assert_eq!(session["state"], "completed", "{case}: session not completed: {}", session["state"]);
    let token = session["result"]["token"].as_str().unwrap_or_else(|| panic!("{case}: no token"));
    let body = format!(r#"{{"token":"{token}"}}"#);
    let (s, v) = http("POST", &format!("{base}/v1/detokenize"), Some(processor_key), Some(&body)).await;
    assert_eq!(s, 200, "{case}: detokenize answered {s}");
    v
}

/// Which parts of `card` the detokenize answer `stored` does not hold exactly (names only,
/// never the values).
pub fn card_differences(stored: &Value, card: &TestCard) -> Vec<&'static str> {
    let mut differ = Vec::new();
    if stored["pan"].as_str() != Some(card.pan) {
        differ.push("card number");
    }
    if (stored["expiry_month"].as_u64(), stored["expiry_year"].as_u64()) != (Some(card.month), Some(card.year)) {
        differ.push("expiry");
    }
    if stored["security_code"].as_str() != Some(card.code) {
        differ.push("security code");
    }
    differ
}

/// A Luhn-valid 16-digit Visa test number from a counter.
pub fn visa_pan(n: u64) -> String {
    let body = format!("4{n:014}");
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", tonewall::capture::card::luhn_check_digit(&digits))
}

/// How many `tokenize` audit records each token has, over the whole trail.
pub async fn tokenize_records(pool: &sqlx::AnyPool) -> std::collections::HashMap<String, usize> {
    let mut records = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let page = tonewall::vault::audit::records(pool, after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page.into_iter().filter(|r| r.action == "tokenize") {
            *records.entry(r.resource).or_default() += 1;
        }
    }
    records
}

pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A processor's webhook endpoint on loopback: records every request, answers 500 to the
/// first `fail_first` and 200 after.
pub async fn receiver(listener: tokio::net::TcpListener, fail_first: usize) -> Received {
    let got: Received = std::sync::Arc::default();
    let log = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut l = log.lock().unwrap();
                l.push((headers, body));
                if l.len() <= fail_first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}
