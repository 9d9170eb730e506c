//! `loadtest`: how many masked payment calls one tonewall carries, and what it adds to the
//! agent's audio delay. Places real SIP calls against a running `tonewall serve` at a set
//! rate, one payment session per call through the HTTP API (agent key), answers every agent
//! leg itself and sends RTP both ways at 20 ms pacing: half the callers key their card as
//! RFC 4733 events, half as in-band tones over recorded speech. Every frame crosses tonewall
//! twice (caller → tonewall → agent), so the tool measures relay latency, loss and leaks on
//! the agent side, and tonewall's CPU and memory from /proc, at each load level of a ramp.
//!
//! Bounded: at most 10,000 calls, each step lasts `--duration`, the whole run has a deadline,
//! and targets must be on loopback unless `--allow-non-loopback` is given.

mod api;
mod judge;
mod media;
mod mmsg;
mod ng;
mod procfs;
mod report;
mod script;
mod sip;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc, oneshot};

use api::Api;
use media::{CallMedia, Shard, ShardCommand, WindowStats};
use report::{Report, Step};
use script::{Keypad, Sounds};
use sip::{SipCommand, SipDriver, SipEvent};
use tonewall_testkit::keypad::Keying;

#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "Load test a running tonewall with real SIP calls and RTP")]
struct Args {
    /// tonewall's SIP address (UDP).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// tonewall's HTTP API; several (comma-separated) for the nodes of a cluster: sessions
    /// are made on each in turn and read back through any.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    api: Vec<String>,
    /// An agent API key (`tonewall api-key create --role agent`).
    #[arg(long, env = "TONEWALL_API_KEY", hide_env_values = true, required_unless_present = "rtpengine")]
    api_key: Option<String>,
    /// A processor API key (`tonewall api-key create --role processor`): every captured card
    /// is read back whole (number, expiry, security code) and compared with what was keyed.
    #[arg(long, env = "TONEWALL_PROCESSOR_KEY", hide_env_values = true, required_unless_present = "rtpengine")]
    processor_key: Option<String>,
    /// Concurrent calls to hold (the top of the ramp if --ramp is given too).
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Call set-ups per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds measured at each load level.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Load levels (concurrent calls) measured one after another, e.g. 100,500,1000,2000.
    #[arg(long, value_delimiter = ',')]
    ramp: Vec<u32>,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes a chart of latency and CPU against concurrent calls here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// tonewall's process id; found from the --target port when not given.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Media tasks (each holds a share of the calls on two sockets).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Local address for the tool's SIP and RTP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind: Ipv4Addr,
    /// Runs the same media load through rtpengine instead, driven over its ng control
    /// protocol at this address (for `compare-rtpengine.sh`); no SIP, no sessions.
    #[arg(long)]
    rtpengine: Option<SocketAddr>,
    /// With --rtpengine: block DTMF (in-band detection, tones replaced by silence) behind a
    /// delay buffer of this many ms.
    #[arg(long)]
    rtpengine_masking_ms: Option<i64>,
    /// Allows a target or API that is not on loopback (never against production).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Failover drill: kills this process (SIGKILL, a cluster node) --kill-after seconds into
    /// the run; the report counts the calls dialled once --kill-grace more seconds have
    /// passed, and how many of them failed.
    #[arg(long, requires = "kill_after")]
    kill_pid: Option<u32>,
    #[arg(long)]
    kill_after: Option<f64>,
    /// Seconds after the kill from which every new call must succeed (the proxy's probe
    /// interval and a margin).
    #[arg(long, default_value_t = 3.0)]
    kill_grace: f64,
}

const MAX_CALLS: u32 = 10_000;
const SETTLE: Duration = Duration::from_secs(2);
/// After a window, slots stay open this long so late frames still count as arrived.
const DRAIN: Duration = Duration::from_millis(1500);

const CARDS: [(&str, &str); 3] =
    [("4111111111111111", "123"), ("5555555555554444", "321"), ("378282246310005", "1234")];
