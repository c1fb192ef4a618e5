//! Unix stream sockets with descriptor passing (`SCM_RIGHTS`), and `poll`.

use super::cvt_retry;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sets both socket buffer sizes (best effort; the kernel may cap them).
pub(crate) fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, bytes);
}

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends as much of `bufs` as the socket takes in one call, with `fds`
/// attached to the first byte. Never raises SIGPIPE.
///
/// The descriptors come as numbers (a number that is not open fails with
/// `EBADF`), which rustix's `sendmsg` would need as borrowed descriptors;
/// this one call stays on libc.
pub(crate) fn send(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "one message can carry at most {MAX_FDS} descriptors, not {}",
                fds.len()
            ),
        ));
    }
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at a zeroed buffer of msg_controllen
        // bytes, large enough for one cmsghdr carrying `fds.len()` ints, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the copy.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // IoSlice is ABI-compatible with iovec on Unix (documented by std).
    // SAFETY: `msg` points at live buffers (iovecs, control) for the call.
    let n = cvt_retry(|| unsafe {
        libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) as libc::c_int
    })?;
    Ok(n as usize)
}

/// Receives up to `buf.len()` bytes; descriptors that arrive with them are
/// appended to `fds_out` (close-on-exec). `Ok(0)` means the peer closed.
///
/// # Errors
///
/// Besides the socket's own errors: when descriptors sent with the bytes
/// could not all be received (this process has too many open files), the
/// bytes are consumed and the error says so, rather than returning the
/// bytes without some of their descriptors.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    recv_up_to(fd, buf, fds_out, MAX_FDS)
}

/// [`recv`] with room for `max_fds` descriptors per message.
fn recv_up_to(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<Received> {
    const SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));
    let mut space = [MaybeUninit::<u8>::uninit(); SPACE];
    let len = rustix::cmsg_space!(ScmRights(max_fds)).min(SPACE);
    let mut control = RecvAncillaryBuffer::new(&mut space[..len]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match rustix::net::recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut received = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Some descriptors did not fit in this process (out of descriptors,
        // most likely). The bytes arrived and stay in the stream; the
        // descriptors that did arrive mean nothing without the rest.
        drop(received);
        return Ok(Received {
            bytes: msg.bytes,
            fds_lost: true,
        });
    }
    fds_out.append(&mut received);
    Ok(Received {
        bytes: msg.bytes,
        fds_lost: false,
    })
}

/// What one [`recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes read (0: the peer closed).
    pub(crate) bytes: usize,
    /// Descriptors sent with these bytes were lost: they did not fit in
    /// this process (see [`fds_lost_error`]).
    pub(crate) fds_lost: bool,
}

/// The error for descriptors that were sent but could not be received.
pub(crate) fn fds_lost_error() -> io::Error {
    io::Error::other(
        "descriptors sent with this message were lost: this process has too many open files \
         (EMFILE); raise its open-file limit or keep fewer handles in flight",
    )
}

/// The longest single wait of [`poll`]; a wait without a deadline is a
/// loop of these.
const NO_LIMIT_STEP: Duration = Duration::from_secs(3600);

/// Readiness of one descriptor after [`poll`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Data (or end of file) can be read.
    pub(crate) readable: bool,
    /// The peer hung up or the descriptor is in error.
    pub(crate) hangup: bool,
}

/// The most descriptors one [`poll`] waits on.
pub(crate) const MAX_POLL: usize = 8;

/// What [`poll`] found: one [`Ready`] per descriptor, in order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Readiness {
    ready: [Ready; MAX_POLL],
    len: usize,
}

impl std::ops::Deref for Readiness {
    type Target = [Ready];
    fn deref(&self) -> &[Ready] {
        &self.ready[..self.len]
    }
}

