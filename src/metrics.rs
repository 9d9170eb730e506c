//! Prometheus metrics for `GET /metrics`, in the text exposition format 0.0.4 as encoded by
//! `prometheus-client`. Counters and histograms live with what they count (a call's task
//! adds its media counts as they grow, the vault times its own operations) and are
//! registered by reference at each scrape; what is a state rather than an event (calls up,
//! sessions by state, the endpoint's refusals, the webhook queue, draining) is read from
//! its owner at each scrape, so no copy of it can drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::call::CaptureFailure;
use crate::call::media::BridgeStats;

/// The `Content-Type` of what `encode` writes.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureResult {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dropped {
    pub leg: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Version {
    pub version: &'static str,
}

/// How a new call's set-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Answered,
    /// No such session, or one that already had its call (404).
    SessionNotFound,
    /// The inline route's target could not be reached (503).
    TargetUnreachable,
    /// A lockdown stops new captures (503).
    Lockdown,
    /// The lockdown state could not be read (503).
    VaultUnavailable,
    /// The RTP port range is used up (503).
    NoRtpPorts,
    /// The caller's offer had nothing we take (488).
    OfferRefused,
}

impl Setup {
    const ALL: [Setup; 7] = [
        Setup::Answered,
        Setup::SessionNotFound,
        Setup::TargetUnreachable,
        Setup::Lockdown,
        Setup::VaultUnavailable,
        Setup::NoRtpPorts,
        Setup::OfferRefused,
    ];

    fn code(self) -> &'static str {
        match self {
            Setup::Answered => "answered",
            Setup::SessionNotFound => "session_not_found",
            Setup::TargetUnreachable => "target_unreachable",
            Setup::Lockdown => "lockdown",
            Setup::VaultUnavailable => "vault_unavailable",
            Setup::NoRtpPorts => "no_rtp_ports",
            Setup::OfferRefused => "offer_refused",
        }
    }
}

/// How a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Completed,
    Failed(CaptureFailure),
    Cancelled,
    /// Failed by this node because the node holding the call was lost (`runtime::cluster`).
    NodeLost,
}

/// What calls count as they happen; each call's task adds to it.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    setups: Family<Result, Counter>,
    captures: Family<CaptureResult, Counter>,
    keys: Family<Source, Counter>,
    masked_frames: Counter,
    rtp_dropped: Family<Dropped, Counter>,
}

impl Default for CallMetrics {
    /// Every series an alert would watch exists from the start, at 0, so that `rate()` and
    /// `absent()` work before the first event.
    fn default() -> CallMetrics {
        let m = CallMetrics {
            setups: Family::default(),
            captures: Family::default(),
            keys: Family::default(),
            masked_frames: Counter::default(),
            rtp_dropped: Family::default(),
        };
        for setup in Setup::ALL {
            m.setups.get_or_create_owned(&Result { result: setup.code() });
        }
        for result in ["completed", "cancelled"] {
            m.captures.get_or_create_owned(&CaptureResult { result, reason: "" });
        }
        for source in KEY_SOURCES {
            m.keys.get_or_create_owned(&Source { source });
        }
        for (leg, reason) in DROP_REASONS {
            m.rtp_dropped.get_or_create_owned(&Dropped { leg, reason });
        }
        m
    }
}

const KEY_SOURCES: [&str; 3] = ["rfc4733", "sip_info", "in_band"];

const DROP_REASONS: [(&str, &str); 6] = [
    ("caller", "wrong_address"),
    ("caller", "wrong_ssrc"),
    ("agent", "wrong_address"),
    ("agent", "wrong_ssrc"),
    ("any", "srtp_rejected"),
    ("any", "malformed"),
];

impl CallMetrics {
    pub fn setup(&self, result: Setup) {
        self.setups.get_or_create(&Result { result: result.code() }).inc();
    }

    pub fn capture(&self, how: Capture) {
        let labels = match how {
            Capture::Completed => CaptureResult { result: "completed", reason: "" },
            Capture::Failed(why) => CaptureResult { result: "failed", reason: why.code() },
            Capture::Cancelled => CaptureResult { result: "cancelled", reason: "" },
            Capture::NodeLost => CaptureResult { result: "failed", reason: "node_lost" },
        };
        self.captures.get_or_create(&labels).inc();
    }

    /// Adds what one call's media counters grew by since `before`.
    pub fn media(&self, before: &BridgeStats, now: &BridgeStats) {
        let add = |c: &Counter, was: u64, is: u64| {
            if is > was {
                c.inc_by(is - was);
            }
        };
        let keys = |s: &BridgeStats| [s.keys.rfc4733, s.keys.info, s.keys.in_band];
        for ((source, was), is) in KEY_SOURCES.into_iter().zip(keys(before)).zip(keys(now)) {
            add(&self.keys.get_or_create_owned(&Source { source }), was, is);
        }
        add(&self.masked_frames, before.masked_frames, now.masked_frames);
        let dropped = |s: &BridgeStats| {
            let (c, a) = (s.caller_refused, s.agent_refused);
            [c.address, c.ssrc, a.address, a.ssrc, s.srtp_rejected, s.dropped_packets]
        };
        for (((leg, reason), was), is) in DROP_REASONS.into_iter().zip(dropped(before)).zip(dropped(now)) {
            add(&self.rtp_dropped.get_or_create_owned(&Dropped { leg, reason }), was, is);
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register("call_setups", "New calls by how their set-up ended", self.setups.clone());
        r.register("captures", "Captures by how they ended (reason for failures)", self.captures.clone());
        r.register("keys", "Keys the callers pressed, by how they arrived", self.keys.clone());
        r.register("masked_frames", "20 ms frames of caller audio masked toward the agent", self.masked_frames.clone());
        r.register("rtp_dropped", "RTP packets dropped unread, by leg and reason", self.rtp_dropped.clone());
    }
}

/// The vault's operation latencies and audit write failures; the vault owns and feeds it.
#[derive(Debug, Clone)]
pub struct VaultMetrics {
    latency: Family<Operation, Histogram>,
    audit_failures: Counter,
}

impl Default for VaultMetrics {
    fn default() -> VaultMetrics {
        // 0.5 ms to about 4 s: an fsync on a laptop disk to a stalled PostgreSQL.
        let buckets = || Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        VaultMetrics { latency: Family::new_with_constructor(buckets), audit_failures: Counter::default() }
    }
}

impl VaultMetrics {
    /// Records `op`'s duration when the returned guard drops, on every path out.
    pub fn time(&self, op: &'static str) -> Timed<'_> {
        Timed { metrics: self, op, started: std::time::Instant::now() }
    }

    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "vault_operation",
            "Vault operations (tokenize, detokenize, audit append), successful or not",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register("audit_write_failures", "Audit records that could not be written", self.audit_failures.clone());
    }
}

/// See `VaultMetrics::time`.
pub struct Timed<'a> {
    metrics: &'a VaultMetrics,
    op: &'static str,
    started: std::time::Instant,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.latency.get_or_create(&Operation { op: self.op }).observe(seconds);
    }
}

