//! The fork server, the parent's side: a child started once by re-exec that
//! waits before `main` (single-threaded, nothing of the program run yet)
//! and forks a new child for each start, which saves the exec and the
//! dynamic loading of every later start.
//!
//! # What each child gets, as with a re-exec
//!
//! - **Parent, reaping, groups.** The server forks with `CLONE_PARENT` (see
//!   [`sys::fork`]): the new process is a child of this process, not of the
//!   server, so it is reaped, watched through its pidfd and killed with its
//!   group exactly like a re-executed child. It makes a process group of
//!   its own before it does anything else.
//! - **Parent death.** The server is started from the spawner thread and
//!   asks for SIGKILL when that thread ends; its forks inherit that parent
//!   link, and each asks for the parent-death signal as a re-executed
//!   child does. Killing the server affects no child.
//! - **Environment and working directory as of the start.** Each request
//!   carries a descriptor of the current directory (the child changes into
//!   it: a directory renamed or replaced since is followed exactly as a
//!   re-exec would) and, when the environment differs from the one the
//!   server started with, the whole environment, which the child installs
//!   before it goes on.
//! - **Descriptors.** The request carries this process's descriptors 0, 1
//!   and 2 as they are now (or the capture pipes), and the child's end of
//!   the control socket; the child puts them at 0–3 and closes the rest,
//!   like a re-executed child.
//! - **Resource limits.** Those that differ from the server's travel with
//!   the request, and the child sets them.
//! - **Signals.** The server's mask is empty and its dispositions are the
//!   ones an exec leaves; the child clears its mask again.
//!
//! What the child takes from the server rather than from this process as
//! it is now: umask, scheduling attributes and credentials, as they were
//! when the server started. A program that
//! changes those between starts and wants children to follow sets
//! `SKPROCESS_FORK_SERVER=0`.
//!
//! # Fallback
//!
//! `SKPROCESS_FORK_SERVER=0` (read at each start) re-executes every child.
//! A server that cannot start, that dies or stops answering is ended,
//! reaped and started again at the next start; that start re-executes.
//! After [`MAX_FAILURES`] failures in a row it is not tried again. A
//! server that dies after it read a request may have forked its child
//! before it could answer: that start re-executes with new descriptors, and
//! the orphaned fork, finding its socket closed, exits; its pid never
//! reached this process, so it stays a zombie until this process ends (the
//! one known leak, in that narrow race only). A
//! request the server cannot serve (this process has a standard
//! descriptor closed, an environment too large for one request, a failed
//! fork) is re-executed too.

use crate::sys;
use rustix::process::{Resource, Rlimit};
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The environment variable that turns the fork server off (`0`).
pub(crate) const SWITCH_ENV: &str = "SKPROCESS_FORK_SERVER";
/// The largest request, in bytes (an environment beyond this re-executes).
pub(crate) const MAX_REQUEST: usize = 256 * 1024;
/// Failures in a row after which the server is not started again.
const MAX_FAILURES: u32 = 3;
/// How long the server may take to answer before it is taken for stuck.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// The request's descriptors, in order.
pub(crate) const FD_CONTROL: usize = 0;
/// The working directory (an `O_PATH` descriptor).
pub(crate) const FD_CWD: usize = 1;
/// What becomes the child's descriptor 0.
pub(crate) const FD_STDIN: usize = 2;
/// What becomes the child's descriptor 1.
pub(crate) const FD_STDOUT: usize = 3;
/// What becomes the child's descriptor 2.
pub(crate) const FD_STDERR: usize = 4;
/// How many descriptors a request carries.
pub(crate) const REQUEST_FDS: usize = 5;

/// The first byte of a request: its format.
const FORMAT: u8 = 2;
/// The second byte: 1 if an environment follows, 0 to keep the server's.
const WITH_ENV: u8 = 1;

