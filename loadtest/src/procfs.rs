//! CPU time and resident memory of a process, from /proc (proc(5)): tonewall's, found by
//! the UDP port it listens on, and the load tool's own.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;

/// Clock ticks per second of /proc/<pid>/stat times (sysconf(_SC_CLK_TCK)).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    cpu_seconds: f64,
    pub rss_bytes: u64,
}

pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, rss (pages) field 24; `rest` starts at 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).context("stat field");
    let cpu_seconds = (field(14)? + field(15)?) as f64 / ticks_per_second();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(Sample { at: Instant::now(), cpu_seconds, rss_bytes: field(24)? * page })
}

/// CPU seconds (user and system) used between two samples.
pub fn cpu_seconds(a: &Sample, b: &Sample) -> f64 {
    b.cpu_seconds - a.cpu_seconds
}

/// CPU used between two samples, in percent of one core.
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 { 0.0 } else { 100.0 * cpu_seconds(a, b) / wall }
}

/// The process that has a UDP socket bound to `addr`'s port (the SIP listener).
pub fn pid_listening_on(addr: SocketAddr) -> anyhow::Result<u32> {
    let port = format!(":{:04X}", addr.port());
    let mut inodes = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(1).is_some_and(|local| local.ends_with(&port))
                && let Some(inode) = cols.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    anyhow::ensure!(!inodes.is_empty(), "nothing listens on UDP port {}", addr.port());
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Ok(pid);
            }
        }
    }
    anyhow::bail!("no process of ours holds the socket on UDP port {}; pass --server-pid", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_socket_and_measures_itself() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(pid_listening_on(s.local_addr().unwrap()).unwrap(), std::process::id());
        let a = sample(std::process::id()).unwrap();
        // Spin this thread for 300 ms of its own CPU time (CLOCK_THREAD_CPUTIME_ID, which
        // counts only what this thread ran): the process used at least that much.
        let spent = || {
            let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: t is a valid timespec to write.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
        };
        let start = spent();
        let mut x = 0u64;
        while spent() - start < 0.3 {
            for i in 0..100_000u64 {
                x = x.wrapping_add(i * i);
            }
        }
        std::hint::black_box(x);
        let b = sample(std::process::id()).unwrap();
        assert!(b.rss_bytes > 1 << 20, "{} bytes resident", b.rss_bytes);
        // /proc counts in clock ticks (10 ms): at least 0.3 s less a tick at each end.
        let used = cpu_seconds(&a, &b);
        assert!(used >= 0.28, "/proc/self/stat counted {used} s of the 0.3 s this thread spun");
        assert!(cpu_percent(&a, &b) > 0.0);
    }
}
