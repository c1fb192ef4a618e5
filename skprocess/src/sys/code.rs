//! Naming a function so that a child running the same binary can call it.
//!
//! A child is a re-execution of `/proc/self/exe`, the very file its parent
//! runs, so every function sits at the same distance from any other in both
//! processes, wherever the loader placed the binary. The parent sends the
//! distance of a function from [`anchor`]; the child adds it to its own
//! `anchor`. Only one function type crosses this way, [`CallEntry`].
//!
//! The child does not take the sum on trust: every `Pool::map_fn`
//! trampoline the binary contains is recorded at link time in a table (a
//! linker section, `skprocess_map_fn`, which each instantiation of
//! [`calls_entry_offset`] adds the trampoline it is given to), and
//! [`entry_at`] answers
//! only with an entry of that table. A corrupt or foreign offset is `None`,
//! never a call into arbitrary code.

use std::os::fd::OwnedFd;

/// What `Pool::map_fn` runs in a worker: a monomorphised trampoline that
/// decodes a batch of arguments (bytes and the descriptors they refer to),
/// calls the user's function on each, and appends the encoded results.
pub(crate) type CallEntry =
    fn(input: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>, out_fds: &mut Vec<OwnedFd>);

/// Records the function `$f` (a path to a function of type [`CallEntry`])
/// in the binary's table of entries. Emits no instruction: the assembler
/// adds one pointer-sized word, relocated to `$f`'s address, to the section
/// `skprocess_map_fn`, which is kept through linking ("R") and bounded by
/// the `__start_`/`__stop_` symbols the linker defines for it.
macro_rules! record_entry {
    ($f:expr) => {{
        let _: CallEntry = $f;
        // SAFETY: the block executes nothing and touches no register or
        // memory: it only places data in a section of its own.
        #[cfg(target_pointer_width = "64")]
        unsafe {
            std::arch::asm!(
                ".pushsection skprocess_map_fn,\"awR\"",
                ".balign 8",
                ".8byte {f}",
                ".popsection",
                f = sym $f,
                options(nomem, nostack, preserves_flags)
            )
        };
        // SAFETY: as above.
        #[cfg(target_pointer_width = "32")]
        unsafe {
            std::arch::asm!(
                ".pushsection skprocess_map_fn,\"awR\"",
                ".balign 4",
                ".4byte {f}",
                ".popsection",
                f = sym $f,
                options(nomem, nostack, preserves_flags)
            )
        };
    }};
}

/// A function of this crate that is never called: the point distances are
/// measured from. Kept out of line so it has an address of its own.
#[inline(never)]
fn anchor() {}

/// The distance of `f` from [`anchor`] in this process.
fn entry_offset(f: CallEntry) -> u64 {
    (f as usize).wrapping_sub(anchor as fn() as usize) as u64
}

/// The offset of `trampoline` (a function item of [`CallEntry`]'s
/// signature, such as `Pool::map_fn`'s trampoline for one `(A, R, F)`) to
/// send to a worker, which finds it with [`entry_at`]. Records it in the
/// binary's table of entries.
pub(crate) fn calls_entry_offset<E>(trampoline: E) -> u64
where
    E: Fn(&[u8], Vec<OwnedFd>, &mut Vec<u8>, &mut Vec<OwnedFd>) + Copy,
{
    const { assert!(std::mem::size_of::<E>() == 0, "pass a function item") };
    let _ = trampoline;
    record_entry!(call_item::<E>);
    entry_offset(call_item::<E>)
}

/// The [`CallEntry`] that calls the function item `E`.
fn call_item<E>(input: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>, out_fds: &mut Vec<OwnedFd>)
where
    E: Fn(&[u8], Vec<OwnedFd>, &mut Vec<u8>, &mut Vec<OwnedFd>) + Copy,
{
    // `E` is zero-sized (checked where it was recorded) and a value of it
    // was given to `calls_entry_offset`, so this is `Some`.
    if let Some(f) = super::zst::conjure::<E>() {
        f(input, fds, out, out_fds);
    }
}

