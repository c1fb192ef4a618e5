//! The hook that lets a spawned child take over before `main`.
//!
//! An entry in `.init_array` runs after the dynamic loader and libc are set
//! up and before `main`. The crate names the function the entry calls with
//! [`before_main!`], which places one entry in `.init_array` for it; that
//! function gets a [`PreMain`] token and, in an ordinary run, checks one
//! environment variable and returns (in a child it never returns). The
//! entry is a `#[used]` static, which rustc keeps through linking even when
//! nothing refers to it.
//!
//! This module names no caller: the one who registers passes its function
//! in, so the dependency goes from the caller down to `sys`.

use std::marker::PhantomData;
use std::os::fd::{OwnedFd, RawFd};

/// Proof that the code holding it runs in the `.init_array` hook, before
/// `main`: one thread, no descriptor above stderr owned by anything, an
/// environment nobody else reads. Made only by the hook [`before_main!`]
/// registers and handed to the function named there; not `Send`, not
/// `Clone`, so it stays on that thread and is used up by
/// [`adopt_inherited_fd`](PreMain::adopt_inherited_fd), the last step before
/// the child starts threads of its own.
#[derive(Debug)]
pub(crate) struct PreMain {
    _one_thread: PhantomData<*mut ()>,
}

impl PreMain {
    /// The token again, in a process forked from the one that held it.
    ///
    /// # Safety
    ///
    /// This process is a fork of one that held a `PreMain` (so it has one
    /// thread and runs before `main`), and no descriptor above stderr is
    /// owned by anything that will not give it up before the token is used
    /// to take one over.
    pub(super) unsafe fn again() -> PreMain {
        PreMain {
            _one_thread: PhantomData,
        }
    }

    /// Sets an environment variable.
    pub(crate) fn set_env(&self, key: &std::ffi::OsStr, value: &std::ffi::OsStr) {
        // SAFETY: before `main` the process has a single thread (see the
        // type's docs), so no other thread reads the environment.
        unsafe { super::proc::set_env(key, value) }
    }

    /// Removes an environment variable.
    pub(crate) fn remove_env(&self, key: impl AsRef<std::ffi::OsStr>) {
        // SAFETY: before `main` the process has a single thread (see the
        // type's docs), so no other thread reads the environment.
        unsafe { super::proc::remove_env(key) }
    }

    /// Takes over the descriptor the parent handed down at `fd`, closing
    /// every inherited descriptor above it (see
    /// [`super::proc::adopt_inherited_fd`]). An error if `fd` is not open.
    pub(crate) fn adopt_inherited_fd(self, fd: RawFd) -> std::io::Result<OwnedFd> {
        // SAFETY: before `main` no code of this process has opened or taken
        // ownership of a descriptor above stderr, so `fd` and those above
        // it belong to nothing.
        unsafe { super::proc::adopt_inherited_fd(fd) }
    }
}

/// The type of an `.init_array` entry, as glibc calls it: `argc`, `argv`
/// and `envp`. Unsafe to call: only the loader may, before `main`.
pub(crate) type InitEntry =
    unsafe extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

/// The `.init_array` entry that calls `target` (a function item, so a type
/// with a single value) with a [`PreMain`] token. Used by [`before_main!`],
/// at compile time.
pub(crate) const fn init_entry<F: Fn(PreMain) + Copy>(target: F) -> InitEntry {
    const { assert!(std::mem::size_of::<F>() == 0, "pass a function item") };
    let _ = target;
    init::<F>
}

/// Calls the function of type `F` with a [`PreMain`] token.
///
/// # Safety
///
/// Called only by the loader, as an `.init_array` entry: before `main`, on
/// the only thread, before any code of the process took a descriptor
/// (what [`PreMain`] vouches for). `F` is a function item (zero-sized, a
/// value of it was given to [`init_entry`]).
unsafe extern "C" fn init<F: Fn(PreMain) + Copy>(
    _argc: libc::c_int,
    _argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    // `init_entry` checked that `F` is zero-sized, so this is `Some`.
    if let Some(target) = super::zst::conjure::<F>() {
        target(PreMain {
            _one_thread: PhantomData,
        });
    }
}

/// Has `$target`, a path to a `fn(sys::boot::PreMain)`, run before `main`
/// in every process that links this crate. Use once, at module level.
macro_rules! before_main {
    ($target:path) => {
        // SAFETY: the entry has the type glibc calls `.init_array` entries
        // with (`InitEntry`: C ABI, `argc`, `argv`, `envp`); the section
        // holds nothing but such pointers, and this adds one, relocated by
        // the loader like any other. `init_entry` gives the one function
        // that mints a `PreMain`, which is true of the moment the loader
        // calls it.
        #[allow(unsafe_code)]
        #[used]
        #[link_section = ".init_array"]
        static INIT: $crate::sys::boot::InitEntry = $crate::sys::boot::init_entry($target);
    };
}

pub(crate) use before_main;
