//! Process control: signals, reaping, pidfds, the parent-death signal.

use rustix::process::{Pid, Signal, WaitOptions};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// `pid` as a rustix `Pid`; pids 0 and below name no single process.
fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `sig` as a rustix `Signal`; only named signals are sent.
fn to_signal(sig: i32) -> io::Result<Signal> {
    Signal::from_named_raw(sig).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Retries `f` while a signal interrupts it.
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// A process that has already ended is not an error for a signal.
fn ended_is_fine(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Err(rustix::io::Errno::SRCH) => Ok(()),
        other => Ok(other?),
    }
}

/// Blocks until `pid` (a child of this process) has ended and reaps it.
pub(crate) fn wait(pid: u32) -> io::Result<ExitStatus> {
    let pid = to_pid(pid)?;
    loop {
        // Without WNOHANG a result always comes with a status.
        if let Some((_, status)) =
            retry(|| rustix::process::waitpid(Some(pid), WaitOptions::empty()))?
        {
            if let Some(sig) = status.terminating_signal() {
                return Ok(ExitStatus::Signal(sig));
            }
            if let Some(code) = status.exit_status() {
                return Ok(ExitStatus::Code(code));
            }
        }
    }
}

#[cfg(feature = "bench-internals")]
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
    Ok(rustix::process::pidfd_open(
        to_pid(pid)?,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Sends `sig` to the process behind `pidfd`. A process that has already
/// ended is not an error.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    ended_is_fine(rustix::process::pidfd_send_signal(pidfd, to_signal(sig)?))
}

/// Sends `sig` to every process of the process group `pgid` (a spawned
/// child leads a group of its own, which its hooks' subprocesses join unless
/// they detach). A group with no process left is not an error.
///
/// Call it before the group leader is reaped: while the leader (even as a
/// zombie) or any member exists, its pid cannot name another group.
pub(crate) fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    let pgid = to_pid(pgid)?;
    if pgid.is_init() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    ended_is_fine(rustix::process::kill_process_group(pgid, to_signal(sig)?))
}

/// Sends `sig` to process `pid`, which must be an unreaped child of this
/// process (so the pid cannot name anyone else). A process that has already
/// ended is not an error.
pub(crate) fn kill_child_pid(pid: u32, sig: i32) -> io::Result<()> {
    ended_is_fine(rustix::process::kill_process(to_pid(pid)?, to_signal(sig)?))
}

/// This process's process group.
pub(crate) fn getpgrp() -> u32 {
    rustix::process::getpgrp().as_raw_pid() as u32
}

/// This process's pid.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// The parent's pid (0 if it has none in this pid namespace).
pub(crate) fn getppid() -> u32 {
    Pid::as_raw(rustix::process::getppid()) as u32
}

/// The signal a child asks for when its parent ends. The kernel sends it when the *thread* that
/// spawned the child ends, which is before the rest of the parent is gone:
/// `getppid` may still name the dying parent, so only a signal of its own
/// tells the parent's end from a SIGTERM sent by someone. SIGSTKFLT is
/// never raised by Linux itself (it names a coprocessor fault that does not
/// exist) and has no conventional use.
pub(crate) const PARENT_DEATH_SIGNAL: i32 = libc::SIGSTKFLT;

/// Asks the kernel to send `sig` to this process when the thread that
/// spawned it ends. A child asks for [`PARENT_DEATH_SIGNAL`] and turns it
/// into a graceful stop, bounded in time; the fork server asks for SIGKILL.
pub(crate) fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        to_signal(sig)?,
    ))?)
}

/// Unblocks every signal for the calling thread.
pub(crate) fn clear_signal_mask() -> io::Result<()> {
    // SAFETY: an all-zero sigset_t is a valid value, and sigemptyset then
    // initialises it; pthread_sigmask reads it and writes no old mask.
    let r = unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    };
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Makes this process the leader of a new process group of its own.
pub(crate) fn lead_own_group() -> io::Result<()> {
    Ok(rustix::process::setpgid(None, None)?)
}

/// Closes every fd from `from` upwards. Used once in a freshly started child
/// so descriptors the parent leaked by accident cannot keep pipes open.
///
/// # Safety
///
/// No descriptor numbered `from` or above may be owned by anything (an
/// `OwnedFd`, a `File`, a library): they are closed under their owners.
/// That holds before `main`, before any code of the process opened one.
pub(crate) unsafe fn close_fds_from(from: u32) {
    // SAFETY: close_range only closes descriptors, none of which is owned
    // (the caller's promise).
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

/// Removes an environment variable.
///
/// # Safety
///
/// No other thread may exist: changing the environment races with any
/// thread that reads it (through libc, too). Only true before `main` (see
/// `super::boot`).
pub(crate) unsafe fn remove_env(key: impl AsRef<std::ffi::OsStr>) {
    std::env::remove_var(key);
}

/// Sets an environment variable.
///
/// # Safety
///
/// As for [`remove_env`]: no other thread may exist.
pub(crate) unsafe fn set_env(key: &std::ffi::OsStr, value: &std::ffi::OsStr) {
    std::env::set_var(key, value);
}

/// Takes ownership of descriptor `fd`, inherited across exec without
/// close-on-exec: moves it to a close-on-exec descriptor (so programs this
/// process starts do not inherit it) and closes every other inherited
/// descriptor above it.
///
/// # Safety
///
/// `fd` and every descriptor above it belong to nothing in this process
/// (see [`close_fds_from`]): true before `main`, for a descriptor the
/// parent handed over.
///
/// # Errors
///
/// `fd` is not open (or could not be moved); the caller should end the
/// process, since the descriptors above it are closed already.
pub(crate) unsafe fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the caller's promise.
    unsafe { close_fds_from(fd as u32 + 1) };
    // SAFETY: `fd` belongs to nothing else (the caller's promise), so this
    // is its only owner; if it is not open, the dup below fails and the
    // error is returned before anything closes it.
    let inherited = unsafe { BorrowedFd::borrow_raw(fd) };
    let new = rustix::io::fcntl_dupfd_cloexec(inherited, fd + 1)?;
    // SAFETY: as above: the inherited number is ours to close now.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(new)
}

/// Blocks until `pid` (a child of this process) has ended, reaps it, and
/// returns how it ended and its peak resident set size in bytes.
#[cfg(feature = "bench-internals")]
pub(crate) fn wait_with_peak_rss(pid: u32) -> io::Result<(ExitStatus, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // rustix has no wait4 (the resource usage of the reaped child).
    // SAFETY: `status` and `ru` are valid out-pointers for the call.
    super::cvt_retry(|| unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) })?;
    Ok((decode_status(status), ru.ru_maxrss as u64 * 1024))
}

/// The resident memory of process `pid`, in bytes, from
/// `/proc/<pid>/statm`; `None` if it cannot be read (the process is gone).
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
}
