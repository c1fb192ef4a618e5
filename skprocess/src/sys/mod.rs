//! Operating-system primitives, and the only place in the crate where
//! `unsafe` is allowed.
//!
//! Everything above this module is safe Rust: the rest of the crate asks for
//! a socket pair, a spawned child, a shared-memory page or a signal, and gets
//! a safe handle (`OwnedFd`, a slice of atomics, a pid) back. Each `unsafe`
//! block here carries a `// SAFETY:` comment stating why it holds.
//!
//! The crate targets Linux: it relies on `memfd_create`, `pidfd_open`,
//! `PR_SET_PDEATHSIG` and `.init_array`.

pub(crate) mod boot;
pub(crate) mod code;
pub(crate) mod fork;
pub(crate) mod frozen;
pub(crate) mod futex;
pub(crate) mod kick;
pub(crate) mod locked;
pub(crate) mod mem;
pub(crate) mod mutex;
pub(crate) mod proc;
pub(crate) mod region;
pub(crate) mod shm;
pub(crate) mod sock;
pub(crate) mod spawn;
pub(crate) mod zst;

use std::io;

/// Turns a `-1` return into the current `errno` as an `io::Error`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`], retrying while the call was interrupted by a signal.
pub(crate) fn cvt_retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
