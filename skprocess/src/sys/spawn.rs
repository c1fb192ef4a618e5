//! Starting a copy of the current executable with `posix_spawn`.
//!
//! `posix_spawn` (glibc uses `clone(CLONE_VM | CLONE_VFORK)`) avoids copying
//! the parent's page tables, so spawning costs the same whether the parent
//! is small or huge. No code of ours runs between the clone and the exec.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// The descriptor number a child finds its control socket on.
pub(crate) const CHILD_CONTROL_FD: i32 = 3;

/// Everything the spawned process needs: its environment, its arguments,
/// the socket that becomes its descriptor 3, and what becomes its
/// descriptors 0, 1 and 2 if not the parent's own.
pub(crate) struct SpawnRequest<'a> {
    pub(crate) control: BorrowedFd<'a>,
    pub(crate) env: &'a [CString],
    pub(crate) argv0: &'a CString,
    pub(crate) stdin: Option<BorrowedFd<'a>>,
    pub(crate) stdout: Option<BorrowedFd<'a>>,
    pub(crate) stderr: Option<BorrowedFd<'a>>,
}

/// A pipe: `(read end, write end)`, both close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, min)?)
}

/// Builds `KEY=VALUE` strings for an environment.
pub(crate) fn env_entry(key: &OsStr, value: &OsStr) -> CString {
    let mut bytes = Vec::with_capacity(key.len() + value.len() + 1);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    // Environment entries from std never contain NUL; replace defensively.
    bytes.retain(|&b| b != 0);
    CString::new(bytes).expect("NUL bytes were removed")
}

/// Spawns `/proc/self/exe` (the very binary this process runs, even if the
/// file was replaced on disk since) and returns the child's pid.
pub(crate) fn spawn_self(req: &SpawnRequest<'_>) -> io::Result<u32> {
    let path = c"/proc/self/exe";
    let argv: [*mut libc::c_char; 2] = [req.argv0.as_ptr() as *mut _, std::ptr::null_mut()];
    let mut envp: Vec<*mut libc::c_char> = req.env.iter().map(|e| e.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());

    // Each source is close-on-exec; dup2 in the file actions gives the child
    // a copy at its target number without that flag. A source that sits at
    // its own target (dup2 would be a no-op and the flag would stay) or at
    // another's target (an earlier dup2 would replace it) is moved above
    // them first.
    let wanted = [
        (Some(req.control), CHILD_CONTROL_FD),
        (req.stdin, 0),
        (req.stdout, 1),
        (req.stderr, 2),
    ];
    let mut moved = Vec::new();
    let mut plan: Vec<(RawFd, RawFd)> = Vec::new();
    for (source, target) in wanted {
        let Some(source) = source else { continue };
        let raw = if source.as_raw_fd() <= CHILD_CONTROL_FD {
            let m = dup_at_least(source, CHILD_CONTROL_FD + 1)?;
            let raw = m.as_raw_fd();
            moved.push(m);
            raw
        } else {
            source.as_raw_fd()
        };
        plan.push((raw, target));
    }

    // SAFETY: all structures are initialised by their *_init functions before
    // use and destroyed on every path below; every pointer handed to
    // posix_spawn (path, argv, envp and the strings they point to) outlives
    // the call, and argv/envp are NULL-terminated.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let r = libc::posix_spawn_file_actions_init(&mut actions);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let r = libc::posix_spawnattr_init(&mut attr);
        if r != 0 {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(io::Error::from_raw_os_error(r));
        }
        let mut result = 0;
        for &(source, target) in &plan {
            if result == 0 {
                result = libc::posix_spawn_file_actions_adddup2(&mut actions, source, target);
            }
        }
        if result == 0 {
            // A clean signal mask and default SIGPIPE disposition are set in
            // the child's start-up code; here we only clear the inherited mask
            // so a parent thread that blocks signals does not pass that on.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            result = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        }
        if result == 0 {
            // The child leads a process group of its own (pgid 0: its own
            // pid), so that killing it can take along what its hooks
            // started (see `proc::kill_group`).
            result = libc::posix_spawnattr_setpgroup(&mut attr, 0);
        }
        if result == 0 {
            result = libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETPGROUP) as libc::c_short,
            );
        }
        let mut pid: libc::pid_t = 0;
        if result == 0 {
            result = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        drop(moved);
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        Ok(pid as u32)
    }
}