/// A running server.
#[derive(Debug)]
struct Server {
    socket: OwnedFd,
    pid: u32,
    /// The process it serves: a copy of this process made by `fork` finds
    /// another pid here, and must not use a server whose forks would be
    /// children of the original.
    owner: u32,
    /// The environment it started with (without the boot variable).
    vars: Vec<CString>,
    /// The resource limits it started with.
    limits: [Rlimit; 16],
}

#[derive(Debug)]
struct State {
    server: Option<Server>,
    failures: u32,
}

static STATE: Mutex<State> = Mutex::new(State {
    server: None,
    failures: 0,
});

/// Set to turn the fork server off in this process, as the environment
/// variable does (the spawn bench measures both ways in one run).
pub(crate) static OFF: AtomicBool = AtomicBool::new(false);

/// Whether starts go through the fork server now.
pub(crate) fn enabled() -> bool {
    sys::fork::FORK_SUPPORTED
        && !OFF.load(Ordering::Relaxed)
        && std::env::var_os(SWITCH_ENV).is_none_or(|v| v != "0")
}

/// The server's pid, if one runs.
#[cfg(feature = "bench-internals")]
pub(crate) fn pid() -> Option<u32> {
    lock().server.as_ref().map(|s| s.pid)
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one request went.
enum Answer {
    /// The child's pid.
    Forked(u32),
    /// The server could not serve this one; it goes on serving.
    Declined,
    /// The server is gone or stuck; `sent` if the request reached it.
    Broken { sent: bool },
}

/// Where a start goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// The server forked the child: its pid.
    Forked(u32),
    /// Re-execute instead (see the module docs); `fresh`: with descriptors
    /// other than the request's, which a child forked by a server that
    /// died before answering may hold.
    ReExec { fresh: bool },
    /// This process could not make the request (out of descriptors, say),
    /// which a re-exec would not fix.
    Failed(io::Error),
}

const REEXEC: Route = Route::ReExec { fresh: false };

/// Has the fork server start a child with `control` at its descriptor 3
/// (and `stdout`, `stderr` at 1 and 2 if given), in this process's
/// environment `vars` (without the boot variable).
pub(crate) fn fork_child(
    control: BorrowedFd<'_>,
    stdout: Option<BorrowedFd<'_>>,
    stderr: Option<BorrowedFd<'_>>,
    vars: &[CString],
) -> Route {
    if !enabled() {
        return REEXEC;
    }
    let cwd = match rustix::fs::open(
        ".",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
            return Route::Failed(e.into())
        }
        // A directory this process may no longer open: a re-exec still
        // inherits it.
        Err(_) => return REEXEC,
    };
    let mut state = lock();
    if state
        .server
        .as_ref()
        .is_some_and(|s| s.owner != sys::proc::getpid())
    {
        // Closing this copy of the socket leaves the original's open.
        drop(state.server.take());
        state.failures = MAX_FAILURES;
        return REEXEC;
    }
    if state.server.is_none() {
        if state.failures >= MAX_FAILURES {
            return REEXEC;
        }
        match start(vars) {
            Ok(s) => state.server = Some(s),
            Err(crate::error::Error::Spawn(e))
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                // Out of descriptors for now: not the server's failure.
                return REEXEC;
            }
            Err(_) => {
                state.failures += 1;
                return REEXEC;
            }
        }
    }
    let Some(server) = state.server.as_ref() else {
        return REEXEC;
    };
    let changed: Vec<(usize, Rlimit)> = limits()
        .into_iter()
        .enumerate()
        .filter(|&(i, l)| server.limits[i] != l)
        .collect();
    let request = encode((server.vars.as_slice() != vars).then_some(vars), &changed);
    if request.len() > MAX_REQUEST {
        return REEXEC;
    }
    let mut fds: [RawFd; REQUEST_FDS] = [-1; REQUEST_FDS];
    fds[FD_CONTROL] = control.as_raw_fd();
    fds[FD_CWD] = cwd.as_raw_fd();
    fds[FD_STDIN] = 0;
    fds[FD_STDOUT] = stdout.map_or(1, |fd| fd.as_raw_fd());
    fds[FD_STDERR] = stderr.map_or(2, |fd| fd.as_raw_fd());
    match ask(server, &request, &fds) {
        Answer::Forked(pid) => {
            state.failures = 0;
            Route::Forked(pid)
        }
        Answer::Declined => REEXEC,
        Answer::Broken { sent } => {
            if let Some(s) = state.server.take() {
                end(s);
            }
            state.failures += 1;
            Route::ReExec { fresh: sent }
        }
    }
}

