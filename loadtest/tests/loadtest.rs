//! The load tool end to end, small: against a real tonewall (in this process, on loopback)
//! every card is captured right, nothing leaks and the report has every figure the README
//! promises; against rtpengine (Debian's `rtpengine-daemon`, started here) plain relaying
//! leaks keys, which proves the leak detector finds them, and `block DTMF` masking leaks none.
//! Small loads only: the figures that matter come from runs by hand (README), never from
//! timed assertions here.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tonewall::api::auth::{self, Role};
use tonewall::config::Config;
use tonewall::runtime::Server;

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).stdin(Stdio::null()).output().expect("run loadtest")
}

fn report(out: &Output, json: &Path) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    assert!(out.status.success(), "loadtest failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_slice(&std::fs::read(json).expect("JSON report written")).expect("valid JSON")
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_card_is_captured_and_nothing_leaks_through_tonewall() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded();
    cfg.sip.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.sip.rate_per_source = 10_000;
    cfg.storage.data_dir = dir.path().to_path_buf();
    let server = Server::start(cfg).await.unwrap();
    let (_, key) = auth::create_key(server.shared.vault.pool(), Role::Agent).await.unwrap();
    let (_, processor_key) = auth::create_key(server.shared.vault.pool(), Role::Processor).await.unwrap();
    let (json, svg) = (dir.path().join("report.json"), dir.path().join("chart.svg"));
    let (sip, api) = (server.sip_addr.to_string(), format!("http://{}", server.http_addr));
    // No --server-pid: the tool finds the server by its SIP socket, which is this process.
    let args = [
        "--target",
        &sip,
        "--api",
        &api,
        "--api-key",
        &key,
        "--processor-key",
        &processor_key,
        "--ramp",
        "6,12",
        "--rate",
        "20",
        "--duration",
        "3",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]
    .map(str::to_string);
    let cpu_before = own_cpu_seconds();
    let out = tokio::task::spawn_blocking(move || loadtest(&args.each_ref().map(String::as_str))).await.unwrap();
    let cpu_during_run = own_cpu_seconds() - cpu_before;
    let r = report(&out, &json);
    assert_eq!((f(&r, "/calls/attempted"), f(&r, "/calls/failed")), (12.0, 0.0), "{r}");
    assert_eq!(f(&r, "/capture/accuracy"), 1.0, "{r}");
    assert_eq!((f(&r, "/capture/rfc4733/attempted"), f(&r, "/capture/in_band/attempted")), (6.0, 6.0));
    assert_eq!((f(&r, "/leaks/digits"), f(&r, "/leaks/rfc4733_packets")), (0.0, 0.0), "{r}");
    // Frames crossed tonewall both ways and were matched to what was sent.
    assert!(f(&r, "/latency_ms/samples") > 0.0 && f(&r, "/latency_ms_to_caller/samples") > 0.0, "{r}");
    assert!(f(&r, "/latency_ms/p50") > 0.0 && f(&r, "/latency_ms/p999") >= f(&r, "/latency_ms/p50"));
    // Capture frames, known by their RTP timestamps (the band-stop rewrites the watermark),
    // carry audio at least the 20 ms look-ahead late; a frame misidentified by one tick
    // would show as about 0 ms.
    let during = |k: &str| f(&r, &format!("/steps/0/latency_ms_during_capture/{k}"));
    assert!(during("samples") > 0.0 && during("p50") >= 19.0, "{r}");
    assert!(f(&r, "/plain_frames") > 0.0 && f(&r, "/loss") < 0.01, "{r}");
    // The CPU figure is the server's (this process's), as getrusage sees it: every step's
    // window lies inside the run, so their sum is at most what this process used meanwhile
    // (less a 10 ms /proc tick per sample), and 12 calls of masked RTP use some.
    assert_eq!(f(&r, "/server_pid"), f64::from(std::process::id()), "{r}");
    let steps_cpu: f64 = (0..2).map(|n| f(&r, &format!("/steps/{n}/cpu_seconds"))).sum();
    eprintln!("server CPU: {steps_cpu:.3} s in the measured windows, {cpu_during_run:.3} s over the run");
    assert!(steps_cpu > 0.0 && steps_cpu <= cpu_during_run + 0.04, "steps {steps_cpu} s, run {cpu_during_run} s");
    assert!(f(&r, "/rss_bytes") > 1e6 && f(&r, "/cpu_percent") > 0.0, "{r}");
    assert_eq!(r["steps"].as_array().map(Vec::len), Some(2));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 4, "{chart}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// User and system CPU seconds of this whole process (getrusage(2)), independent of /proc.
fn own_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid for getrusage to fill.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

#[test]
fn refuses_a_target_off_loopback() {
    let out = loadtest(&["--target", "192.0.2.1:5060", "--api-key", "k", "--processor-key", "k", "--server-pid", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on loopback"), "{out:?}");
}

/// rtpengine in userspace on loopback, its ng port and media ports of its own.
struct Rtpengine(Child, SocketAddr);

impl Rtpengine {
    fn start() -> Rtpengine {
        let free = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ng = free.local_addr().unwrap();
        drop(free);
        let child = Command::new("rtpengine")
            .args(["--foreground", "--table=-1", "--interface=127.0.0.1", "--log-level=3", "--log-stderr"])
            .args(["--delete-delay=0", "--no-redis-required", "--port-min=31000", "--port-max=31999"])
            .arg(format!("--listen-ng={ng}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rtpengine missing: apt-get install -y rtpengine-daemon");
        Rtpengine(child, ng)
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rtpengine_plain_leaks_keys_and_its_masking_does_not() {
    let engine = Rtpengine::start();
    let dir = tempfile::tempdir().unwrap();
    let ng = engine.1.to_string();
    let pid = engine.0.id().to_string();
    let run = |extra: &[&str], name: &str| {
        let json = dir.path().join(name);
        let mut args =
            vec!["--rtpengine", &ng, "--server-pid", &pid, "--calls", "6", "--rate", "20", "--duration", "3"];
        args.extend_from_slice(extra);
        args.extend(["--json", json.to_str().unwrap()]);
        // The daemon needs a moment before its ng port answers; the tool retries its ping.
        report(&loadtest(&args), &json)
    };
    let plain = run(&[], "plain.json");
    assert_eq!(f(&plain, "/calls/failed"), 0.0, "{plain}");
    assert!(plain["capture"]["accuracy"].is_null(), "rtpengine captures nothing");
    assert!(f(&plain, "/leaks/rfc4733_packets") > 0.0, "plain relaying forwards events: {plain}");
    assert!(f(&plain, "/leaks/digits") > 0.0, "the detector hears in-band keys: {plain}");
    let masked = run(&["--rtpengine-masking-ms", "40"], "masked.json");
    assert_eq!(f(&masked, "/calls/failed"), 0.0, "{masked}");
    assert_eq!((f(&masked, "/leaks/digits"), f(&masked, "/leaks/rfc4733_packets")), (0.0, 0.0), "{masked}");
    // Its delay buffer shows in the relay time.
    assert!(f(&masked, "/latency_ms/p50") > f(&plain, "/latency_ms/p50"), "{masked}");
}
