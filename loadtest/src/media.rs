//! The media side of many calls in one task (a "shard"): two UDP sockets, one for every
//! caller leg and one for every agent leg it holds, so a thousand calls cost two file
//! descriptors and a handful of system calls per millisecond, not two thousand tasks.
//!
//! Each call sends one frame per 20 ms each way, at its own phase within the 20 ms (calls
//! are spread over twenty 1 ms buckets, so tonewall sees a steady stream, not a burst per
//! tick). A tick's packets go out in `sendmmsg` batches; arrivals are read with `recvmmsg`
//! and stamped by the kernel.
//!
//! Per frame sent toward the agent the call keeps a slot (send time, whether it arrived);
//! a frame arriving at the agent closes its slot with a latency sample. A slot that is
//! reused while still open was lost. Only "plain" frames count toward loss: frames of speech
//! away from any key (tonewall replaces tones, and an RFC 4733 key's span, by design) and
//! away from the moment masking ends (which drops 20 ms by design).
//!
//! A frame is known by the watermark it carries. During tonewall's capture the DTMF
//! band-stop rewrites every sample, watermark included, so there a frame is known by its RTP
//! timestamp instead: tonewall's agent stream keeps the caller's timeline (RFC 3550 §5.1,
//! one fixed offset), its first packet answers the call's first frame, and while masking,
//! the frame stamped for tick t carries the audio of tick t − 1 (the 20 ms look-ahead).
//!
//! The agent-leg audio around each call's keys goes to the leak judge (spandsp, `judge.rs`).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use std::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tonewall::media::g711::Codec;
use tonewall::media::rtp::{FRAME_SAMPLES, RtpReader};

use crate::judge::Judge;
use crate::mmsg::{self, RecvBatch, SendBatch};
use crate::script::{self, EVENT_PT, Keypad, Sounds};
use tonewall_testkit::keypad::{self, Tick};

const BUCKETS: usize = 20;
const BUCKET_NS: u64 = 1_000_000;
const SLOTS: usize = 64;
/// Frames before a key, and after the last key, that do not count toward loss: the masker
/// may replace a frame around a tone, and masking ends (dropping 20 ms) some time after
/// the last key, once the card is tokenized.
const GUARD_BEFORE: u32 = 3;
const GUARD_AFTER: u32 = 150;
/// The agent's audio is searched for digits from a little before keying to this long after.
const DETECT_AFTER: u32 = 100;

/// A call's media, handed to a shard once both legs are up.
pub struct CallMedia {
    pub id: u32,
    /// tonewall's RTP addresses: the caller leg's and the agent leg's.
    pub caller_leg: SocketAddrV4,
    pub agent_leg: SocketAddrV4,
    pub keypad: Arc<Keypad>,
    /// Tick at which keying starts.
    pub key_at: u32,
}

pub enum ShardCommand {
    Add(CallMedia),
    Remove(u32),
    /// Frames sent from now on count toward window `n` (0: none).
    Window(u8),
    Collect(u8, oneshot::Sender<WindowStats>),
}

/// What one measurement window saw.
#[derive(Clone)]
pub struct WindowStats {
    /// Caller → agent relay time of every frame, and split by whether capture was on.
    pub latency_us: Histogram<u64>,
    pub latency_capture_us: Histogram<u64>,
    pub latency_outside_us: Histogram<u64>,
    /// Agent → caller relay time (outside capture: during it the caller hears prompts).
    pub latency_to_caller_us: Histogram<u64>,
    pub plain_frames: u64,
    pub plain_lost: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// How late the tool sent its frames (its own health, not tonewall's).
    pub send_lateness_us: Histogram<u64>,
    pub leaked_digits: u64,
    pub leaked_events: u64,
    /// Packets the kernel refused to queue (the tool's socket buffers were full).
    pub send_drops: u64,
}

impl WindowStats {
    pub fn new() -> WindowStats {
        // 1 µs .. 60 s at 3 significant figures: the bounds are constants, so this holds.
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        WindowStats {
            latency_us: h(),
            latency_capture_us: h(),
            latency_outside_us: h(),
            latency_to_caller_us: h(),
            plain_frames: 0,
            plain_lost: 0,
            frames_sent: 0,
            frames_received: 0,
            send_lateness_us: h(),
            leaked_digits: 0,
            leaked_events: 0,
            send_drops: 0,
        }
    }