/// Sends one request and reads its answer.
fn ask(server: &Server, request: &[u8], fds: &[RawFd]) -> Answer {
    match sys::sock::send(server.socket.as_fd(), &[IoSlice::new(request)], fds) {
        Ok(n) if n == request.len() => {}
        Ok(_) => return Answer::Broken { sent: true },
        // One of our descriptors is not open (a closed stdin, say), or the
        // request is too large for the socket: not the server's fault.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::EMSGSIZE)) => {
            return Answer::Declined
        }
        Err(_) => return Answer::Broken { sent: false },
    }
    match sys::sock::wait_readable(
        server.socket.as_fd(),
        sys::sock::deadline_after(ANSWER_LIMIT),
    ) {
        Ok(true) => {}
        _ => return Answer::Broken { sent: true },
    }
    let mut word = [0u8; 8];
    match rustix::net::recv(&server.socket, &mut word, rustix::net::RecvFlags::empty()) {
        Ok((8, _)) => {}
        _ => return Answer::Broken { sent: true },
    }
    match i64::from_le_bytes(word) {
        pid if pid > 0 && pid <= i64::from(i32::MAX) => Answer::Forked(pid as u32),
        _ => Answer::Declined,
    }
}

/// Starts a server (from the spawner thread, which its parent-death signal
/// is tied to) in the environment `vars`.
fn start(vars: &[CString]) -> crate::error::Result<Server> {
    let (ours, theirs) = sys::fork::packet_pair().map_err(crate::error::Error::Spawn)?;
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(crate::error::Error::Spawn)
    };
    let pid = super::run_job(super::Job {
        control: theirs,
        stdin: Some(null()?),
        stdout: Some(null()?),
        stderr: Some(null()?),
        env: super::with_boot(vars.to_vec(), Some(super::SERVER_ROLE)),
    })?;
    Ok(Server {
        socket: ours,
        pid,
        owner: sys::proc::getpid(),
        vars: vars.to_vec(),
        limits: limits(),
    })
}

/// Ends and reaps a server that failed.
fn end(server: Server) {
    drop(server.socket);
    let _ = sys::proc::kill_child_pid(server.pid, libc::SIGKILL);
    let _ = sys::proc::wait(server.pid);
}

/// The resource limits a request can carry, in the order of their index.
const RESOURCES: [Resource; 16] = [
    Resource::Cpu,
    Resource::Fsize,
    Resource::Data,
    Resource::Stack,
    Resource::Core,
    Resource::Rss,
    Resource::Nproc,
    Resource::Nofile,
    Resource::Memlock,
    Resource::As,
    Resource::Locks,
    Resource::Sigpending,
    Resource::Msgqueue,
    Resource::Nice,
    Resource::Rtprio,
    Resource::Rttime,
];

/// This process's resource limits, in the order of [`RESOURCES`].
fn limits() -> [Rlimit; 16] {
    RESOURCES.map(rustix::process::getrlimit)
}

/// What a request asks of the child besides its descriptors.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The environment to install (`None`: keep the server's).
    pub(crate) env: Option<Vec<(OsString, OsString)>>,
    /// Resource limits that differ from the server's.
    pub(crate) limits: Vec<(Resource, Rlimit)>,
}

/// `u64::MAX` for no limit.
fn limit_word(l: Option<u64>) -> [u8; 8] {
    l.unwrap_or(u64::MAX).to_le_bytes()
}

fn word_limit(b: &[u8]) -> Option<Option<u64>> {
    let w = u64::from_le_bytes(b.try_into().ok()?);
    Some((w != u64::MAX).then_some(w))
}

