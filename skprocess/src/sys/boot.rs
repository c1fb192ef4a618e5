//! The hook that lets a spawned child take over before `main`.
//!
//! An entry in `.init_array` runs after the dynamic loader and libc are set
//! up and before `main`. In an ordinary run it checks one environment
//! variable and returns; in a child it never returns (see
//! `crate::spawn::boot`). The entry is a `#[used]` static, which rustc keeps
//! through linking even when nothing refers to it.

extern "C" fn init(
    _argc: libc::c_int,
    _argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    crate::child::boot();
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) =
    init;
