//! Builds the attacker-side client `tests/attack/escape.c` (plain libc, Linux
//! headers) into `$OUT_DIR/egress-escape` and exposes its path as
//! `EGRESS_ESCAPE_BIN` at compile time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("attack")
        .join("escape.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("egress-escape");
    println!("cargo:rerun-if-changed={}", src.display());
    let cc = "cc";
    let status = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(status.success(), "{cc} {} failed: {status}", src.display());
    println!("cargo:rustc-env=EGRESS_ESCAPE_BIN={}", out.display());
}
