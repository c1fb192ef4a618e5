//! Workers on other machines: the TCP transport of a pool whose
//! [`Launcher`](super::Launcher) is a cluster engine.
//!
//! The pool listens on a TCP port and starts its workers through the
//! engine, with one environment variable ([`REMOTE_ENV`]: a format
//! version, the address to dial, the pool's random token and the build id
//! of the binary). Each task takes over before `main` (see `child`), dials,
//! and greets the pool:
//!
//! ```text
//! token (16 bytes) | build id (u64 LE) | pid (u32 LE) | report length (u16 LE) | report (UTF-8)
//! ```
//!
//! The token is read and checked before anything else: a connection
//! without it is dropped and logged. The build id proves the worker runs
//! the same binary (so `map_fn`'s function offsets mean the same
//! functions); another build is refused with an error for whoever waits for
//! workers. The report is the task's `KEY=value` lines: its host and the
//! engine's rank and job variables. Anything malformed after the token is
//! a clear error for that connection, never a crash. After the greeting the
//! socket carries the same frames as a local worker's, minus descriptors.
//!
//! Each start (the pool's workers, then one per replacement) is one job
//! of the engine, whose standard error is kept (its last lines) for the
//! error of a start whose workers never arrive. Dropping the [`Cluster`]
//! ends every job it started.

use super::launcher::{self, Engine, Options};
use crate::error::{Error, Result};
use crate::sys;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that makes a task of an engine a pool worker.
pub(crate) const REMOTE_ENV: &str = "SKPROCESS_REMOTE";
/// The address workers dial back, `host` or `host:port`.
pub(crate) const ADVERTISE_ENV: &str = "SKPROCESS_ADVERTISE";
/// The format of [`REMOTE_ENV`]'s value.
const FORMAT: &str = "1";
/// Bytes in the pool's token.
pub(crate) const TOKEN_LEN: usize = 16;
/// The longest report a worker may send.
const MAX_REPORT: usize = 4096;
/// How long a connection has to greet the pool.
const GREETING_TIME: Duration = Duration::from_secs(10);
/// How long a worker tries to reach the pool.
const DIAL_TIME: Duration = Duration::from_secs(30);
/// How long an engine's command has to end after SIGTERM.
const END_GRACE: Duration = Duration::from_secs(3);
/// Lines of an engine's standard error kept for errors.
const TAIL_LINES: usize = 30;
/// The variables a worker reports: where it runs, as the engines say.
const REPORTED: [&str; 8] = [
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_NODEID",
];

/// What a worker says of itself after the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeting {
    pub(crate) build: u64,
    pub(crate) pid: u32,
    /// `KEY=value` lines.
    pub(crate) report: String,
}

/// Why a connection was not taken as a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It did not present the pool's token: a stranger.
    Token(String),
    /// It presented the token, then nonsense.
    Garbage(String),
}

impl Greeting {
    /// The bytes a worker sends: `token` then the greeting.
    pub(crate) fn to_bytes(&self, token: &[u8; TOKEN_LEN]) -> Vec<u8> {
        let report = &self.report.as_bytes()[..self.report.len().min(MAX_REPORT)];
        let mut out = Vec::with_capacity(TOKEN_LEN + 14 + report.len());
        out.extend_from_slice(token);
        out.extend_from_slice(&self.build.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&(report.len() as u16).to_le_bytes());
        out.extend_from_slice(report);
        out
    }

    /// Reads a greeting, checking `token` before anything else.
    pub(crate) fn read(
        r: &mut impl Read,
        token: &[u8; TOKEN_LEN],
    ) -> std::result::Result<Greeting, Refusal> {
        let mut theirs = [0u8; TOKEN_LEN];
        r.read_exact(&mut theirs)
            .map_err(|e| Refusal::Token(format!("no token ({e})")))?;
        // Compared in full whatever differs, so the time taken says nothing.
        let diff = theirs.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(Refusal::Token("the wrong token".into()));
        }
        let garbage = |what: &str, e: std::io::Error| Refusal::Garbage(format!("{what} ({e})"));
        let mut fixed = [0u8; 14];
        r.read_exact(&mut fixed)
            .map_err(|e| garbage("a truncated greeting", e))?;
        let build = u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
        let pid = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        let len = u16::from_le_bytes(fixed[12..].try_into().expect("2 bytes")) as usize;
        if len > MAX_REPORT {
            return Err(Refusal::Garbage(format!(
                "a report of {len} bytes (at most {MAX_REPORT})"
            )));
        }
        let mut report = vec![0u8; len];
        r.read_exact(&mut report)
            .map_err(|e| garbage("a truncated report", e))?;
        let report = String::from_utf8(report)
            .map_err(|_| Refusal::Garbage("a report that is not UTF-8".into()))?;
        Ok(Greeting { build, pid, report })
    }
}

