//! sipp as a peer: pcaps of RFC 4733 key presses for it to replay, free loopback ports, and
//! running a scenario from `tests/sipp/` with the test's substitutions.

use std::io::Read;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EVENT_PT: u8 = 101;

/// A little-endian pcap (Ethernet, IPv4, UDP) of RTP telephone-events for `keypad`: per key
/// 4 updates and 3 end packets 20 ms apart, 100 ms between keys, `,` a one-second pause.
/// sipp replays each packet at its capture time.
pub fn keypad_pcap(keypad: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    let mut t_ms: u64 = 1_000; // let the first prompt start
    let mut seq: u16 = 1000;
    for c in keypad.chars() {
        if c == ',' {
            t_ms += 1_000;
            continue;
        }
        let code = match c {
            '*' => 10,
            '#' => 11,
            d => d.to_digit(10).expect("keypad digit") as u8,
        };
        let start_ts = (t_ms * 8) as u32;
        for i in 0..7u16 {
            let end = i >= 4;
            let duration: u16 = if end { 800 } else { (i + 1) * 160 };
            let mut rtp = vec![0x80, if i == 0 { 0x80 | EVENT_PT } else { EVENT_PT }];
            rtp.extend_from_slice(&seq.to_be_bytes());
            rtp.extend_from_slice(&start_ts.to_be_bytes());
            rtp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            rtp.extend_from_slice(&[code, if end { 0x80 | 10 } else { 10 }]);
            rtp.extend_from_slice(&duration.to_be_bytes());
            push_udp_frame(&mut out, t_ms + u64::from(i) * 20, &rtp);
            seq = seq.wrapping_add(1);
        }
        t_ms += 7 * 20 + 100;
    }
    out
}

fn push_udp_frame(out: &mut Vec<u8>, t_ms: u64, payload: &[u8]) {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&folded.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&4000u16.to_be_bytes());
    frame.extend_from_slice(&4002u16.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    out.extend_from_slice(&((t_ms / 1000) as u32).to_le_bytes());
    out.extend_from_slice(&(((t_ms % 1000) * 1000) as u32).to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
}

/// Ports for the tests' own listeners are handed out from 10000-19999: below the kernel's
/// ephemeral range (32768 on), where a port probed free can be taken by any connect() or
/// bind(0) before the peer that was to listen on it binds it (sipp's media socket lost such
/// a race in CI), and below tonewall's RTP range (20000 on). Each test binary starts at its
/// own offset; within one, ports are never handed out twice.
fn next_block(block: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = 10_000 + (std::process::id() % 500) * 20;
    let offset = NEXT.fetch_add(u32::from(block.max(2)), Ordering::Relaxed);
    (10_000 + (start - 10_000 + offset) % 9_980) as u16 & !1
}

/// `block` consecutive ports, the first even, free on UDP and TCP.
fn free_block(block: u16) -> u16 {
    loop {
        let p = next_block(block);
        let free = |port: u16| {
            UdpSocket::bind(("127.0.0.1", port)).is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if (0..block.max(1)).all(|i| free(p + i)) {
            return p;
        }
    }
}

pub fn free_udp_port(block: u16) -> u16 {
    free_block(block)
}

/// A port free for SIP over both UDP and TCP (`serve` listens on both), for a fixed
/// `--sip-listen`.
pub fn free_sip_port() -> u16 {
    free_block(1)
}

pub fn free_tcp_port() -> u16 {
    free_block(1)
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// Kills the child when a failed assertion unwinds the test, so no server outlives it.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scenario from `tests/sipp/` with `subs` applied, written into `dir`.
pub fn scenario(dir: &Path, name: &str, subs: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)).unwrap();
    for (from, to) in subs {
        assert!(text.contains(from), "{name} has no {from}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts sipp on `scenario` for one call from 127.0.0.1:`port` (media on `port + 2`...).
pub fn spawn(dir: &Path, scenario: &Path, port: u16, extra: &[&str]) -> KillOnDrop {
    spawn_at(dir, scenario, "127.0.0.1", port, extra)
}

/// `spawn` with sipp's SIP and media on `ip` (`::1` for IPv6).
pub fn spawn_at(dir: &Path, scenario: &Path, ip: &str, port: u16, extra: &[&str]) -> KillOnDrop {
    super::require_tool("sipp", "apt-get install -y sip-tester");
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(scenario)
        .args(["-m", "1", "-l", "1", "-i", ip, "-p", &port.to_string()])
        .args(["-mi", ip, "-mp", &free_udp_port(4).to_string(), "-timeout", "90s", "-timeout_error"])
        .args(["-nostdin", "-trace_err", "-error_file"])
        .arg(dir.join(format!("sipp-{port}-errors.log")))
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    KillOnDrop(Some(child))
}

/// Waits for a sipp started by `spawn`; panics with its errors unless it passed.
pub async fn passed(mut sipp: KillOnDrop, dir: &Path, what: &str) {
    let mut child = sipp.0.take().expect("sipp running");
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let st = wait_with_timeout(&mut child, Duration::from_secs(120));
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (st, err)
    })
    .await
    .unwrap();
    if !status.is_some_and(|s| s.success()) {
        let logs: String = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("errors.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        panic!("sipp ({what}) failed: {status:?}\n{stderr}\n{logs}");
    }
}

/// Waits until something listens on 127.0.0.1:`port` over TCP (a LISTEN row in
/// /proc/net/tcp), without connecting; panics after `limit`.
pub async fn wait_listening(port: u16, limit: Duration) {
    let row = format!("0100007F:{port:04X} 00000000:0000 0A");
    let deadline = std::time::Instant::now() + limit;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| l.split_whitespace().skip(1).take(3).collect::<Vec<_>>().join(" ") == row) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "nothing listens on 127.0.0.1:{port} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