/// A request: the format, whether an environment follows, the number of
/// resource limits, each (index in [`RESOURCES`], soft, hard: one byte and
/// two little-endian words), then the environment's entries (`KEY=VALUE`,
/// each ended by a NUL byte).
fn encode(env: Option<&[CString]>, limits: &[(usize, Rlimit)]) -> Vec<u8> {
    let size = env.map_or(0, |e| e.iter().map(|v| v.as_bytes().len() + 1).sum());
    let mut out = Vec::with_capacity(3 + limits.len() * 17 + size);
    out.push(FORMAT);
    out.push(if env.is_some() { WITH_ENV } else { 0 });
    out.push(limits.len() as u8);
    for (index, limit) in limits {
        out.push(*index as u8);
        out.extend_from_slice(&limit_word(limit.current));
        out.extend_from_slice(&limit_word(limit.maximum));
    }
    for e in env.unwrap_or_default() {
        out.extend_from_slice(e.as_bytes_with_nul());
    }
    out
}

/// A request as the server reads it; `None` if it is not a request of this
/// format.
pub(crate) fn decode(bytes: &[u8]) -> Option<Wanted> {
    let [FORMAT, flag, count, rest @ ..] = bytes else {
        return None;
    };
    let split = usize::from(*count) * 17;
    if rest.len() < split {
        return None;
    }
    let (mut limit_bytes, env_bytes) = rest.split_at(split);
    let mut limits = Vec::new();
    while let [index, words @ ..] = limit_bytes {
        let resource = *RESOURCES.get(usize::from(*index))?;
        let current = word_limit(words.get(..8)?)?;
        let maximum = word_limit(words.get(8..16)?)?;
        limits.push((resource, Rlimit { current, maximum }));
        limit_bytes = &words[16..];
    }
    let env = match (*flag, env_bytes) {
        (0, []) => None,
        (WITH_ENV, []) => Some(Vec::new()),
        (WITH_ENV, entries) => {
            let body = entries.strip_suffix(&[0])?;
            let mut vars = Vec::new();
            for entry in body.split(|&b| b == 0) {
                // As std reads the environment: the first `=` after the
                // first byte ends the key.
                let eq = entry.iter().skip(1).position(|&b| b == b'=')? + 1;
                vars.push((
                    OsStr::from_bytes(&entry[..eq]).to_owned(),
                    OsStr::from_bytes(&entry[eq + 1..]).to_owned(),
                ));
            }
            Some(vars)
        }
        _ => return None,
    };
    Some(Wanted { env, limits })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn requests_round_trip() {
        assert_eq!(decode(&encode(None, &[])), Some(Wanted::default()));
        let env = [c"A=1".to_owned(), c"B==x=".to_owned(), c"C=".to_owned()];
        let limit = Rlimit {
            current: Some(64),
            maximum: None,
        };
        let wanted = decode(&encode(Some(&env), &[(7, limit)])).unwrap();
        let as_str: Vec<_> = wanted
            .env
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_str().unwrap().to_owned(),
                    v.to_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            as_str,
            [("A", "1"), ("B", "=x="), ("C", "")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(wanted.limits, [(Resource::Nofile, limit)]);
        assert_eq!(
            decode(&encode(Some(&[]), &[])).unwrap().env,
            Some(Vec::new())
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[FORMAT + 1, 0, 0]), None, "another format");
        assert_eq!(
            decode(&[FORMAT, 0, 0, 0]),
            None,
            "bytes after no environment"
        );
        assert_eq!(decode(&[FORMAT, WITH_ENV, 0, b'A']), None, "no final NUL");
        assert_eq!(decode(&[FORMAT, WITH_ENV, 0, b'A', 0]), None, "no `=`");
        assert_eq!(decode(&[FORMAT, 0, 1, 7, 0]), None, "a cut limit");
        let mut bad = vec![FORMAT, 0, 1, 16];
        bad.extend([0; 16]);
        assert_eq!(decode(&bad), None, "no such resource");
    }
}
