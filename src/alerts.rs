//! Security events for the people on call (PCI DSS 10.4.1.1 automated log review, 10.7.2
//! failures of critical security controls, 12.10.5 alerts from security monitoring): bulk
//! detokenization, an audit record that could not be written, tampering found, a flood of
//! failed authentication, an account locked out, a lockdown started or lifted, and the audit
//! chain's signed checkpoints. Each is one JSON object per line in `alerts.log_file` (mode
//! 0600), which a SIEM ingests, and every event but the routine checkpoint is also POSTed to
//! `alerts.webhook_url`, signed like the processor webhook (`Tonewall-Signature: t=…,v1=…`),
//! from a bounded queue with a few retries. Events carry ids, counts and reasons, never card
//! data or credentials.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::vault::crypto::SecretKey;

/// What happened, with what an on-call person needs to act on it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SecurityEvent {
    /// One API key detokenized more than `vault.bulk_alarm_per_hour` cards in an hour.
    BulkDetokenize {
        key_id: String,
        per_hour: u32,
    },
    /// An audit record could not be written (whatever it described was refused, or happened
    /// unaudited where it could not be refused).
    AuditWriteFailed {
        action: String,
        error: String,
    },
    /// `audit verify` found the trail changed, cut or forged.
    TamperFound {
        findings: Vec<String>,
    },
    /// One source failed authentication often enough to be refused for the rest of a minute.
    AuthFlood {
        origin: String,
        failures: u32,
    },
    /// A person's account locked after too many failed sign-ins.
    Lockout {
        username: String,
    },
    LockdownStarted {
        by: String,
        reason: String,
        revoked_role: Option<String>,
    },
    LockdownLifted {
        by: String,
    },
    /// The audit chain's head as signed outside the database (`crate::vault::anchor`).
    AuditCheckpoint {
        seq: i64,
        mac: String,
        sig: String,
    },
}

impl SecurityEvent {
    fn severity(&self) -> &'static str {
        match self {
            SecurityEvent::AuditCheckpoint { .. } => "info",
            SecurityEvent::LockdownLifted { .. } | SecurityEvent::Lockout { .. } => "warning",
            SecurityEvent::AuthFlood { .. } => "warning",
            _ => "critical",
        }
    }

    /// Worth waking someone: everything but the routine checkpoint.
    fn pages(&self) -> bool {
        !matches!(self, SecurityEvent::AuditCheckpoint { .. })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    at: String,
    at_ms: i64,
    service: &'static str,
    pid: u32,
    severity: &'static str,
    #[serde(flatten)]
    event: &'a SecurityEvent,
}

/// Where security events go.
pub struct Alerts {
    log_path: PathBuf,
    log: Mutex<Option<std::fs::File>>,
    webhook: Option<mpsc::Sender<String>>,
    /// Events queued for the webhook and not yet delivered or given up.
    pending: Arc<AtomicUsize>,
}

/// Events waiting for the webhook at most; beyond it they are only in the log.
const QUEUE: usize = 1024;
/// Tries per event: at once, then after 1, 2 and 4 seconds.
const ATTEMPTS: u32 = 4;

impl Alerts {
    /// `webhook`: URL and signing secret. The delivery task needs a tokio runtime.
    pub fn new(log_path: PathBuf, webhook: Option<(String, SecretKey)>) -> Alerts {
        let pending = Arc::new(AtomicUsize::new(0));
        let webhook = webhook.map(|(url, secret)| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(url, secret, rx, pending.clone()));
            tx
        });
        Alerts { log_path, log: Mutex::new(None), webhook, pending }
    }

    /// Records the event: the security log at once, the webhook from its queue.
    pub fn raise(&self, event: SecurityEvent) {
        let at_ms = crate::vault::audit::now_ms();
        let line = Line {
            at: rfc3339(at_ms),
            at_ms,
            service: "tonewall",
            pid: std::process::id(),
            severity: event.severity(),
            event: &event,
        };
        // Invariant: strings and numbers always serialize.
        let json = serde_json::to_string(&line).expect("serializable");
        tracing::warn!(target: "security", "{json}");
        if let Err(e) = self.append(&json) {
            tracing::error!(error = %e, path = %self.log_path.display(), "security log not written");
        }
        if let Some(tx) = self.webhook.as_ref().filter(|_| event.pages()) {
            self.pending.fetch_add(1, Ordering::SeqCst);
            if tx.try_send(json).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("alert queue full: event only in the security log");
            }
        }
    }

    fn append(&self, json: &str) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.is_none() {
            *log = Some(std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.log_path)?);
        }
        // Invariant: set just above.
        let file = log.as_mut().expect("open");
        file.write_all(format!("{json}\n").as_bytes())
    }

    /// Waits until queued webhook events are delivered or given up, at most `within` (a
    /// command that raised one should not exit before it is sent).
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn deliver(url: String, secret: SecretKey, mut rx: mpsc::Receiver<String>, pending: Arc<AtomicUsize>) {
    while let Some(body) = rx.recv().await {
        let id = uuid::Uuid::new_v4().to_string();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let sig = crate::vault::webhook::signature(&secret, crate::vault::unix_now(), &body);
            match crate::vault::webhook::post(url.clone(), body.clone(), sig, id.clone()).await {
                Ok(()) => break,
                Err(why) if attempt + 1 == ATTEMPTS => {
                    tracing::error!(error = %why, "alert webhook given up: the event is in the security log")
                }
                Err(why) => tracing::warn!(error = %why, "alert webhook failed; retrying"),
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = crate::calendar::civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", r / 3600, r % 3600 / 60, r % 60, ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_event_is_one_json_line_with_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security.jsonl");
        let alerts = Alerts::new(path.clone(), None);
        alerts.raise(SecurityEvent::AuthFlood { origin: "192.0.2.7".into(), failures: 31 });
        alerts.raise(SecurityEvent::LockdownLifted { by: "k9".into() });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (&lines[0]["event"], &lines[0]["origin"], &lines[0]["failures"], &lines[0]["severity"]),
            (&"auth_flood".into(), &"192.0.2.7".into(), &31.into(), &"warning".into())
        );
        assert_eq!(lines[1]["event"], "lockdown_lifted");
        assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }
}
