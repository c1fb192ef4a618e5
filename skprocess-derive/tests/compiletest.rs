//! Compile tests for `#[derive(Process)]`: `ui/fail/*.rs` must fail with
//! exactly the errors in the `.stderr` beside each, `ui/pass/*.rs` must
//! build and run.
//!
//! The `.stderr` files hold rustc 1.95's wording and layout, which change
//! between compiler versions; on any other compiler this test is ignored
//! (and says so in the test output).
//! After changing the derive's messages, or to move to a new pinned
//! compiler, regenerate them with
//! `TRYBUILD=overwrite cargo test -p skprocess-derive --test compiletest`
//! and read every diff.

/// Runs only on the compiler the `.stderr` files were written with (see
/// `build.rs`); on any other it shows as ignored, with the reason.
#[test]
#[cfg_attr(
    not(skprocess_pinned_rustc),
    ignore = "the ui .stderr files are for rustc 1.95; this is another compiler"
)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
