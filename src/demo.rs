//! `tonewall demo`: one whole payment call on this machine. It starts tonewall on free
//! loopback ports, creates a session through the HTTP API as an agent desktop would, watches
//! the session's WebSocket, lets a softphone agent answer tonewall's call and a softphone
//! caller key a test card by RFC 4733, then prints what each party saw and checks it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;
use tonewall_testkit::agent::{Agent, AgentReport};
use tonewall_testkit::caller::{self, CallerOptions};
use tonewall_testkit::desktop;

/// The Visa test card of the payment networks' documentation, expiry 12/30, code 123.
const KEYPAD: &str = "4111111111111111#,1230,123";

pub(crate) struct DemoOutcome {
    pub session: Value,
    pub agent: AgentReport,
    pub wav: PathBuf,
}

pub async fn run(data_dir: &Path) -> anyhow::Result<DemoOutcome> {
    let mut config = Config::embedded();
    config.sip.listen = "127.0.0.1:0".parse()?;
    config.http.listen = "127.0.0.1:0".parse()?;
    config.storage.data_dir = data_dir.to_path_buf();
    let server = Server::start(config).await.context("starting tonewall")?;
    let outcome = drive(&server, data_dir).await;
    server.shutdown(Duration::from_secs(3)).await;
    outcome
}

async fn drive(server: &Server, data_dir: &Path) -> anyhow::Result<DemoOutcome> {
    let (_, key) = auth::create_key(server.shared.vault.pool(), Role::Agent).await?;
    let agent = Agent::start().await?;
    let base = format!("http://{}", server.http_addr);
    println!("tonewall   SIP udp:{}  HTTP {}", server.sip_addr, base);
    println!("agent      softphone at {}", agent.uri);

    let body = json!({"fields": ["pan", "expiry", "cvv"], "reference": "demo-order-1", "agent_uri": agent.uri});
    let created = desktop::create_session(&base, &key, body).await?;
    let id = created["id"].as_str().context("session id")?.to_string();
    let transfer_uri = created["transfer_uri"].as_str().context("transfer uri")?.to_string();
    println!("desktop    POST /v1/sessions -> {} ({})", created["state"], transfer_uri);

    let mut ws_req = format!("ws://{}/v1/sessions/{id}/events", server.http_addr).into_client_request()?;
    ws_req.headers_mut().insert("Authorization", format!("Bearer {key}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_req).await.context("WebSocket")?;
    let watcher = tokio::spawn(async move {
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            let Ok(text) = msg.into_text() else { break };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
            if let Some(line) = desktop_line(&v) {
                println!("desktop    {line}");
            }
            if v["event"] == "call_ended" {
                break;
            }
        }
    });

    println!("caller     dialling {transfer_uri}, keying the card by RFC 4733");
    let report = caller::place_call(CallerOptions::new(server.sip_addr, &transfer_uri, KEYPAD)).await?;
    println!(
        "caller     answered={} keys sent={} packets heard={} (prompts and the agent's voice)",
        report.answered, report.keys_sent, report.packets_heard
    );
    // The desktop's lines are printed as they come; waiting here lets the last one out.
    let _ = watcher.await;
    let session = desktop::session(&base, &key, &id).await?;
    let agent = agent.finish().await?;
    let wav = data_dir.join("agent-heard.wav");
    agent.write_wav(&wav).context("writing the agent's recording")?;
    Ok(DemoOutcome { session, agent, wav })
}

/// What the agent desktop shows for one WebSocket update.
fn desktop_line(v: &Value) -> Option<String> {
    let s = &v["session"];
    let field = |name: &str| s["fields"].as_array()?.iter().find(|f| f["name"] == name).cloned();
    match v["event"].as_str()? {
        "snapshot" => Some(format!("watching session: {}", s["state"])),
        "call_started" => Some("caller connected, capture started".into()),
        "agent_connected" => Some("agent leg connected (bridged, tones masked)".into()),
        "field_done" => {
            let done: Vec<String> = s["fields"]
                .as_array()?
                .iter()
                .filter(|f| f["state"] == "done")
                .map(|f| format!("{} {} ✓", f["name"].as_str().unwrap_or(""), f["masked"].as_str().unwrap_or("")))
                .collect();
            Some(done.join("  |  "))
        }
        "field_rejected" => Some(format!("field rejected: {}", s["error"])),
        "tokenizing" => Some("card captured, tokenizing".into()),
        "completed" => {
            let r = &s["result"];
            let pan = field("pan").map(|f| f["masked"].as_str().unwrap_or("").to_string()).unwrap_or_default();
            Some(format!(
                "completed: {pan} {} exp {}/{} token {}",
                r["brand"].as_str().unwrap_or(""),
                r["expiry_month"],
                r["expiry_year"],
                r["token"].as_str().unwrap_or("")
            ))
        }
        "failed" => Some(format!("failed: {}", s["error"])),
        "call_ended" => Some("call ended".into()),
        _ => None,
    }
}

/// Checks what a newcomer should see; every failure is named.
pub fn verify(o: &DemoOutcome) -> anyhow::Result<()> {
    let s = &o.session;
    let mut problems = Vec::new();
    if s["state"] != "completed" {
        problems.push(format!("session state is {} (error: {})", s["state"], s["error"]));
    }
    if s["result"]["brand"] != "visa" || s["result"]["last4"] != "1111" {
        problems.push(format!("result is {}", s["result"]));
    }
    if !o.agent.answered {
        problems.push("the agent was never called".into());
    }
    if o.agent.non_audio_packets != 0 {
        problems.push(format!("the agent received {} non-audio (telephone-event) packets", o.agent.non_audio_packets));
    }
    if o.agent.sequence_gaps != 0 || o.agent.timestamp_jumps != 0 {
        problems.push(format!(
            "agent stream had {} sequence gaps, {} timestamp jumps",
            o.agent.sequence_gaps, o.agent.timestamp_jumps
        ));
    }
    if problems.is_empty() { Ok(()) } else { bail!("demo failed:\n  {}", problems.join("\n  ")) }
}
