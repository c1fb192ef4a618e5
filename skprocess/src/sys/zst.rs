//! Rebuilding a zero-sized function object in another process.

/// Returns a value of the zero-sized type `F`, or `None` if `F` has a size
/// (a closure that captures state).
///
/// `Pool::map_fn` sends a function to a worker as the address of a
/// monomorphised trampoline; the trampoline needs a value of the closure
/// type to call it.
///
/// Why this is sound, and where the argument stops:
///
/// - A zero-sized type has no bytes, so `zeroed` writes nothing and every
///   value of it is the same; `F: Copy` means it has no drop glue and that
///   duplicating a value is always allowed.
/// - The caller only asks for an `F` of which a value existed: `map_fn`
///   holds one in the parent (and checks the size there), and the worker
///   runs the same binary, where `F` is the same type. So `F` is inhabited
///   (no value of an uninhabited type is ever made), and for a fn item or a
///   closure that captures nothing, the value made here is exactly the
///   parent's.
/// - A closure that captures zero-sized values (by move) is zero-sized and
///   `Copy` too: what is made here is a copy of those captured values. That
///   is the parent's copy in another process; it is sound as long as the
///   captured types mean nothing tied to one process (a marker, a fn item,
///   `PhantomData`), which is what `Copy` zero-sized types are in practice.
///   A `Copy` zero-sized token whose existence vouches for something done
///   in the parent process (say, that a library was initialised there)
///   would vouch falsely in the worker; the type system cannot tell such a
///   capture from none, so `map_fn`'s documentation asks for a function or
///   a closure that captures nothing.
pub(crate) fn conjure<F: Copy>() -> Option<F> {
    if std::mem::size_of::<F>() != 0 {
        return None;
    }
    // SAFETY: `F` is zero-sized, so "all bytes zero" (none) is its one
    // value; it is `Copy`, so it has no drop glue; and it is inhabited,
    // since a value of it existed in the caller's program (see above).
    Some(unsafe { std::mem::zeroed::<F>() })
}

#[cfg(test)]
mod test {
    use super::*;

    fn double(x: u64) -> u64 {
        2 * x
    }

    fn call<F: Fn(u64) -> u64 + Copy>(_: F) -> Option<u64> {
        conjure::<F>().map(|f| f(21))
    }

    #[test]
    fn fn_items_and_closures_without_state_are_rebuilt() {
        assert_eq!(call(double), Some(42));
        assert_eq!(call(|x| x + 21), Some(42));
        // A zero-sized capture is a copy of the captured (zero-sized) value.
        let f = double;
        assert_eq!(call(move |x| f(x + 1) - 2), Some(42));
    }

    #[test]
    fn a_closure_with_state_is_refused() {
        let k = 2u64;
        assert_eq!(call(move |x| x * k), None);
        let s = &k;
        assert_eq!(call(move |x| x * *s), None);
    }
}
