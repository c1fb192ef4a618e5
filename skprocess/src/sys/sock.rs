//! Unix stream sockets with descriptor passing (`SCM_RIGHTS`), and `poll`.

use super::{cvt, cvt_retry};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints for the call.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets both socket buffer sizes (best effort; the kernel may cap them).
pub(crate) fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `v` is a valid c_int and its size is passed alongside.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends as much of `bufs` as the socket takes in one call, with `fds`
/// attached to the first byte. Never raises SIGPIPE.
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
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS) as _;
    // SAFETY: `msg` points at `buf` and `control`, both live and writable.
    let n = cvt_retry(|| unsafe {
        libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) as libc::c_int
    })?;
    // SAFETY: after a successful recvmsg the kernel has filled `control` with
    // msg_controllen bytes of well-formed cmsghdrs; CMSG_FIRSTHDR/NXTHDR walk
    // them within that length, and SCM_RIGHTS payloads are arrays of fds
    // that now belong to this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds_out.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "descriptors were dropped: too many in one message",
        ));
    }
    Ok(n as usize)
}

/// Readiness of one descriptor after [`poll`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Data (or end of file) can be read.
    pub(crate) readable: bool,
    /// The peer hung up or the descriptor is in error.
    pub(crate) hangup: bool,
}

/// Waits until one of `fds` is readable or `deadline` passes (`None`: no
/// limit). Returns one `Ready` per fd; all false on timeout.
pub(crate) fn poll(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond remainder still waits.
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 && deadline.is_some_and(|d| Instant::now() < d) {
            continue;
        }
        return Ok(pfds
            .iter()
            .map(|p| Ready {
                readable: p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
                hangup: p.revents & (libc::POLLHUP | libc::POLLERR) != 0,
            })
            .collect());
    }
}

/// Waits until `fd` is readable, or `deadline` passes (`false`).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    Ok(poll(&[fd], deadline)?[0].readable)
}

/// `Instant::now() + d`, or `None` (no limit) if that overflows.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}