/// A worker that has greeted the pool: its socket and what it said.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) socket: OwnedFd,
    pub(crate) pid: u32,
    pub(crate) report: String,
}

/// One start of the engine: its command, running or ended.
#[derive(Debug)]
struct Job {
    name: String,
    child: Child,
    /// The last lines of its standard error.
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
    /// What its tasks reported, by their arrival.
    reports: Arc<Mutex<Vec<String>>>,
}

/// A pool's link to its cluster engine: the port workers dial, the token,
/// and the jobs started.
#[derive(Debug)]
pub(crate) struct Cluster {
    engine: Arc<dyn Engine>,
    options: Options,
    /// The address bound.
    local: SocketAddr,
    /// The address workers dial.
    dial: String,
    token: [u8; TOKEN_LEN],
    build: u64,
    /// Prefix of the jobs' names, unique to this pool.
    name: String,
    starts: AtomicU64,
    arrivals: Receiver<Result<Arrival>>,
    jobs: Mutex<Vec<Job>>,
    closing: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// This machine's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where to listen and what workers dial, from [`ADVERTISE_ENV`] (`host`,
/// `host:port`, `[v6]:port`): by default every interface on a free port,
/// dialled at this machine's host name.
fn listen_and_dial() -> Result<(TcpListener, String)> {
    let advertised = std::env::var(ADVERTISE_ENV)
        .ok()
        .filter(|a| !a.trim().is_empty());
    let (host, port) = match advertised.as_deref().map(str::trim) {
        None => (host_name(), 0),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip().to_string(), sa.port()),
            Err(_) => match a.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => {
                    let port = p.parse::<u16>().map_err(|_| {
                        Error::usage(format!("{ADVERTISE_ENV}={a:?}: expected host or host:port"))
                    })?;
                    (h.to_string(), port)
                }
                _ => (a.trim_matches(['[', ']']).to_string(), 0),
            },
        },
    };
    let any: SocketAddr = if host.contains(':') {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    let listener = TcpListener::bind(any).map_err(|e| {
        Error::Spawn(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {any} for the pool's workers: {e}"),
        ))
    })?;
    let port = listener.local_addr().map_err(Error::Io)?.port();
    let dial = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((listener, dial))
}

