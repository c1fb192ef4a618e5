//! The child's side: taking over before `main`, then running the role the
//! parent asked for, a single process's lifecycle ([`runtime`](crate::runtime))
//! or a pool worker ([`worker`]), as peers.
//!
//! # How a child starts
//!
//! The parent spawns `/proc/self/exe` with one extra environment variable
//! (`SKPROCESS_BOOT`: a format version, the control descriptor number and the
//! parent's pid) and its end of a socket pair at descriptor 3 (see
//! [`spawn`](crate::spawn)). Nothing of the process value is in argv or the
//! environment: it arrives as the first frame on the socket.
//!
//! An `.init_array` entry (registered here with `sys::boot::before_main!`)
//! calls [`boot`] before `main`: it
//! removes the variable (so the child's own subprocesses are ordinary
//! programs), arranges to die with its parent, and hands the socket to
//! [`main`], which never returns. Code in `main` never runs in a child, so a
//! binary, example, test harness or bench needs no set-up line.
//!
//! The same hook runs the fork server ([`server`]), which stays before
//! `main` and forks each later child from there: the fork takes the same
//! path as a re-executed child from the point where it has its descriptors.

mod server;
mod signals;
pub(crate) mod worker;

use crate::link::{self, Link};
use crate::pool::remote;
use crate::proto::{self, Exit, Init, STATUS_WORDS};
use crate::report::ReportPage;
use crate::spawn::{self, BOOT_ENV};
use crate::sys::{self, mem::SharedWords};
use crate::wire;
use crate::{registry, runtime};
use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

sys::boot::before_main!(boot);

/// Runs before `main` in every process that links skprocess. Returns at
/// once unless this process is a spawned child; in a child it never returns.
fn boot(pre_main: sys::boot::PreMain) {
    let Some(value) = std::env::var_os(BOOT_ENV) else {
        if let Some(value) = std::env::var_os(remote::REMOTE_ENV) {
            pre_main.remove_env(remote::REMOTE_ENV);
            boot_remote(&value);
        }
        return;
    };
    pre_main.remove_env(BOOT_ENV);
    if value == spawn::BARE {
        // The baseline of the spawn benchmark: a re-exec of this binary
        // that ends as soon as it would take over.
        sys::proc::exit_now(Exit::Clean.code());
    }
    let Some((fd, ppid, role)) = parse_boot(&value) else {
        eprintln!("skprocess: ignoring malformed {BOOT_ENV}={value:?}");
        return;
    };
    match role {
        Role::Child => start(pre_main, fd, ppid),
        Role::Server => server::serve(pre_main, fd, ppid),
    }
}

/// What a boot variable starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A child: a process or a pool worker.
    Child,
    /// The fork server.
    Server,
}

/// Takes over as a child whose control socket is at `fd`, started by
/// `ppid`; never returns.
fn start(pre_main: sys::boot::PreMain, fd: RawFd, ppid: u32) -> ! {
    // Die with the parent; then check it did not die before we asked.
    if sys::proc::set_parent_death_signal(sys::proc::PARENT_DEATH_SIGNAL).is_err()
        || sys::proc::getppid() != ppid
    {
        sys::proc::exit_now(Exit::ParentGone.code());
    }
    sys::proc::ignore_sigpipe();
    IS_CHILD.store(true, Ordering::Relaxed);
    let Ok(control) = pre_main.adopt_inherited_fd(fd) else {
        sys::proc::exit_now(Exit::NoControlFd.code())
    };
    main(control, ppid, false)
}

/// A pool worker started by a cluster engine: dials the pool (no parent
/// to die with: it exits when the connection is lost); never returns.
fn boot_remote(value: &std::ffi::OsStr) -> ! {
    sys::proc::ignore_sigpipe();
    IS_CHILD.store(true, Ordering::Relaxed);
    match remote::dial(&value.to_string_lossy()) {
        Ok(control) => main(control, sys::proc::getppid(), true),
        Err(e) => {
            eprintln!("skprocess pool worker {}: {e}", sys::proc::getpid());
            sys::proc::exit_now(Exit::NoControlFd.code())
        }
    }
}

