//! Starting children by re-executing the current binary, and the code that
//! takes over in the child before `main`.
//!
//! # How a child starts
//!
//! The parent spawns `/proc/self/exe` with one extra environment variable
//! (`SKPROCESS_BOOT`: a format version, the control descriptor number and the
//! parent's pid) and its end of a socket pair at descriptor 3. Nothing of the
//! process value is in argv or the environment: it arrives as the first frame
//! on the socket.
//!
//! In the child, an `.init_array` entry (see `sys::boot`) runs before `main`:
//! it removes the variable (so the child's own subprocesses are ordinary
//! programs), arranges to die with its parent, and hands the socket to the
//! runtime, which never returns. Code in `main` never runs in a child, so a
//! binary, example, test harness or bench needs no set-up line.
//!
//! Spawns are made from one long-lived thread: Linux's parent-death signal
//! fires when the *thread* that spawned a child ends, and a short-lived
//! caller thread (a test, a pool's helper) must not take its children along.

mod registry;

pub(crate) use registry::{find, RunArgs};
pub use registry::{Described, Entry, REGISTRY};

use crate::error::{Error, Result};
use crate::sys;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The environment variable that marks a spawned child.
pub(crate) const ENV: &str = "SKPROCESS_BOOT";
const FORMAT: &str = "1";
/// `SKPROCESS_BOOT` value for a child that exits as soon as it starts.
pub(crate) const BARE: &str = "bare";

static IS_CHILD: AtomicBool = AtomicBool::new(false);

/// Whether this process was started by skprocess (and is running a
/// process or a pool worker).
///
/// # Examples
///
/// ```
/// // Doc tests run in an ordinary process.
/// assert!(!skprocess::is_child());
/// ```
pub fn is_child() -> bool {
    IS_CHILD.load(Ordering::Relaxed)
}

/// Runs before `main` in every process that links skprocess. Returns at
/// once unless this process is a spawned child; in a child it never returns.
pub(crate) fn boot() {
    let Some(value) = std::env::var_os(ENV) else {
        return;
    };
    sys::proc::remove_env(ENV);
    if value == BARE {
        // The baseline of the spawn benchmark: a re-exec of this binary
        // that ends as soon as it would take over.
        sys::proc::exit_now(0);
    }
    let Some((fd, ppid)) = parse_boot(&value) else {
        eprintln!("skprocess: ignoring malformed {ENV}={value:?}");
        return;
    };
    // Die with the parent; then check it did not die before we asked.
    if sys::proc::set_parent_death_signal().is_err() || sys::proc::getppid() != ppid {
        sys::proc::exit_now(70);
    }
    sys::proc::ignore_sigpipe();
    IS_CHILD.store(true, Ordering::Relaxed);
    let control = sys::proc::adopt_inherited_fd(fd);
    crate::runtime::child_main(control)
}

fn parse_boot(v: &std::ffi::OsStr) -> Option<(RawFd, u32)> {
    let s = v.to_str()?;
    let mut it = s.split(':');
    if it.next()? != FORMAT {
        return None;
    }
    let fd = it.next()?.parse().ok()?;
    let ppid = it.next()?.parse().ok()?;
    it.next().is_none().then_some((fd, ppid))
}

struct Job {
    control: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    reply: mpsc::SyncSender<std::io::Result<u32>>,
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

fn spawner() -> Result<mpsc::Sender<Job>> {
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
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
                for job in rx {
                    let env = child_env();
                    let req = sys::spawn::SpawnRequest {
                        control: job.control.as_fd(),
                        env: &env,
                        argv0: &argv0,
                        stdout: job.stdout.as_ref().map(AsFd::as_fd),
                        stderr: job.stderr.as_ref().map(AsFd::as_fd),
                    };
                    let _ = job.reply.send(sys::spawn::spawn_self(&req));
                }
            })
            .expect("cannot start the skprocess spawner thread");
        Mutex::new(tx)
    });
    Ok(tx.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

fn child_env() -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != ENV)
        .map(|(k, v)| sys::spawn::env_entry(&k, &v))
        .collect();
    let value: OsString = format!(
        "{FORMAT}:{}:{}",
        sys::spawn::CHILD_CONTROL_FD,
        sys::proc::getpid()
    )
    .into();
    env.push(sys::spawn::env_entry(ENV.as_ref(), &value));
    env
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

/// Spawns a child running this binary, connected by a new socket pair.
#[allow(dead_code)] // for callers with no options (a pool's workers)
pub(crate) fn spawn_child() -> Result<Spawned> {
    spawn_child_with(SpawnOptions::default())
}

/// Like [`spawn_child`], with options.
pub(crate) fn spawn_child_with(options: SpawnOptions) -> Result<Spawned> {
    let (parent_end, child_end) = sys::sock::socketpair().map_err(Error::Spawn)?;
    sys::sock::set_buffer_sizes(parent_end.as_fd(), 1 << 20);
    let (mut stdout, mut stderr, mut child_out, mut child_err) = (None, None, None, None);
    if options.capture_output {
        let (r, w) = sys::spawn::pipe().map_err(Error::Spawn)?;
        (stdout, child_out) = (Some(r), Some(w));
        let (r, w) = sys::spawn::pipe().map_err(Error::Spawn)?;
        (stderr, child_err) = (Some(r), Some(w));
    }
    let (reply, result) = mpsc::sync_channel(1);
    spawner()?
        .send(Job {
            control: child_end.try_clone().map_err(Error::Spawn)?,
            stdout: child_out,
            stderr: child_err,
            reply,
        })
        .map_err(|_| Error::Spawn(std::io::Error::other("the spawner thread is gone")))?;
    let pid = result
        .recv()
        .map_err(|_| Error::Spawn(std::io::Error::other("the spawner thread is gone")))?
        .map_err(Error::Spawn)?;
    drop(child_end);
    let pidfd = sys::proc::pidfd_open(pid).map_err(Error::Spawn)?;
    Ok(Spawned {
        pid,
        pidfd,
        socket: parent_end,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn boot_variable_parses_strictly() {
        assert_eq!(parse_boot("1:3:42".as_ref()), Some((3, 42)));
        assert_eq!(parse_boot("2:3:42".as_ref()), None);
        assert_eq!(parse_boot("1:3".as_ref()), None);
        assert_eq!(parse_boot("1:3:42:9".as_ref()), None);
        assert_eq!(parse_boot("1:x:42".as_ref()), None);
    }
}