const EXPIRY: &str = "1230";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut levels = if args.ramp.is_empty() { vec![args.calls] } else { args.ramp.clone() };
    levels.sort_unstable();
    levels.dedup();
    ensure!(levels.iter().all(|l| (1..=MAX_CALLS).contains(l)), "load levels must be 1..={MAX_CALLS} calls");
    ensure!(levels.len() <= 50, "at most 50 load levels");
    ensure!(args.rate > 0.0 && args.rate <= 5000.0, "--rate must be in (0, 5000] calls per second");
    ensure!((1..=3600).contains(&args.duration), "--duration must be 1..=3600 seconds");
    ensure!((1..=16).contains(&args.shards), "--shards must be 1..=16");
    ensure!(!args.api.is_empty() && args.api.len() <= 16, "--api takes 1 to 16 addresses");
    if let Some(after) = args.kill_after {
        ensure!((0.0..=3600.0).contains(&after), "--kill-after must be 0..=3600 seconds");
        ensure!((0.0..=600.0).contains(&args.kill_grace), "--kill-grace must be 0..=600 seconds");
    }
    if !args.allow_non_loopback {
        ensure!(args.target.ip().is_loopback(), "--target {} is not on loopback (--allow-non-loopback)", args.target);
        for api in &args.api {
            let host = api.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or("");
            ensure!(
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
                "--api {api} is not on loopback (--allow-non-loopback)"
            );
        }
        ensure!(args.bind.is_loopback(), "--bind {} is not on loopback", args.bind);
        if let Some(ng) = args.rtpengine {
            ensure!(ng.ip().is_loopback(), "--rtpengine {ng} is not on loopback (--allow-non-loopback)");
        }
    }
    let top = *levels.last().context("no load level")?;
    // Per step: ramping at --rate, waiting for the last set-ups, settling, measuring, draining.
    // Then the last cards keyed, every call hung up and every session read back.
    let per_step = sip::SETUP_TIMEOUT.as_secs_f64() + 10.0 + args.duration as f64;
    let budget = levels.len() as f64 * per_step
        + 2.0 * f64::from(top) / args.rate
        + args.duration as f64
        + f64::from(top) / 50.0
        + 90.0;
    let deadline = Duration::from_secs_f64(budget);
    match tokio::time::timeout(deadline, run(&args, &levels)).await {
        Ok(r) => r,
        Err(_) => bail!("the run did not finish within its {:.0} s budget", deadline.as_secs_f64()),
    }
}

/// What the tool knows of one call it placed.
struct Placed {
    session: Option<String>,
    keypad: Arc<Keypad>,
    shard: usize,
    dialed: Instant,
    connected: Option<Instant>,
    key_at: u32,
    state: CallState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Dialing,
    Up,
    Failed,
    Dropped,
    Ended,
}

struct Run {
    bind: Ipv4Addr,
    shards: Vec<Shard>,
    sip: SipDriver,
    api: Api,
    judge: judge::Judge,
    /// Set when the load runs through rtpengine instead of tonewall.
    ng: Option<ng::Ng>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    calls: HashMap<u32, Placed>,
    keypads: Vec<Arc<Keypad>>,
    next_id: u32,
    key_within_ticks: u32,
    setup_us: Histogram<u64>,
    failures: HashMap<String, u32>,
    rng: u64,
}

enum Event {
    Sip(SipEvent),
    SessionCreated { id: u32, session: String, uri: String },
}

