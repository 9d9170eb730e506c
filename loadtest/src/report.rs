//! The run's report: a table on the terminal, JSON for machines, and an SVG chart of relay
//! latency and tonewall's CPU against concurrent calls.

use std::collections::HashMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::media::WindowStats;

/// One load level, measured over one window.
pub struct Step {
    pub level: u32,
    /// Calls up during the window.
    pub calls: u32,
    pub setups_per_second: f64,
    pub failed: u64,
    /// The server's CPU over the window: seconds, and percent of one core.
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    pub tool_cpu_percent: f64,
    pub rss_bytes: u64,
    pub rss_per_call_bytes: u64,
    pub stats: WindowStats,
}

pub struct Report {
    pub target: String,
    /// The process whose CPU and memory were measured.
    pub server_pid: u32,
    pub attempted: u64,
    pub failed: u64,
    pub failures: HashMap<String, u32>,
    /// Per way of keying (RFC 4733, in-band): cards stored whole as keyed (number, expiry,
    /// security code, read back by detokenizing), and calls that keyed one.
    pub captured: [(u64, u64); 2],
    /// How the connected calls' sessions ended, e.g. `completed`, `failed:node_lost`.
    pub outcomes: HashMap<String, u64>,
    pub failover: Option<Failover>,
    /// Dial to both legs up.
    pub setup_us: Histogram<u64>,
    pub steps: Vec<Step>,
    pub all: WindowStats,
}

/// A failover drill (`--kill-pid`): a node killed mid-run, and the calls dialled after it.
pub struct Failover {
    pub pid: u32,
    pub killed_after_s: f64,
    pub grace_s: f64,
    /// Calls connected before the kill (on every node).
    pub up_at_kill: u64,
    /// Calls dialled once the grace period after the kill had passed, and of them those
    /// that failed or never connected.
    pub dialled_after_grace: u64,
    pub failed_after_grace: u64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 }
}

fn latency(h: &Histogram<u64>) -> Value {
    json!({"p50": ms(h, 0.5), "p99": ms(h, 0.99), "p999": ms(h, 0.999), "max": ms(h, 1.0), "samples": h.len()})
}

impl WindowStats {
    pub fn loss(&self) -> f64 {
        if self.plain_frames == 0 { 0.0 } else { self.plain_lost as f64 / self.plain_frames as f64 }
    }
}

const HEADER: &str = "calls  setups/s  failed  p50 ms  p99 ms  p99.9 ms  in capture p99  outside p99  loss      leaks  server CPU  RSS MiB  KiB/call  tool CPU";

impl Step {
    /// The step's row as soon as it is measured (stderr; the final table goes to stdout).
    pub fn print_line(&self) {
        eprintln!("{HEADER}");
        eprintln!("{}", self.line());
    }

    fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "{:<6} {:>8.0}  {:>6}  {:>6.2}  {:>6.2}  {:>8.2}  {:>14.2}  {:>11.2}  {:<8.5}  {:>5}  {:>9.0}%  {:>7.1}  {:>8.1}  {:>7.0}%",
            self.calls,
            self.setups_per_second,
            self.failed,
            ms(&s.latency_us, 0.5),
            ms(&s.latency_us, 0.99),
            ms(&s.latency_us, 0.999),
            ms(&s.latency_capture_us, 0.99),
            ms(&s.latency_outside_us, 0.99),
            s.loss(),
            s.leaked_digits + s.leaked_events,
            self.cpu_percent,
            self.rss_bytes as f64 / 1048576.0,
            self.rss_per_call_bytes as f64 / 1024.0,
            self.tool_cpu_percent,
        )
    }

    fn json(&self) -> Value {
        let s = &self.stats;
        json!({
            "level": self.level,
            "calls": self.calls,
            "setups_per_second": self.setups_per_second,
            "failed": self.failed,
            "latency_ms": latency(&s.latency_us),
            "latency_ms_during_capture": latency(&s.latency_capture_us),
            "latency_ms_outside_capture": latency(&s.latency_outside_us),
            "latency_ms_to_caller": latency(&s.latency_to_caller_us),
            "loss": s.loss(),
            "plain_frames": s.plain_frames,
            "plain_frames_lost": s.plain_lost,
            "frames_sent": s.frames_sent,
            "frames_received": s.frames_received,
            "leaks": {"digits": s.leaked_digits, "rfc4733_packets": s.leaked_events},
            "cpu_seconds": self.cpu_seconds,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "rss_per_call_bytes": self.rss_per_call_bytes,
            "tool": {
                "cpu_percent": self.tool_cpu_percent,
                "send_lateness_ms": latency(&s.send_lateness_us),
                "send_drops": s.send_drops,
            },
        })
    }
}

impl Report {
    fn accuracy(&self) -> f64 {
        let (right, attempted) = (self.captured[0].0 + self.captured[1].0, self.captured[0].1 + self.captured[1].1);
        if attempted == 0 { 0.0 } else { right as f64 / attempted as f64 }
    }

    pub fn print(&self) {
        println!("load test of {}", self.target);
        println!("{HEADER}");
        for s in &self.steps {
            println!("{}", s.line());
        }
        println!(
            "calls attempted {}, failed {}; cards stored whole as keyed: RFC 4733 {}/{}, in-band {}/{} ({:.4}); leaks: {} digits in agent audio, {} RFC 4733 packets on the agent leg; set-up p50 {:.1} ms, p99 {:.1} ms",
            self.attempted,
            self.failed,
            self.captured[0].0,
            self.captured[0].1,
            self.captured[1].0,
            self.captured[1].1,
            self.accuracy(),
            self.all.leaked_digits,
            self.all.leaked_events,
            ms(&self.setup_us, 0.5),
            ms(&self.setup_us, 0.99),
        );
        for (why, n) in &self.failures {
            println!("  {n} × {why}");
        }
        let mut outcomes: Vec<_> = self.outcomes.iter().collect();
        outcomes.sort();
        println!("sessions: {}", outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect::<Vec<_>>().join(", "));
        if let Some(f) = &self.failover {
            println!(
                "failover: process {} killed {:.1} s in with {} calls up; {} calls dialled from {:.1} s after, {} failed",
                f.pid, f.killed_after_s, f.up_at_kill, f.dialled_after_grace, f.grace_s, f.failed_after_grace
            );
        }
    }

