//! The leak judge: spandsp's `dtmf_rx` (Debian `libspandsp-dev`), not tonewall's own
//! detector, which cannot see what it misses. The C harness the masking tests use
//! (`tests/judges/spandsp_dtmf.c`) is compiled when the tool starts; the shards hand over
//! each call's agent-leg audio around its keys, and one worker thread pipes it through the
//! harness at the lowest CPU priority (`nice -n 19`), and only while no window is being
//! measured (`hold`), so judging takes nothing from the system under load while it counts.
//! Digits are counted per measurement window.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

const HARNESS: &str = include_str!("../../tests/judges/spandsp_dtmf.c");
const INSTALL: &str = "apt-get install -y libspandsp-dev pkg-config gcc";

#[derive(Default)]
struct Tally {
    pending: usize,
    digits: HashMap<u8, u64>,
    failures: u64,
}

#[derive(Clone)]
pub struct Judge {
    jobs: mpsc::Sender<(u8, Vec<i16>)>,
    tally: Arc<(Mutex<Tally>, Condvar)>,
    held: Arc<AtomicBool>,
}

impl Judge {
    /// Compiles the harness and starts the worker; fails with the install command if
    /// spandsp, pkg-config or gcc is missing.
    pub fn start() -> anyhow::Result<Judge> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("spandsp_dtmf.c");
        std::fs::write(&src, HARNESS)?;
        let flags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "spandsp"])
            .output()
            .with_context(|| format!("pkg-config is missing: {INSTALL}"))?;
        ensure!(flags.status.success(), "spandsp is not installed (the leak judge needs it): {INSTALL}");
        let bin = dir.path().join("spandsp_dtmf");
        let st = Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(String::from_utf8_lossy(&flags.stdout).split_whitespace())
            .status()
            .with_context(|| format!("gcc is missing: {INSTALL}"))?;
        ensure!(st.success(), "the spandsp judge did not compile");
        let (jobs, rx) = mpsc::channel::<(u8, Vec<i16>)>();
        let tally: Arc<(Mutex<Tally>, Condvar)> = Arc::default();
        let t = tally.clone();
        let held: Arc<AtomicBool> = Arc::default();
        let h = held.clone();
        std::thread::spawn(move || {
            let _dir = dir; // the binary lives as long as the worker
            for (window, pcm) in rx {
                while h.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let heard = judge(&bin, &pcm);
                let (lock, done) = &*t;
                let mut tally = lock.lock().unwrap_or_else(|e| e.into_inner());
                match heard {
                    Ok(n) => *tally.digits.entry(window).or_default() += n,
                    Err(_) => tally.failures += 1,
                }
                tally.pending -= 1;
                done.notify_all();
            }
        });
        Ok(Judge { jobs, tally, held })
    }

    /// While held (a window is being measured), queued audio waits.
    pub fn hold(&self, on: bool) {
        self.held.store(on, Ordering::Relaxed);
    }

    /// Queues one call's agent-leg audio, counted toward `window`.
    pub fn submit(&self, window: u8, pcm: Vec<i16>) {
        let (lock, _) = &*self.tally;
        lock.lock().unwrap_or_else(|e| e.into_inner()).pending += 1;
        if self.jobs.send((window, pcm)).is_err() {
            lock.lock().unwrap_or_else(|e| e.into_inner()).failures += 1;
        }
    }

    /// Waits until everything queued is judged; takes the digits heard in `windows`. A judge
    /// that failed to run is an error, never "no digit".
    pub fn take(&self, windows: impl Fn(u8) -> bool) -> anyhow::Result<u64> {
        self.hold(false);
        let (lock, done) = &*self.tally;
        let mut tally = lock.lock().unwrap_or_else(|e| e.into_inner());
        while tally.pending > 0 {
            tally = done.wait(tally).unwrap_or_else(|e| e.into_inner());
        }
        if tally.failures > 0 {
            bail!("the spandsp leak judge failed on {} calls' audio", tally.failures);
        }
        let taken: Vec<u8> = tally.digits.keys().copied().filter(|w| windows(*w)).collect();
        Ok(taken.iter().filter_map(|w| tally.digits.remove(w)).sum())
    }
}

/// Digits the harness hears in `pcm`; it must report having read all of it.
fn judge(bin: &PathBuf, pcm: &[i16]) -> anyhow::Result<u64> {
    let mut child = Command::new("nice")
        .args(["-n", "19"])
        .arg(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the spandsp judge")?;
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut stdin = child.stdin.take().context("judge stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("judge writer panicked"))??;
    ensure!(out.status.success(), "the spandsp judge failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let read = text.lines().find_map(|l| l.strip_prefix("end ")).and_then(|n| n.parse::<usize>().ok());
    ensure!(read == Some(pcm.len()), "the spandsp judge read {read:?} of {} samples", pcm.len());
    Ok(text.lines().filter(|l| !l.starts_with("end ")).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonewall::media::dtmf::signal::{TonePair, push_silence, push_tone, to_i16};
    use tonewall::media::telephone_event::Key;

    #[test]
    fn hears_tones_and_nothing_in_silence_per_window() {
        let judge = Judge::start().expect("spandsp judge");
        let mut x = Vec::new();
        for c in "42#".chars() {
            push_tone(&mut x, TonePair::key(Key::from_char(c).unwrap(), -10.0), 80.0);
            push_silence(&mut x, 80.0);
        }
        judge.submit(1, to_i16(&x));
        judge.submit(2, vec![0; 8000]);
        assert_eq!(judge.take(|w| w == 1).unwrap(), 3);
        assert_eq!(judge.take(|w| w == 2).unwrap(), 0);
    }
}