/// Stands in the table so that it is never empty (its bounds then exist in
/// every binary); does nothing.
fn no_entry(_: &[u8], _: Vec<OwnedFd>, _: &mut Vec<u8>, _: &mut Vec<OwnedFd>) {}

/// Every entry the binary recorded with `record_entry!`.
fn entries() -> &'static [CallEntry] {
    // Declared as bytes: only their addresses are used.
    extern "C" {
        #[link_name = "__start_skprocess_map_fn"]
        static START: [u8; 0];
        #[link_name = "__stop_skprocess_map_fn"]
        static STOP: [u8; 0];
    }
    let start = (&raw const START).cast::<CallEntry>();
    let stop = (&raw const STOP).cast::<CallEntry>();
    let len = (stop as usize - start as usize) / std::mem::size_of::<CallEntry>();
    // SAFETY: the linker defines START and STOP around the section, which
    // holds nothing but the pointer-sized, aligned words `record_entry!`
    // places there, each the address of a function of type `CallEntry` (the
    // macro checks the type), relocated by the loader before any code ran.
    // The section is never written after that.
    unsafe { std::slice::from_raw_parts(start, len) }
}

/// The entry at `offset` from [`anchor`] (as [`calls_entry_offset`] gave it
/// in a process running the same binary), if the binary recorded a
/// trampoline there; `None` for any other offset.
pub(crate) fn entry_at(offset: u64) -> Option<CallEntry> {
    record_entry!(no_entry);
    let addr = (anchor as fn() as usize).wrapping_add(offset as usize);
    entries().iter().copied().find(|&e| e as usize == addr)
}

/// An identity of this build of the program, the same in every process
/// running the same binary file and (almost surely) different for another
/// build: the size of the executable and the offsets of every `map_fn`
/// entry it recorded. A worker on another machine proves with it that the
/// offsets it will be sent mean the same functions there.
pub(crate) fn build_id() -> u64 {
    use std::hash::{Hash, Hasher};
    record_entry!(no_entry);
    // SipHash with fixed keys: the same in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::metadata("/proc/self/exe")
        .map(|m| m.len())
        .unwrap_or(0)
        .hash(&mut h);
    let mut offsets: Vec<u64> = entries().iter().map(|&e| entry_offset(e)).collect();
    offsets.sort_unstable();
    offsets.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod test {
    use super::*;

    fn echo(input: &[u8], _: Vec<OwnedFd>, out: &mut Vec<u8>, _: &mut Vec<OwnedFd>) {
        out.extend_from_slice(input);
    }

    fn twice(input: &[u8], _: Vec<OwnedFd>, out: &mut Vec<u8>, _: &mut Vec<OwnedFd>) {
        out.extend_from_slice(input);
        out.extend_from_slice(input);
    }

    fn run(entry: CallEntry) -> Vec<u8> {
        let mut out = Vec::new();
        entry(b"ab", Vec::new(), &mut out, &mut Vec::new());
        out
    }

    #[test]
    fn a_recorded_trampoline_is_found_and_nothing_else() {
        let offset = calls_entry_offset(echo);
        assert_eq!(calls_entry_offset(echo), offset);
        let other = calls_entry_offset(twice);
        assert_ne!(other, offset);
        assert_eq!(entry_at(offset).map(run).as_deref(), Some(&b"ab"[..]));
        assert_eq!(entry_at(other).map(run).as_deref(), Some(&b"abab"[..]));
        // Offsets a corrupt frame could carry: none is a recorded entry.
        for bad in [0, 1, offset + 1, offset.wrapping_sub(16), u64::MAX, 1 << 40] {
            assert!(entry_at(bad).is_none(), "offset {bad:#x}");
        }
        // A function of the right type that was never recorded.
        assert!(entry_at(entry_offset(|_, _, _, _| {})).is_none());
        assert!(entry_at(entry_offset(echo)).is_none());
    }
}
