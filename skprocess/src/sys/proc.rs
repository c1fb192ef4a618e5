//! Process control: signals, reaping, pidfds, the parent-death signal.

use super::{cvt, cvt_retry};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "was killed by signal {s} ({})", signal_name(s)),
        }
    }
}

/// The conventional name of a signal number.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

/// Blocks until `pid` (a child of this process) has ended and reaps it.
pub(crate) fn wait(pid: u32) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    cvt_retry(|| unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) })?;
    Ok(decode_status(status))
}

fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Opens a pidfd for `pid`: readable once the process has ended, and a
/// race-free target for signals (it can never name a recycled pid).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process behind `pidfd`. A process that has already
/// ended is not an error.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is a live pidfd owned by the caller; a null siginfo is
    // allowed and means "as if by kill(2)".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Sends `sig` to every process of the process group `pgid` (a spawned
/// child leads a group of its own, which its hooks' subprocesses join unless
/// they detach). A group with no process left is not an error.
///
/// Call it before the group leader is reaped: while the leader (even as a
/// zombie) or any member exists, its pid cannot name another group.
pub(crate) fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill takes plain integers; a negative pid names a group.
    let r = unsafe { libc::kill(-pgid, sig) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// This process's process group.
pub(crate) fn getpgrp() -> u32 {
    // SAFETY: getpgrp takes no arguments and cannot fail.
    unsafe { libc::getpgrp() as u32 }
}

/// This process's pid.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// The parent's pid.
pub(crate) fn getppid() -> u32 {
    // SAFETY: getppid(2) cannot fail and has no preconditions.
    unsafe { libc::getppid() as u32 }
}

/// Asks the kernel to send SIGTERM to this process when the thread that
/// spawned it ends: the child turns it into a graceful stop, bounded in time
/// (see `child::signals`).
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number as its only
    // argument; no pointers are involved.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

/// Closes every fd from `from` upwards. Used once in a freshly started child
/// so descriptors the parent leaked by accident cannot keep pipes open.
pub(crate) fn close_fds_from(from: u32) {
    // SAFETY: close_range only closes descriptors; the caller runs this before
    // any other code in the process has opened a descriptor it still needs.
    unsafe {
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
    }
}

/// Makes SIGPIPE ignored, as `std` does before `main`: writes to a closed
/// pipe then return `EPIPE` instead of killing the process.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory-safety
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Ends this process at once, without running `atexit` handlers or
/// destructors (used when the parent is gone and nothing is left to do).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) terminates the process; it never returns.
    unsafe { libc::_exit(code) }
}

/// Removes an environment variable. Only called from the single-threaded
/// start-up code of a child, before `main`, when no other thread exists.
pub(crate) fn remove_env(key: &str) {
    std::env::remove_var(key);
}

/// Takes ownership of descriptor `fd`, inherited across exec without
/// close-on-exec: moves it to a close-on-exec descriptor (so programs this
/// process starts do not inherit it) and closes every other inherited
/// descriptor above stderr.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> OwnedFd {
    close_fds_from(fd as u32 + 1);
    // SAFETY: F_DUPFD_CLOEXEC on an fd number has no memory-safety
    // preconditions; if `fd` is not open it fails with EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, fd + 1) };
    if new < 0 {
        exit_now(71);
    }
    // SAFETY: `fd` was inherited for this purpose and nothing else in the
    // process refers to it; after the dup it is no longer needed.
    unsafe { libc::close(fd) };
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// Blocks until `pid` (a child of this process) has ended, reaps it, and
/// returns how it ended and its peak resident set size in bytes.
#[cfg(feature = "bench-internals")]
pub(crate) fn wait_with_peak_rss(pid: u32) -> io::Result<(ExitStatus, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `ru` are valid out-pointers for the call.
    cvt_retry(|| unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) })?;
    Ok((decode_status(status), ru.ru_maxrss as u64 * 1024))
}

/// The resident memory of process `pid`, in bytes, from
/// `/proc/<pid>/statm`; `None` if it cannot be read (the process is gone).
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

/// The size of a memory page.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf takes an integer name and has no other preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}
