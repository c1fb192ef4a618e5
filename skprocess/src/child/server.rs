//! The fork server's side (the parent's side and the guarantees are in
//! [`spawn::server`]): a process re-executed once, which stays in the
//! before-`main` hook, single-threaded, and forks a child for each request.
//!
//! The server asks for SIGKILL when its parent's spawner thread ends, and
//! ends when its parent closes the socket. Each fork continues as a
//! re-executed child does once it has its descriptors: it leads a process
//! group of its own, clears its signal mask, installs the environment,
//! resource limits and working directory of the request, puts the request's descriptors at
//! 0–3, and goes on into [`super::start`].

use super::start;
use crate::proto::Exit;
use crate::spawn::server::{self as protocol, FD_CONTROL, FD_CWD, FD_STDERR, FD_STDIN, FD_STDOUT};
use crate::sys::{self, boot::PreMain, fork::Forked};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::RawFd;

/// Serves requests on the socket at `fd` until the parent `ppid` closes it
/// or dies; never returns (a fork returns into [`super::start`]).
pub(super) fn serve(pre_main: PreMain, fd: RawFd, ppid: u32) -> ! {
    if sys::proc::set_parent_death_signal(libc::SIGKILL).is_err() || sys::proc::getppid() != ppid {
        sys::proc::exit_now(Exit::ParentGone.code());
    }
    let Ok(mut server) = sys::fork::ForkServer::new(pre_main, fd, protocol::MAX_REQUEST) else {
        sys::proc::exit_now(Exit::NoControlFd.code())
    };
    loop {
        let request = match server.next() {
            Ok(Some(r)) => r,
            Ok(None) => sys::proc::exit_now(Exit::Clean.code()),
            Err(e) => {
                if server.reply(&Err(e)).is_err() {
                    sys::proc::exit_now(Exit::ControlBroken.code());
                }
                continue;
            }
        };
        let wanted = match protocol::decode(&request.bytes) {
            Some(wanted) if request.fds.len() == protocol::REQUEST_FDS => wanted,
            _ => {
                let refused = Err(std::io::Error::from_raw_os_error(libc::EINVAL));
                if server.reply(&refused).is_err() {
                    sys::proc::exit_now(Exit::ControlBroken.code());
                }
                continue;
            }
        };
        match server.fork(request.fds) {
            Forked::Server(s, result) => {
                server = s;
                if server.reply(&result).is_err() {
                    sys::proc::exit_now(Exit::ControlBroken.code());
                }
            }
            Forked::Sibling(sibling) => become_child(sibling, wanted, ppid),
        }
    }
}

/// In a fresh fork: takes the request's environment, directory and
/// descriptors, then starts as a child.
fn become_child(sibling: sys::fork::Sibling, wanted: protocol::Wanted, ppid: u32) -> ! {
    // Before anything can start a process of its own: its hooks'
    // subprocesses join this group, which the parent kills with it.
    let _ = sys::proc::lead_own_group();
    let _ = sys::proc::clear_signal_mask();
    if let Some(vars) = wanted.env {
        install_env(sibling.pre_main(), vars);
    }
    let limited = wanted
        .limits
        .into_iter()
        .all(|(resource, limit)| rustix::process::setrlimit(resource, limit).is_ok());
    let entered = sibling
        .fd(FD_CWD)
        .is_some_and(|dir| rustix::process::fchdir(dir).is_ok());
    if !limited || !entered {
        sys::proc::exit_now(Exit::NotLikeParent.code());
    }
    let control = sys::spawn::CHILD_CONTROL_FD;
    let plan = [
        (FD_CONTROL, control),
        (FD_STDIN, 0),
        (FD_STDOUT, 1),
        (FD_STDERR, 2),
    ];
    let Ok(pre_main) = sibling.place(&plan, control) else {
        sys::proc::exit_now(Exit::NoControlFd.code())
    };
    start(pre_main, control, ppid)
}

/// Makes the environment exactly `vars`, changing only what differs.
fn install_env(pre_main: &PreMain, vars: Vec<(OsString, OsString)>) {
    let wanted: BTreeMap<OsString, OsString> = vars.into_iter().collect();
    for (key, _) in std::env::vars_os() {
        if !wanted.contains_key(&key) {
            pre_main.remove_env(&key);
        }
    }
    for (key, value) in &wanted {
        // std cannot set these (and never reads them back either).
        let bytes = key.as_encoded_bytes();
        if bytes.is_empty()
            || bytes.contains(&b'=')
            || bytes.contains(&0)
            || value.as_encoded_bytes().contains(&0)
        {
            continue;
        }
        if std::env::var_os(key).as_ref() != Some(value) {
            pre_main.set_env(key, value);
        }
    }
}