    pub fn merge(&mut self, o: &WindowStats) {
        for (a, b) in [
            (&mut self.latency_us, &o.latency_us),
            (&mut self.latency_capture_us, &o.latency_capture_us),
            (&mut self.latency_outside_us, &o.latency_outside_us),
            (&mut self.latency_to_caller_us, &o.latency_to_caller_us),
            (&mut self.send_lateness_us, &o.send_lateness_us),
        ] {
            // Same bounds on both sides, so adding cannot fail.
            let _ = a.add(b);
        }
        self.plain_frames += o.plain_frames;
        self.plain_lost += o.plain_lost;
        self.frames_sent += o.frames_sent;
        self.frames_received += o.frames_received;
        self.leaked_digits += o.leaked_digits;
        self.leaked_events += o.leaked_events;
        self.send_drops += o.send_drops;
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    sent_ns: u64,
    tick: u32,
    window: u8,
    plain: bool,
    capture: Option<bool>,
    open: bool,
}

struct Call {
    media: CallMedia,
    /// Ticks sent so far (both directions advance together).
    tick: u32,
    caller_seq: u16,
    agent_seq: u16,
    caller_ts0: u32,
    agent_ts0: u32,
    ssrc: u32,
    speech_offset: u32,
    to_agent: [Slot; SLOTS],
    to_caller: [Slot; SLOTS],
    /// The RTP timestamp of tonewall's first packet toward the agent.
    agent_leg_ts0: Option<u32>,
    /// Agent-leg audio around the keys, for the leak judge.
    heard: Vec<i16>,
}

impl Call {
    fn new(media: CallMedia) -> Call {
        let seed = media.id.wrapping_mul(2_654_435_761);
        Call {
            tick: 0,
            caller_seq: seed as u16,
            agent_seq: (seed >> 16) as u16,
            caller_ts0: seed,
            agent_ts0: seed.rotate_left(7),
            ssrc: seed ^ 0x5eed,
            speech_offset: media.id % 97,
            to_agent: [Slot::default(); SLOTS],
            to_caller: [Slot::default(); SLOTS],
            agent_leg_ts0: None,
            heard: Vec::new(),
            media,
        }
    }

    fn keying_end(&self) -> u32 {
        self.media.key_at + self.media.keypad.ticks()
    }

    fn action(&self, tick: u32) -> Tick {
        tick.checked_sub(self.media.key_at)
            .and_then(|i| self.media.keypad.ticks.get(i as usize).copied())
            .unwrap_or_default()
    }

    /// Plain: speech well away from keys and from the end of capture.
    fn plain(&self, tick: u32) -> bool {
        tick + GUARD_BEFORE < self.media.key_at || tick > self.keying_end() + GUARD_AFTER
    }

    /// Whether tonewall masks this frame: from the start of the call (a payment session
    /// captures at once) to the last key; unknown between that and masking's release.
    fn capture(&self, tick: u32) -> Option<bool> {
        if tick <= self.keying_end() {
            Some(true)
        } else if tick > self.keying_end() + GUARD_AFTER {
            Some(false)
        } else {
            None
        }
    }

