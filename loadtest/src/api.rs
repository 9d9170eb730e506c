//! tonewall's HTTP API as the agent desktop uses it: one payment session per call, read
//! back at the end. One pooled HTTP/1.1 client (keep-alive) serves every call; requests run
//! on tokio's blocking pool.
//!
//! Given several nodes of a cluster, sessions are made on each in turn and read back, and
//! cards detokenized, through whichever answers first.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::script::Card;

#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    bases: Arc<[String]>,
    auth: Arc<str>,
    processor_auth: Arc<str>,
}

/// A created session: its id and the URI the caller is transferred to.
pub struct Session {
    pub id: String,
    pub transfer_uri: String,
}

impl Api {
    /// `key` is the agent's; `processor_key` reads cards back whole at the end.
    pub fn new(bases: &[String], key: &str, processor_key: &str) -> Api {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .max_idle_connections_per_host(64)
            .build();
        Api {
            agent: config.into(),
            bases: bases.iter().map(|b| b.trim_end_matches('/').to_string()).collect(),
            auth: format!("Bearer {key}").into(),
            processor_auth: format!("Bearer {processor_key}").into(),
        }
    }

    /// `POST /v1/sessions` for a card, with the agent the call is bridged to; on the nodes in
    /// turn (`n` is the call's number).
    pub async fn create_session(&self, n: u32, agent_uri: String, reference: String) -> anyhow::Result<Session> {
        let api = self.clone();
        let body = json!({"fields": ["pan", "expiry", "cvv"], "reference": reference, "agent_uri": agent_uri});
        // A node that is down or draining: the next one (as a load balancer would).
        let first = n as usize % self.bases.len();
        let v = tokio::task::spawn_blocking(move || {
            api.on_nodes(first, |base| api.request_at(base, &api.auth, "POST", "/v1/sessions", Some(body.clone())))
        })
        .await??;
        Ok(Session {
            id: v["id"].as_str().context("session without id")?.to_string(),
            transfer_uri: v["transfer_uri"].as_str().context("session without transfer_uri")?.to_string(),
        })
    }

    /// `GET /v1/sessions/{id}`, from the first node that answers.
    pub async fn session(&self, id: &str) -> anyhow::Result<Value> {
        let api = self.clone();
        let path = format!("/v1/sessions/{id}");
        tokio::task::spawn_blocking(move || api.on_nodes(0, |base| api.request_at(base, &api.auth, "GET", &path, None)))
            .await?
    }

    /// `POST /v1/detokenize` as a processor, on the first node that answers: the card the
    /// vault holds for `token`, with the security code (which that node fetches from the
    /// node that captured the card, if another did).
    pub async fn detokenize(&self, token: String) -> anyhow::Result<Card> {
        let api = self.clone();
        let body = json!({ "token": token });
        let v = tokio::task::spawn_blocking(move || {
            api.on_nodes(0, |base| {
                api.request_at(base, &api.processor_auth, "POST", "/v1/detokenize", Some(body.clone()))
            })
        })
        .await??;
        let text = |k: &str| v[k].as_str().map(str::to_string).with_context(|| format!("detokenize without {k}"));
        let number = |k: &str| v[k].as_u64().with_context(|| format!("detokenize without {k}"));
        Ok(Card {
            pan: text("pan")?,
            expiry_month: number("expiry_month")?,
            expiry_year: number("expiry_year")?,
            security_code: text("security_code")?,
        })
    }

    /// `f` on each node from `first` on, until one answers; the last error if none does.
    fn on_nodes<T>(&self, first: usize, mut f: impl FnMut(usize) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut last = anyhow::anyhow!("no API given");
        for i in 0..self.bases.len() {
            match f((first + i) % self.bases.len()) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn request_at(
        &self,
        base: usize,
        auth: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.bases[base]);
        let resp = match body {
            Some(b) => self.agent.post(&url).header("Authorization", auth).send_json(b),
            None => self.agent.get(&url).header("Authorization", auth).call(),
        };
        let mut resp = resp.with_context(|| format!("{method} {path}"))?;
        Ok(resp.body_mut().read_json::<Value>()?)
    }
}
