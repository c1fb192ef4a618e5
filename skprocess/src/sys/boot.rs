//! The hook that lets a spawned child take over before `main`.
//!
//! An entry in `.init_array` runs after the dynamic loader and libc are set
//! up and before `main`. In an ordinary run it checks one environment
//! variable and returns; in a child it never returns (see
//! `crate::child::boot`). The entry is a `#[used]` static, which rustc keeps
//! through linking even when nothing refers to it.

use std::marker::PhantomData;
use std::os::fd::{OwnedFd, RawFd};

/// Proof that the code holding it runs in the `.init_array` hook, before
/// `main`: one thread, no descriptor above stderr owned by anything, an
/// environment nobody else reads. Made only by the hook and handed to
/// `crate::child::boot`; not `Send`, not `Clone`, so it stays on that thread
/// and is used up by [`adopt_inherited_fd`](PreMain::adopt_inherited_fd),
/// the last step before the child starts threads of its own.
#[derive(Debug)]
pub(crate) struct PreMain {
    _one_thread: PhantomData<*mut ()>,
}

impl PreMain {
    /// Removes an environment variable.
    pub(crate) fn remove_env(&self, key: &str) {
        // SAFETY: before `main` the process has a single thread (see the
        // type's docs), so no other thread reads the environment.
        unsafe { super::proc::remove_env(key) }
    }

    /// Takes over the descriptor the parent handed down at `fd`, closing
    /// every inherited descriptor above it (see
    /// [`super::proc::adopt_inherited_fd`]).
    pub(crate) fn adopt_inherited_fd(self, fd: RawFd) -> OwnedFd {
        // SAFETY: before `main` no code of this process has opened or taken
        // ownership of a descriptor above stderr, so `fd` and those above
        // it belong to nothing.
        unsafe { super::proc::adopt_inherited_fd(fd) }
    }
}

extern "C" fn init(
    _argc: libc::c_int,
    _argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    crate::child::boot(PreMain {
        _one_thread: PhantomData,
    });
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) =
    init;