/// What a scrape reads from the owners of each state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub draining: bool,
    pub active_calls: usize,
    pub sessions: Vec<(&'static str, usize)>,
    pub refused: crate::endpoint::Refusals,
    pub webhook_queue: usize,
    /// Age of the oldest webhook not yet delivered nor given up on.
    pub webhook_oldest_s: i64,
}

/// The whole exposition: the counters by reference, the snapshot's states as gauges.
pub fn encode(calls: &CallMetrics, vault: &VaultMetrics, s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("tonewall");
    calls.register(&mut r);
    vault.register(&mut r);
    let info: Family<Version, Gauge> = Family::default();
    info.get_or_create(&Version { version: env!("CARGO_PKG_VERSION") }).set(1);
    r.register("build_info", "The running version", info);
    let state: Family<State, Gauge> = Family::default();
    state.get_or_create(&State { state: "serving" }).set(i64::from(!s.draining));
    state.get_or_create(&State { state: "draining" }).set(i64::from(s.draining));
    r.register("node_state", "1 for the node's state: serving, or draining (refusing new calls)", state);
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    r.register("calls_active", "Calls up on this node", gauge(s.active_calls));
    let sessions: Family<State, Gauge> = Family::default();
    for state in crate::session::SessionState::ALL {
        sessions.get_or_create_owned(&State { state: state.as_str() });
    }
    for (state, n) in &s.sessions {
        sessions.get_or_create(&State { state }).set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    r.register("sessions", "Sessions kept (all nodes sharing the database), by state", sessions);
    let refused: Family<Reason, Counter> = Family::default();
    let f = s.refused;
    for (reason, n) in [
        ("rate_limited", f.rate_limited),
        ("in_dialog_rate_limited", f.in_dialog_rate_limited),
        ("draining", f.draining),
        ("forbidden", f.forbidden),
        ("not_found", f.not_found),
        ("bad_extension", f.bad_extension),
    ] {
        refused.get_or_create(&Reason { reason }).inc_by(n);
    }
    r.register("sip_refused", "SIP requests the endpoint turned away itself, by reason", refused);
    r.register("webhook_queue", "Webhooks waiting to be delivered", gauge(s.webhook_queue));
    let oldest: Gauge = Gauge::default();
    oldest.set(s.webhook_oldest_s);
    r.register_with_unit("webhook_oldest_age", "Age of the oldest webhook waiting", Unit::Seconds, oldest);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_media_growth_once_and_reads_states_from_the_snapshot() {
        let calls = CallMetrics::default();
        let mut stats = BridgeStats::default();
        stats.keys.rfc4733 = 3;
        stats.masked_frames = 10;
        stats.caller_refused.ssrc = 2;
        calls.media(&BridgeStats::default(), &stats);
        let before = stats;
        stats.keys.rfc4733 = 5;
        stats.masked_frames = 12;
        calls.media(&before, &stats);
        calls.setup(Setup::Answered);
        calls.capture(Capture::Failed(CaptureFailure::CallerHungUp));
        let vault = VaultMetrics::default();
        drop(vault.time("tokenize"));
        let snapshot = Snapshot {
            draining: true,
            active_calls: 4,
            sessions: vec![("capturing", 2)],
            webhook_queue: 1,
            webhook_oldest_s: 7,
            ..Snapshot::default()
        };
        let text = encode(&calls, &vault, &snapshot);
        for line in [
            "tonewall_keys_total{source=\"rfc4733\"} 5",
            "tonewall_masked_frames_total 12",
            "tonewall_rtp_dropped_total{leg=\"caller\",reason=\"wrong_ssrc\"} 2",
            "tonewall_call_setups_total{result=\"answered\"} 1",
            "tonewall_captures_total{result=\"failed\",reason=\"caller_hung_up\"} 1",
            "tonewall_vault_operation_seconds_count{op=\"tokenize\"} 1",
            "tonewall_node_state{state=\"draining\"} 1",
            "tonewall_node_state{state=\"serving\"} 0",
            "tonewall_calls_active 4",
            "tonewall_sessions{state=\"capturing\"} 2",
            "tonewall_sessions{state=\"waiting\"} 0",
            "tonewall_keys_total{source=\"in_band\"} 0",
            "tonewall_call_setups_total{result=\"no_rtp_ports\"} 0",
            "tonewall_webhook_oldest_age_seconds 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