fn parse_boot(v: &std::ffi::OsStr) -> Option<(RawFd, u32, Role)> {
    let s = v.to_str()?;
    let mut it = s.split(':');
    if it.next()? != spawn::BOOT_FORMAT {
        return None;
    }
    let fd = it.next()?.parse().ok()?;
    let ppid = it.next()?.parse().ok()?;
    let role = match it.next() {
        None => Role::Child,
        Some(spawn::SERVER_ROLE) => Role::Server,
        Some(_) => return None,
    };
    it.next().is_none().then_some((fd, ppid, role))
}

/// Reads `INIT` and runs the role it names; never returns.
fn main(control: OwnedFd, ppid: u32, remote: bool) -> ! {
    runtime::install_panic_hook();
    let Ok((mut reader, writer)) = wire::split(control) else {
        sys::proc::exit_now(Exit::NoControlSocket.code())
    };
    let (init, early) = link::read_init(&mut reader);
    let Ok(msg) = init.decode::<Init>() else {
        sys::proc::exit_now(Exit::BadInit.code())
    };
    let mut fds = init.fds;
    crate::log::install_child(early.log_setup.as_deref(), writer.clone());
    let (max_message, stop_grace) = match &msg {
        Init::Process {
            max_message,
            stop_grace,
            ..
        } => (
            usize::try_from(*max_message).unwrap_or(usize::MAX),
            *stop_grace,
        ),
        Init::Worker { stop_grace } => (crate::config::DEFAULT_MAX_MESSAGE, *stop_grace),
    };
    reader.set_max_frame(max_message);
    let Ok(link) = Link::start(reader, writer, max_message, stop_grace, early) else {
        sys::proc::exit_now(Exit::NoControlThread.code())
    };
    if signals::install(&link, ppid).is_err() {
        sys::proc::exit_now(Exit::NoControlThread.code());
    }
    // A remote worker's status page is its own: nothing shared crosses
    // machines.
    let page = match remote {
        true => SharedWords::new(c"skprocess-status", STATUS_WORDS),
        false if fds.is_empty() => sys::proc::exit_now(Exit::NoStatusPage.code()),
        false => SharedWords::from_fd(fds.remove(0)),
    };
    let status = match page {
        Ok(s) if s.words().len() >= STATUS_WORDS => Arc::new(s),
        _ => sys::proc::exit_now(Exit::BadStatusPage.code()),
    };
    let exit = match msg {
        Init::Process {
            type_id,
            plan,
            state,
            ..
        } => {
            let report = match fds.is_empty() {
                false => ReportPage::from_fd(fds.remove(0)).ok(),
                true => None,
            };
            let Some(report) = report else {
                sys::proc::exit_now(Exit::BadStatusPage.code())
            };
            let outcome = match registry::find(&type_id) {
                Some(entry) => {
                    let mut ctx = runtime::Ctx::new(
                        link.clone(),
                        &plan,
                        status.clone(),
                        Some(Arc::new(report)),
                    );
                    (entry.run)(runtime::RunArgs {
                        ctx: &mut ctx,
                        plan: &plan,
                        status: &status,
                        state: &state,
                        fds,
                    })
                }
                None => Err(runtime::unregistered(&type_id, &plan)),
            };
            if link.signalled.load(Ordering::Relaxed) {
                // Before the final frame: the parent reads it after that
                // frame and takes the end for a stop, not for a life lost
                // or a reason to restart.
                proto::mark_signalled(status.words());
            }
            runtime::send_outcome(&link, outcome)
        }
        Init::Worker { .. } => worker::serve(&link, &status),
    };
    crate::log::flush();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if link.is_parent_gone() && !remote {
        // Nobody will reap what the hooks started: take it along. (A remote
        // worker's end of file is its pool closing; its engine ends the
        // rest of its job.)
        link::end_group(exit);
    }
    std::process::exit(exit.code())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn boot_variable_parses_strictly() {
        assert_eq!(parse_boot("1:3:42".as_ref()), Some((3, 42, Role::Child)));
        assert_eq!(
            parse_boot("1:3:42:server".as_ref()),
            Some((3, 42, Role::Server))
        );
        assert_eq!(parse_boot("2:3:42".as_ref()), None);
        assert_eq!(parse_boot("1:3".as_ref()), None);
        assert_eq!(parse_boot("1:3:42:9".as_ref()), None);
        assert_eq!(parse_boot("1:3:42:server:1".as_ref()), None);
        assert_eq!(parse_boot("1:x:42".as_ref()), None);
    }
}