/// Waits until one of `fds` (at most [`MAX_POLL`]) is readable or
/// `deadline` passes (`None`: no limit). All false on timeout.
pub(crate) fn poll(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<Readiness> {
    if fds.len() > MAX_POLL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one poll",
        ));
    }
    let mut pfds: [PollFd<'_>; MAX_POLL] = std::array::from_fn(|i| {
        PollFd::from_borrowed_fd(fds.get(i).copied().unwrap_or(fds[0]), PollFlags::IN)
    });
    let pfds = &mut pfds[..fds.len()];
    loop {
        // One wait is at most `NO_LIMIT_STEP`: a longer one (or one
        // without a deadline) loops.
        let left = deadline.map_or(NO_LIMIT_STEP, |d| {
            d.saturating_duration_since(Instant::now())
                .min(NO_LIMIT_STEP)
        });
        let timeout = rustix::time::Timespec::try_from(left).ok();
        let n = match rustix::event::poll(pfds, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => other?,
        };
        if n == 0 && deadline.is_none_or(|d| Instant::now() < d) {
            continue;
        }
        let mut out = Readiness {
            ready: [Ready::default(); MAX_POLL],
            len: fds.len(),
        };
        for (o, p) in out.ready.iter_mut().zip(pfds.iter()) {
            let r = p.revents();
            *o = Ready {
                readable: r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR),
                hangup: r.intersects(PollFlags::HUP | PollFlags::ERR),
            };
        }
        return Ok(out);
    }
}

/// Waits until `fd` is readable, or `deadline` passes (`false`).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    Ok(poll(&[fd], deadline)?[0].readable)
}

/// Makes a blocking receive on `fd` give up after `d` (`EAGAIN`).
pub(crate) fn set_receive_timeout(fd: BorrowedFd<'_>, d: Duration) -> io::Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    Ok(set_socket_timeout(fd, Timeout::Recv, Some(d))?)
}

/// `Instant::now() + d`, or `None` (no limit) if that overflows.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Makes descriptor number `target` refer to what `src` refers to
/// (`dup2`), closing what it referred to before. Only skprocess's own tests
/// use it, to play a parent that sends garbage on a child's control socket.
#[cfg(feature = "bench-internals")]
pub(crate) fn replace_descriptor(src: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes descriptor numbers and touches no memory of ours;
    // `src` is open for the call (it is borrowed), and `target` is replaced
    // atomically, so whoever owns that number keeps an open descriptor (now
    // to another file) and never sees it closed under it.
    super::cvt(unsafe { libc::dup2(src.as_raw_fd(), target) }).map(drop)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = socketpair().unwrap();
        let (x, _y) = socketpair().unwrap();
        let n = send(
            a.as_fd(),
            &[IoSlice::new(b"hi")],
            &[x.as_raw_fd(), x.as_raw_fd()],
        )
        .unwrap();
        assert_eq!(n, 2);
        let (mut buf, mut fds) = ([0u8; 8], Vec::new());
        assert_eq!(recv(b.as_fd(), &mut buf, &mut fds).unwrap().bytes, 2);
        assert_eq!(&buf[..2], b"hi");
        assert_eq!(fds.len(), 2);
        assert!(wait_readable(b.as_fd(), Some(Instant::now())).is_ok_and(|r| !r));
        drop(a);
        assert!(wait_readable(b.as_fd(), deadline_after(Duration::from_secs(60))).unwrap());
        assert_eq!(recv(b.as_fd(), &mut buf, &mut fds).unwrap().bytes, 0);
    }

    #[test]
    fn descriptors_that_could_not_be_received_are_reported_and_the_bytes_kept() {
        // A control buffer with room for one descriptor stands for a
        // process out of descriptors: the kernel truncates either way.
        let (a, b) = socketpair().unwrap();
        let (x, _y) = socketpair().unwrap();
        let raw = [x.as_raw_fd(); 16];
        send(a.as_fd(), &[IoSlice::new(b"x")], &raw).unwrap();
        let (mut buf, mut fds) = ([0u8; 8], Vec::new());
        let r = recv_up_to(b.as_fd(), &mut buf, &mut fds, 1).unwrap();
        assert!(r.fds_lost);
        assert_eq!(r.bytes, 1, "the bytes arrived");
        assert!(fds.is_empty(), "no partial set of descriptors is returned");
        assert!(fds_lost_error().to_string().contains("too many open files"));
    }
}
