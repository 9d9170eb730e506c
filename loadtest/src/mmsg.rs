//! Batched UDP: `sendmmsg(2)` for a tick's packets and `recvmmsg(2)` with kernel receive
//! timestamps (`SO_TIMESTAMPNS`, CLOCK_REALTIME), so a packet's arrival time is when the
//! kernel queued it, not when this process got round to reading it. Buffers are reserved
//! once; nothing is allocated per packet.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

/// The largest RTP packet the load tool sends or reads.
pub const PACKET: usize = 256;
/// Packets per system call.
pub const BATCH: usize = 64;
const CONTROL: usize = 64;

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME, the clock of `SO_TIMESTAMPNS`.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Turns on kernel receive timestamps and asks for large socket buffers (a tick's burst of
/// a thousand calls must not overflow them).
pub fn prepare(fd: RawFd, buffer_bytes: usize) -> io::Result<()> {
    let on: libc::c_int = 1;
    let size = buffer_bytes as libc::c_int;
    // SAFETY: plain setsockopt calls on an open socket with correctly sized int options.
    unsafe {
        check(libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, (&raw const on).cast(), 4))?;
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            // The FORCE variants pass rmem_max when we may (root); otherwise the capped one.
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, (&raw const size).cast(), 4) != 0 {
                check(libc::setsockopt(fd, libc::SOL_SOCKET, plain, (&raw const size).cast(), 4))?;
            }
        }
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// Up to `BATCH` packets queued for one `sendmmsg`.
pub struct SendBatch {
    bufs: Box<[[u8; PACKET]; BATCH]>,
    lens: [usize; BATCH],
    addrs: Box<[libc::sockaddr_in; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    count: usize,
}

impl SendBatch {
    pub fn new() -> SendBatch {
        // SAFETY: iovec, sockaddr_in and mmsghdr are plain old data; zero is valid for each
        // (null pointers are filled in before every send).
        unsafe {
            SendBatch {
                bufs: Box::new([[0; PACKET]; BATCH]),
                lens: [0; BATCH],
                addrs: Box::new(zeroed()),
                iovs: Box::new(zeroed()),
                hdrs: Box::new(zeroed()),
                count: 0,
            }
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// The next free packet buffer; `commit` queues it with its length and destination.
    pub fn slot(&mut self) -> &mut [u8; PACKET] {
        &mut self.bufs[self.count]
    }

    pub fn commit(&mut self, len: usize, to: SocketAddrV4) {
        self.lens[self.count] = len;
        self.addrs[self.count] = to_sockaddr(to);
        self.count += 1;
    }

    /// Sends what is queued; returns how many the kernel took (the rest are dropped: RTP is
    /// loss-tolerant and a full socket buffer is the kind of loss the report must show).
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let n = self.count;
        self.count = 0;
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.lens[i] };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: hdrs[sent..n] point into buffers owned by self that outlive the call.
            let rc = unsafe { libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if rc <= 0 {
                break;
            }
            sent += rc as usize;
        }
        sent
    }
}

// SAFETY: the raw pointers in the headers only ever point into buffers the same batch owns
// (boxed, so they do not move with it), and are rewritten before every system call.
unsafe impl Send for SendBatch {}
unsafe impl Send for RecvBatch {}

/// One datagram read by `RecvBatch::recv`.
pub struct Received<'a> {
    pub from: SocketAddrV4,
    pub at_ns: u64,
    pub data: &'a [u8],
}

pub struct RecvBatch {
    bufs: Box<[[u8; PACKET]; BATCH]>,
    addrs: Box<[libc::sockaddr_in; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    ctrl: Box<[[u8; CONTROL]; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        // SAFETY: as in SendBatch::new.
        unsafe {
            RecvBatch {
                bufs: Box::new([[0; PACKET]; BATCH]),
                addrs: Box::new(zeroed()),
                iovs: Box::new(zeroed()),
                ctrl: Box::new([[0; CONTROL]; BATCH]),
                hdrs: Box::new(zeroed()),
            }
        }
    }

    /// Reads what is waiting without blocking and hands each datagram to `each`; returns
    /// how many were read (0 when none was waiting).
    pub fn recv(&mut self, fd: RawFd, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: PACKET };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL;
            h.msg_flags = 0;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let rc = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let fallback = now_ns();
        for i in 0..rc as usize {
            let a = &self.addrs[i];
            let from = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port));
            let at_ns = timestamp(&self.hdrs[i].msg_hdr).unwrap_or(fallback);
            let len = (self.hdrs[i].msg_len as usize).min(PACKET);
            each(Received { from, at_ns, data: &self.bufs[i][..len] });
        }
        Ok(rc as usize)
    }
}

/// The `SCM_TIMESTAMPNS` control message of a received datagram, in ns since the epoch.
fn timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled for this header.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

pub fn fd_of(s: &impl AsRawFd) -> RawFd {
    s.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn a_batch_crosses_loopback_with_kernel_timestamps() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        prepare(b.as_raw_fd(), 1 << 20).unwrap();
        let SocketAddr::V4(to) = b.local_addr().unwrap() else { panic!("bound on IPv4") };
        let before = now_ns();
        let mut batch = SendBatch::new();
        for i in 0..10u8 {
            batch.slot()[0] = i;
            batch.commit(1 + usize::from(i), to);
        }
        assert_eq!(batch.flush(a.as_raw_fd()), 10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut seen = Vec::new();
        let mut r = RecvBatch::new();
        let n = r
            .recv(b.as_raw_fd(), |p| {
                assert_eq!(SocketAddr::V4(p.from), a.local_addr().unwrap());
                assert!(p.at_ns >= before && p.at_ns <= now_ns(), "a kernel time within the test");
                seen.push((p.data[0], p.data.len()));
            })
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(seen, (0..10u8).map(|i| (i, 1 + usize::from(i))).collect::<Vec<_>>());
        assert_eq!(r.recv(b.as_raw_fd(), |_| {}).unwrap(), 0, "nothing left, and no blocking");
    }
}
