//! Headless Chromium (Debian `chromium`) driven over the DevTools protocol with the
//! project's own WebSocket client: the tests load tonewall's pages in a real browser, act in
//! them through the page's JavaScript, read what a person would see and keep screenshots.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: std::process::Child,
    socket: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
    /// Every URL the page requested (documents, fetches, WebSockets, media), in order.
    pub requested: Vec<String>,
}

impl Browser {
    /// Starts Chromium on `url` with a 360 px wide viewport (the width of the iframes agent
    /// desktops are embedded in).
    pub async fn open(url: &str) -> Browser {
        Self::open_with(url, &[]).await
    }

    /// `open` with more Chromium flags (`--ignore-certificate-errors` for the tests'
    /// self-signed HTTPS servers).
    pub async fn open_with(url: &str, flags: &[&str]) -> Browser {
        super::require_tool("chromium", "apt-get install -y chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(ws.to_string());
                }
            }
        });
        let browser_ws = rx.recv_timeout(Duration::from_secs(30)).expect("chromium's DevTools address");
        let port = browser_ws.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_string();
        let list = format!("http://127.0.0.1:{port}/json/list");
        let page_ws = tokio::task::spawn_blocking(move || {
            for _ in 0..50 {
                if let Ok(mut r) = ureq::get(&list).call() {
                    let targets: Value = r.body_mut().read_json().unwrap();
                    if let Some(t) = targets.as_array().unwrap().iter().find(|t| t["type"] == "page") {
                        return t["webSocketDebuggerUrl"].as_str().unwrap().to_string();
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("chromium opened no page");
        })
        .await
        .unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(page_ws).await.expect("DevTools socket");
        let mut b = Browser { child, socket, next_id: 1, _profile: profile, requested: Vec::new() };
        b.call("Network.enable", json!({})).await;
        // Headless windows are at least 500 px wide: the viewport is narrowed by emulation.
        b.resize(360, 900).await;
        b
    }

    /// Sets the viewport to `width` × `height` CSS pixels.
    pub async fn resize(&mut self, width: u32, height: u32) {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call("Emulation.setDeviceMetricsOverride", metrics).await;
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let v = self.reply(method, params).await;
        assert!(v["error"].is_null(), "{method}: {v}");
        v["result"].clone()
    }

    /// DevTools' whole reply to `method`: its `result`, or its `error`.
    async fn reply(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::Text(msg.into())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.socket.next()).await.expect("DevTools reply");
            let Some(Ok(Message::Text(text))) = m else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["method"].as_str() {
                Some("Network.requestWillBeSent") => self.requested.push(v["params"]["request"]["url"].to_string()),
                Some("Network.webSocketCreated") => self.requested.push(v["params"]["url"].to_string()),
                _ => {}
            }
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": js, "awaitPromise": true, "returnByValue": true }))
            .await;
        assert!(r["exceptionDetails"].is_null(), "{js}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// `eval`, where a page navigating away under the evaluation ("Inspected target navigated
    /// or closed") is no answer yet: null.
    async fn eval_while_loading(&mut self, js: &str) -> Value {
        let params = json!({ "expression": js, "awaitPromise": true, "returnByValue": true });
        let r = self.reply("Runtime.evaluate", params).await;
        if !r["error"].is_null() {
            return Value::Null;
        }
        r["result"]["result"]["value"].clone()
    }

    /// Waits until `js` is truthy (an exception, as while the page loads, counts as not
    /// yet); returns its value.
    pub async fn wait_for(&mut self, js: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        let guarded = format!("(() => {{ try {{ return ({js}); }} catch (e) {{ return null; }} }})()");
        loop {
            let v = self.eval_while_loading(&guarded).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            let page = self.eval_while_loading("document.body ? document.body.innerText : ''").await;
            assert!(tokio::time::Instant::now() < deadline, "waited for {js}; the page shows:\n{page}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page, kept as a test artifact.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
