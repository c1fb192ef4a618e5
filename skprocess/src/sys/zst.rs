//! Rebuilding a zero-sized function object in another process.

/// Returns the one value of the zero-sized type `F`, or `None` if `F` has a
/// size (a closure that captures state).
///
/// `Pool::map_fn` sends a function to a worker as the address of a
/// monomorphised trampoline; the trampoline needs a value of the closure
/// type to call it, and a non-capturing closure has exactly one value.
pub(crate) fn conjure<F: Copy>() -> Option<F> {
    if std::mem::size_of::<F>() != 0 {
        return None;
    }
    // SAFETY: `F` is zero-sized, so it has no bytes and exactly one value,
    // which "all bytes zero" (none) describes; it is `Copy`, so it has no
    // drop glue and no invariant that a value produced this way could break.
    Some(unsafe { std::mem::zeroed::<F>() })
}