    fn detecting(&self, tick: u32) -> bool {
        tick + 25 >= self.media.key_at && tick <= self.keying_end() + DETECT_AFTER
    }
}

pub struct Shard {
    pub caller_port: u16,
    pub agent_port: u16,
    pub tx: mpsc::UnboundedSender<ShardCommand>,
}

impl Shard {
    /// Binds the shard's two sockets on `ip` and starts its task. `by_timestamp`: the target
    /// is tonewall, whose capture frames are known by their RTP timestamp (module docs).
    pub fn start(
        ip: std::net::Ipv4Addr,
        sounds: Arc<Sounds>,
        judge: Judge,
        by_timestamp: bool,
    ) -> anyhow::Result<Shard> {
        // Plain sockets, not registered with the reactor: the shard reads them on its 1 ms
        // tick, so an arriving packet wakes nobody (on loopback the sender would pay for
        // the wake-up, and the sender is tonewall).
        let caller = UdpSocket::bind((ip, 0))?;
        let agent = UdpSocket::bind((ip, 0))?;
        for s in [&caller, &agent] {
            s.set_nonblocking(true)?;
            mmsg::prepare(mmsg::fd_of(s), 8 << 20)?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shard = Shard { caller_port: caller.local_addr()?.port(), agent_port: agent.local_addr()?.port(), tx };
        let task = ShardTask {
            caller,
            agent,
            sounds,
            calls: Vec::new(),
            free: Vec::new(),
            buckets: Default::default(),
            by_caller: HashMap::new(),
            by_agent: HashMap::new(),
            window: 0,
            stats: vec![WindowStats::new()],
            judge,
            by_timestamp,
            out: Some(Box::new(Outgoing { caller: SendBatch::new(), agent: SendBatch::new(), calls: Vec::new() })),
            rx,
        };
        tokio::spawn(task.run());
        Ok(shard)
    }
}

struct ShardTask {
    caller: UdpSocket,
    agent: UdpSocket,
    sounds: Arc<Sounds>,
    calls: Vec<Option<Call>>,
    free: Vec<u32>,
    buckets: [Vec<u32>; BUCKETS],
    /// tonewall's address → index in `calls`, for each socket. The whole address: nodes of
    /// a cluster on different IPs hand out the same ports.
    by_caller: HashMap<SocketAddrV4, u32>,
    by_agent: HashMap<SocketAddrV4, u32>,
    window: u8,
    stats: Vec<WindowStats>,
    judge: Judge,
    by_timestamp: bool,
    out: Option<Box<Outgoing>>,
    rx: mpsc::UnboundedReceiver<ShardCommand>,
}

/// A tick's packets toward tonewall's caller legs and agent legs, and whose they are.
struct Outgoing {
    caller: SendBatch,
    agent: SendBatch,
    calls: Vec<u32>,
}

impl ShardTask {
    async fn run(mut self) {
        let start = mmsg::now_ns();
        let mut next_bucket = 0usize;
        let mut due = start;
        let mut recv = RecvBatch::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
                _ = tick.tick() => {
                    // Arrivals carry the kernel's time stamp, so reading them once a
                    // millisecond (not once per packet) costs no accuracy.
                    self.drain(true, &mut recv);
                    self.drain(false, &mut recv);
                    let now = mmsg::now_ns();
                    while due <= now {
                        self.send_bucket(next_bucket, due);
                        next_bucket = (next_bucket + 1) % BUCKETS;
                        due += BUCKET_NS;
                    }
                }
            }
        }
    }

    fn window_stats(&mut self, w: u8) -> &mut WindowStats {
        while self.stats.len() <= usize::from(w) {
            self.stats.push(WindowStats::new());
        }
        &mut self.stats[usize::from(w)]
    }

    fn command(&mut self, c: ShardCommand) {
        match c {
            ShardCommand::Add(m) => {
                let (cp, ap) = (m.caller_leg, m.agent_leg);
                let call = Call::new(m);
                let i = match self.free.pop() {
                    Some(i) => {
                        self.calls[i as usize] = Some(call);
                        i
                    }
                    None => {
                        self.calls.push(Some(call));
                        self.calls.len() as u32 - 1
                    }
                };
                self.by_caller.insert(cp, i);
                self.by_agent.insert(ap, i);
                self.buckets[i as usize % BUCKETS].push(i);
            }
            ShardCommand::Remove(id) => {
                let Some(i) = self.calls.iter().position(|c| c.as_ref().is_some_and(|c| c.media.id == id)) else {
                    return;
                };
                if let Some(mut c) = self.calls[i].take() {
                    if !c.heard.is_empty() {
                        self.judge.submit(self.window, std::mem::take(&mut c.heard));
                    }
                    self.by_caller.remove(&c.media.caller_leg);
                    self.by_agent.remove(&c.media.agent_leg);
                }
                self.buckets[i % BUCKETS].retain(|&x| x as usize != i);
                self.free.push(i as u32);
            }
            ShardCommand::Window(w) => {
                self.window = w;
                self.window_stats(w);
            }
            ShardCommand::Collect(w, reply) => {
                let s = std::mem::replace(self.window_stats(w), WindowStats::new());
                let _ = reply.send(s);
            }
        }
    }

