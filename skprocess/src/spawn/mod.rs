//! Starting children by re-executing the current binary: the parent's half
//! of the start-up (the child's half is [`child`](crate::child)).
//!
//! The parent spawns `/proc/self/exe` with one extra environment variable
//! ([`BOOT_ENV`]: a format version, the control descriptor number and the
//! parent's pid) and its end of a socket pair at descriptor 3. Nothing of
//! the process value is in argv or the environment: it arrives as the first
//! frame on the socket. Each child leads a process group of its own.
//!
//! Spawns are made from one long-lived thread: Linux's parent-death signal
//! fires when the *thread* that spawned a child ends, and a short-lived
//! caller thread (a test, a pool's helper) must not take its children along.
//!
//! Unless it is turned off, the re-exec happens once, for a fork server
//! ([`server`]) that then forks each child, a child of this process all
//! the same; the re-exec stays as the fallback.

use crate::error::{Error, Result};
use crate::sys;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The environment variable that marks a spawned child.
pub(crate) const BOOT_ENV: &str = "SKPROCESS_BOOT";
/// The format of its value.
pub(crate) const BOOT_FORMAT: &str = "1";
/// `SKPROCESS_BOOT` value for a child that exits as soon as it starts.
pub(crate) const BARE: &str = "bare";

pub(crate) mod server;

/// The boot variable's last field for the fork server.
pub(crate) const SERVER_ROLE: &str = "server";

/// A spawn for the spawner thread: the descriptors that become the new
/// process's 3 (and 0, 1, 2 if given), and its whole environment.
struct Job {
    control: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    env: Vec<CString>,
}

type Sent = (Job, mpsc::SyncSender<std::io::Result<u32>>);

static SPAWNER: OnceLock<Mutex<Option<mpsc::Sender<Sent>>>> = OnceLock::new();

fn spawner() -> Result<mpsc::Sender<Sent>> {
    let slot = SPAWNER.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = slot.as_ref() {
        return Ok(tx.clone());
    }
    // Started on first use; a failure to start it is reported to this
    // caller and tried again by the next.
    let tx = {
        let (tx, rx) = mpsc::channel::<Sent>();
        let argv0 = CString::new(
            std::env::args_os()
                .next()
                .map(|a| a.into_encoded_bytes())
                .unwrap_or_default(),
        )
        .unwrap_or_else(|_| CString::from(c"skprocess-child"));
        std::thread::Builder::new()
            .name("skprocess-spawner".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (job, reply) in rx {
                    let req = sys::spawn::SpawnRequest {
                        control: job.control.as_fd(),
                        env: &job.env,
                        argv0: &argv0,
                        stdin: job.stdin.as_ref().map(AsFd::as_fd),
                        stdout: job.stdout.as_ref().map(AsFd::as_fd),
                        stderr: job.stderr.as_ref().map(AsFd::as_fd),
                    };
                    let _ = reply.send(sys::spawn::spawn_self(&req));
                }
            })
            .map_err(Error::Spawn)?;
        tx
    };
    *slot = Some(tx.clone());
    Ok(tx)
}

/// Has the spawner thread re-execute this binary for `job`; the new pid.
fn run_job(job: Job) -> Result<u32> {
    let (reply, result) = mpsc::sync_channel(1);
    let gone = || Error::Spawn(std::io::Error::other("the spawner thread is gone"));
    spawner()?.send((job, reply)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?.map_err(Error::Spawn)
}

/// This process's environment as a child gets it, without the boot
/// variable.
fn child_vars() -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| k != BOOT_ENV)
        .map(|(k, v)| sys::spawn::env_entry(&k, &v))
        .collect()
}

/// `vars` with the boot variable added: a child's, or with `role`.
fn with_boot(mut vars: Vec<CString>, role: Option<&str>) -> Vec<CString> {
    let mut value = format!(
        "{BOOT_FORMAT}:{}:{}",
        sys::spawn::CHILD_CONTROL_FD,
        sys::proc::getpid()
    );
    if let Some(role) = role {
        value.push(':');
        value.push_str(role);
    }
    let value: OsString = value.into();
    vars.push(sys::spawn::env_entry(BOOT_ENV.as_ref(), &value));
    vars
}

/// A freshly spawned child and the parent's end of its control socket (and
/// of its standard output and error, if captured).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) socket: OwnedFd,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

/// How to spawn a child.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpawnOptions {
    /// Make the child's descriptors 1 and 2 pipes to the parent (else it
    /// shares the parent's).
    pub(crate) capture_output: bool,
}

/// The descriptors of one spawn: both ends of the control socket, and of
/// the capture pipes if output is captured.
struct Ends {
    parent_end: OwnedFd,
    child_end: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    child_out: Option<OwnedFd>,
    child_err: Option<OwnedFd>,
}

impl Ends {
    fn new(options: SpawnOptions) -> Result<Ends> {
        let (parent_end, child_end) = sys::sock::socketpair().map_err(Error::Spawn)?;
        sys::sock::set_buffer_sizes(parent_end.as_fd(), 1 << 20);
        let (mut stdout, mut stderr, mut child_out, mut child_err) = (None, None, None, None);
        if options.capture_output {
            let (r, w) = sys::spawn::pipe().map_err(Error::Spawn)?;
            (stdout, child_out) = (Some(r), Some(w));
            let (r, w) = sys::spawn::pipe().map_err(Error::Spawn)?;
            (stderr, child_err) = (Some(r), Some(w));
        }
        Ok(Ends {
            parent_end,
            child_end,
            stdout,
            stderr,
            child_out,
            child_err,
        })
    }
}

/// Spawns a child running this binary, connected by a new socket pair.
pub(crate) fn spawn_child(options: SpawnOptions) -> Result<Spawned> {
    let vars = child_vars();
    let mut ends = Ends::new(options)?;
    let route = server::fork_child(
        ends.child_end.as_fd(),
        ends.child_out.as_ref().map(AsFd::as_fd),
        ends.child_err.as_ref().map(AsFd::as_fd),
        &vars,
    );
    let pid = match route {
        server::Route::Forked(pid) => pid,
        server::Route::Failed(e) => return Err(Error::Spawn(e)),
        server::Route::ReExec { fresh } => {
            if fresh {
                // A server that died with the request may have forked a
                // child holding these descriptors: the re-exec gets new
                // ones, so that child cannot read what is meant for this
                // one (it sees its socket closed and exits).
                ends = Ends::new(options)?;
            }
            run_job(Job {
                control: ends.child_end.try_clone().map_err(Error::Spawn)?,
                stdin: None,
                stdout: ends.child_out.take(),
                stderr: ends.child_err.take(),
                env: with_boot(vars, None),
            })?
        }
    };
    let Ends {
        parent_end,
        child_end,
        stdout,
        stderr,
        ..
    } = ends;
    drop(child_end);
    let pidfd = match sys::proc::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Out of descriptors, say: the child runs but cannot be
            // watched. End it (it is not reaped yet, so its pid names it;
            // a forked child may not lead its group yet) rather than leave
            // a zombie.
            let _ = sys::proc::kill_child_pid(pid, libc::SIGKILL);
            let _ = sys::proc::kill_group(pid, libc::SIGKILL);
            let _ = sys::proc::wait(pid);
            return Err(Error::Spawn(e));
        }
    };
    Ok(Spawned {
        pid,
        pidfd,
        socket: parent_end,
        stdout,
        stderr,
    })
}
