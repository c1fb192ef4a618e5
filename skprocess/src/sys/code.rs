//! Naming a function so that a child running the same binary can call it.
//!
//! A child is a re-execution of `/proc/self/exe`, the very file its parent
//! runs, so every function sits at the same distance from any other in both
//! processes, wherever the loader placed the binary. The parent sends the
//! distance of a function from [`anchor`]; the child adds it to its own
//! `anchor`. Only one function type crosses this way, [`CallEntry`], so the
//! types agree on both sides by construction.

use std::os::fd::OwnedFd;

/// What `Pool::map_fn` runs in a worker: a monomorphised trampoline that
/// decodes a batch of arguments (bytes and the descriptors they refer to),
/// calls the user's function on each, and appends the encoded results.
pub(crate) type CallEntry =
    fn(input: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>, out_fds: &mut Vec<OwnedFd>);

/// A function of this crate that is never called: the point distances are
/// measured from. Kept out of line so it has an address of its own.
#[inline(never)]
fn anchor() {}

/// The distance of `f` from [`anchor`] in this process, to send to a child.
pub(crate) fn entry_offset(f: CallEntry) -> u64 {
    (f as usize).wrapping_sub(anchor as fn() as usize) as u64
}

/// The entry at `offset` from [`anchor`]: the inverse of [`entry_offset`]
/// in a child of the process that computed it.
///
/// Only the pool worker calls this, with an offset read from its control
/// socket, which connects to nothing but its parent. The parent runs the
/// same executable file (the child was started from its `/proc/self/exe`)
/// and made the offset with [`entry_offset`] from a `CallEntry`, so the
/// address is that of a function of exactly this type in this binary.
pub(crate) fn entry_at(offset: u64) -> CallEntry {
    let addr = (anchor as fn() as usize).wrapping_add(offset as usize);
    // SAFETY: `CallEntry` is a function pointer type, the size of `usize`,
    // and `addr` is the address of a function of that type: the same
    // executable places its functions at the same distances from each other
    // in every process, and the offset came from `entry_offset` applied to a
    // `CallEntry` in the parent (see above).
    unsafe { std::mem::transmute::<usize, CallEntry>(addr) }
}