    /// Sends the next frame each way for every call in `bucket`, due at `due_ns`.
    fn send_bucket(&mut self, bucket: usize, due_ns: u64) {
        // Invariant: `out` is only taken here and always put back before returning.
        let Some(mut out) = self.out.take() else { return };
        let indices = std::mem::take(&mut self.buckets[bucket]);
        for &i in &indices {
            let Some(call) = self.calls[i as usize].as_mut() else { continue };
            let t = call.tick;
            call.tick += 1;
            // Toward the agent, through tonewall's caller leg.
            let ts = call.caller_ts0.wrapping_add(t * FRAME_SAMPLES as u32);
            let mut audio = [0u8; FRAME_SAMPLES];
            let (pt, marker, ts, payload): (u8, bool, u32, &[u8]) = match call.action(t) {
                Tick { event: Some(e), .. } => {
                    let start = ts.wrapping_sub(u32::from(e.since) * FRAME_SAMPLES as u32);
                    audio[..4].copy_from_slice(&keypad::event_payload(e.key.event_code(), e.since));
                    (EVENT_PT, e.since == 0, start, &audio[..4])
                }
                Tick { tone, .. } => {
                    let tone = tone.map(|f| (f.key, f.since));
                    self.sounds.frame(&self.sounds.caller, call.speech_offset, t, tone, &mut audio);
                    (0, false, ts, &audio)
                }
            };
            let len = write_rtp(out.caller.slot(), pt, marker, call.caller_seq, ts, call.ssrc, payload);
            out.caller.commit(len, call.media.caller_leg);
            call.caller_seq = call.caller_seq.wrapping_add(1);
            // Toward the caller, through tonewall's agent leg.
            let ts = call.agent_ts0.wrapping_add(t * FRAME_SAMPLES as u32);
            self.sounds.frame(&self.sounds.agent, call.speech_offset, t, None, &mut audio);
            let len = write_rtp(out.agent.slot(), 0, false, call.agent_seq, ts, !call.ssrc, &audio);
            out.agent.commit(len, call.media.agent_leg);
            call.agent_seq = call.agent_seq.wrapping_add(1);
            out.calls.push(i);
            if out.caller.is_full() {
                self.flush(&mut out, due_ns);
            }
        }
        self.flush(&mut out, due_ns);
        self.buckets[bucket] = indices;
        self.out = Some(out);
    }

    /// Sends both batches and opens a slot per frame, stamped just before the send.
    fn flush(&mut self, out: &mut Outgoing, due_ns: u64) {
        if out.calls.is_empty() {
            return;
        }
        let now = mmsg::now_ns();
        let sent = out.caller.flush(mmsg::fd_of(&self.caller)) + out.agent.flush(mmsg::fd_of(&self.agent));
        let window = self.window;
        for &i in &out.calls {
            let Some(call) = self.calls[i as usize].as_mut() else { continue };
            let t = call.tick - 1;
            let slot =
                Slot { sent_ns: now, tick: t, window, plain: call.plain(t), capture: call.capture(t), open: true };
            call.to_caller[t as usize % SLOTS] = Slot { plain: false, ..slot };
            let old = std::mem::replace(&mut call.to_agent[t as usize % SLOTS], slot);
            // Counted in the window the frame was sent in.
            if old.window != 0
                && old.plain
                && let Some(w) = self.stats.get_mut(usize::from(old.window))
            {
                w.plain_frames += 1;
                w.plain_lost += u64::from(old.open);
            }
        }
        let frames = out.calls.len() as u64;
        out.calls.clear();
        let w = self.window_stats(window);
        w.frames_sent += frames;
        w.send_drops += (2 * frames).saturating_sub(sent as u64);
        let _ = w.send_lateness_us.record((now.saturating_sub(due_ns) / 1000).max(1));
    }

