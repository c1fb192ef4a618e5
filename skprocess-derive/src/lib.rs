//! `#[derive(Process)]` for [skprocess].
//!
//! This crate is an implementation detail of skprocess, which re-exports the
//! derive as `skprocess::Process` (also in `skprocess::prelude`). Depend on
//! skprocess, not on this crate; the code it generates names items of
//! skprocess by absolute path. The skprocess crate docs show the derive at
//! work; [`derive_process`] lists the keys of `#[process(...)]` and the
//! errors it reports.
//!
//! The derive runs in three steps, one module each:
//!
//! - `attr` parses `#[process(...)]`: which keys, each at most once, each
//!   with the right kind of literal;
//! - `check` validates: the input is a struct without generic parameters,
//!   integers are at least 1, durations parse with humantime;
//! - `expand` emits the impl and the registry entry, or, when something is
//!   wrong, every error found plus a stub impl from `fallback`, so that the
//!   user sees the errors that matter and not the cascade after them.
//!
//! [skprocess]: https://docs.rs/skprocess

mod attr;
mod check;
mod ctxt;
mod expand;
mod fallback;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Registers a struct as a process and turns `#[process(...)]` into its
/// default `Config`.
///
/// The derive implements skprocess's hidden `Described` trait (the type's
/// name, a stable id, and `config()`) and adds the type to the registry a
/// child uses to rebuild it. Write `impl Process for T` by hand: that is
/// where the hooks go. The type must also be `Serialize` and
/// `DeserializeOwned`, since it travels to the child and back. See the
/// skprocess crate docs for a complete example.
///
/// # The attribute
///
/// Every key is optional; each may appear once. Leaving the attribute out
/// gives `Config::default()`.
///
/// ```text
/// #[process(
///     runs = 5,                     // iterations (u64, at least 1); default: until stopped
///     lives = 3,                    // attempts in all (u32, at least 1); default: 1
///     timeout(                      // limit per call of a hook; default: none
///         prerun = "500ms",
///         run = "30s",
///         postrun = "1s",
///         onfinish = "2s",
///     ),
///     join_in = "10m",              // limit on the whole process; default: none
/// )]
/// ```
///
/// Durations are [humantime] strings (`"30s"`, `"1m 30s"`, `"250ms"`),
/// parsed when the derive expands: a malformed one is a compile error on
/// that literal, never a panic at run time. A duration must be longer than
/// zero.
///
/// # Compile errors
///
/// Each error points at the offending token, and all of them are reported
/// at once:
///
/// - an unknown key, or an unknown hook inside `timeout(...)`;
/// - a key given twice, or a hook given twice inside `timeout(...)`;
/// - a value of the wrong kind (`runs = "5"`, `join_in = 10`);
/// - `runs = 0` or `lives = 0`, or an integer out of range;
/// - a duration humantime cannot parse, or a zero one;
/// - an enum or a union: processes are structs;
/// - type, lifetime or const parameters: the child rebuilds the type from
///   a registry and needs one concrete type, so wrap the generic type in a
///   concrete struct.
///
/// [humantime]: https://docs.rs/humantime
#[proc_macro_derive(Process, attributes(process))]
pub fn derive_process(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