async fn run(args: &Args, levels: &[u32]) -> anyhow::Result<()> {
    let sounds = Arc::new(Sounds::load()?);
    let judge = judge::Judge::start()?;
    let mut shards = Vec::new();
    for _ in 0..args.shards {
        shards.push(Shard::start(args.bind, sounds.clone(), judge.clone(), args.rtpengine.is_none())?);
    }
    let (events_tx, events) = mpsc::unbounded_channel();
    let (sip_tx, mut sip_rx) = mpsc::unbounded_channel();
    let sip = SipDriver::start(SocketAddr::new(IpAddr::V4(args.bind), 0), args.target, sip_tx).await?;
    let forward = events_tx.clone();
    tokio::spawn(async move {
        while let Some(e) = sip_rx.recv().await {
            if forward.send(Event::Sip(e)).is_err() {
                return;
            }
        }
    });
    let ng = match args.rtpengine {
        Some(addr) => {
            let masking = args.rtpengine_masking_ms.map_or(ng::Masking::Off, |delay_ms| ng::Masking::On { delay_ms });
            Some(ng::Ng::connect(addr, masking).await?)
        }
        None => None,
    };
    // After the ng ping: a daemon just started may not have bound its port before.
    let server_pid = match args.server_pid {
        Some(p) => p,
        None => procfs::pid_listening_on(args.rtpengine.unwrap_or(args.target))?,
    };
    let keypads = CARDS
        .iter()
        .flat_map(|(pan, cvv)| [Keying::Rfc4733, Keying::InBand].map(|k| Arc::new(Keypad::new(k, pan, EXPIRY, cvv))))
        .collect();
    let mut run = Run {
        bind: args.bind,
        shards,
        sip,
        judge,
        api: Api::new(
            &args.api,
            args.api_key.as_deref().unwrap_or_default(),
            args.processor_key.as_deref().unwrap_or_default(),
        ),
        ng,
        events,
        events_tx,
        calls: HashMap::new(),
        keypads,
        next_id: 0,
        key_within_ticks: (args.duration * 50) as u32,
        setup_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        failures: HashMap::new(),
        rng: 0x10ad_7e57,
    };
    let baseline = procfs::sample(server_pid)?;
    let started = Instant::now();
    let killed_at = Arc::new(std::sync::OnceLock::new());
    if let (Some(pid), Some(after)) = (args.kill_pid, args.kill_after) {
        let killed_at = killed_at.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            let pid = libc::pid_t::try_from(pid).unwrap_or(0);
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            if rc == 0 {
                let _ = killed_at.set(Instant::now());
                eprintln!("killed process {pid} (SIGKILL) {after:.1} s into the run");
            } else {
                eprintln!("could not kill process {pid}: {}", std::io::Error::last_os_error());
            }
        });
    }
    let mut steps = Vec::new();
    for (n, &level) in levels.iter().enumerate() {
        steps.push(run.step(n as u8 + 1, level, args, server_pid, baseline.rss_bytes).await?);
    }
    run.finish_keying().await;
    let failover = match (args.kill_pid, killed_at.get()) {
        (Some(pid), Some(&at)) => Some(run.failover(pid, started, at, Duration::from_secs_f64(args.kill_grace))),
        (Some(pid), None) => bail!("process {pid} was never killed: the run ended before --kill-after"),
        _ => None,
    };
    run.hang_up_all(args.rate).await;
    let (captured, outcomes) = run.check_sessions().await;
    let mut all = WindowStats::new();
    for s in &steps {
        all.merge(&s.stats);
    }
    // Keys judged after the last window closed (calls that keyed to the end) count too.
    all.leaked_digits += tokio::task::block_in_place(|| run.judge.take(|_| true))?;
    let failed = run.calls.values().filter(|c| matches!(c.state, CallState::Failed | CallState::Dropped)).count();
    let report = Report {
        target: match (args.rtpengine, args.rtpengine_masking_ms) {
            (Some(ng), None) => format!("rtpengine (plain relay) at {ng}"),
            (Some(ng), Some(ms)) => format!("rtpengine (block DTMF, detect DTMF, {ms} ms delay buffer) at {ng}"),
            (None, _) => format!("tonewall at {}", args.target),
        },
        server_pid,
        attempted: run.calls.len() as u64,
        failed: failed as u64,
        failures: run.failures.clone(),
        captured,
        outcomes,
        failover,
        setup_us: run.setup_us.clone(),
        steps,
        all,
    };
    report.print();
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report.json())?).with_context(|| format!("writing {p:?}"))?;
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, report.svg()).with_context(|| format!("writing {p:?}"))?;
    }
    Ok(())
}

