//! Compile tests for `#[derive(Process)]`: `ui/fail/*.rs` must fail with
//! exactly the errors in the `.stderr` beside each, `ui/pass/*.rs` must
//! build and run.
//!
//! The `.stderr` files hold rustc 1.95's wording and layout, which change
//! between compiler versions; on any other compiler this test skips itself.
//! After changing the derive's messages, or to move to a new pinned
//! compiler, regenerate them with
//! `TRYBUILD=overwrite cargo test -p skprocess-derive --test compiletest`
//! and read every diff.

use std::process::Command;

/// The compiler the `.stderr` files were written with.
const PINNED: &str = "rustc 1.95.";

#[test]
fn ui() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if !version.starts_with(PINNED) {
        eprintln!(
            "skipping the ui tests: their .stderr files are for {PINNED}x, this is {:?}",
            version.trim()
        );
        return;
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
