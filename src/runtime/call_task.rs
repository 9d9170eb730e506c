//! The task that owns one `Call` and its two RTP sockets: it feeds the call what arrives
//! (SIP from the endpoint, RTP, commands, timeouts) and carries out what the call asks.
//! No lock is held around the call; other tasks reach it only through its inboxes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::Shared;
use crate::call::{Call, CallEvent, Command, LegId, Output};
use crate::capture::collector::CapturedCard;
use crate::media::rtp::MAX_PACKET;
use crate::session::SessionId;
use crate::sip::message::SipMessage;
use crate::vault::{Actor, Completion};

pub struct CallTask {
    pub call: Call,
    pub session: SessionId,
    pub shared: Arc<Shared>,
    pub caller_sip: SocketAddr,
    pub agent_sip: Option<SocketAddr>,
    pub caller_rtp: UdpSocket,
    pub agent_rtp: UdpSocket,
    pub sip_rx: mpsc::Receiver<(LegId, SipMessage)>,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub cmd_tx: mpsc::Sender<Command>,
}

impl CallTask {
    pub async fn run(mut self) {
        let mut caller_buf = [0u8; MAX_PACKET];
        let mut agent_buf = [0u8; MAX_PACKET];
        loop {
            self.flush();
            if self.call.is_ended() {
                break;
            }
            let deadline = self.call.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                Some((leg, msg)) = self.sip_rx.recv() => self.call.handle_sip(Instant::now(), leg, msg),
                Some(cmd) = self.cmd_rx.recv() => self.call.handle_command(Instant::now(), cmd),
                r = self.caller_rtp.recv_from(&mut caller_buf) => {
                    if let Ok((n, _)) = r {
                        self.call.handle_rtp(Instant::now(), LegId::Caller, &caller_buf[..n]);
                    }
                }
                r = self.agent_rtp.recv_from(&mut agent_buf) => {
                    if let Ok((n, _)) = r {
                        self.call.handle_rtp(Instant::now(), LegId::Agent, &agent_buf[..n]);
                    }
                }
                _ = sleep_until(deadline) => self.call.handle_timeout(Instant::now()),
            }
        }
        // The security code lives no longer than its call (PCI DSS 3.3.1).
        if let Some(result) = self.shared.sessions.view(&self.session).and_then(|v| v.result) {
            self.shared.vault.drop_security_code(&result.token);
        }
        self.shared.unroute(&[self.call.caller_call_id(), self.call.agent_call_id()]);
        let stats = self.call.media_stats();
        tracing::info!(
            session = self.session.as_str(),
            caller_packets = stats.caller_packets,
            agent_packets = stats.agent_packets,
            masked_frames = stats.masked_frames,
            "call ended"
        );
    }

    fn flush(&mut self) {
        while let Some(out) = self.call.poll_output() {
            match out {
                Output::Sip { leg, bytes } => {
                    let to = match leg {
                        LegId::Caller => Some(self.caller_sip),
                        LegId::Agent => self.agent_sip,
                    };
                    if let Some(to) = to {
                        self.shared.send_sip(&bytes, to);
                    }
                }
                Output::Event(e) => {
                    if let CallEvent::AgentUnavailable { status } = e {
                        tracing::warn!(session = self.session.as_str(), status, "agent leg failed");
                    }
                    self.shared.sessions.apply(&self.session, &e);
                    if let CallEvent::CardCaptured(card) = e {
                        self.tokenize(*card);
                    }
                }
            }
        }
        while let Some(p) = self.call.poll_packet() {
            let sock = match p.leg {
                LegId::Caller => &self.caller_rtp,
                LegId::Agent => &self.agent_rtp,
            };
            // RTP is loss-tolerant: a full socket buffer drops this packet, never blocks the call.
            let _ = sock.try_send_to(&p.buf[..p.len], p.to);
        }
    }

    /// Tokenizes off the call's task (the core never waits on the vault) and reports back.
    fn tokenize(&self, card: CapturedCard) {
        let shared = self.shared.clone();
        let session = self.session.clone();
        let cmd = self.cmd_tx.clone();
        let origin = format!("sip:{}", self.caller_sip);
        tokio::spawn(async move {
            let reference = shared.sessions.view(&session).map(|v| v.reference).unwrap_or_default();
            let actor_id = format!("call:{}", session.as_str());
            let actor = Actor { id: &actor_id, role: "call", origin: &origin };
            let completion = Completion { session_id: session.as_str(), reference: &reference };
            let ok = match shared.vault.tokenize(card, actor, "default", Some(completion), Instant::now()).await {
                Ok(rec) => {
                    tracing::info!(session = session.as_str(), brand = rec.brand.as_str(), "card tokenized");
                    shared.sessions.complete(&session, rec);
                    true
                }
                Err(e) => {
                    tracing::error!(session = session.as_str(), error = %e, "tokenization failed");
                    false
                }
            };
            // The call may have ended meanwhile; then there is nobody left to tell.
            let _ = cmd.send(Command::Tokenized { ok }).await;
        });
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