impl Run {
    fn random(&mut self) -> u64 {
        // xorshift64*: seeded, so two runs key the same cards at the same offsets.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn active(&self) -> u32 {
        self.calls.values().filter(|c| matches!(c.state, CallState::Up | CallState::Dialing)).count() as u32
    }

    /// One load level: ramp up to `level` calls at `--rate`, settle, measure `--duration`.
    async fn step(&mut self, w: u8, level: u32, args: &Args, pid: u32, rss0: u64) -> anyhow::Result<Step> {
        let need = level.saturating_sub(self.active());
        let bar = ProgressBar::new(u64::from(need)).with_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} calls")
                .unwrap_or(ProgressStyle::default_bar()),
        );
        bar.set_message(format!("ramping to {level}"));
        let ramp_start = Instant::now();
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        let mut placed = Vec::new();
        let http = Arc::new(Semaphore::new(32));
        while (placed.len() as u32) < need {
            tokio::select! {
                _ = pace.tick() => placed.push(self.dial(http.clone())),
                Some(e) = self.events.recv() => self.handle(e),
            }
        }
        // Until every call of this step is up or has failed.
        let settled_by = Instant::now() + sip::SETUP_TIMEOUT + Duration::from_secs(5);
        while placed.iter().any(|id| self.calls.get(id).is_some_and(|c| c.state == CallState::Dialing))
            && Instant::now() < settled_by
        {
            bar.set_position(
                placed.iter().filter(|id| self.calls.get(id).is_some_and(|c| c.connected.is_some())).count() as u64,
            );
            self.pump(Duration::from_millis(100)).await;
        }
        let connected: Vec<Instant> =
            placed.iter().filter_map(|id| self.calls.get(id).and_then(|c| c.connected)).collect();
        let ramp_secs = connected.iter().max().map_or(0.0, |t| t.duration_since(ramp_start).as_secs_f64());
        let setups_per_second = if ramp_secs > 0.0 { connected.len() as f64 / ramp_secs } else { 0.0 };
        let failed_in_step = placed.len() - connected.len();
        bar.finish_and_clear();

        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner.set_message(format!("{} calls up, settling", self.active()));
        self.pump(SETTLE).await;
        spinner.set_message(format!("measuring {} calls for {} s", self.active(), args.duration));
        self.shards_window(w);
        self.judge.hold(true);
        let (s0, t0) = (procfs::sample(pid)?, procfs::sample(std::process::id())?);
        let calls_measured = self.active();
        self.pump(Duration::from_secs(args.duration)).await;
        let (s1, t1) = (procfs::sample(pid)?, procfs::sample(std::process::id())?);
        self.shards_window(0);
        spinner.set_message("draining");
        self.pump(DRAIN).await;
        let stats = self.collect(w).await?;
        spinner.finish_and_clear();
        let step = Step {
            level,
            calls: calls_measured,
            setups_per_second,
            failed: failed_in_step as u64,
            cpu_seconds: procfs::cpu_seconds(&s0, &s1),
            cpu_percent: procfs::cpu_percent(&s0, &s1),
            tool_cpu_percent: procfs::cpu_percent(&t0, &t1),
            rss_bytes: s1.rss_bytes,
            rss_per_call_bytes: s1.rss_bytes.saturating_sub(rss0) / u64::from(calls_measured.max(1)),
            stats,
        };
        step.print_line();
        Ok(step)
    }

    /// Creates the session for a new call, then dials it (off this task: HTTP blocks).
    fn dial(&mut self, http: Arc<Semaphore>) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        // Even calls key by RFC 4733, odd ones in-band; the card rotates.
        let keypad = self.keypads[(id as usize) % self.keypads.len()].clone();
        let key_at = 50 + (self.random() % u64::from(self.key_within_ticks.max(1))) as u32;
        let shard = id as usize % self.shards.len();
        self.calls.insert(
            id,
            Placed {
                session: None,
                keypad,
                shard,
                dialed: Instant::now(),
                connected: None,
                key_at,
                state: CallState::Dialing,
            },
        );
        if let Some(ng) = self.ng.clone() {
            let events = self.events_tx.clone();
            let shard = &self.shards[shard];
            let (caller_rtp, agent_rtp) =
                (SocketAddrV4::new(self.bind, shard.caller_port), SocketAddrV4::new(self.bind, shard.agent_port));
            tokio::spawn(async move {
                let e = match ng.setup(id, caller_rtp, agent_rtp).await {
                    Ok((caller_leg, agent_leg)) => SipEvent::Connected { id, caller_leg, agent_leg },
                    Err(e) => SipEvent::Failed { id, reason: format!("{e:#}") },
                };
                let _ = events.send(Event::Sip(e));
            });
            return id;
        }
        let (api, events, sip_addr) = (self.api.clone(), self.events_tx.clone(), self.sip.addr);
        tokio::spawn(async move {
            let Ok(_permit) = http.acquire_owned().await else { return };
            let agent = format!("sip:agent-{id}@{sip_addr}");
            let e = match api.create_session(id, agent, format!("load-{id}")).await {
                Ok(s) => Event::SessionCreated { id, session: s.id, uri: s.transfer_uri },
                Err(e) => Event::Sip(SipEvent::Failed { id, reason: format!("session: {e:#}") }),
            };
            let _ = events.send(e);
        });
        id
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::SessionCreated { id, session, uri } => {
                let Some(c) = self.calls.get_mut(&id) else { return };
                c.session = Some(session);
                let shard = &self.shards[c.shard];
                let caller_rtp = SocketAddrV4::new(self.bind, shard.caller_port);
                let agent_rtp = SocketAddrV4::new(self.bind, shard.agent_port);
                let _ = self.sip.tx.send(SipCommand::Dial { id, uri, caller_rtp, agent_rtp });
            }
            Event::Sip(SipEvent::Connected { id, caller_leg, agent_leg }) => {
                let Some(c) = self.calls.get_mut(&id) else { return };
                let now = Instant::now();
                c.connected = Some(now);
                c.state = CallState::Up;
                let _ = self.setup_us.record((now.duration_since(c.dialed).as_micros() as u64).max(1));
                let media = CallMedia { id, caller_leg, agent_leg, keypad: c.keypad.clone(), key_at: c.key_at };
                let _ = self.shards[c.shard].tx.send(ShardCommand::Add(media));
            }
            Event::Sip(SipEvent::Failed { id, reason }) => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = CallState::Failed;
                }
                *self.failures.entry(reason).or_default() += 1;
            }
            Event::Sip(SipEvent::Dropped { id }) => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = CallState::Dropped;
                    let _ = self.shards[c.shard].tx.send(ShardCommand::Remove(id));
                }
                *self.failures.entry("hung up by tonewall".into()).or_default() += 1;
            }
            Event::Sip(SipEvent::Ended { id, answered }) => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = CallState::Ended;
                }
                if !answered {
                    *self.failures.entry("BYE unanswered".into()).or_default() += 1;
                }
            }
        }
    }

    /// Handles events for `d`.
    async fn pump(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                Some(e) = self.events.recv() => self.handle(e),
            }
        }
    }

    fn shards_window(&self, w: u8) {
        for s in &self.shards {
            let _ = s.tx.send(ShardCommand::Window(w));
        }
    }

    async fn collect(&self, w: u8) -> anyhow::Result<WindowStats> {
        let mut all = WindowStats::new();
        for s in &self.shards {
            let (tx, rx) = oneshot::channel();
            let _ = s.tx.send(ShardCommand::Collect(w, tx));
            if let Ok(st) = rx.await {
                all.merge(&st);
            }
        }
        all.leaked_digits += tokio::task::block_in_place(|| self.judge.take(|x| x == w))?;
        Ok(all)
    }

    /// Waits until every call up has keyed its whole card and tonewall has had time to
    /// tokenize it.
    async fn finish_keying(&mut self) {
        let done = self
            .calls
            .values()
            .filter(|c| c.state == CallState::Up)
            .filter_map(|c| c.connected.map(|t| t + Duration::from_millis(u64::from(c.key_at + c.keypad.ticks()) * 20)))
            .max();
        if let Some(done) = done {
            let left = (done + Duration::from_secs(3)).saturating_duration_since(Instant::now());
            if !left.is_zero() {
                eprintln!("waiting {:.0} s for the last cards to be keyed", left.as_secs_f64());
                self.pump(left).await;
            }
        }
    }

    /// BYE on every call still up, at twice the set-up rate, then waits for the answers.
    async fn hang_up_all(&mut self, rate: f64) {
        let up: Vec<(u32, usize)> =
            self.calls.iter().filter(|(_, c)| c.state == CallState::Up).map(|(id, c)| (*id, c.shard)).collect();
        let mut pace = tokio::time::interval(Duration::from_secs_f64(0.5 / rate));
        for (id, shard) in up {
            pace.tick().await;
            let _ = self.shards[shard].tx.send(ShardCommand::Remove(id));
            match self.ng.clone() {
                Some(ng) => {
                    let events = self.events_tx.clone();
                    tokio::spawn(async move {
                        let answered = ng.delete(id).await.is_ok();
                        let _ = events.send(Event::Sip(SipEvent::Ended { id, answered }));
                    });
                }
                None => {
                    let _ = self.sip.tx.send(SipCommand::Hangup { id });
                }
            }
        }
        let by = Instant::now() + Duration::from_secs(10);
        while self.calls.values().any(|c| c.state == CallState::Up) && Instant::now() < by {
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// The failover drill's count, taken before the calls are hung up: calls up when the
    /// node was killed, and those dialled after the grace period with how many failed.
    fn failover(&self, pid: u32, started: Instant, killed: Instant, grace: Duration) -> report::Failover {
        let after: Vec<&Placed> = self.calls.values().filter(|c| c.dialed >= killed + grace).collect();
        report::Failover {
            pid,
            killed_after_s: killed.duration_since(started).as_secs_f64(),
            grace_s: grace.as_secs_f64(),
            up_at_kill: self.calls.values().filter(|c| c.connected.is_some_and(|t| t < killed)).count() as u64,
            dialled_after_grace: after.len() as u64,
            failed_after_grace: after
                .iter()
                .filter(|c| matches!(c.state, CallState::Failed | CallState::Dropped | CallState::Dialing))
                .count() as u64,
        }
    }

    /// Reads every connected call's session back and detokenizes its card: per way of keying
    /// (RFC 4733, in-band), cards stored whole as keyed and calls that keyed one; and how
    /// every session ended (`completed`, `failed:node_lost`, ...).
    async fn check_sessions(&self) -> ([(u64, u64); 2], HashMap<String, u64>) {
        let gate = Arc::new(Semaphore::new(16));
        let mut tasks = Vec::new();
        // rtpengine relays; it captures nothing.
        let calls = self.calls.values().filter(|c| c.connected.is_some() && self.ng.is_none());
        for c in calls {
            let Some(session) = c.session.clone() else { continue };
            let (api, keypad, gate) = (self.api.clone(), c.keypad.clone(), gate.clone());
            let way = usize::from(c.keypad.keying == Keying::InBand);
            let task = tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok();
                let Ok(v) = api.session(&session).await else { return ("unreadable".to_string(), false) };
                let outcome = match (v["state"].as_str(), v["reason"].as_str()) {
                    (Some(state), Some(reason)) => format!("{state}:{reason}"),
                    (Some(state), None) => state.to_string(),
                    _ => "no state".to_string(),
                };
                let Some(token) = v["result"]["token"].as_str().filter(|_| v["state"] == "completed") else {
                    return (outcome, false);
                };
                let whole = api.detokenize(token.to_string()).await.is_ok_and(|card| card == keypad.card);
                (outcome, whole)
            });
            tasks.push((way, task));
        }
        let mut out = [(0, 0); 2];
        let mut outcomes = HashMap::new();
        for (way, t) in tasks {
            let (outcome, whole) = t.await.unwrap_or_else(|_| ("check panicked".to_string(), false));
            *outcomes.entry(outcome).or_default() += 1;
            out[way].0 += u64::from(whole);
            out[way].1 += 1;
        }
        (out, outcomes)
    }
}