    /// The report as JSON: the top level describes the highest load level; `steps` has each.
    pub fn json(&self) -> Value {
        let top = self.steps.last();
        let mut v = top.map_or(json!({}), Step::json);
        v["calls"] = json!({
            "attempted": self.attempted,
            "failed": self.failed,
            "concurrent": top.map_or(0, |s| s.calls),
            "failures": self.failures,
            "setup_ms": latency(&self.setup_us),
        });
        let [(r1, a1), (r2, a2)] = self.captured;
        let accuracy = if a1 + a2 == 0 { Value::Null } else { json!(self.accuracy()) };
        v["capture"] = json!({
            "accuracy": accuracy,
            "rfc4733": {"right": r1, "attempted": a1},
            "in_band": {"right": r2, "attempted": a2},
        });
        v["leaks"] = json!({"digits": self.all.leaked_digits, "rfc4733_packets": self.all.leaked_events});
        v["sessions"] = json!(self.outcomes);
        v["failover"] = self.failover.as_ref().map_or(Value::Null, |f| {
            json!({
                "pid": f.pid,
                "killed_after_s": f.killed_after_s,
                "grace_s": f.grace_s,
                "up_at_kill": f.up_at_kill,
                "dialled_after_grace": f.dialled_after_grace,
                "failed_after_grace": f.failed_after_grace,
            })
        });
        v["target"] = json!(self.target);
        v["server_pid"] = json!(self.server_pid);
        v["steps"] = self.steps.iter().map(Step::json).collect();
        v
    }

    /// Latency p50/p99/p99.9 (left axis, ms) and tonewall's CPU (right axis, % of a core)
    /// against concurrent calls, one point per load level.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 70.0, 40.0, 50.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let max_calls = self.steps.iter().map(|s| s.calls).max().unwrap_or(1).max(1) as f64;
        let max_ms = self.steps.iter().map(|s| ms(&s.stats.latency_us, 0.999)).fold(1.0f64, f64::max).ceil();
        let max_cpu = self.steps.iter().map(|s| s.cpu_percent).fold(100.0f64, f64::max).ceil();
        let x = |c: u32| left + pw * f64::from(c) / max_calls;
        let y = |v: f64, max: f64| top + ph * (1.0 - v / max);
        let mut out = String::new();
        let _ = write!(
            out,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="22" text-anchor="middle" font-size="15">{title}: relay latency and CPU against concurrent calls</text>
<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/>
<line x1="{r}" y1="{top}" x2="{r}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{xl}" text-anchor="middle">concurrent calls</text>
<text transform="translate(18 {cy}) rotate(-90)" text-anchor="middle">caller → agent latency, ms</text>
<text transform="translate({rl} {cy}) rotate(90)" text-anchor="middle">server CPU, % of one core</text>
"##,
            title = self.target,
            cx = left + pw / 2.0,
            cy = top + ph / 2.0,
            b = top + ph,
            r = left + pw,
            xl = h - 12.0,
            rl = w - 18.0,
        );
        for i in 0..=4 {
            let f = f64::from(i) / 4.0;
            let (yy, xx) = (top + ph * (1.0 - f), left + pw * f);
            let _ = writeln!(
                out,
                r##"<line x1="{left}" y1="{yy}" x2="{r}" y2="{yy}" stroke="#ddd"/><text x="{lx}" y="{ty}" text-anchor="end">{:.1}</text><text x="{rx}" y="{ty}">{:.0}</text><text x="{xx}" y="{bx}" text-anchor="middle">{:.0}</text>"##,
                max_ms * f,
                max_cpu * f,
                max_calls * f,
                r = left + pw,
                lx = left - 6.0,
                rx = left + pw + 6.0,
                ty = yy + 4.0,
                bx = top + ph + 18.0,
            );
        }
        let series: [Series; 4] = [
            ("p50", "#1f77b4", |s| ms(&s.stats.latency_us, 0.5), max_ms),
            ("p99", "#ff7f0e", |s| ms(&s.stats.latency_us, 0.99), max_ms),
            ("p99.9", "#d62728", |s| ms(&s.stats.latency_us, 0.999), max_ms),
            ("CPU", "#2ca02c", |s| s.cpu_percent, max_cpu),
        ];
        for (n, (name, colour, value, max)) in series.iter().enumerate() {
            let points: Vec<String> =
                self.steps.iter().map(|s| format!("{:.1},{:.1}", x(s.calls), y(value(s), *max))).collect();
            let dash = if *name == "CPU" { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(out, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
            }
            let ly = top + 14.0 + 16.0 * n as f64;
            let _ = writeln!(
                out,
                r#"<line x1="{a}" y1="{ly}" x2="{b}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{t}" y="{ty}">{name}</text>"#,
                a = left + 12.0,
                b = left + 36.0,
                t = left + 42.0,
                ty = ly + 4.0,
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

/// A line of the chart: name, colour, value of a step, top of its axis.
type Series = (&'static str, &'static str, fn(&Step) -> f64, f64);
