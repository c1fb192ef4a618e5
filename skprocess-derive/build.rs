//! Tells the compile tests whether this is the compiler their `.stderr`
//! files were written with (rustc 1.95): `cfg(skprocess_pinned_rustc)`.

use std::process::Command;

/// The compiler the `.stderr` files were written with.
const PINNED: &str = "rustc 1.95.";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(skprocess_pinned_rustc)");
    println!("cargo::rerun-if-env-changed=RUSTC");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if version.starts_with(PINNED) {
        println!("cargo::rustc-cfg=skprocess_pinned_rustc");
    }
}
