//! rtpengine driven over its ng control protocol (bencoded dictionaries over UDP, each
//! message prefixed by a cookie that its reply repeats), so the same media load runs through
//! rtpengine for a side-by-side comparison: `offer` with the caller's SDP, `answer` with the
//! agent's, optionally `block DTMF` (masking), and `delete` at the end.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_bencode::value::Value;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tonewall::media::g711::Codec;
use tonewall::sip::sdp::{self, RemoteDescription};

use crate::script::EVENT_PT;

/// How rtpengine treats DTMF in the comparison.
#[derive(Debug, Clone, Copy)]
pub enum Masking {
    /// Plain relaying.
    Off,
    /// `block DTMF` with in-band detection, tones replaced by silence, and the delay buffer
    /// (ms) that lets it replace a tone from its onset.
    On { delay_ms: i64 },
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<HashMap<Vec<u8>, Value>>>>>;

#[derive(Clone)]
pub struct Ng {
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    waiters: Waiters,
    masking: Masking,
}

impl Ng {
    pub async fn connect(to: SocketAddr, masking: Masking) -> anyhow::Result<Ng> {
        let sock = Arc::new(UdpSocket::bind(if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }).await?);
        let waiters: Waiters = Arc::default();
        let (rx_sock, rx_waiters) = (sock.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                // An error here (an ICMP error reported late) concerns no one request.
                let Ok((n, _)) = rx_sock.recv_from(&mut buf).await else { continue };
                let Some(space) = buf[..n].iter().position(|b| *b == b' ') else { continue };
                let cookie = String::from_utf8_lossy(&buf[..space]).to_string();
                let Ok(Value::Dict(d)) = serde_bencode::from_bytes::<Value>(&buf[space + 1..n]) else { continue };
                let waiter = rx_waiters.lock().ok().and_then(|mut w| w.remove(&cookie));
                if let Some(w) = waiter {
                    let _ = w.send(d);
                }
            }
        });
        let ng = Ng { sock, to, waiters, masking };
        ng.request("ping", &[]).await.with_context(|| format!("rtpengine does not answer ng ping on {to}"))?;
        Ok(ng)
    }

    async fn request(&self, command: &str, args: &[(&str, Value)]) -> anyhow::Result<HashMap<Vec<u8>, Value>> {
        let mut d: HashMap<Vec<u8>, Value> = args.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect();
        d.insert(b"command".to_vec(), text(command));
        let cookie = format!("{:x}", rand::random::<u64>());
        let mut msg = format!("{cookie} ").into_bytes();
        msg.extend(serde_bencode::to_bytes(&Value::Dict(d))?);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(cookie.clone(), tx);
        }
        let mut rx = rx;
        for _ in 0..4 {
            self.sock.send_to(&msg, self.to).await?;
            match tokio::time::timeout(Duration::from_millis(1000), &mut rx).await {
                Ok(Ok(reply)) => {
                    let result = string(&reply, "result").unwrap_or_default();
                    if result == "error" {
                        bail!("rtpengine {command}: {}", string(&reply, "error-reason").unwrap_or_default());
                    }
                    return Ok(reply);
                }
                Ok(Err(_)) => break,
                Err(_) => continue, // Retransmit: rtpengine answers a repeated cookie from its cache.
            }
        }
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&cookie);
        }
        bail!("rtpengine {command}: no answer")
    }

    /// Sets up call `id` between the caller's and the agent's media addresses; returns
    /// rtpengine's addresses for them: where the caller sends, where the agent sends.
    pub async fn setup(
        &self,
        id: u32,
        caller_rtp: SocketAddrV4,
        agent_rtp: SocketAddrV4,
    ) -> anyhow::Result<(SocketAddrV4, SocketAddrV4)> {
        let call = format!("load-{id}");
        let offer = sdp::write(SocketAddr::V4(caller_rtp), u64::from(id), &[Codec::Pcmu], Some(EVENT_PT));
        let answer = sdp::write(SocketAddr::V4(agent_rtp), u64::from(id), &[Codec::Pcmu], Some(EVENT_PT));
        let mut common = vec![("call-id", text(&call)), ("from-tag", text("caller")), ("replace", list(&["origin"]))];
        if let Masking::On { delay_ms } = self.masking {
            common.push(("delay-buffer", Value::Int(delay_ms)));
        }
        let mut offer_args = common.clone();
        offer_args.push(("sdp", text(&offer)));
        let toward_agent = media_address(&self.request("offer", &offer_args).await?)?;
        let mut answer_args = common.clone();
        answer_args.extend([("to-tag", text("agent")), ("sdp", text(&answer))]);
        let toward_caller = media_address(&self.request("answer", &answer_args).await?)?;
        if let Masking::On { delay_ms } = self.masking {
            // The caller's side (its from-tag) is the one whose DTMF is blocked; in-band
            // detection must be among this command's own flags.
            self.request(
                "block DTMF",
                &[
                    ("call-id", text(&call)),
                    ("from-tag", text("caller")),
                    ("DTMF-security", text("silence")),
                    ("delay-buffer", Value::Int(delay_ms)),
                    ("flags", list(&["detect DTMF"])),
                ],
            )
            .await?;
        }
        // The caller sends to the address in the answer rtpengine rewrote for it; the
        // agent to the one in the rewritten offer.
        Ok((toward_caller, toward_agent))
    }

    pub async fn delete(&self, id: u32) -> anyhow::Result<()> {
        self.request("delete", &[("call-id", text(&format!("load-{id}")))]).await.map(|_| ())
    }
}

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| text(s)).collect())
}

fn string(d: &HashMap<Vec<u8>, Value>, key: &str) -> Option<String> {
    match d.get(key.as_bytes()) {
        Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).to_string()),
        _ => None,
    }
}

/// The IPv4 media address in a reply's rewritten SDP.
fn media_address(reply: &HashMap<Vec<u8>, Value>) -> anyhow::Result<SocketAddrV4> {
    let body = string(reply, "sdp").context("reply without sdp")?;
    match RemoteDescription::parse(body.as_bytes()).map(|d| d.negotiate().remote) {
        Ok(SocketAddr::V4(a)) => Ok(a),
        other => bail!("rtpengine's SDP has no IPv4 media address: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bencoded_dictionaries() {
        let d: HashMap<Vec<u8>, Value> = [(b"command".to_vec(), text("ping"))].into_iter().collect();
        assert_eq!(serde_bencode::to_bytes(&Value::Dict(d)).unwrap(), b"d7:command4:pinge");
        let Value::Dict(reply) = serde_bencode::from_bytes::<Value>(b"d6:result4:ponge").unwrap() else {
            panic!("a dictionary")
        };
        assert_eq!(string(&reply, "result").as_deref(), Some("pong"));
    }
}