impl Cluster {
    /// Listens for the workers of a pool started by `engine`.
    pub(crate) fn new(engine: Arc<dyn Engine>, options: Options) -> Result<Cluster> {
        let mut token = [0u8; TOKEN_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut token))
            .map_err(Error::Io)?;
        let (listener, dial) = listen_and_dial()?;
        let local = listener.local_addr().map_err(Error::Io)?;
        let build = sys::code::build_id();
        let (tx, arrivals) = crossbeam_channel::unbounded();
        let closing = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let closing = closing.clone();
            std::thread::Builder::new()
                .name("skprocess-cluster".into())
                .stack_size(128 * 1024)
                .spawn(move || accept(&listener, &token, build, &tx, &closing))
                .map_err(Error::Spawn)?
        };
        Ok(Cluster {
            engine,
            options,
            local,
            dial,
            name: format!("skprocess-{}", hex(&token[..4])),
            token,
            build,
            starts: AtomicU64::new(0),
            arrivals,
            jobs: Mutex::new(Vec::new()),
            closing,
            acceptor: Some(acceptor),
        })
    }

    /// The address the pool listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `n` workers as one job of the engine and waits until all have
    /// connected (at most the connect timeout). On failure the job is
    /// ended and the error says what the engine printed.
    pub(crate) fn start(&self, n: usize) -> Result<Vec<Arrival>> {
        self.reap_ended();
        let seq = self.starts.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{seq}", self.name);
        let exe = std::env::current_exe().map_err(Error::Spawn)?;
        let value = format!(
            "{FORMAT},{},{},{:016x}",
            self.dial,
            hex(&self.token),
            self.build
        );
        let env = [(REMOTE_ENV, value)];
        let mut cmd = launcher::command(&*self.engine, &self.options, n, &exe, &env, &name)?;
        cmd.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|e| {
            Error::Spawn(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot run {program} (the {} launcher): {e}",
                    self.engine.name()
                ),
            ))
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let reader = child.stderr.take().and_then(|err| {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name("skprocess-engine-err".into())
                .stack_size(64 * 1024)
                .spawn(move || keep_tail(err, &tail))
                .ok()
        });
        let pid = child.id();
        let reports = Arc::new(Mutex::new(Vec::new()));
        self.jobs().push(Job {
            name,
            child,
            tail,
            reader,
            reports: reports.clone(),
        });
        let started = Instant::now();
        let deadline = started + self.options.connect_timeout;
        let mut got: Vec<Arrival> = Vec::with_capacity(n);
        let failure = loop {
            if got.len() == n {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .arrivals
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(Ok(a)) => {
                    reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(a.report.clone());
                    got.push(a);
                }
                Ok(Err(e)) => break Some(e.to_string()),
                Err(RecvTimeoutError::Disconnected) => {
                    break Some("the pool stopped listening".into())
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.exit_status(pid) {
                        break Some(format!("{program} ended ({status})"));
                    }
                    if left.is_zero() {
                        break Some(format!(
                            "not all connected within {:?}",
                            self.options.connect_timeout
                        ));
                    }
                }
            }
        };
        let Some(why) = failure else {
            return Ok(got);
        };
        let job = {
            let mut jobs = self.jobs();
            let at = jobs.iter().position(|j| j.child.id() == pid);
            at.map(|i| jobs.remove(i))
        };
        let output = job.map(|j| self.end(j, false)).unwrap_or_default();
        Err(Error::Spawn(std::io::Error::other(format!(
            "the {} launcher started {} of {n} pool workers: {why}; {program}'s output:\n{}",
            self.engine.name(),
            got.len(),
            if output.is_empty() {
                "(nothing)".to_string()
            } else {
                output
            }
        ))))
    }

    /// How the job whose command is `pid` ended, if it has.
    fn exit_status(&self, pid: u32) -> Option<String> {
        let mut jobs = self.jobs();
        let job = jobs.iter_mut().find(|j| j.child.id() == pid)?;
        match job.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// Forgets the jobs whose command has ended (their workers all gone).
    fn reap_ended(&self) {
        let ended: Vec<Job> = {
            let mut jobs = self.jobs();
            let mut ended = Vec::new();
            let mut i = 0;
            while i < jobs.len() {
                if matches!(jobs[i].child.try_wait(), Ok(Some(_))) {
                    ended.push(jobs.remove(i));
                } else {
                    i += 1;
                }
            }
            ended
        };
        for j in ended {
            self.end(j, false);
        }
    }

    /// Ends a job: `patient`ly (its workers' sockets are closed, so they
    /// are exiting) it gets [`END_GRACE`] to end on its own; then the
    /// engine cancels it, its command gets SIGTERM, then SIGKILL after
    /// [`END_GRACE`]; reaps the command. Returns the last lines of its
    /// standard error.
    fn end(&self, mut job: Job, patient: bool) -> String {
        let reports = job
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if patient {
            let deadline = Instant::now() + END_GRACE;
            while !matches!(job.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !matches!(job.child.try_wait(), Ok(Some(_))) {
            self.engine.cancel(&self.options, &job.name, &reports);
            let pid = job.child.id();
            let _ = sys::proc::kill_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + END_GRACE;
            while !matches!(job.child.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = sys::proc::kill_group(pid, libc::SIGKILL);
                    let _ = job.child.kill();
                    let _ = job.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(r) = job.reader.take() {
            let _ = r.join();
        }
        let tail = job.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Cluster {
    /// Ends every job started (the pool is closing: its workers' sockets
    /// are closed already).
    pub(crate) fn end_all(&self) {
        let jobs = std::mem::take(&mut *self.jobs());
        for j in jobs {
            self.end(j, true);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.end_all();
        // Wakes the acceptor, which sees `closing` and returns.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let woken = TcpStream::connect_timeout(&wake, Duration::from_secs(2)).is_ok();
        if let Some(a) = self.acceptor.take() {
            if woken {
                let _ = a.join();
            }
        }
    }
}

/// Keeps the last [`TAIL_LINES`] lines of an engine's standard error,
/// passing each on to this process's standard error.
fn keep_tail(err: std::process::ChildStderr, tail: &Mutex<VecDeque<String>>) {
    let mut lines = std::io::BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = std::io::stderr().write_all(&line);
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            }
        }
    }
}

/// Takes connections until the pool closes, greeting each on a thread of
/// its own.
fn accept(
    listener: &TcpListener,
    token: &[u8; TOKEN_LEN],
    build: u64,
    arrivals: &Sender<Result<Arrival>>,
    closing: &AtomicBool,
) {
    for conn in listener.incoming() {
        if closing.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let (token, tx) = (*token, arrivals.clone());
        let _ = std::thread::Builder::new()
            .name("skprocess-greet".into())
            .stack_size(64 * 1024)
            .spawn(move || greet(stream, &token, build, &tx));
    }
}

/// Reads a connection's greeting: a worker goes to `arrivals`; a stranger
/// is dropped and logged; a worker of another build is refused with an
/// error for whoever waits for workers.
fn greet(
    stream: TcpStream,
    token: &[u8; TOKEN_LEN],
    build: u64,
    arrivals: &Sender<Result<Arrival>>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_read_timeout(Some(GREETING_TIME));
    let greeting = match Greeting::read(&mut &stream, token) {
        Ok(g) => g,
        Err(Refusal::Token(why)) => {
            tracing::warn!(
                peer,
                "skprocess: dropped a connection to a pool's port from {peer}: {why}; not one of \
                 its workers"
            );
            return;
        }
        Err(Refusal::Garbage(why)) => {
            tracing::warn!(
                peer,
                "skprocess: dropped a connection from {peer}: it presented the pool's token, then \
                 {why}"
            );
            return;
        }
    };
    if greeting.build != build {
        let host = launcher::field(&greeting.report, "host").unwrap_or("?");
        let e = Error::Spawn(std::io::Error::other(format!(
            "a worker on {host} ({peer}, pid {}) runs another build of this program (build id \
             {:016x}, the pool's {build:016x}): map_fn's functions and the process types would \
             not match; put the same binary at the same path on every node",
            greeting.pid, greeting.build
        )));
        tracing::warn!(peer, "skprocess: {e}");
        let _ = arrivals.send(Err(e));
        return;
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_nodelay(true);
    let socket = OwnedFd::from(stream);
    sys::sock::set_buffer_sizes(socket.as_fd(), 1 << 20);
    let _ = arrivals.send(Ok(Arrival {
        socket,
        pid: greeting.pid,
        report: greeting.report,
    }));
}

/// The worker's side: dials the pool named by `value` (of [`REMOTE_ENV`])
/// and greets it. Returns the control socket.
pub(crate) fn dial(value: &str) -> std::result::Result<OwnedFd, String> {
    let mut parts = value.split(',');
    let (Some(FORMAT), Some(addr), Some(token), Some(build), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(format!("malformed {REMOTE_ENV}"));
    };
    let token: [u8; TOKEN_LEN] = unhex(token)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| format!("malformed token in {REMOTE_ENV}"))?;
    let theirs = u64::from_str_radix(build, 16).map_err(|_| format!("malformed {REMOTE_ENV}"))?;
    let ours = sys::code::build_id();
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the pool's address {addr}: {e}"))?
        .collect();
    let deadline = Instant::now() + DIAL_TIME;
    let stream = 'dial: loop {
        let mut last = String::from("no address");
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                Ok(s) => break 'dial s,
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("cannot reach the pool at {addr}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = stream.set_nodelay(true);
    let mut report = format!("host={}\n", host_name());
    for k in REPORTED {
        if let Ok(v) = std::env::var(k) {
            report.push_str(&format!("{k}={v}\n"));
        }
    }
    let greeting = Greeting {
        build: ours,
        pid: sys::proc::getpid(),
        report,
    };
    (&stream)
        .write_all(&greeting.to_bytes(&token))
        .map_err(|e| format!("cannot greet the pool at {addr}: {e}"))?;
    if ours != theirs {
        // The pool refuses it too, and says so; this is for the engine's log.
        return Err(format!(
            "this binary (build id {ours:016x}) is not the pool's ({theirs:016x}): put the same \
             binary at the same path on every node"
        ));
    }
    let socket = OwnedFd::from(stream);
    sys::sock::set_buffer_sizes(socket.as_fd(), 1 << 20);
    Ok(socket)
}

#[cfg(test)]
mod test {
    use super::*;

    const TOKEN: [u8; TOKEN_LEN] = *b"0123456789abcdef";

    fn sample() -> Greeting {
        Greeting {
            build: 0x1234_5678_9abc_def0,
            pid: 42,
            report: "host=a\nSLURM_PROCID=3\n".into(),
        }
    }

    #[test]
    fn a_greeting_reads_back() {
        let bytes = sample().to_bytes(&TOKEN);
        assert_eq!(Greeting::read(&mut &bytes[..], &TOKEN), Ok(sample()));
    }

    #[test]
    fn the_token_is_checked_first() {
        let mut bytes = sample().to_bytes(&TOKEN);
        bytes[3] ^= 1;
        assert!(matches!(
            Greeting::read(&mut &bytes[..], &TOKEN),
            Err(Refusal::Token(_))
        ));
        assert!(matches!(
            Greeting::read(&mut &b"GET / HTTP/1.1\r\n"[..3], &TOKEN),
            Err(Refusal::Token(_))
        ));
    }

    /// Every truncation, and random bytes after a good token, give a
    /// refusal, never a panic.
    #[test]
    fn handshake_fuzz() {
        let good = sample().to_bytes(&TOKEN);
        for cut in 0..good.len() {
            let r = Greeting::read(&mut &good[..cut], &TOKEN);
            if cut < TOKEN_LEN {
                assert!(matches!(r, Err(Refusal::Token(_))), "cut {cut}");
            } else {
                assert!(matches!(r, Err(Refusal::Garbage(_))), "cut {cut}: {r:?}");
            }
        }
        // A small xorshift: reproducible garbage.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes = TOKEN.to_vec();
            bytes.extend((0..len).map(|_| next() as u8));
            if next() % 2 == 0 {
                // A plausible header with a random length.
                bytes.truncate(TOKEN_LEN + 12);
                bytes.resize(TOKEN_LEN + 12, 0);
                bytes.extend_from_slice(&(next() as u16).to_le_bytes());
                bytes.extend((0..(next() % 32)).map(|_| next() as u8));
            }
            match Greeting::read(&mut &bytes[..], &TOKEN) {
                Ok(g) => assert!(g.report.len() <= MAX_REPORT),
                Err(Refusal::Garbage(_)) => {}
                Err(e) => panic!("garbage after the token read as {e:?}"),
            }
            let mut stranger = bytes.clone();
            stranger[0] ^= 0x80;
            assert!(matches!(
                Greeting::read(&mut &stranger[..], &TOKEN),
                Err(Refusal::Token(_))
            ));
        }
    }

    #[test]
    fn the_variable_parses_strictly() {
        for bad in [
            "",
            "2,h:1,00,00",
            "1,h:1,zz,00",
            "1,h:1,0011,00",
            "1,h:1,00112233445566778899aabbccddeeff",
            "1,h:1,00112233445566778899aabbccddeeff,xyz",
            "1,h:1,00112233445566778899aabbccddeeff,00,extra",
        ] {
            assert!(dial(bad).is_err(), "{bad:?}");
        }
    }
}