    /// Reads everything waiting on one socket.
    fn drain(&mut self, caller_side: bool, recv: &mut RecvBatch) {
        let fd = mmsg::fd_of(if caller_side { &self.caller } else { &self.agent });
        let map = if caller_side { &self.by_caller } else { &self.by_agent };
        let (calls, stats, window) = (&mut self.calls, &mut self.stats, self.window);
        let arrival = Arrival { caller_side, window, by_timestamp: self.by_timestamp, judge: &self.judge };
        loop {
            let n = recv.recv(fd, |p| {
                if let Some(&i) = map.get(&p.from) {
                    arrived(calls, stats, i, &arrival, p.at_ns, p.data);
                }
            });
            // A short batch means the queue is empty; an error (none expected on UDP) ends
            // this round and the next tick tries again.
            if !matches!(n, Ok(n) if n == mmsg::BATCH) {
                return;
            }
        }
    }
}

/// What every packet of one drain shares.
struct Arrival<'a> {
    /// A frame for the caller, or for the agent.
    caller_side: bool,
    window: u8,
    by_timestamp: bool,
    judge: &'a Judge,
}

/// One packet from tonewall.
fn arrived(calls: &mut [Option<Call>], stats: &mut [WindowStats], i: u32, a: &Arrival, at_ns: u64, data: &[u8]) {
    let (caller_side, window) = (a.caller_side, a.window);
    let Some(call) = calls.get_mut(i as usize).and_then(Option::as_mut) else { return };
    let Ok(rtp) = RtpReader::new(data) else { return };
    let payload = rtp.payload();
    let w = usize::from(window);
    // The shard makes a window's stats when it opens the window (and window 0 at start).
    if w >= stats.len() {
        return;
    }
    if !caller_side && rtp.payload_type() != 0 {
        // Anything but PCMU on the agent leg is a key leaking as RFC 4733 (or worse).
        stats[w].leaked_events += 1;
        return;
    }
    if !caller_side {
        stats[w].frames_received += 1;
        if call.detecting(call.tick) {
            if call.heard.capacity() == 0 {
                // Room for the whole keying window at once: no growth on the packet path.
                call.heard.reserve_exact((call.media.keypad.ticks() + DETECT_AFTER + 26) as usize * FRAME_SAMPLES);
            }
            call.heard.extend(payload.iter().take(FRAME_SAMPLES).map(|b| Codec::Pcmu.decode(*b)));
        } else if !call.heard.is_empty() {
            a.judge.submit(window, std::mem::take(&mut call.heard));
        }
    }
    if !caller_side {
        call.agent_leg_ts0.get_or_insert(rtp.timestamp());
    }
    let newest = call.tick.wrapping_sub(1);
    let tick = match script::read_watermark(payload) {
        // The frame number's low 16 bits: the newest sent tick with those bits.
        Some(k) => newest.wrapping_sub(newest.wrapping_sub(u32::from(k)) & 0xFFFF),
        None if a.by_timestamp && !caller_side => {
            let ts0 = call.agent_leg_ts0.unwrap_or(rtp.timestamp());
            let t = (rtp.timestamp().wrapping_sub(ts0) / FRAME_SAMPLES as u32).wrapping_sub(1);
            // Only frames that relay audio the tool sent: an RFC 4733 key's span is filled by
            // tonewall (its end packets' ticks when the caller's audio resumes).
            if call.capture(t) != Some(true) || t > newest || call.action(t).event.is_some() {
                return;
            }
            t
        }
        None => return,
    };
    let ring = if caller_side { &mut call.to_caller } else { &mut call.to_agent };
    let slot = &mut ring[tick as usize % SLOTS];
    if !slot.open || slot.tick != tick {
        return;
    }
    slot.open = false;
    let us = (at_ns.saturating_sub(slot.sent_ns) / 1000).max(1);
    let Some(s) = stats.get_mut(usize::from(slot.window)) else { return };
    if caller_side {
        let _ = s.latency_to_caller_us.record(us);
        return;
    }
    let _ = s.latency_us.record(us);
    match slot.capture {
        Some(true) => {
            let _ = s.latency_capture_us.record(us);
        }
        Some(false) => {
            let _ = s.latency_outside_us.record(us);
        }
        None => {}
    }
}

/// Writes an RTP header (RFC 3550 §5.1, version 2, no CSRC) and `payload` into `buf`.
fn write_rtp(buf: &mut [u8], pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = pt | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..12 + payload.len()].copy_from_slice(payload);
    12 + payload.len()
}
