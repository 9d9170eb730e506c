//! The independent DTMF judges the masking tests trust instead of tonewall's own detector:
//! spandsp's `dtmf_rx` (Debian `libspandsp-dev`, through the small C harness in
//! `tests/judges/spandsp_dtmf.c`, compiled once per test run) and `multimon-ng` (fed through
//! sox at its own 22050 Hz rate). Each call proves the judge read the whole input: spandsp's
//! harness reports how many samples it read, multimon-ng must hear a marker digit appended
//! after the audio. A judge that did not run can therefore never read as "no digit".

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tonewall::media::dtmf::signal::{TonePair, push_silence, push_tone, to_i16};
use tonewall::media::telephone_event::Key;

use super::require_tool;

/// A digit a judge heard, and the sample (8 kHz) at which it reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub digit: char,
    pub at: u64,
}

fn spandsp_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        const INSTALL: &str = "apt-get install -y libspandsp-dev pkg-config gcc";
        require_tool("gcc", INSTALL);
        require_tool("pkg-config", INSTALL);
        let flags =
            Command::new("pkg-config").args(["--cflags", "--libs", "spandsp"]).output().expect("pkg-config runs");
        assert!(flags.status.success(), "spandsp is not installed. Install it with: {INSTALL}");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/judges/spandsp_dtmf.c");
        let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("spandsp_dtmf-{}", std::process::id()));
        let st = Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(src)
            .args(String::from_utf8_lossy(&flags.stdout).split_whitespace())
            .status()
            .expect("gcc runs");
        assert!(st.success(), "the spandsp judge did not compile");
        bin
    })
}

/// Runs `cmd` with `input` on its stdin (written from a thread, so a full pipe cannot
/// deadlock) and returns its stdout.
fn pipe_through(mut cmd: Command, input: Vec<u8>) -> String {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("judge starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("judge output");
    let status = child.wait().expect("judge ends");
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).ok();
    writer.join().expect("writer").expect("judge read its input");
    assert!(status.success(), "judge failed: {err}");
    out
}

fn raw(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Every digit spandsp's `dtmf_rx` (default settings) hears in 8 kHz linear audio.
pub fn spandsp(pcm: &[i16]) -> Vec<Heard> {
    let out = pipe_through(Command::new(spandsp_binary()), raw(pcm));
    let mut heard = Vec::new();
    let mut read = None;
    for line in out.lines() {
        let (a, b) = line.split_once(' ').expect("judge line");
        if a == "end" {
            read = b.parse::<u64>().ok();
        } else {
            heard.push(Heard { digit: b.chars().next().expect("digit"), at: a.parse().expect("sample") });
        }
    }
    assert_eq!(read, Some(pcm.len() as u64), "spandsp read the whole input");
    heard
}

/// The marker multimon-ng must hear after every input: a clean `D`, which no card contains.
const MARKER: char = 'D';

fn marker() -> Vec<i16> {
    let mut x = Vec::new();
    push_silence(&mut x, 200.0);
    push_tone(&mut x, TonePair::key(Key::Letter(b'D'), -10.0), 80.0);
    push_silence(&mut x, 200.0);
    to_i16(&x)
}

/// The digits multimon-ng hears in 8 kHz linear audio, in order. The audio is resampled by
/// sox (no dither, repeatable) to the 22050 Hz multimon-ng works at; the marker appended
/// after it must come out last, or the judge did not read everything.
pub fn multimon(pcm: &[i16]) -> String {
    require_tool("multimon-ng", "apt-get install -y multimon-ng");
    require_tool("sox", "apt-get install -y sox");
    let mut input = pcm.to_vec();
    input.extend(marker());
    let mut sox = Command::new("sox")
        .args(["-V1", "-R", "-D", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", "-"])
        .args(["-t", "raw", "-r", "22050", "-e", "signed", "-b", "16", "-c", "1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sox starts");
    let mut stdin = sox.stdin.take().expect("stdin");
    let bytes = raw(&input);
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let mut resampled = Vec::new();
    sox.stdout.take().expect("stdout").read_to_end(&mut resampled).expect("sox output");
    assert!(sox.wait().expect("sox ends").success(), "sox failed");
    writer.join().expect("writer").expect("sox read its input");
    let mut cmd = Command::new("multimon-ng");
    cmd.args(["-q", "-c", "-a", "DTMF", "-t", "raw", "-"]);
    let out = pipe_through(cmd, resampled);
    let mut digits: String = out.lines().filter_map(|l| l.strip_prefix("DTMF: ")).collect();
    let heard = digits.len();
    assert_eq!(digits.pop(), Some(MARKER), "multimon-ng did not hear its marker last ({heard} digits heard)");
    digits
}

/// One channel of interleaved stereo.
pub fn channel(interleaved: &[i16], which: usize) -> Vec<i16> {
    interleaved.iter().skip(which).step_by(2).copied().collect()
}
